"""loop="compiled": whole epochs as one JAX program (harness.train.epochs). The tests run on
JAX in a child process (the suite's own Keras runs on TensorFlow)."""

import json
import os
import subprocess
import sys
import textwrap

import pytest

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
           "too_few": epochs.applies(cfg, x[:60], y[:60], (x, y))}

    def fresh():
        keras.utils.set_random_seed(1)
        model = build_model(cfg, mean, var)
        compile_model(model, cfg, 64)
        return model

    # One epoch of one batch (the 64 images in another order: the same mean gradient and
    # batch statistics) against Keras' own step on that batch.
    a, b = fresh(), fresh()
    # 40 validation images: one batch of 64, padded and the padding weighted out
    history = epochs.fit_compiled(a, cfg, x, y, (x[:40], y[:40]), epochs=1)
    logs = b.train_on_batch(x, y, return_dict=True)
    out["weights_diff"] = max(float(np.abs(p - q).max())
                              for p, q in zip(a.get_weights(), b.get_weights()))
    out["loss"] = [history.history["loss"][0], float(logs["loss"])]
    val = b.evaluate(x[:40], y[:40], batch_size=64, return_dict=True, verbose=0)
    out["val"] = [history.history["val_loss"][0], val["loss"],
                  history.history["val_accuracy"][0], val["accuracy"]]
    out["iterations"] = int(a.optimizer.iterations.value)

    # Target probabilities (a teacher's, here one-hot) train as the labels they encode.
    keras.utils.set_random_seed(1)
    e = build_model(cfg, mean, var)
    e.compile(optimizer=a.optimizer.__class__.from_config(b.optimizer.get_config()),
              loss="categorical_crossentropy", metrics=["accuracy"])
    h = epochs.fit_compiled(e, cfg, x, np.eye(10)[y], (x[:40], np.eye(10)[y[:40]]), epochs=1)
    out["soft"] = [h.history["loss"][0], out["loss"][1]]

    # Callbacks see each epoch and can stop the run; a NaN loss stops it too.
    c = fresh()
    class Stop(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            self.model.stop_training = epoch == 1
            out.setdefault("seen", []).append(sorted(logs))

    h = epochs.fit_compiled(c, cfg, x, y, (x, y), epochs=5, callbacks=[Stop()])
    out["stopped_after"] = len(h.history["loss"])
    # The rate logged is the optimizer's after the epoch: a schedule's, and a plateau's.
    out["rate"] = [h.history["learning_rate"][-1], float(np.asarray(c.optimizer.learning_rate))]
    flat = resolve("bn-elu-fast", overrides={**{k: getattr(cfg, k) for k in
                   ("layers", "units", "batch_size", "loop")}, "schedule": "plateau"})
    f = build_model(flat, mean, var)
    compile_model(f, flat, 64)
    f.optimizer.learning_rate.assign(0.003)
    out["flat_rate"] = epochs.fit_compiled(f, flat, x, y, (x, y), epochs=1).history["learning_rate"]
    bad = resolve("bn-elu-fast", overrides={**{k: getattr(cfg, k) for k in
                  ("layers", "units", "batch_size", "loop")}, "l2": 1e38})
    d = build_model(bad, mean, var)
    compile_model(d, bad, 64)
    h = epochs.fit_compiled(d, bad, x, y, (x, y), epochs=5)
    out["nan_epochs"] = len(h.history["loss"])

    # `harness train` and `harness tune` with --loop compiled, on the synthetic archive
    # (450 training and 50 validation images; batch 64 leaves 2 out each epoch, pads 14).
    from click.testing import CliRunner
    from harness.cli import main
    archive, results = sys.argv[1:3]
    base = ["--archive", archive, "--home", results + "/home", "--results", results]
    small = ["--preset", "bn-elu-fast", "--batch-size", "64", "--loop", "compiled"]
    for args in (["train", *small, "--layers", "1", "--units", "8", "--epochs", "3",
                  "--name", "c"],
                 ["tune", *small, "--max-trials", "2", "--epochs", "2", "--name", "s"]):
        done = CliRunner().invoke(main, [*base, *args])
        out.setdefault("cli", []).append([done.exit_code, done.output[-2000:]])
    print(json.dumps(out))
    """
)


@pytest.fixture(scope="module")
def child(tmp_path_factory, archive):
    """The checks above and two commands, run once on JAX in a child process."""
    results = tmp_path_factory.mktemp("results")
    done = subprocess.run(
        [sys.executable, "-c", CHILD, str(archive), str(results)],
        env={**os.environ, "KERAS_BACKEND": "jax", "HARNESS_HOME": str(results / "home")},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1]), results


def test_the_arrays_copied_to_the_device_are_kept_while_they_live():
    """Trials on the same arrays share one device copy; other arrays, or another batch
    size, get their own; the copy goes when its arrays do."""
    import gc

    import numpy as np

    from harness.train import epochs

    rng = np.random.default_rng(0)
    x, y = rng.integers(0, 256, (20, 4), dtype=np.uint8), np.arange(20) % 10
    xv, yv = x[:6].copy(), y[:6].copy()
    first = epochs._on_device(x, y, xv, yv, 4)
    assert epochs._on_device(x, y, xv, yv, 4) is first
    np.testing.assert_array_equal(np.asarray(first[0]), x)
    assert np.asarray(first[2]).shape == (2, 4, 4)  # 6 images padded to two batches of 4
    assert epochs._on_device(x, y, xv, yv, 3) is not first
    again = epochs._on_device(x.copy(), y, xv, yv, 3)
    assert again is not first and epochs._on_device(x, y, xv, yv, 3) is not again
    del x
    gc.collect()
    assert "last" not in epochs._COPIES


def test_a_compiled_epoch_is_keras_own_step(child):
    out, _ = child
    assert out["applies"] and not out["too_few"]  # fewer images than one batch
    assert out["iterations"] == 1
    # Adam-like first steps move each weight by about the learning rate (1e-2) whatever the
    # gradient's size, so float32 sums in another order show up at 1e-4: far below a step.
    assert out["weights_diff"] < 1e-3, out
    loss, keras_loss = out["loss"]
    assert abs(loss - keras_loss) < 1e-4 * max(1, abs(keras_loss)), out
    val_loss, keras_val_loss, val_acc, keras_val_acc = out["val"]
    assert abs(val_loss - keras_val_loss) < 1e-4 * max(1, keras_val_loss), out
    assert abs(val_acc - keras_val_acc) < 1e-6, out
    soft_loss, hard_loss = out["soft"]
    assert abs(soft_loss - hard_loss) < 1e-4 * max(1, hard_loss), out
    assert out["stopped_after"] == 2  # a callback stopped it after its second epoch
    assert out["seen"] == [["accuracy", "learning_rate", "loss", "val_accuracy", "val_loss"]] * 2
    logged, after = out["rate"]
    # the rate after two epochs of a cosine schedule: not its peak
    assert logged == pytest.approx(after, rel=1e-6) and logged != pytest.approx(1e-2)
    assert out["flat_rate"] == [pytest.approx(0.003)]
    assert out["nan_epochs"] == 1  # a NaN loss ends the run after its epoch


def test_train_and_tune_run_compiled_epochs(child):
    """`harness train` and `harness tune` with --loop compiled: every epoch in the history,
    the run and the search complete."""
    out, results = child
    for code, output in out["cli"]:
        assert code == 0, output
    metrics = RunDir.named(results, "c").read_metrics()
    assert metrics["status"] == "completed" and metrics["epochs_run"] == 3
    assert resolve("bn-elu-fast", overrides={"loop": "compiled"}).loop == "compiled"
    summary = json.loads((results / "tuning" / "s" / "summary.json").read_text())
    assert summary["completed"] == 2 and summary["best_val_accuracy"] > 0
