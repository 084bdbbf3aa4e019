"""Exports of a run's model: SavedModel, ONNX, TFLite (float32, float16, dynamic, int8).

Every export is verified as it is written, through its own runtime (:mod:`harness.export.runtimes`):
the largest absolute difference of its outputs from the Keras model's on 256 test images,
and its accuracy on the whole test set, scored by the same :func:`harness.train.evaluate.score`
as every other result. A float export that loses more than 0.1 point of test accuracy, or
an int8 one that loses more than 1 point, is flagged.

Files go to ``<run>/exports/``: ``model.onnx``, ``model_<quantization>.tflite``,
``saved_model/``, each (but the SavedModel) with a ``.json`` record beside it.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import numpy as np

from harness.core.precisions import NAMES, PRECISIONS
from harness.core.records import RunDir, atomic_write_bytes, atomic_write_json
from harness.data import cifar as data_mod
from harness.edge.predict import sha256
from harness.export.runtimes import without_info_lines
from harness.train.evaluate import evaluate_keras, predict_keras, score
from harness.train.models import load_keras_model

FORMATS = ("onnx", "tflite", "saved_model")
QUANTIZATIONS = NAMES  # harness.core.precisions
PROBE_IMAGES = 256
MAX_DROP_POINTS = {name: p.max_drop_points for name, p in PRECISIONS.items()}
REPRESENTATIVE_IMAGES = 500  # from the training split, for int8 calibration


def export_saved_model(model, target: Path) -> Path:
    """``model.export`` into a temporary folder, then renamed into place."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=".saved_model."))
    try:
        model.export(str(tmp / "m"), format="tf_saved_model", verbose=False)
        shutil.rmtree(target, ignore_errors=True)
        (tmp / "m").replace(target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def export_onnx(model, target: Path) -> Path:
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        path = Path(tmp) / "model.onnx"
        model.export(str(path), format="onnx", verbose=False)
        path.replace(target)
    return target


def tflite_bytes(
    saved_model: Path, quantization: str, representative: np.ndarray, int8_input: str = "int8"
) -> bytes:
    """The TFLite file of ``saved_model`` at ``quantization``. An int8 file takes
    ``int8_input`` pixels: int8 (the default, below) or uint8 (the raw bytes, as int8 files
    made before 2026-11-30 did; ``benchmarks/int8_input.py`` times both)."""
    import tensorflow as tf

    recipe = PRECISIONS[quantization]
    converter = tf.lite.TFLiteConverter.from_saved_model(str(saved_model))
    if recipe.optimize:
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if recipe.weight_types:
        converter.target_spec.supported_types = [getattr(tf, t) for t in recipe.weight_types]
    if recipe.calibrated_ops:
        converter.representative_dataset = lambda: (
            [representative[i : i + 1].astype(np.float32)] for i in range(len(representative))
        )
        converter.target_spec.supported_ops = [getattr(tf.lite.OpsSet, recipe.calibrated_ops)]
    if recipe.integer_input:
        # Full-integer: int8 pixels in (q = pixel - 128: scale 1, zero point -128, from the
        # 0-255 calibration images), float probabilities out. Not uint8: LiteRT's XNNPACK
        # delegate does not take a uint8-to-int8 QUANTIZE, so that op would run on its own
        # in LiteRT's reference kernel before the delegated graph, at every call.
        converter.inference_input_type = {"int8": tf.int8, "uint8": tf.uint8}[int8_input]
        converter.inference_output_type = tf.float32
    # The converter's C++ prints its settings ("fully_quantize: 0, inference_type: 6, ...")
    # on fd 2 for every full-integer file: not for the user.
    with without_info_lines(("fully_quantize:", "INFO: ")):
        try:
            return converter.convert()
        except Exception as e:  # the converter's own errors (an op it cannot quantize, ...)
            words = " ".join(str(e).split("\n")[-1].split()) or type(e).__name__
            raise ExportError(f"the TFLite converter cannot make a {quantization} file: {words}")


def verify(
    path: Path,
    quantization: str,
    reference_probe: np.ndarray,
    keras_test: dict,
    splits: data_mod.Splits,
) -> dict:
    """Check an exported file against the Keras model's outputs and test accuracy."""
    from harness.export.runtimes import load, predict_batched

    runtime = load(path)
    probe = splits.test.x[: len(reference_probe)]
    diff = float(np.abs(predict_batched(runtime, probe) - reference_probe).max())
    test = score(predict_batched(runtime, splits.test.x), splits.test.y)
    # rounded before the comparison: 100 * (1.0 - 0.99) is 1.0000000000000009, not 1
    drop = round(100 * (keras_test["accuracy"] - test["accuracy"]), 4)
    return {
        "runtime": runtime.name,
        "max_abs_diff": diff,
        "test": test,
        "keras_test": keras_test,
        "accuracy_drop_points": drop,
        "flagged": bool(drop > MAX_DROP_POINTS[quantization]),
    }


def exportable(model):
    """The inference graph that is exported for ``model``: the same function, leaner.

    - Exact GELU is written as 0.5 x (1 + erf(x / sqrt 2)). Keras' TensorFlow GELU computes
      the same function through erfc, which neither tf2onnx nor TFLite's builtin ops
      support; erf is supported by both.
    - For the fully connected nets (:func:`fold_input_affine`), the standardization (and the
      input BatchNormalization) is folded into the first Dense layer (and, when that layer is
      linear, the BatchNormalization after it), the flattening becomes
      one constant-shape reshape, and dropout and augmentation (identities at inference)
      are left out.

    Verification still compares the exported file against the model as trained."""
    import keras
    from keras import ops

    def gelu_erf(x):
        return 0.5 * x * (1.0 + ops.erf(x / np.sqrt(2.0).astype("float32")))

    for layer in model.layers:
        if getattr(layer, "activation", None) is keras.activations.gelu:
            layer.activation = gelu_erf
    return fold_input_affine(model)


def foldable_prefix() -> tuple[type, ...]:
    """The layer classes that may come before the first Dense of a foldable net: each maps
    every input feature on its own, affinely, at inference (or moves features, as Flatten
    does; augmentation is the identity there). Classes, for isinstance; a function, so
    importing this module does not import Keras."""
    import keras

    from harness.train.layers import RandomFlipShift

    return (
        keras.layers.InputLayer,
        keras.layers.BatchNormalization,
        keras.layers.Flatten,
        keras.layers.Dropout,
        RandomFlipShift,
        keras.layers.AveragePooling2D,
    )


def fold_input_affine(model):
    """``model`` with everything before its first Dense folded into that Dense.

    In the fully connected nets the first Dense sees ``a * x + b`` per input feature: the
    standardization, then (BatchNorm nets) an input BatchNormalization, both frozen at
    inference. So ``Dense(a * x + b) = x @ (a[:, None] * W) + (b @ W + bias)``: one matrix
    product on the raw pixels. This removes, per call, two elementwise passes over the 3,072
    inputs and the dynamic-shape ops that ``Flatten`` becomes in TFLite (SHAPE,
    STRIDED_SLICE, PACK), which also split the XNNPACK delegate in two. ``a`` and ``b`` are
    read off the prefix itself, at x = 0 and x = 255, so any such prefix folds exactly (up to
    float rounding). A linear first Dense also absorbs a BatchNormalization right after it.
    Later Dropout layers are dropped. Test-time flips (a first FlipPair) stay in front of
    the folded Dense when the prefix is the same for a mirrored image (per-channel, as the
    standardization is); otherwise, and for a model of another shape (the CNN), the model
    is returned as it is. An input pooling (AveragePooling2D, ``pool`` > 1) stays in front
    of the folded Dense too, as a fixed convolution computing the same means: it commutes
    with the per-channel standardization before it, so ``a`` and ``b`` are per pooled
    feature and the Dense keeps its smaller kernel.
    """
    import keras
    from keras import ops

    from harness.train.layers import FlatPixels, FlipPair

    layers = list(model.layers)
    # Test-time flips (FlipPair) come first; per-channel standardization commutes with them,
    # so they stay in front of the folded Dense (checked below).
    flip = layers[0] if layers and isinstance(layers[0], FlipPair) else None
    layers = layers[1:] if flip is not None else layers
    first = next(
        (i for i, layer in enumerate(layers) if isinstance(layer, keras.layers.Dense)), None
    )
    prefix = foldable_prefix()
    if (
        first is None
        or not isinstance(model, keras.Sequential)
        or not all(isinstance(layer, prefix) for layer in layers[:first])
    ):
        return model

    def affine(stack, shape) -> tuple[np.ndarray, np.ndarray]:
        """(a, b) with stack(x) = a * x + b per feature at inference, read off at x = 0
        and x = 255."""

        def at(value: float) -> np.ndarray:
            h = ops.convert_to_tensor(np.full((1, *shape), value, np.float32))
            for layer in stack:
                h = layer(h, training=False)
            return ops.convert_to_numpy(h)[0].astype(np.float64)

        b = at(0.0)
        return (at(255.0) - b) / 255.0, b

    pools = [layer for layer in layers[:first] if isinstance(layer, keras.layers.AveragePooling2D)]
    pool = pools[0] if pools else None
    if len(pools) > 1 or (
        pool is not None and (pool.padding != "valid" or pool.strides != pool.pool_size)
    ):
        return model
    a, b = affine(layers[:first], model.input_shape[1:])
    if flip is not None:
        shape = pool.output.shape[1:] if pool is not None else model.input_shape[1:]
        mirrored = [v.reshape(shape)[:, ::-1].ravel() for v in (a, b)]
        if not all(np.allclose(v, m) for v, m in zip((a, b), mirrored)):
            return model  # a per-pixel (not per-channel) affine would not commute with flips
    dense = layers[first]
    kernel = np.asarray(dense.kernel, np.float64)
    bias = np.asarray(dense.bias, np.float64) if dense.use_bias else np.zeros(dense.units)

    kernel, bias = a[:, None] * kernel, bias + b @ kernel
    rest = layers[first + 1 :]
    if (
        dense.activation is keras.activations.linear
        and rest
        and isinstance(rest[0], keras.layers.BatchNormalization)
    ):
        # A linear first Dense (the PCA projection, the bottleneck, a BN net's first
        # layer) also absorbs the BatchNormalization after it: per output, y * s + t. Its
        # outputs then come out standardized, which is what int8 quantizes well.
        s, t = affine(rest[:1], (dense.units,))
        kernel, bias, rest = kernel * s, bias * s + t, rest[1:]
    inputs = keras.Input(model.input_shape[1:], name="pixels")
    folded = keras.layers.Dense(dense.units, activation=dense.activation, name=dense.name)
    h = inputs if flip is None else FlipPair(name=flip.name)(inputs)
    if pool is not None:
        # The same block means as a fixed convolution: LiteRT's int8 AVERAGE_POOL_2D kernel
        # is far slower than its CONV_2D at batch 1 (docs/tuning.md), and TFLM has both.
        channels, size = model.input_shape[-1], tuple(pool.pool_size)
        means = keras.layers.Conv2D(channels, size, strides=size, use_bias=False, name=pool.name)
        h = means(h)
        means.set_weights(
            [
                np.einsum("ij,cd->ijcd", np.ones(size), np.eye(channels)).astype(np.float32)
                / np.prod(size)
            ]
        )
    h = folded(FlatPixels(name="flatten")(h))
    folded.set_weights([kernel.astype(np.float32), bias.astype(np.float32)])
    for layer in rest:
        if not isinstance(layer, keras.layers.Dropout):
            h = layer(h)
    lean = keras.Model(inputs, h, name=model.name)
    lean(np.zeros((1, *model.input_shape[1:]), np.float32))  # Keras' exporters want it called
    return lean


class ExportError(ValueError):
    """An export cannot be made here; the message says why and what to do."""


def representative_images(splits) -> np.ndarray:
    """The int8 calibration images: a fixed draw of training images (uint8)."""
    pick = np.random.default_rng(0).choice(
        len(splits.train), size=min(REPRESENTATIVE_IMAGES, len(splits.train)), replace=False
    )
    return splits.train.x[pick]


def export_run(
    run: RunDir, ds: data_mod.Dataset, formats=FORMATS, quantizations=QUANTIZATIONS
) -> list[dict]:
    """Write and verify the requested exports of ``run``; return their records."""
    import keras

    if keras.backend.backend() != "tensorflow":
        raise ExportError(
            f"exports are made with TensorFlow's converters (tf2onnx, TFLite), but Keras runs "
            f"on {keras.backend.backend()!r} here: run export/bench with "
            f"KERAS_BACKEND=tensorflow (the default); models trained on any backend load there"
        )
    trained = load_keras_model(run.model)
    splits = data_mod.split(ds)
    reference = predict_keras(trained, splits.test.x[:PROBE_IMAGES])
    keras_test = evaluate_keras(trained, splits.test)
    model = exportable(trained)
    out = run.exports
    records = []

    def record(path: Path, fmt: str, quantization: str) -> dict:
        rec = {
            "run": run.name,
            "format": fmt,
            "quantization": quantization,
            "file": path.name,
            "size_bytes": path.stat().st_size,
            "sha256": sha256(path) if path.is_file() else None,
            "data": ds.record,
            **verify(path, quantization, reference, keras_test, splits),
        }
        atomic_write_json(path.with_suffix(path.suffix + ".json"), rec)
        records.append(rec)
        return rec

    if "saved_model" in formats or "tflite" in formats:
        saved_model = export_saved_model(model, out / "saved_model")
    if "onnx" in formats:
        record(export_onnx(model, out / "model.onnx"), "onnx", "float32")
    if "tflite" in formats:
        representative = representative_images(splits)
        for q in quantizations:
            path = out / f"model_{q}.tflite"
            atomic_write_bytes(path, tflite_bytes(saved_model, q, representative))
            record(path, "tflite", q)
    if "saved_model" not in formats and "tflite" in formats:
        shutil.rmtree(out / "saved_model", ignore_errors=True)
    return records
