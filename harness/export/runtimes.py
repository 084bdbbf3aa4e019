"""Inference runtimes for exported models: onnxruntime for .onnx, LiteRT for .tflite.

Imports neither TensorFlow nor Keras, so it serves edge devices (``harness predict``)
as well as verification and benchmarks. Every runtime takes raw 0-255 pixels of shape
(N, 32, 32, 3) and returns class probabilities (N, 10) as float32.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from harness.edge.predict import without_info_lines


class OnnxRuntime:
    name = "onnxruntime"

    def __init__(self, path: Path, threads: int = 1):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.input = self.session.get_inputs()[0].name

    def predict(self, x: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.input: np.asarray(x, np.float32)})[0]


_UINT8, _FLOAT32 = np.dtype(np.uint8), np.dtype(np.float32)
_128 = np.uint8(128)


class LiteRTRuntime:
    """ai_edge_litert's Interpreter; quantized inputs/outputs are (de)quantized here.

    Everything about the tensors (indices, types, quantization) is looked up once per input
    size, so a call does no more than convert the pixels, set, invoke and get: at batch 1
    the Python around ``invoke`` is a large part of the latency of a small model."""

    name = "litert"

    def __init__(self, path: Path, threads: int = 1):
        from ai_edge_litert.interpreter import Interpreter

        self.interpreter = Interpreter(model_path=str(path), num_threads=threads)
        with without_info_lines():  # LiteRT's "INFO: Created ... XNNPACK delegate" line
            self.interpreter.allocate_tensors()
        self._describe()

    def _describe(self) -> None:
        self.input = self.interpreter.get_input_details()[0]
        self.output = self.interpreter.get_output_details()[0]
        self.batch = int(self.input["shape"][0])
        self._in_index, self._out_index = self.input["index"], self.output["index"]
        self._in_dtype = np.dtype(self.input["dtype"])
        scale, zero = self.input["quantization"]
        self._in_quant = None
        if self._in_dtype.kind in "iu":
            info = np.iinfo(self._in_dtype)
            self._in_quant = (np.float32(scale), zero, info.min, info.max)
        # Inputs that take uint8 pixels as bytes (byte_form): as they are, or less 128 into
        # a buffer kept for the purpose.
        form = byte_form(self._in_dtype, scale, zero)
        self._raw = form == "raw"
        self._shifted = None
        if form == "shifted":
            self._shifted = np.empty(self.input["shape"], np.uint8)
            self._shifted_int8 = self._shifted.view(np.int8)
        out_scale, out_zero = self.output["quantization"]
        out_dtype = np.dtype(self.output["dtype"])
        self._out_quant = (out_zero, np.float32(out_scale)) if out_dtype.kind in "iu" else None
        self._out_float32 = out_dtype == _FLOAT32

    def _resize(self, n: int) -> None:
        self.interpreter.resize_tensor_input(self._in_index, [n, *self.input["shape"][1:]])
        self.interpreter.allocate_tensors()
        self._describe()

    def _convert(self, x: np.ndarray) -> np.ndarray:
        """Pixels of any dtype as the input's values: round(pixel / scale) + zero point."""
        if self._in_quant is not None:
            scale, zero, low, high = self._in_quant
            x = np.clip(np.round(np.asarray(x, np.float32) / scale + zero), low, high)
        return x.astype(self._in_dtype, copy=False)

    def predict(self, x: np.ndarray) -> np.ndarray:
        # The common cases (uint8 pixels into a uint8 or int8 file of scale 1, float32 out)
        # take no numpy call but the one subtraction: at batch 1 each costs a few percent.
        if len(x) != self.batch:
            self._resize(len(x))
        if x.dtype != _UINT8:
            x = self._convert(x)
        elif self._shifted is not None:
            np.subtract(x, _128, out=self._shifted)
            x = self._shifted_int8
        elif not self._raw:
            x = self._convert(x)
        self.interpreter.set_tensor(self._in_index, x)
        self.interpreter.invoke()
        out = self.interpreter.get_tensor(self._out_index)
        if self._out_quant is not None:
            zero, scale = self._out_quant
            return (out.astype(np.float32) - zero) * scale
        return out if self._out_float32 else out.astype(np.float32)


# Integer inputs of scale 1 that take uint8 pixels as bytes, by (dtype, zero point).
BYTE_FORMS = {(_UINT8, 0): "raw", (np.dtype(np.int8), -128): "shifted"}
RULES = {
    "raw": "q = pixel: copy the 0-255 bytes as they are",
    "shifted": "q = pixel - 128: each byte with its top bit flipped (pixel ^ 0x80)",
    None: "q = round(pixel / scale) + zero_point",
}


def byte_form(dtype, scale: float, zero: int) -> str | None:
    """How an input so typed and quantized takes 0-255 pixels: as bytes ("raw" or
    "shifted", see BYTE_FORMS) or, None, only through the general rule."""
    return BYTE_FORMS.get((np.dtype(dtype), zero)) if abs(scale - 1) < 1e-3 else None


def pixel_rule(dtype, scale: float, zero: int) -> str:
    """How a 0-255 pixel becomes the value q of an integer input so quantized, in words."""
    return RULES[byte_form(dtype, scale, zero)]


class ModelFileError(ValueError):
    """A model file its runtime cannot load (empty, truncated, another format); one line."""


def load(path: Path, threads: int = 1):
    """The runtime for ``path`` by its suffix (.onnx or .tflite); ModelFileError, one line,
    when the runtime cannot load the file."""
    path = Path(path)
    kind = {".onnx": OnnxRuntime, ".tflite": LiteRTRuntime}.get(path.suffix)
    if kind is None:
        raise ModelFileError(f"{path}: not an .onnx or .tflite model")
    if path.is_file() and path.stat().st_size == 0:
        raise ModelFileError(f"{path}: an empty file (0 bytes)")
    try:
        return kind(path, threads)
    except ImportError:
        raise
    except Exception as e:  # each runtime has its own error types (InvalidProtobuf, ...)
        message = " ".join(str(e).split())[:300] or type(e).__name__
        raise ModelFileError(f"{path}: {kind.name} cannot load it ({message})") from None


def predict_batched(runtime, x: np.ndarray, batch: int = 256) -> np.ndarray:
    """Probabilities for all of ``x`` in batches of ``batch`` images; ``runtime`` is a
    runtime above or any function from images to probabilities."""
    predict = getattr(runtime, "predict", runtime)
    return np.concatenate([np.asarray(predict(x[i : i + batch])) for i in range(0, len(x), batch)])
