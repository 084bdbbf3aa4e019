"""harness tune as a user runs it: the command line in its own processes, killed and
re-run, as a chief and workers, two trials at once."""

import json
import os
import socket
import subprocess
import time

import pytest
from click.testing import CliRunner

from harness.cli import main

SMALL_SPACE = ["--layers-range", "1,2", "--units-range", "8,16", "--batch-size", "64"]
SEARCH_ARGS = ["tune", "--preset", "bn-elu", *SMALL_SPACE]


ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}


@pytest.mark.slow
def test_interrupted_search_resumes_without_redoing_trials(tmp_path, harness_command):
    cmd = harness_command(
        tmp_path, *SEARCH_ARGS, "--max-trials", "3", "--epochs", "20", "--name", "r"
    )
    meta0 = tmp_path / "tuning" / "r" / "trial_meta" / "0.json"
    proc = subprocess.Popen(cmd, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not meta0.exists() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.1)
    time.sleep(1.0)  # well into the second trial
    assert proc.poll() is None, "the search ended before it could be killed"
    proc.kill()
    proc.wait()
    first = meta0.read_text()
    done = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = json.loads((tmp_path / "tuning" / "r" / "trials.json").read_text())
    assert sorted(r["trial_id"] for r in rows) == ["0", "1", "2"]
    assert all(r["status"] == "COMPLETED" for r in rows)
    assert meta0.read_text() == first  # trial 0 was not run again


def _read_json_or_none(path):
    """A JSON file another process may be writing: None until it reads whole."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_distributed_search_spreads_trials_and_survives_a_killed_worker(tmp_path, harness_command):
    """A chief and two workers share the trials; tuner1, killed inside its second trial, is
    noticed by the chief, which hands that trial to tuner0, and the search completes. Then the
    finished search, re-run alone (as where its trials are judged), trains nothing again,
    although KerasTuner saved its last trial as still running."""
    port = str(_free_port())
    search = [*SEARCH_ARGS, "--max-trials", "6", "--epochs", "6", "--name", "d"]
    args = harness_command(tmp_path, *search, "--oracle-ip", "127.0.0.1", "--oracle-port", port)
    logs = {who: open(tmp_path / f"{who}.log", "w") for who in ("chief", "tuner0", "tuner1")}
    # A live worker is silent while it compiles (seconds on a loaded machine), so the
    # timeout that notices the killed one leaves room for that.
    procs = {
        "chief": subprocess.Popen(
            [*args, "--tuner-id", "chief", "--worker-timeout", "15"],
            env=ENV,
            stdout=logs["chief"],
            stderr=subprocess.STDOUT,
        )
    }
    for who in ("tuner0", "tuner1"):
        procs[who] = subprocess.Popen(
            [*args, "--tuner-id", who], env=ENV, stdout=logs[who], stderr=subprocess.STDOUT
        )
    meta = tmp_path / "tuning" / "d" / "trial_meta"
    try:
        deadline = time.monotonic() + 180
        while not (  # tuner1 finished a trial and is inside another
            any(json.loads(m.read_text())["tuner_id"] == "tuner1" for m in meta.glob("*.json"))
            and (tmp_path / "tuner1.log").read_text().count("Epoch 2/") >= 2
        ):
            assert time.monotonic() < deadline and procs["tuner1"].poll() is None
            time.sleep(0.1)
        procs["tuner1"].kill()
        assert procs["chief"].wait(timeout=300) == 0, (tmp_path / "chief.log").read_text()[-3000:]
        assert procs["tuner0"].wait(timeout=60) == 0
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.kill()
        for f in logs.values():
            f.close()
    rows = json.loads((tmp_path / "tuning" / "d" / "trials.json").read_text())
    assert len(rows) == 6 and all(r["status"] == "COMPLETED" for r in rows)
    assert {r["worker"] for r in rows} == {"tuner0", "tuner1"}
    assert (tmp_path / "tuning" / "d" / "best" / "model.keras").exists()
    assert "worker tuner1 silent" in (tmp_path / "chief.log").read_text()

    metas = sorted(meta.glob("*.json"))
    before = [m.read_text() for m in metas]
    summary = tmp_path / "tuning" / "d" / "summary.json"
    took = json.loads(summary.read_text())["search_seconds"]
    assert took > 0
    again = subprocess.run(
        harness_command(tmp_path, *search), env=ENV, capture_output=True, text=True, timeout=300
    )
    assert again.returncode == 0, again.stderr[-2000:]
    assert "Epoch 1/" not in again.stdout + again.stderr
    assert [m.read_text() for m in metas] == before
    assert json.loads(summary.read_text())["search_seconds"] >= took  # the trials' time kept


def test_tune_cli_errors(tmp_path, archive):
    run = lambda *a: CliRunner().invoke(
        main, ["--archive", str(archive), "--results", str(tmp_path), *a]
    )
    assert run("tune", "--preset", "bn-elu", "--tuner", "grid").exit_code == 2
    result = run("tune", "--preset", "bn-elu", "--layers-range", "5,1")
    assert result.exit_code == 2 and "empty or inverted" in result.output
    result = run("tune", "--preset", "bn-elu", "--tuner-id", "tuner0")
    assert result.exit_code == 2 and "together" in result.output
    result = run("tune", "--preset", "bn-elu", "--parallel", "2")  # this process runs TF
    assert result.exit_code == 2 and "--parallel needs the JAX backend" in result.output
    distributed = ["--tuner-id", "w", "--oracle-ip", "::1", "--oracle-port", "9"]
    result = run("tune", "--preset", "bn-elu", "--parallel", "2", *distributed)
    assert result.exit_code == 2 and "use one or the other" in result.output
    port = _free_port()  # nothing listens there
    t0 = time.monotonic()
    result = run(
        "tune",
        "--preset",
        "bn-elu",
        "--tuner-id",
        "tuner0",
        "--oracle-ip",
        "127.0.0.1",
        "--oracle-port",
        str(port),
        "--connect-timeout",
        "1",
    )
    assert result.exit_code == 1
    assert f"cannot reach the chief at 127.0.0.1:{port}" in result.output
    assert time.monotonic() - t0 < 30


@pytest.mark.slow
def test_a_jax_search_side_by_side_resumes_and_completes_its_trials(tmp_path, harness_command):
    """The fast preset's search on JAX, with async dispatch in its trials, two trials at once
    (--parallel 2): killed once its first trial is done, it resumes without running that
    trial again, and ends with each trial once, from both tuners."""
    cmd = harness_command(
        tmp_path,
        "tune",
        "--preset",
        "bn-elu-fast",
        *SMALL_SPACE,
        "--max-trials",
        "3",
        "--epochs",
        "20",
        "--parallel",
        "2",
        "--name",
        "j",
    )
    env = {**ENV, "KERAS_BACKEND": "jax"}
    root = tmp_path / "tuning" / "j"
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline, ended = time.monotonic() + 120, []
    while not ended and time.monotonic() < deadline:  # a trial the oracle counts as ended
        assert proc.poll() is None, "the search ended before it could be killed"
        time.sleep(0.05)
        trials = [_read_json_or_none(t) for t in root.glob("keras_tuner/trial_*/trial.json")]
        ended = [t["trial_id"] for t in trials if t and t["status"] == "COMPLETED"]
    proc.kill()
    proc.wait()
    finished = {i: (root / "trial_meta" / f"{i}.json").read_text() for i in ended}
    assert 1 <= len(finished) < 3
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "Buffer has been deleted" not in done.stderr
    for i, text in finished.items():  # not run again
        assert (root / "trial_meta" / f"{i}.json").read_text() == text
    rows = json.loads((root / "trials.json").read_text())
    assert [r["status"] for r in rows] == ["COMPLETED"] * 3
    assert all(1 <= r["epochs"] <= 20 and r["device"].startswith("jax") for r in rows)
    assert {r["worker"] for r in rows} == {"tuner0", "tuner0-1"}
    oracle = json.loads((root / "keras_tuner" / "oracle.json").read_text())  # whole, not torn
    assert sorted(set(oracle["end_order"])) == ["0", "1", "2"] and not oracle["ongoing_trials"]
    summary = json.loads((root / "summary.json").read_text())
    # 50 validation images: too few for an accuracy floor; the best is the best
    assert summary["completed"] == 3
    assert summary["best_val_accuracy"] == pytest.approx(max(r["score"] for r in rows))
