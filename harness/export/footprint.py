"""What a model costs on a microcontroller: flash, RAM, the ops it needs, and its MACs.

- Flash: the .tflite file itself, which a TensorFlow Lite Micro (TFLM) build links in as a
  C array and runs in place.
- RAM: TFLM's tensor arena, measured by TFLM itself. The PyPI package ``tflite-micro``
  wraps the C++ interpreter with its ``RecordingMicroAllocator``; after the tensors are
  allocated, ``print_allocations()`` reports the arena's use, from C++, on file descriptor
  2, so it is read there (:func:`capture_stderr`). The reported total is the smallest arena
  that allocates the model: a bisection over arena sizes found the same figure to the byte
  for a 2 x 32 MLP and for ResNet-8 (the tests check that 16 bytes less fails). It is
  measured on x86-64, where TFLM's bookkeeping structs hold
  8-byte pointers; the activation buffers ("head") are the same on a 32-bit Cortex-M and
  the structs ("tail") smaller, so the figure is an upper bound there.
- Ops: read from the flatbuffer with the schema module that ships with LiteRT
  (``ai_edge_litert.schema_py_generated``), without running anything.
- Which ops TFLM cannot run: TFLM is asked. ``MicroInterpreter`` looks each op up in the
  op resolver of the Python package (``PythonOpsResolver``: every kernel TFLM has) and
  then lets each kernel check its tensors in ``Prepare``; the first failure is printed on
  stderr and ends the allocation. So a model TFLM cannot run is named by the op that
  stops it: one that TFLM lacks (GELU) or one whose kernel refuses the model's types
  (EXP on int8) or shapes (a RESHAPE sized for a dynamic batch).
- MACs: counted on the Keras model (:func:`macs_per_image`).

tflite-micro is an optional dependency (``pip install 'harness[mcu]'``): its wheels exist for
x86-64 Linux only (CPython 3.10-3.13); importing this module does not import it.
"""

from __future__ import annotations

import os
import re
import sys
import tempfile
from contextlib import contextmanager

import numpy as np

CHECK_ARENA_BYTES = 16 << 20  # generous arena for the first allocation; the real need is
# measured (tens of KB for these nets)
MISSING_OP = re.compile(r"Didn't find op for builtin opcode '(\w+)'")
MISSING_CUSTOM = re.compile(r"Failed to get registration from op code (\w+)")
PREPARE_FAILED = re.compile(r"Node (\w+) \(number (\d+)\) failed to prepare")
ARENA_REPORT = re.compile(r"Arena allocation (total|head|tail) (\d+) bytes")
CONVERSIONS = ("QUANTIZE", "DEQUANTIZE")  # change the type of a tensor, compute nothing
KERNELS = ("kernel", "depthwise_kernel", "pointwise_kernel")  # Keras weights that multiply


class TflmError(ValueError):
    """TFLM cannot run a model. ``op`` names the op that stopped it (None when something
    else did, such as too small an arena) and ``reason`` is TFLM's own message."""

    def __init__(self, op: str | None, reason: str):
        self.op, self.reason = op, reason
        where = f"op {op}" if op else "the model"
        super().__init__(f"TensorFlow Lite Micro cannot run {where}: {reason}")


def require_tflm():
    """``tflite_micro.runtime``, or an ImportError that says how to install it."""
    try:
        from tflite_micro import runtime
    except ImportError as e:
        raise ImportError(
            f"TensorFlow Lite Micro is not installed ({e}); pip install "
            "'harness[mcu]' (wheels for x86-64 Linux only)"
        ) from None
    return runtime


@contextmanager
def capture_stderr():
    """Everything written to file descriptor 2 inside the block, C++ included; yields a list
    that holds the text once the block ends."""
    captured: list[str] = []
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield captured
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            captured.append(sink.read().decode("utf-8", "replace"))


def _diagnose(log: str) -> TflmError:
    """The op (and TFLM's reason) from the messages of a failed allocation."""
    lines = [line.strip() for line in log.splitlines() if line.strip()]
    for i, line in enumerate(lines):
        if m := MISSING_OP.search(line):
            return TflmError(m[1], f"TFLM has no kernel for {m[1]}")
        if m := PREPARE_FAILED.search(line):
            why = lines[i - 1] if i else "its kernel's Prepare failed"
            return TflmError(m[1], f"its kernel refuses node {m[2]}: {why}")
    for line in lines:
        if m := MISSING_CUSTOM.search(line):
            return TflmError(m[1], f"TFLM has no kernel for {m[1]}")
    return TflmError(None, "; ".join(lines[:3]) or "allocation failed, no message")


def tflm_interpreter(model_bytes: bytes, arena_bytes: int = CHECK_ARENA_BYTES):
    """TFLM's interpreter for ``model_bytes`` with an arena of ``arena_bytes``, its tensors
    allocated; TflmError naming the op when TFLM cannot run the model."""
    runtime = require_tflm()
    with capture_stderr() as log:
        try:
            return runtime.Interpreter.from_bytes(bytes(model_bytes), arena_size=arena_bytes)
        except RuntimeError:  # TFLM says only "failed to allocate tensors"; why is on fd 2
            pass
    raise _diagnose(log[0])


def unsupported_ops(model_bytes: bytes) -> dict[str, str]:
    """``{op: TFLM's reason}`` for the op that stops TFLM from running the model; empty
    when TFLM allocates it. TFLM stops at the first such op (in graph order), so this holds
    one op at most: once it is replaced, ask again for the next."""
    try:
        tflm_interpreter(model_bytes)
    except TflmError as e:
        if e.op is None:
            raise
        return {e.op: e.reason}
    return {}


def measure_arena(model_bytes: bytes) -> dict[str, int]:
    """TFLM's arena use for ``model_bytes``: ``{"total", "head", "tail"}`` bytes, read from
    the RecordingMicroAllocator's report after one invoke; head holds the activations
    (non-persistent), tail the persistent structs. TflmError when TFLM cannot run it."""
    interpreter = tflm_interpreter(model_bytes)
    details = interpreter.get_input_details(0)
    interpreter.set_input(np.zeros(details["shape"], details["dtype"]), 0)
    interpreter.invoke()
    with capture_stderr() as log:
        interpreter.print_allocations()
    report = {kind: int(n) for kind, n in ARENA_REPORT.findall(log[0])}
    if set(report) != {"total", "head", "tail"}:
        raise TflmError(None, f"no arena report from print_allocations: {log[0][:200]!r}")
    return report


def read_ops(model_bytes: bytes) -> list[dict]:
    """The ops of ``model_bytes`` in graph order, every subgraph:
    ``[{"op": "FULLY_CONNECTED", "float": False}, ...]``. ``float`` marks an op that
    computes in float32 (a float32 input or output; QUANTIZE and DEQUANTIZE, which only
    convert, are not marked): slow on a microcontroller without an FPU."""
    from ai_edge_litert import schema_py_generated as schema

    names = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
    model = schema.Model.GetRootAs(bytes(model_bytes), 0)
    ops = []
    for s in range(model.SubgraphsLength()):
        graph = model.Subgraphs(s)
        for o in range(graph.OperatorsLength()):
            op = graph.Operators(o)
            code = model.OperatorCodes(op.OpcodeIndex())
            builtin = max(code.BuiltinCode(), code.DeprecatedBuiltinCode())
            name = names.get(builtin, str(builtin))
            if name == "CUSTOM":
                name = f"CUSTOM:{(code.CustomCode() or b'').decode()}"
            tensors = (
                [*op.InputsAsNumpy(), *op.OutputsAsNumpy()]
                if not op.InputsIsNone() and not op.OutputsIsNone()
                else []
            )
            is_float = any(
                graph.Tensors(int(t)).Type() == schema.TensorType.FLOAT32 for t in tensors if t >= 0
            )
            ops.append({"op": name, "float": bool(is_float and name not in CONVERSIONS)})
    return ops


def tflm_footprint(model_bytes: bytes) -> dict:
    """Flash, arena and ops of ``model_bytes`` on TFLM. TflmError when TFLM cannot run it.

    ``{"flash_bytes", "arena_bytes", "arena_head_bytes", "arena_tail_bytes", "ops",
    "distinct_ops", "float_ops"}``: ops in graph order, the distinct ones sorted (what a
    ``MicroMutableOpResolver`` must register), the float-computing ones sorted."""
    arena = measure_arena(model_bytes)
    ops = read_ops(model_bytes)
    return {
        "flash_bytes": len(model_bytes),
        "arena_bytes": arena["total"],
        "arena_head_bytes": arena["head"],
        "arena_tail_bytes": arena["tail"],
        "ops": [o["op"] for o in ops],
        "distinct_ops": sorted({o["op"] for o in ops}),
        "float_ops": sorted({o["op"] for o in ops if o["float"]}),
    }


class TflmRuntime:
    """TFLM's interpreter as a runtime of :mod:`harness.export.runtimes`: raw 0-255 pixels
    (N, 32, 32, 3) in, float32 probabilities (N, classes) out, one image per invoke (TFLM
    has no batch resizing). Quantized inputs and outputs are (de)quantized here with the
    file's own scale and zero point."""

    name = "tflite-micro"

    def __init__(self, model_bytes: bytes, arena_bytes: int = CHECK_ARENA_BYTES):
        self.interpreter = tflm_interpreter(model_bytes, arena_bytes)
        self.input = self.interpreter.get_input_details(0)
        self.output = self.interpreter.get_output_details(0)
        self._dtype = np.dtype(self.input["dtype"])
        scales = self.input["quantization_parameters"]["scales"]
        zeros = self.input["quantization_parameters"]["zero_points"]
        self._in_quant = (float(scales[0]), int(zeros[0])) if len(scales) else None
        scales = self.output["quantization_parameters"]["scales"]
        zeros = self.output["quantization_parameters"]["zero_points"]
        self._out_quant = (
            (float(scales[0]), int(zeros[0]))
            if len(scales) and np.dtype(self.output["dtype"]).kind in "iu"
            else None
        )

    def quantize(self, x: np.ndarray) -> np.ndarray:
        """Pixels as the model's input type: as they are for uint8 of scale 1, zero 0."""
        if self._in_quant is None or self._dtype.kind not in "iu":
            return np.asarray(x, self._dtype)
        scale, zero = self._in_quant
        if x.dtype == self._dtype and abs(scale - 1) < 1e-6 and zero == 0:
            return x
        info = np.iinfo(self._dtype)
        q = np.round(np.asarray(x, np.float32) / scale + zero)
        return np.clip(q, info.min, info.max).astype(self._dtype)

    def predict(self, x: np.ndarray) -> np.ndarray:
        x = self.quantize(np.asarray(x))
        out = []
        for image in x:
            self.interpreter.set_input(image[None], 0)
            self.interpreter.invoke()
            out.append(self.interpreter.get_output(0)[0])
        out = np.asarray(out)
        if self._out_quant is not None:
            scale, zero = self._out_quant
            out = (out.astype(np.float32) - zero) * scale
        return out.astype(np.float32)


def macs_per_image(model) -> int:
    """Multiply-accumulates of one image's forward pass through the Keras ``model``.

    Rule: only Dense and convolution layers are counted, as MLPerf Tiny does; each does
    ``prod(kernel shape) x prod(output positions)`` MACs per image: Dense ``in x out`` (per
    position when its input has more axes), Conv2D ``k x k x c_in/groups x c_out x H_out x
    W_out``, DepthwiseConv2D ``k x k x c_in x multiplier x H_out x W_out``, SeparableConv2D
    both its parts. Bias adds, BatchNormalization, activations, pooling, adds and the
    standardization are elementwise and not counted. Test-time flips double the work: after
    a FlipPair each image goes through the net with its mirror image (batch 2N) until the
    PairMean, so the layers in between count twice. Nested models are walked in order;
    a layer with a kernel this rule does not know is an error, not a silent zero.
    """
    import keras

    from harness.train.layers import FlipPair, PairMean

    convs = (
        keras.layers.Conv1D,
        keras.layers.Conv2D,
        keras.layers.Conv3D,
        keras.layers.DepthwiseConv2D,
        keras.layers.SeparableConv2D,
    )

    def walk(m, factor: int) -> tuple[int, int]:
        total = 0
        for layer in m.layers:
            if isinstance(layer, keras.Model):
                macs, factor = walk(layer, factor)
                total += macs
            elif isinstance(layer, FlipPair):
                factor *= 2
            elif isinstance(layer, PairMean):
                factor //= 2
            elif isinstance(layer, (keras.layers.Dense, *convs)):
                positions = int(np.prod(layer.output.shape[1:-1]))
                kernels = [w for w in layer.weights if w.name in KERNELS]
                total += factor * positions * sum(int(np.prod(w.shape)) for w in kernels)
            elif any(w.name in KERNELS for w in layer.weights):
                raise ValueError(
                    f"{layer.name} ({type(layer).__name__}): no MAC rule for this layer"
                )
        return total, factor

    return walk(model, 1)[0]
