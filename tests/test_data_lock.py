"""First use of the data cache by several processes at once (harness.data.cifar.cache_lock).

Tuning workers and compose replicas often start together on an empty cache: one of them
downloads and imports, the others wait for the lock and then read its cache. Each test
starts real processes (the lock is per process) against a local HTTP server that counts
its downloads. About 10 s in all.
"""

import hashlib
import http.server
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from harness.data import cifar as data
from harness.data import synthetic

PROCESSES = 4
PER_BATCH = 20  # 100 training + 20 test images: the archive is ~370 KB

# Each child waits for the file "go", so that they all reach the empty cache together.
CHILD = """
import sys, time
from pathlib import Path
go = Path(sys.argv[1])
while not go.exists():
    time.sleep(0.01)
{body}
"""
LOAD = CHILD.format(
    body="from harness.data import cifar as data\nds = data.load()\n"
    "print(ds.sha256, len(ds.x_train), len(ds.x_test))"
)
IMPORT = CHILD.format(body="from harness.cli import main\nmain(['data', 'import', sys.argv[2]])")


@pytest.fixture
def archive_small(tmp_path) -> Path:
    (tmp_path / "served").mkdir()
    return synthetic.write_archive(tmp_path / "served" / data.ARCHIVE_NAME, per_batch=PER_BATCH)


@pytest.fixture
def server(archive_small):
    """An HTTP server on 127.0.0.1 serving the archive slowly (0.5 s before the first
    byte, so that waiting processes pile up), counting its GET requests."""
    hits = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=str(archive_small.parent), **kwargs)

        def do_GET(self):
            hits.append(self.path)
            time.sleep(0.5)
            super().do_GET()

        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/{archive_small.name}", hits
    httpd.shutdown()
    httpd.server_close()


def _env(home: Path, **extra) -> dict:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("HARNESS_ARCHIVE", "http_proxy", "HTTP_PROXY")
    }
    return {
        **env,
        "HARNESS_HOME": str(home),
        "NO_PROXY": "127.0.0.1",
        "no_proxy": "127.0.0.1",
        **extra,
    }


def _run_together(tmp_path: Path, code: str, env: dict, *args: str) -> list[tuple]:
    go = tmp_path / "go"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code, str(go), *args],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(PROCESSES)
    ]
    time.sleep(0.3)
    go.touch()
    results = []
    for p in procs:
        out, err = p.communicate(timeout=60)
        results.append((p.returncode, out, err))
    return results


def _leftovers(home: Path) -> set[str]:
    return {p.name for p in home.iterdir()} - {data.CACHE_NAME, data.ARCHIVE_NAME}


def test_concurrent_first_use_downloads_once(tmp_path, server, archive_small):
    url, hits = server
    sha = hashlib.sha256(archive_small.read_bytes()).hexdigest()
    home = tmp_path / "home"
    env = _env(home, HARNESS_CIFAR_URL=url, HARNESS_CIFAR_SHA256=sha)
    results = _run_together(tmp_path, LOAD, env)
    for code, out, err in results:
        assert code == 0, err
        assert out.split() == [sha, str(5 * PER_BATCH), str(PER_BATCH)]
    assert len(hits) == 1, f"the archive was downloaded {len(hits)} times"
    # The others waited for the first, then read its cache.
    assert sum("waiting for another process" in err for _, _, err in results) >= 1
    assert _leftovers(home) == set()  # no lock file, no partial download, no temporary cache
    assert data.read_cache(home).sha256 == sha


def test_concurrent_data_import_imports_once(tmp_path, archive_small):
    home = tmp_path / "home"
    results = _run_together(tmp_path, IMPORT, _env(home), str(archive_small))
    for code, out, err in results:
        assert code == 0, err
        assert f"imported {5 * PER_BATCH} + {PER_BATCH} images" in out
    # Only the process that validated the archive warns that it is not the official one.
    assert sum("validated by content" in err for _, _, err in results) == 1
    assert {p.name for p in home.iterdir()} == {data.CACHE_NAME}
    assert data.read_cache(home).sha256 == data.sha256_of(archive_small)


def test_a_killed_holder_leaves_neither_lock_nor_parts(
    tmp_path, server, archive_small, monkeypatch
):
    """The kernel drops the lock of a process killed while holding it; the next holder
    removes what it left half written."""
    url, hits = server
    home = tmp_path / "home"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time\nfrom harness.data import cifar as data\n"
            "with data.cache_lock():\n    print('held', flush=True)\n    time.sleep(60)",
        ],
        env=_env(home),
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout.readline().strip() == "held"
    stale = home / f".{data.ARCHIVE_NAME}.dead.part"
    stale.write_bytes(b"half")
    holder.send_signal(signal.SIGKILL)
    holder.wait(timeout=10)
    monkeypatch.setenv(data.URL_ENV, url)  # read when called, not at import
    monkeypatch.setenv(data.SHA256_ENV, data.sha256_of(archive_small))
    t0 = time.perf_counter()
    ds = data.load(home=home)
    assert time.perf_counter() - t0 < 10 and len(hits) == 1
    assert ds.sha256 == data.sha256_of(archive_small)
    assert _leftovers(home) == set()


def test_import_of_the_cached_archive_reuses_the_cache(archive_small, monkeypatch):
    data.import_data(archive_small)
    monkeypatch.setattr(data, "read_archive", lambda p: pytest.fail("parsed again"))
    assert data.import_data(archive_small).sha256 == data.sha256_of(archive_small)
