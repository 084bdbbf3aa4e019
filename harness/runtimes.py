"""Inference runtimes for exported models: onnxruntime for .onnx, LiteRT for .tflite.

Imports neither TensorFlow nor Keras, so it serves edge devices (``harness predict``)
as well as verification and benchmarks. Every runtime takes raw 0-255 pixels of shape
(N, 32, 32, 3) and returns class probabilities (N, 10) as float32.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


class OnnxRuntime:
    name = "onnxruntime"

    def __init__(self, path: Path, threads: int = 1):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(str(path), options,
                                            providers=["CPUExecutionProvider"])
        self.input = self.session.get_inputs()[0].name

    def predict(self, x: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.input: np.asarray(x, np.float32)})[0]


class LiteRTRuntime:
    """ai_edge_litert's Interpreter; quantized inputs/outputs are (de)quantized here."""

    name = "litert"

    def __init__(self, path: Path, threads: int = 1):
        from ai_edge_litert.interpreter import Interpreter

        self.interpreter = Interpreter(model_path=str(path), num_threads=threads)
        self.interpreter.allocate_tensors()
        self.input = self.interpreter.get_input_details()[0]
        self.output = self.interpreter.get_output_details()[0]
        self.batch = int(self.input["shape"][0])

    def _resize(self, n: int) -> None:
        if n != self.batch:
            self.interpreter.resize_tensor_input(self.input["index"], [n, 32, 32, 3])
            self.interpreter.allocate_tensors()
            self.input = self.interpreter.get_input_details()[0]
            self.output = self.interpreter.get_output_details()[0]
            self.batch = n

    def predict(self, x: np.ndarray) -> np.ndarray:
        self._resize(len(x))
        dtype = self.input["dtype"]
        scale, zero = self.input["quantization"]
        raw_pixels = x.dtype == dtype and abs(scale - 1) < 1e-3 and zero == 0
        if np.issubdtype(dtype, np.integer) and not raw_pixels:  # uint8 pixels pass as they are
            info = np.iinfo(dtype)
            x = np.clip(np.round(np.asarray(x, np.float32) / scale + zero), info.min, info.max)
        self.interpreter.set_tensor(self.input["index"], np.asarray(x, dtype))
        self.interpreter.invoke()
        out = self.interpreter.get_tensor(self.output["index"])
        if np.issubdtype(out.dtype, np.integer):
            scale, zero = self.output["quantization"]
            out = (out.astype(np.float32) - zero) * scale
        return np.asarray(out, np.float32)


def load(path: Path, threads: int = 1):
    """The runtime for ``path`` by its suffix (.onnx or .tflite)."""
    suffix = Path(path).suffix
    if suffix == ".onnx":
        return OnnxRuntime(path, threads)
    if suffix == ".tflite":
        return LiteRTRuntime(path, threads)
    raise ValueError(f"{path}: not an .onnx or .tflite model")


def read_image(path: Path) -> np.ndarray:
    """Any image Pillow reads, as RGB, resized to 32 x 32: uint8 (32, 32, 3)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            return np.asarray(img.convert("RGB").resize((32, 32), Image.Resampling.BILINEAR),
                              np.uint8)
    except (UnidentifiedImageError, OSError) as e:
        raise ValueError(f"{path}: not a readable image ({e})") from None


def predict_batched(runtime, x: np.ndarray, batch: int = 256) -> np.ndarray:
    """Probabilities for all of ``x`` in batches of ``batch`` images; ``runtime`` is a
    runtime above or any function from images to probabilities."""
    predict = getattr(runtime, "predict", runtime)
    return np.concatenate([np.asarray(predict(x[i:i + batch])) for i in range(0, len(x), batch)])
