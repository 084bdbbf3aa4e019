"""loop="compiled": whole epochs as one JAX program (harness.train.epochs). The tests run on
JAX in a child process (the suite's own Keras runs on TensorFlow)."""

import json
import os
import subprocess
import sys
import textwrap

from harness.core.config import resolve
from harness.core.records import RunDir

CHILD = textwrap.dedent(
    """
    import json, sys
    import numpy as np
    import keras
    from harness.core.config import resolve
    from harness.train import epochs
    from harness.train.fit import compile_model
    from harness.train.models import build_model

    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (64, 32, 32, 3), dtype=np.uint8)
    y = (np.arange(64) % 10).astype(np.int64)
    cfg = resolve("bn-elu-fast", overrides={"layers": 2, "units": 16, "batch_size": 64,
                                            "epochs": 2, "loop": "compiled", "l2": 1e-3})
    mean, var = x.reshape(-1, 3).mean(0), x.reshape(-1, 3).var(0) + 1
    out = {"applies": epochs.applies(cfg, x, y, (x, y)),
           "uneven": epochs.applies(cfg, x[:60], y[:60], (x, y))}

    def fresh():
        keras.utils.set_random_seed(1)
        model = build_model(cfg, mean, var)
        compile_model(model, cfg, 64)
        return model

    # One epoch of one batch (the 64 images in another order: the same mean gradient and
    # batch statistics) against Keras' own step on that batch.
    a, b = fresh(), fresh()
    history = epochs.fit_compiled(a, cfg, x, y, (x, y), epochs=1)
    logs = b.train_on_batch(x, y, return_dict=True)
    out["weights_diff"] = max(float(np.abs(p - q).max())
                              for p, q in zip(a.get_weights(), b.get_weights()))
    out["loss"] = [history.history["loss"][0], float(logs["loss"])]
    val = b.evaluate(x, y, batch_size=64, return_dict=True, verbose=0)
    out["val"] = [history.history["val_loss"][0], val["loss"],
                  history.history["val_accuracy"][0], val["accuracy"]]
    out["iterations"] = int(a.optimizer.iterations.value)

    # Callbacks see each epoch and can stop the run; a NaN loss stops it too.
    c = fresh()
    class Stop(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            self.model.stop_training = epoch == 1
            out.setdefault("seen", []).append(sorted(logs))

    h = epochs.fit_compiled(c, cfg, x, y, (x, y), epochs=5, callbacks=[Stop()])
    out["stopped_after"] = len(h.history["loss"])
    bad = resolve("bn-elu-fast", overrides={**{k: getattr(cfg, k) for k in
                  ("layers", "units", "batch_size", "loop")}, "l2": 1e38})
    d = build_model(bad, mean, var)
    compile_model(d, bad, 64)
    h = epochs.fit_compiled(d, bad, x, y, (x, y), epochs=5)
    out["nan_epochs"] = len(h.history["loss"])
    print(json.dumps(out))
    """
)


def _jax_env():
    return {**os.environ, "KERAS_BACKEND": "jax"}


def test_a_compiled_epoch_is_keras_own_step():
    done = subprocess.run(
        [sys.executable, "-c", CHILD], env=_jax_env(), capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["applies"] and not out["uneven"]
    assert out["iterations"] == 1
    # Adam-like first steps move each weight by about the learning rate (1e-2) whatever the
    # gradient's size, so float32 sums in another order show up at 1e-4: far below a step.
    assert out["weights_diff"] < 1e-3, out
    loss, keras_loss = out["loss"]
    assert abs(loss - keras_loss) < 1e-4 * max(1, abs(keras_loss)), out
    val_loss, keras_val_loss, val_acc, keras_val_acc = out["val"]
    assert abs(val_loss - keras_val_loss) < 1e-4 * max(1, keras_val_loss), out
    assert abs(val_acc - keras_val_acc) < 1e-6, out
    assert out["stopped_after"] == 2  # a callback stopped it after its second epoch
    assert out["seen"] == [["accuracy", "loss", "val_accuracy", "val_loss"]] * 2
    assert out["nan_epochs"] == 1  # a NaN loss ends the run after its epoch


def test_train_and_tune_run_compiled_epochs(tmp_path, archive):
    """`harness train` and `harness tune` with --loop compiled: every epoch in the history,
    the run and the search complete (450 training and 50 validation images: batch 50)."""
    results = tmp_path / "results"
    base = [sys.executable, "-m", "harness.cli", "--archive", str(archive)]
    base += ["--results", str(results)]
    small = ["--preset", "bn-elu-fast", "--batch-size", "50", "--loop", "compiled"]
    train = [*base, "train", *small, "--layers", "1", "--units", "8", "--epochs", "3"]
    done = subprocess.run(
        [*train, "--name", "c"], env=_jax_env(), capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    metrics = RunDir.named(results, "c").read_metrics()
    assert metrics["status"] == "completed" and metrics["epochs_run"] == 3
    assert resolve("bn-elu-fast", overrides={"loop": "compiled"}).loop == "compiled"
    tune = [*base, "tune", *small, "--max-trials", "2", "--epochs", "2", "--name", "s"]
    done = subprocess.run(tune, env=_jax_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads((results / "tuning" / "s" / "summary.json").read_text())
    assert summary["completed"] == 2 and summary["best_val_accuracy"] > 0
