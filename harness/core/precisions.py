"""The precisions a model file is exported at, declared once: what each costs and allows.

Every list of precisions in harness (export's ``--quantize``, deploy's, the budget search's
exports, the cost model's bytes per weight, export's accuracy check, the bundle selftest's
tolerance) is read from :data:`PRECISIONS`, so adding one is one entry here. The word in
code is "precision"; on disk, export records keep their key ``quantization``.
"""

from __future__ import annotations

from typing import NamedTuple


class Precision(NamedTuple):
    name: str
    bytes_per_weight: int  # a Dense kernel's weight in the file (biases stay 4 bytes)
    max_drop_points: float  # test accuracy an export may lose against Keras, in points
    selftest_tolerance: float  # largest |p - recorded| a bundle's selftest allows
    why: str  # the tolerance's reason
    # How the TFLite converter makes the file (harness.export.convert reads these): with
    # tf.lite.Optimize.DEFAULT; with these target_spec.supported_types; calibrated on the
    # representative images and held to this tf.lite.OpsSet; integer pixels in (int8).
    optimize: bool = True
    weight_types: tuple[str, ...] = ()
    calibrated_ops: str | None = None
    integer_input: bool = False


PRECISIONS = {
    p.name: p
    for p in (
        Precision(
            "float32",
            4,
            0.1,
            1e-4,
            "float32 throughout; another CPU sums in another order (SIMD width, FMA); 1e-4 "
            "still catches any wrong input handling",
            optimize=False,
        ),
        Precision(
            "float16",
            2,
            0.1,
            2e-3,
            "float16 weights; ARMv8.2+ CPUs may also compute in float16 (XNNPACK), unit "
            "roundoff 4.9e-4, accumulated over the layers",
            weight_types=("float16",),
        ),
        Precision(
            "dynamic",
            1,
            1.0,
            5e-2,
            "activations quantized in each call by the CPU's own kernels, which differ "
            "between x86 and arm64 with dot-product instructions",
        ),
        Precision(
            "int8",
            1,
            1.0,
            3e-2,
            "one output quantization step is 1/256; CPUs may differ by a few",
            calibrated_ops="TFLITE_BUILTINS_INT8",
            integer_input=True,
        ),
    )
}
NAMES = tuple(PRECISIONS)  # in the order exports are made: float32, float16, dynamic, int8
# What a budget search may judge a network on, as <format>-<precision> (int8 first: the
# default); ONNX exports are float32 only.
EXPORTS = (*(f"tflite-{name}" for name in reversed(NAMES)), "onnx-float32")
