"""harness' own Keras classes (harness.train.layers, harness.train.callbacks): saved models
load back into them, under the registered names older run directories carry, and the commands that
need no Keras never import it."""

import json
import os
import subprocess
import sys
import zipfile

import numpy as np
import pytest

from harness.core.config import resolve

HEAVY = ("keras", "tensorflow", "jax")
CHECK = f"heavy = [m for m in {HEAVY!r} if m in sys.modules]; assert not heavy, heavy"


@pytest.mark.parametrize(
    "name,code",
    [
        ("--help", "from harness.cli import main; main(['--help'], standalone_mode=False)"),
        (
            "data info",
            "from harness.cli import main; main(['data', 'info'], standalone_mode=False)",
        ),
        # predict imports harness.export.runtimes inside the command, on top of cli's own imports
        ("predict", "import harness.cli, harness.export.runtimes"),
        # prune-units imports harness.train.sparsity before it points Keras at the run's backend
        (
            "library",
            "import harness.train.models, harness.train.fit, harness.train.sparsity, "
            "harness.export.convert, "
            "harness.export.bench, harness.search.tune",
        ),
    ],
)
def test_commands_without_a_model_import_no_deep_learning_library(archive, name, code):
    done = subprocess.run(
        [sys.executable, "-c", f"import sys; {code}; {CHECK}"],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "HARNESS_ARCHIVE": str(archive)},
    )
    assert done.returncode == 0, f"{name}: {done.stderr[-2000:]}"


def _tiny_tta_model():
    from harness.train.models import build_model

    cfg = resolve(
        "mlp-frontier",
        overrides=dict(
            layers=1,
            units=16,
            pca=0,
            tta="flip",
            augment="flip-shift",
            zoom=0.1,
            label_smoothing=0.1,
            mixup=0.0,
            backend=None,
        ),
    )
    model = build_model(
        cfg, mean=np.array([125.0, 122.0, 113.0]), variance=np.array([3900.0, 3800.0, 4400.0])
    )
    return cfg, model


def _as_written_before(path, target):
    """The .keras file as harness wrote it when its classes lived in harness.train.models."""
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(target, "w") as dst:
        for item in src.infolist():
            data = src.read(item.filename)
            if item.filename == "config.json":
                data = data.replace(
                    b'"module": "harness.train.layers"', b'"module": "harness.train.models"'
                )
                assert b"harness.train.models" in data
            dst.writestr(item, data)
    return target


@pytest.mark.filterwarnings("ignore:Skipping variable loading for optimizer")
def test_a_saved_model_loads_back_into_harness_classes(tmp_path):
    import keras

    from harness.export.convert import fold_input_affine
    from harness.train.fit import save_model
    from harness.train.layers import (
        CUSTOM_OBJECTS,
        FlipPair,
        PairMean,
        RandomFlipShift,
        RowMajorDense,
        SmoothedSparseCrossentropy,
    )
    from harness.train.models import load_keras_model, loss_for

    for name, cls in CUSTOM_OBJECTS.items():  # the names saved model.keras files carry
        assert keras.saving.get_registered_name(cls) == f"harness>{name}"
    cfg, model = _tiny_tta_model()
    model.compile(optimizer="nadam", loss=loss_for(cfg))
    pixels = np.random.default_rng(1).integers(0, 256, (6, 32, 32, 3)).astype(np.float32)
    expected = np.asarray(model(pixels, training=False))
    save_model(model, tmp_path / "model.keras")
    config = json.loads(zipfile.ZipFile(tmp_path / "model.keras").read("config.json"))
    assert config["config"]["layers"][1]["registered_name"] == "harness>FlipPair"

    for path in (
        tmp_path / "model.keras",
        _as_written_before(tmp_path / "model.keras", tmp_path / "old.keras"),
    ):
        loaded = load_keras_model(path)
        assert isinstance(loaded.layers[0], FlipPair) and isinstance(loaded.layers[-1], PairMean)
        assert isinstance(loaded.get_layer("augment"), RandomFlipShift)
        assert loaded.get_layer("augment").zoom == pytest.approx(0.1)
        assert isinstance(loaded.loss, SmoothedSparseCrossentropy)
        dense = [layer for layer in loaded.layers if isinstance(layer, keras.layers.Dense)]
        assert [type(layer) for layer in dense] == [RowMajorDense, keras.layers.Dense]
        np.testing.assert_allclose(np.asarray(loaded(pixels, training=False)), expected, atol=1e-6)
        # export recognises the loaded flips by class: they stay in front of the folded Dense
        lean = fold_input_affine(loaded)
        assert lean is not loaded and isinstance(lean.layers[1], FlipPair)
        np.testing.assert_allclose(np.asarray(lean(pixels)), expected, atol=2e-5)


ROW_MAJOR_CHECK = """
import json, jax, numpy as np, keras
from harness.train.layers import RowMajorDense, _row_major_backward
assert _row_major_backward()
rng = np.random.default_rng(0)
x = rng.normal(size=(64, 48)).astype(np.float32)
g = rng.normal(size=(64, 5)).astype(np.float32)
for products in ("float32", "bfloat16"):
    for activation in (None, "elu"):
        ours = RowMajorDense(5, activation=activation, products=products)
        theirs = keras.layers.Dense(5, activation=activation)
        ours.build((None, 48)), theirs.build((None, 48))
        theirs.set_weights(ours.get_weights())
        def loss(layer, params, x):
            out, _ = layer.stateless_call(params, [], x, training=True)
            return (out * g).sum()
        for layer in (ours, theirs):
            params = [v.value for v in layer.trainable_variables]
            step = jax.value_and_grad(lambda p, x: loss(layer, p, x), argnums=(0, 1))
            value, grads = jax.jit(step)(params, x)
            kernel, bias = (np.asarray(a).tolist() for a in grads[0])
            program = str(jax.make_jaxpr(step)(params, x))
            inference = np.asarray(layer(x, training=False))
            # bfloat16 rounds each operand by at most 2^-9 of itself, so a sum of products
            # moves by at most 2^-8 of the sum of their magnitudes: the outputs by d, and
            # through ELU's slope (which changes by at most the change of its input) the
            # gradients by what d moves them; twice these bounds are asserted
            a, w = np.abs(x), np.abs(np.asarray(layer.kernel))
            d = a @ w * 2**-8
            gd = np.abs(g) * d
            bounds = {"loss": 2 * float(gd.sum()), "bias": (2 * gd.sum(0)).tolist(),
                      "kernel": (2 * (a.T @ np.abs(g) * 2**-8 + a.T @ gd)).tolist(),
                      "input": (2 * (np.abs(g) @ w.T * 2**-8 + gd @ w.T)).tolist()}
            print(json.dumps({"products": products, "loss": float(value), "kernel": kernel,
                              "bounds": bounds,
                              "bias": bias, "input": np.asarray(grads[1]).tolist(),
                              "inference": inference.tolist(),
                              "config": layer.get_config().get("products"),
                              "bfloat16": "bf16" in program,
                              "barriers": "optimization_barrier" in program}))
"""


def test_row_major_dense_has_dense_values_and_gradients_on_jax():
    """RowMajorDense rewrites its products for XLA's CPU kernels: the loss and the gradients
    (kernel, bias, input) must be Dense's, with and without an activation; with bfloat16
    products, to bfloat16's precision, and its inference stays float32 (Dense's exactly)."""
    env = {**os.environ, "KERAS_BACKEND": "jax"}
    done = subprocess.run(
        [sys.executable, "-c", ROW_MAJOR_CHECK],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in done.stdout.strip().splitlines()]
    assert len(lines) == 8
    for ours, theirs in zip(lines[0::2], lines[1::2]):
        low = ours["products"] == "bfloat16"
        assert ours["config"] == ours["products"] and theirs["config"] is None
        assert not theirs["bfloat16"] and not theirs["barriers"]
        # our backward pass did run: barriers in float32, bfloat16 operands in bfloat16
        assert ours["bfloat16"] if low else ours["barriers"]
        bounds = ours["bounds"]
        if low:
            assert abs(ours["loss"] - theirs["loss"]) <= bounds["loss"]
        else:
            assert ours["loss"] == pytest.approx(theirs["loss"], rel=1e-5)
        np.testing.assert_allclose(ours["inference"], theirs["inference"], rtol=1e-5, atol=1e-6)
        for part, shape in (("kernel", (48, 5)), ("bias", (5,)), ("input", (64, 48))):
            a, b = np.array(ours[part]), np.array(theirs[part])
            assert a.shape == b.shape == shape and np.abs(b).max() > 0
            if low:
                assert (np.abs(a - b) <= np.array(bounds[part]) + 1e-6).all(), part
            else:
                np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
        if low:  # rounded, so not exactly Dense's
            assert not np.array_equal(np.array(ours["kernel"]), np.array(theirs["kernel"]))


def test_mixup_batches_are_the_same_from_labels_or_one_hot_targets():
    from harness.train.targets import mixup_batches, one_hot

    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (40, 4, 4, 3), dtype=np.uint8)
    y = rng.integers(0, 10, 40)
    labels, targets = (mixup_batches(x, t, 16, 0.4, seed=2, workers=1) for t in (y, one_hot(y)))
    assert len(labels) == 3
    for i in range(len(labels)):
        for a, b in zip(labels[i], targets[i]):
            np.testing.assert_array_equal(a, b)
