"""`harness bench BUNDLE --on ssh://...` against a real OpenSSH server started on 127.0.0.1.

The server runs as the test's user on an unprivileged port with throwaway host and user
keys; the device's cache root is the test's folder (sshd's SetEnv HARNESS_DEVICE_CACHE).
.ci/run installs openssh-server where it is missing; elsewhere, without sshd, these skip.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from harness.cli import main
from harness.core.config import resolve
from harness.core.records import RunDir
from harness.core.schemas import check_record
from harness.data import cifar as data
from harness.deploy import device as device_mod
from harness.deploy import linux as deploy
from harness.train.fit import train

SSHD = shutil.which("sshd") or "/usr/sbin/sshd"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _keygen(path: Path) -> Path:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True)
    return path


@pytest.fixture(scope="module")
def sshd(tmp_path_factory):
    if not Path(SSHD).exists():
        if os.environ.get("CI"):
            pytest.fail("no sshd: .ci/run installs openssh-server")
        pytest.skip("OpenSSH's server (sshd) is not installed")
    d = tmp_path_factory.mktemp("sshd")
    host, user, wrong = (_keygen(d / name) for name in ("host_key", "user_key", "wrong_key"))
    (d / "authorized_keys").write_text((d / "user_key.pub").read_text())
    port = _free_port()
    (d / "sshd_config").write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {host}\nPidFile {d / 'sshd.pid'}\n"
        f"AuthorizedKeysFile {d / 'authorized_keys'}\nPasswordAuthentication no\n"
        "KbdInteractiveAuthentication no\nPubkeyAuthentication yes\n"
        "PermitRootLogin prohibit-password\nStrictModes no\nUsePAM no\nLogLevel ERROR\n"
        "Subsystem sftp internal-sftp\n"
        f"SetEnv HARNESS_DEVICE_CACHE={d / 'cache'}\n"
    )
    known = (d / "host_key.pub").read_text().split()[:2]
    (d / "known_hosts").write_text(f"[127.0.0.1]:{port} {' '.join(known)}\n")
    (d / "ssh_config").write_text(
        f"Host *\n  UserKnownHostsFile {d / 'known_hosts'}\n  StrictHostKeyChecking yes\n"
    )
    if os.geteuid() == 0:
        Path("/run/sshd").mkdir(exist_ok=True)  # sshd's privilege separation, as root
    server = subprocess.Popen([SSHD, "-D", "-e", "-f", str(d / "sshd_config")])
    for _ in range(100):
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                break
        time.sleep(0.05)
    user_name = os.environ.get("USER") or __import__("getpass").getuser()
    yield {
        "url": f"ssh://{user_name}@127.0.0.1:{port}",
        "key": user,
        "wrong": wrong,
        "config": d / "ssh_config",
        "cache": d / "cache",
        "dir": d,
    }
    server.terminate()
    server.wait(timeout=10)


@pytest.fixture(scope="module")
def bundle(tmp_path_factory, archive):
    results = tmp_path_factory.mktemp("results")
    ds = data.load(archive, home=results / "home")
    cfg = resolve("bn-elu", overrides=dict(layers=1, units=16, epochs=2, batch_size=64, name="t"))
    train(cfg, ds, results, verbose=0)
    made = deploy.deploy_run(
        RunDir.named(results, "t"), ds, results / "deploy", "linux", "litert", "int8", calls=20
    )
    return made["folder"], results


def _python() -> str:
    """An interpreter whose venv module works (the one this venv was made from)."""
    return getattr(sys, "_base_executable", sys.executable)


def _bench(sshd, folder, results, *extra, key="key"):
    args = ["--results", str(results), "bench", str(folder), "--on", sshd["url"]]
    args += ["--identity", str(sshd[key]), "--ssh-config", str(sshd["config"])]
    return CliRunner().invoke(main, [*args, "--calls", "50", "--warmup", "5", *extra])


@pytest.mark.slow
def test_a_bundle_is_set_up_on_the_device_selftested_and_timed(sshd, bundle):
    folder, results = bundle
    done = _bench(sshd, folder, results, "--python", _python())
    assert done.exit_code == 0, done.output
    assert "selftest ok" in done.output and "batch-1 p50" in done.output
    path = results / "bench" / f"{folder.name}-on-127.0.0.1.json"
    record = json.loads(path.read_text())
    check_record("bench", record)
    assert record["machine"]["via"].startswith("ssh ") and "127.0.0.1" in record["machine"]["via"]
    assert record["rows"][0]["calls"] == 50 and record["rows"][0]["p50_us"] > 0
    homes = [p for p in sshd["cache"].iterdir() if (p / ".ready").exists()]
    assert len(homes) == 1 and (homes[0] / folder.name / "predict.py").exists()
    # Again: the venv is reused (its folder untouched), the record made anew.
    stamp = (homes[0] / ".ready").stat().st_mtime
    again = _bench(sshd, folder, results, "--python", _python())
    assert again.exit_code == 0, again.output
    assert (homes[0] / ".ready").stat().st_mtime == stamp


def test_an_unreachable_device_is_one_line(sshd, bundle):
    folder, results = bundle
    url = f"ssh://someone@127.0.0.1:{_free_port()}"
    args = ["--results", str(results), "bench", str(folder), "--on", url]
    done = CliRunner().invoke(main, [*args, "--ssh-config", str(sshd["config"])])
    assert done.exit_code == 1 and done.output.startswith("Error: cannot reach ssh someone@")
    assert done.output.count("\n") == 1


def test_a_refused_key_is_one_line(sshd, bundle):
    folder, results = bundle
    done = _bench(sshd, folder, results, key="wrong")
    assert done.exit_code == 1 and "refused the key" in done.output, done.output
    assert done.output.count("\n") == 1


@pytest.mark.parametrize(
    "python,why", [("/no/such/python3", "no usable /no/such/python3"), ("OLD", "is Python 3.8.10")]
)
def test_a_device_without_a_usable_python_is_one_line(sshd, bundle, python, why):
    folder, results = bundle
    if python == "OLD":  # a python3 that says it is 3.8
        old = sshd["dir"] / "old-python"
        old.write_text("#!/bin/sh\necho 3.8.10\n")
        old.chmod(0o755)
        python = str(old)
    done = _bench(sshd, folder, results, "--python", python)
    assert done.exit_code == 1 and why in done.output, done.output


def test_a_failed_install_leaves_nothing_on_the_device(sshd, bundle, tmp_path):
    """A bundle whose requirements cannot be installed: one line, and its folder is gone."""
    folder, results = bundle
    bad = tmp_path / folder.name
    shutil.copytree(folder, bad)
    (bad / "requirements.txt").write_text("harness-no-such-package-anywhere==0.0.1\n")
    with tarfile.open(tmp_path / f"{folder.name}.tar.gz", "w:gz") as tar:
        tar.add(bad, arcname=folder.name)
    (tmp_path / f"{folder.name}.tar.gz.sha256").write_text(f"{'0' * 64}  {folder.name}.tar.gz\n")
    done = _bench(sshd, bad, results, "--python", _python())
    assert done.exit_code == 1 and "pip install" in done.output and "nothing left" in done.output
    assert not (sshd["cache"] / ("0" * 64)).exists()


@pytest.mark.parametrize(
    "url", ["http://host", "ssh://", "ssh://host/path", "ssh://host:99999", "ssh://a;b@host"]
)
def test_a_bad_url_is_refused(url):
    with pytest.raises(device_mod.BadTarget):
        device_mod.Target.parse(url)
    done = CliRunner().invoke(main, ["bench", "x", "--on", url])
    assert done.exit_code == 2 and done.output.count("\n") == 1, done.output
