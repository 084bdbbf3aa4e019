import csv
import json
import math
import os
import signal
import subprocess
import sys
import time

import keras
import numpy as np
import pytest

from harness.core.config import ConfigError, resolve
from harness.core.records import RunDir
from harness.data import cifar as data
from harness.train.evaluate import score
from harness.train.fit import RunComplete, TrainingFailed, _backup_epoch, evaluate_run, train

SMALL = dict(layers=2, units=32, batch_size=64, epochs=2)


def test_two_epoch_run_writes_a_complete_run_directory(tmp_path, archive):
    ds = data.load(archive)
    cfg = resolve("selu", overrides={**SMALL, "name": "tiny"})
    metrics = train(cfg, ds, tmp_path / "results", verbose=0)
    run = RunDir.named(tmp_path / "results", "tiny")
    assert json.loads(run.config.read_text()) == cfg.to_dict()
    saved = json.loads(run.metrics.read_text())
    assert saved == {**metrics, "schema": 1}
    assert saved["status"] == "completed" and saved["epochs_run"] == 2
    assert 1 <= saved["best_epoch"] <= 2 and saved["wall_time_s"] > 0
    assert saved["seconds_per_epoch"] > 0
    assert saved["data"]["sha256"] == ds.sha256
    assert saved["params"]["trainable"] == 3072 * 32 + 32 + 32 * 32 + 32 + 330
    assert {"keras", "numpy", "python"} <= set(saved["versions"])
    # The synthetic classes are easy to separate: two epochs reach about 0.7 on every split
    # (train 0.68, val 0.72, test 0.69), and a loss well under ln 10, a uniform guess's.
    for split in ("train", "val", "test"):
        assert saved[split]["accuracy"] > 0.5, split
        assert 0 < saved[split]["loss"] < 0.5 * math.log(10), split
    with open(run.history) as f:
        rows = list(csv.DictReader(f))
    assert [int(r["epoch"]) for r in rows] == [0, 1]
    assert {
        "loss",
        "val_loss",
        "accuracy",
        "val_accuracy",
        "epoch_seconds",
        "learning_rate",
    } <= set(rows[0])
    assert any(run.logs.rglob("*.tfevents.*"))
    assert not run.backup.exists()  # cleaned up once the run finished
    # The saved model is the best one and takes raw pixels.
    model = keras.saving.load_model(run.model)
    probs = model.predict(ds.x_test.astype(np.float32), verbose=0)
    assert score(probs, ds.y_test) == pytest.approx(saved["test"])
    assert evaluate_run(run, ds)["test"] == pytest.approx(saved["test"])
    assert run.evaluation.exists()


def test_same_command_twice_does_not_retrain(tmp_path, archive):
    ds = data.load(archive)
    cfg = resolve("selu", overrides={**SMALL, "epochs": 1, "name": "once"})
    train(cfg, ds, tmp_path, verbose=0)
    with pytest.raises(RunComplete):
        train(cfg, ds, tmp_path, verbose=0)
    with pytest.raises(ConfigError, match="other settings"):
        train(resolve("selu", overrides={**SMALL, "units": 8, "name": "once"}), ds, tmp_path)
    again = train(cfg, ds, tmp_path, overwrite=True, verbose=0)
    assert again["status"] == "completed"


def test_nan_stops_a_jax_run_whose_per_batch_callbacks_run_async(tmp_path, archive):
    """On JAX, TerminateOnNaN and TensorBoard are async_safe (they get their logs on a
    worker thread): a NaN loss must still stop the run early and be recorded."""
    results = tmp_path / "results"
    cmd = [
        sys.executable,
        "-c",
        "from harness.cli import main; main()",
        "--archive",
        str(archive),
        "--results",
        str(results),
        "train",
        "--preset",
        "selu-fast",
        "--layers",
        "1",
        "--units",
        "8",
        "--batch-size",
        "64",
        "--epochs",
        "4",
        "--l2",
        "1e38",
        "--name",
        "nan",
    ]
    env = {k: v for k, v in os.environ.items() if k != "KERAS_BACKEND"}
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 1, done.stdout + done.stderr
    metrics = RunDir.named(results, "nan").read_metrics()
    assert metrics["status"] == "failed" and "NaN" in metrics["message"]
    assert metrics["backend"] == "jax"
    rows = list(csv.DictReader(open(RunDir.named(results, "nan").history)))
    assert len(rows) < 4  # stopped, not run to the end


def test_nan_loss_is_recorded_as_failed(tmp_path, archive):
    ds = data.load(archive)
    cfg = resolve("selu", overrides={**SMALL, "l2": 1e38, "name": "nan"})
    with pytest.raises(TrainingFailed, match="NaN"):
        train(cfg, ds, tmp_path, verbose=0)
    metrics = RunDir.named(tmp_path, "nan").read_metrics()
    assert metrics["status"] == "failed" and "NaN" in metrics["message"]


@pytest.mark.slow
def test_run_killed_midway_resumes(tmp_path, harness_command):
    """kill -9 during training, then the same command finishes the run where it stopped."""
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text(
        "preset: selu\nlayers: 2\nunits: 32\nbatch-size: 4\nepochs: 12\n"
        "patience: 50\nname: killed\n"
    )
    cmd = harness_command(tmp_path / "results", "train", "--config", str(cfg_file))
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    run = RunDir.named(tmp_path / "results", "killed")
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        # the backup is throttled (ThrottledBackup): on a loaded machine it can trail the
        # history by epochs, so wait for the backup itself to cover two
        if (
            _backup_epoch(run) >= 2
            and run.history.exists()
            and len(run.history.read_text().splitlines()) >= 4
        ):
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert run.read_metrics()["status"] == "running"

    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "Resuming" in done.stderr
    metrics = run.read_metrics()
    assert metrics["status"] == "completed" and metrics["resumed_from_epoch"] >= 2
    with open(run.history) as f:
        epochs = [int(r["epoch"]) for r in csv.DictReader(f)]
    assert epochs == list(range(12))  # no epoch lost, none repeated
    assert not run.backup.exists()


def test_cosine_schedule_warms_up_then_decays(tmp_path, archive):
    ds = data.load(archive)
    cfg = resolve(
        "selu",
        overrides={
            **SMALL,
            "epochs": 4,
            "schedule": "cosine",
            "warmup_epochs": 1,
            "lr": 1e-3,
            "name": "cos",
        },
    )
    train(cfg, ds, tmp_path, verbose=0)
    with open(RunDir.named(tmp_path, "cos").history) as f:
        lrs = [float(r["learning_rate"]) for r in csv.DictReader(f)]
    # Logged at each epoch's end: the peak after warm-up, then strictly decaying towards 0.
    assert lrs[0] == pytest.approx(1e-3, rel=0.01)
    assert lrs[0] > lrs[1] > lrs[2] > lrs[3] >= 0
    assert lrs[3] < 1e-4


LR_READER_CHECK = """
import numpy as np, keras
from harness.train.callbacks import learning_rate_reader
schedule = keras.optimizers.schedules.CosineDecay(
    initial_learning_rate=1e-3, decay_steps=90, warmup_target=1e-2, warmup_steps=10)
for rate in (schedule, 0.05):
    optimizer = keras.optimizers.Nadam(learning_rate=rate)
    optimizer.build([keras.Variable(np.zeros((2, 2), np.float32))])
    read = learning_rate_reader(optimizer)
    for step in (0, 5, 10, 55, 100):
        optimizer.iterations.assign(step)
        print(keras.backend.backend(), step, read(), float(np.asarray(optimizer.learning_rate)))
"""


@pytest.mark.parametrize("backend", ["jax", "tensorflow"])
def test_the_logged_learning_rate_is_the_optimizers_own(backend):
    """EpochLog reads a schedule through a compiled function on JAX: it must give what the
    optimizer itself reports, step by step (during warm-up, at the peak, decaying)."""
    env = {**os.environ, "KERAS_BACKEND": backend}
    done = subprocess.run(
        [sys.executable, "-c", LR_READER_CHECK],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    rows = [line.split() for line in done.stdout.splitlines()]
    assert len(rows) == 10 and all(row[0] == backend for row in rows)
    values = [(float(ours), float(keras_own)) for _, _, ours, keras_own in rows]
    assert len({keras_own for _, keras_own in values[:5]}) == 5  # the schedule moves
    for ours, keras_own in values:
        assert ours == pytest.approx(keras_own, rel=1e-6)


def test_backend_mismatch_is_a_clear_error(tmp_path, archive):
    other = "jax" if keras.backend.backend() != "jax" else "tensorflow"
    cfg = resolve("selu", overrides={**SMALL, "backend": other, "name": "b"})
    with pytest.raises(ConfigError, match=f"KERAS_BACKEND={other}"):
        train(cfg, data.load(archive), tmp_path, verbose=0)


class _Weights(keras.callbacks.Callback):
    """Records the model's weights after each epoch's last training step (the trained ones)
    and at each epoch's end (what the callbacks before it left in the model); stops the run
    after ``stop_after`` epochs, before the backup of that epoch is written."""

    def __init__(self, stop_after=None):
        super().__init__()
        self.trained, self.at_end, self.first_step, self.stop_after = [], [], None, stop_after

    def on_train_batch_begin(self, batch, logs=None):
        if self.first_step is None:
            self.first_step = [np.array(w) for w in self.model.get_weights()]

    def on_train_batch_end(self, batch, logs=None):
        self.last = [np.array(w) for w in self.model.get_weights()]

    def on_epoch_end(self, epoch, logs=None):
        self.trained.append(self.last)
        self.at_end.append([np.array(w) for w in self.model.get_weights()])
        if self.stop_after is not None and len(self.at_end) == self.stop_after:
            raise KeyboardInterrupt


def _same(a, b) -> bool:
    return all(np.allclose(x, y, atol=1e-7) for x, y in zip(a, b))


def test_ema_validates_checkpoints_and_saves_the_averaged_weights(tmp_path, archive):
    ds = data.load(archive)
    cfg = resolve("selu", overrides={**SMALL, "epochs": 3, "ema": 0.9, "name": "ema"})
    watch = _Weights()
    metrics = train(cfg, ds, tmp_path, verbose=0, extra_callbacks=[watch])
    best = metrics["best_epoch"] - 1
    saved = keras.saving.load_model(RunDir.named(tmp_path, "ema").model).get_weights()
    # at each epoch's end the callbacks see the average, not the trained weights
    assert all(not _same(a, t) for a, t in zip(watch.at_end, watch.trained))
    assert _same(saved, watch.at_end[best])
    # and the validation that picked the best epoch ran on those same weights
    with open(RunDir.named(tmp_path, "ema").history) as f:
        logged = [float(r["val_loss"]) for r in csv.DictReader(f)][best]
    assert metrics["val"]["loss"] == pytest.approx(logged, rel=1e-4)


def test_ema_run_resumes_with_the_trained_weights_in_the_model(tmp_path, archive):
    """A backup holds the average in the model and the trained weights in the optimizer:
    the resumed run must train on from the trained ones."""
    ds = data.load(archive)
    cfg = resolve("selu", overrides={**SMALL, "epochs": 3, "ema": 0.9, "name": "ema"})
    first = _Weights(stop_after=2)  # epoch 1 is backed up, epoch 2 is not
    with pytest.raises(KeyboardInterrupt):
        train(cfg, ds, tmp_path, verbose=0, extra_callbacks=[first])
    again = _Weights()
    metrics = train(cfg, ds, tmp_path, verbose=0, extra_callbacks=[again])
    assert metrics["resumed_from_epoch"] == 1 and metrics["epochs_run"] == 3
    assert _same(again.first_step, first.trained[0])
    assert not _same(again.first_step, first.at_end[0])
