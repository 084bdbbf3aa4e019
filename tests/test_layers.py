"""harness' own Keras classes (harness.layers, harness.callbacks): saved models load back
into them, under the registered names older run directories carry, and the commands that
need no Keras never import it."""

import json
import os
import subprocess
import sys
import zipfile

import numpy as np
import pytest

from harness.config import resolve

HEAVY = ("keras", "tensorflow", "jax")
CHECK = f"heavy = [m for m in {HEAVY!r} if m in sys.modules]; assert not heavy, heavy"


@pytest.mark.parametrize("name,code", [
    ("--help", "from harness.cli import main; main(['--help'], standalone_mode=False)"),
    ("data info", "from harness.cli import main; main(['data', 'info'], standalone_mode=False)"),
    # predict imports harness.runtimes inside the command, on top of cli's own imports
    ("predict", "import harness.cli, harness.runtimes"),
    # prune-units imports harness.sparsity before it points Keras at the run's backend
    ("library", "import harness.models, harness.train, harness.sparsity, harness.export, "
                "harness.bench, harness.tune"),
])
def test_commands_without_a_model_import_no_deep_learning_library(archive, name, code):
    done = subprocess.run([sys.executable, "-c", f"import sys; {code}; {CHECK}"],
                          capture_output=True, text=True, check=False,
                          env={**os.environ, "HARNESS_ARCHIVE": str(archive)})
    assert done.returncode == 0, f"{name}: {done.stderr[-2000:]}"


def _tiny_tta_model():
    from harness.models import build_model

    cfg = resolve("mlp-frontier", overrides=dict(layers=1, units=16, pca=8, tta="flip",
                                                 augment="flip-shift", zoom=0.1,
                                                 label_smoothing=0.1, mixup=0.0, backend=None))
    rng = np.random.default_rng(0)
    model = build_model(cfg, mean=np.array([125.0, 122.0, 113.0]),
                        variance=np.array([3900.0, 3800.0, 4400.0]),
                        components=rng.normal(size=(3072, 8)) / 50)
    return cfg, model


def _as_written_before(path, target):
    """The .keras file as harness wrote it when its classes lived in harness.models."""
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(target, "w") as dst:
        for item in src.infolist():
            data = src.read(item.filename)
            if item.filename == "config.json":
                data = data.replace(b'"module": "harness.layers"', b'"module": "harness.models"')
                assert b"harness.models" in data
            dst.writestr(item, data)
    return target


@pytest.mark.filterwarnings("ignore:Skipping variable loading for optimizer")
def test_a_saved_model_loads_back_into_harness_classes(tmp_path):
    import keras

    from harness.export import fold_input_affine
    from harness.layers import (CUSTOM_OBJECTS, FlipPair, PairMean, RandomFlipShift,
                                SmoothedSparseCrossentropy)
    from harness.models import load_keras_model, loss_for
    from harness.train import save_model

    for name, cls in CUSTOM_OBJECTS.items():  # the names saved model.keras files carry
        assert keras.saving.get_registered_name(cls) == f"harness>{name}"
    cfg, model = _tiny_tta_model()
    model.compile(optimizer="nadam", loss=loss_for(cfg))
    pixels = np.random.default_rng(1).integers(0, 256, (6, 32, 32, 3)).astype(np.float32)
    expected = np.asarray(model(pixels, training=False))
    save_model(model, tmp_path / "model.keras")
    config = json.loads(zipfile.ZipFile(tmp_path / "model.keras").read("config.json"))
    assert config["config"]["layers"][1]["registered_name"] == "harness>FlipPair"

    for path in (tmp_path / "model.keras",
                 _as_written_before(tmp_path / "model.keras", tmp_path / "old.keras")):
        loaded = load_keras_model(path)
        assert isinstance(loaded.layers[0], FlipPair) and isinstance(loaded.layers[-1], PairMean)
        assert isinstance(loaded.get_layer("augment"), RandomFlipShift)
        assert loaded.get_layer("augment").zoom == pytest.approx(0.1)
        assert isinstance(loaded.loss, SmoothedSparseCrossentropy)
        np.testing.assert_allclose(np.asarray(loaded(pixels, training=False)), expected,
                                   atol=1e-6)
        # export recognises the loaded flips by class: they stay in front of the folded Dense
        lean = fold_input_affine(loaded)
        assert lean is not loaded and isinstance(lean.layers[1], FlipPair)
        np.testing.assert_allclose(np.asarray(lean(pixels)), expected, atol=2e-5)


def test_mixup_batches_are_the_same_from_labels_or_one_hot_targets():
    from harness.train import mixup_batches, one_hot

    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (40, 4, 4, 3), dtype=np.uint8)
    y = rng.integers(0, 10, 40)
    labels, targets = (mixup_batches(x, t, 16, 0.4, seed=2, workers=1) for t in (y, one_hot(y)))
    assert len(labels) == 3
    for i in range(len(labels)):
        for a, b in zip(labels[i], targets[i]):
            np.testing.assert_array_equal(a, b)
