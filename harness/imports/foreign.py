"""A stranger's model file is data: checked before anything runs it, read without its code.

``harness import`` hands every file through :func:`check_file` first:

- ``.tflite`` and ``.onnx``: a runtime can crash the whole process on a malformed
  flatbuffer or protobuf, so the runtime is first asked in a subprocess (:func:`probe`):
  load, allocate, one call on zeros. A crash or an error there is one line here. ONNX
  external data is looked up before that: every location must lie inside the model's own
  folder (no absolute path, no ``..`` out of it, no link out of it) and exist.
- ``.keras`` (Keras 3 zip) and ``.h5`` (Keras 2 HDF5): the model's config is read first,
  as JSON, and refused when a layer is a ``Lambda`` (its code would be deserialized and
  run) or a class neither Keras nor harness defines; the model is then loaded with Keras'
  ``safe_mode``.
- SavedModel folders: the graph is read as a protobuf and refused when it holds an op that
  reads or writes files, or calls back into Python (:data:`UNSAFE_TF_OPS`).

Facts read off a file without running it: format, precision, parameters, MACs and ops
(:func:`file_facts`).
"""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np

FORMATS = {".tflite": "tflite", ".onnx": "onnx", ".keras": "keras", ".h5": "h5", ".hdf5": "h5"}
FILE_RUNTIMES = {"tflite": "litert", "onnx": "onnxruntime"}  # formats run without TensorFlow
PROBE_TIMEOUT_S = 120
# TensorFlow ops a SavedModel must not hold: file access outside the loader's own restore,
# Python callbacks, and datasets that read files.
UNSAFE_TF_OPS = frozenset(
    {
        "ReadFile",
        "WriteFile",
        "MatchingFiles",
        "PyFunc",
        "PyFuncStateless",
        "EagerPyFunc",
        "ImmutableConst",
        "TFRecordDataset",
        "TFRecordDatasetV2",
        "TextLineDataset",
        "FixedLengthRecordDataset",
        "FixedLengthRecordDatasetV2",
        "LoadAndRemapMatrix",
        "WholeFileReader",
        "WholeFileReaderV2",
        "DebugIdentityV2",
        "PrintV2",
    }
)
# Layer classes that hold code rather than configuration.
CODE_LAYERS = frozenset({"Lambda", "TFOpLambda", "SlicingOpLambda"})
MODEL_CLASSES = frozenset({"Functional", "Sequential", "Model"})


class ForeignFileError(ValueError):
    """A model file refused or unreadable; the message is one line naming why."""


def one_line(error: BaseException | str) -> str:
    return " ".join(str(error).split()) or type(error).__name__


def detect_format(path: Path) -> str:
    """tflite, onnx, keras, h5 or saved_model, by suffix (a folder: saved_model.pb in it)."""
    path = Path(path)
    if path.is_dir():
        if (path / "saved_model.pb").is_file():
            return "saved_model"
        raise ForeignFileError(f"{path}: a folder without saved_model.pb (not a SavedModel)")
    if not path.is_file():
        raise ForeignFileError(f"{path}: no such file")
    fmt = FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise ForeignFileError(
            f"{path.name}: not a model file harness imports (.tflite, "
            f".onnx, .keras, .h5 or a SavedModel folder)"
        )
    if path.stat().st_size == 0:
        raise ForeignFileError(f"{path.name}: an empty file (0 bytes)")
    return fmt


# --------------------------------------------------------------------------- probes

PROBE = r"""
import json, sys
import numpy as np
fmt, path = sys.argv[1], sys.argv[2]
if fmt == "tflite":
    from ai_edge_litert.interpreter import Interpreter
    it = Interpreter(model_path=path, num_threads=1)
    it.allocate_tensors()
    i, o = it.get_input_details(), it.get_output_details()
    if len(i) != 1 or len(o) != 1:
        sys.exit(f"expected one input and one output, found {len(i)} and {len(o)}")
    i, o = i[0], o[0]
    it.set_tensor(i["index"], np.zeros(i["shape"], i["dtype"]))
    it.invoke()
    out = it.get_tensor(o["index"])
    scale, zero = i["quantization"]
    info = {"shape": [int(d) for d in i["shape_signature"]], "dtype": np.dtype(i["dtype"]).name,
            "quantization": {"scale": float(scale), "zero_point": int(zero)}}
else:
    import onnxruntime as ort
    s = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    i, o = s.get_inputs(), s.get_outputs()
    if len(i) != 1 or len(o) != 1:
        sys.exit(f"expected one input and one output, found {len(i)} and {len(o)}")
    dtype = {"tensor(float)": "float32", "tensor(uint8)": "uint8", "tensor(int8)": "int8"}
    if i[0].type not in dtype:
        sys.exit(f"the input is {i[0].type}; harness feeds float32 or 8-bit pixels")
    shape = [d if isinstance(d, int) else -1 for d in i[0].shape]
    x = np.zeros([1 if d < 0 else d for d in shape], dtype[i[0].type])
    out = s.run(None, {i[0].name: x})[0]
    info = {"shape": shape, "dtype": dtype[i[0].type]}
print(json.dumps({"input": info, "output": [int(d) for d in np.shape(out)]}))
"""


def probe(path: Path, fmt: str) -> dict:
    """The runtime's view of ``path`` (tflite or onnx), asked in a subprocess so a crash
    on a malformed file ends that process, not this one: ``{"input": {"shape", "dtype",
    ("quantization")}, "output": shape}``; ForeignFileError with the runtime's last words."""
    try:
        done = subprocess.run(
            [sys.executable, "-I", "-c", PROBE, fmt, str(path)],
            capture_output=True,
            text=True,
            timeout=PROBE_TIMEOUT_S,
        )
    except subprocess.TimeoutExpired:
        raise ForeignFileError(
            f"{path.name}: the runtime did not answer within {PROBE_TIMEOUT_S} s"
        ) from None
    runtime = FILE_RUNTIMES[fmt]
    if done.returncode < 0:
        raise ForeignFileError(
            f"{path.name}: {runtime} crashed reading it (signal "
            f"{-done.returncode}): a truncated or malformed {fmt} file"
        )
    if done.returncode != 0:
        lines = [
            line
            for line in done.stderr.strip().splitlines()
            if line.strip() and not line.startswith("INFO:")
        ]
        why = one_line(lines[-1]) if lines else f"exit status {done.returncode}"
        raise ForeignFileError(f"{path.name}: {runtime} cannot run it: {why[:300]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------------- onnx


def _onnx_tensors(graph):
    """Every tensor an ONNX graph stores (initializers, attribute tensors), subgraphs too."""
    yield from graph.initializer
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("t"):
                yield attr.t
            yield from attr.tensors
            if attr.HasField("g"):
                yield from _onnx_tensors(attr.g)
            for sub in attr.graphs:
                yield from _onnx_tensors(sub)


def check_onnx(path: Path) -> list[str]:
    """The external data files of an ONNX model (relative to its folder), once every one
    lies inside that folder; ForeignFileError for a malformed file or one pointing out."""
    import onnx

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as e:  # protobuf's DecodeError and friends
        raise ForeignFileError(
            f"{path.name}: not a readable ONNX model ({one_line(e)[:200]})"
        ) from None
    folder = path.parent.resolve()
    files = []
    for tensor in _onnx_tensors(model.graph):
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            continue
        location = {e.key: e.value for e in tensor.external_data}.get("location", "")
        target = (folder / location).resolve()
        if not location or Path(location).is_absolute() or not target.is_relative_to(folder):
            raise ForeignFileError(
                f"{path.name}: refused: tensor {tensor.name!r} keeps its "
                f"data at {location!r}, outside the model's folder"
            )
        if not target.is_file():
            raise ForeignFileError(
                f"{path.name}: tensor {tensor.name!r} keeps its data in "
                f"{location!r}, which is missing"
            )
        files.append(str(target.relative_to(folder)))
    return sorted(set(files))


# --------------------------------------------------------------------------- keras


def keras_config(path: Path, fmt: str) -> dict:
    """The model config of a .keras or .h5 file, read as JSON without building anything."""
    try:
        if fmt == "keras":
            with zipfile.ZipFile(path) as z:
                return json.loads(z.read("config.json"))
        import h5py

        with h5py.File(path, "r") as f:
            raw = f.attrs.get("model_config")
            if raw is None:
                raise ForeignFileError(
                    f"{path.name}: an HDF5 file without a model config "
                    "(weights only?): save the whole model"
                )
            return json.loads(raw.decode() if isinstance(raw, bytes) else raw)
    except ForeignFileError:
        raise
    except (OSError, KeyError, ValueError, zipfile.BadZipFile) as e:
        raise ForeignFileError(
            f"{path.name}: not a readable {fmt} model ({one_line(e)[:200]})"
        ) from None


def _layers(config: dict):
    """Every layer config in a model config, nested models included."""
    inner = config.get("config", {})
    layers = inner.get("layers", []) if isinstance(inner, dict) else []
    for layer in layers:
        if isinstance(layer, dict):
            yield layer
            if layer.get("class_name") in MODEL_CLASSES:
                yield from _layers(layer)


def check_keras_config(config: dict, name: str) -> None:
    """ForeignFileError when a layer holds code (Lambda) or is a class that neither Keras
    nor harness defines (a custom layer harness cannot know)."""
    import keras

    if config.get("class_name") not in MODEL_CLASSES:
        raise ForeignFileError(
            f"{name}: the file holds a {config.get('class_name')!r}, not "
            "a Keras Functional or Sequential model"
        )
    for layer in _layers(config):
        cls, registered = str(layer.get("class_name")), layer.get("registered_name")
        where = f"{name}: refused: layer {layer.get('config', {}).get('name')!r}"
        if cls in CODE_LAYERS:
            raise ForeignFileError(f"{where} is a {cls}, whose Python code would run on loading")
        if cls in MODEL_CLASSES or (registered or "").startswith("harness>"):
            continue
        custom = (registered and ">" in registered) or not str(
            layer.get("module") or "keras"
        ).startswith("keras")
        if custom or not hasattr(keras.layers, cls):
            raise ForeignFileError(
                f"{where} is a custom class {registered or cls!r} that "
                "harness cannot load without running its code"
            )


def load_keras(path: Path, fmt: str):
    """The Keras model of a checked .keras or .h5 file, in safe mode, not compiled."""
    import keras

    from harness.train.models import custom_objects

    check_keras_config(keras_config(path, fmt), path.name)
    try:
        model = keras.saving.load_model(
            path, custom_objects=custom_objects(), compile=False, safe_mode=True
        )
    except Exception as e:  # Keras raises ValueError, TypeError, OSError alike
        raise ForeignFileError(f"{path.name}: Keras cannot load it ({one_line(e)[:200]})") from None
    if len(model.inputs) != 1 or len(model.outputs) != 1:
        raise ForeignFileError(
            f"{path.name}: a model of {len(model.inputs)} inputs and "
            f"{len(model.outputs)} outputs; harness imports one of each"
        )
    if isinstance(model, keras.Sequential):
        return model
    # Keras 2 files name their inputs as a list; one tensor in, one out, called plainly.
    return keras.Model(model.inputs[0], model.outputs[0], name=model.name)


# --------------------------------------------------------------------------- saved_model


def check_saved_model(folder: Path) -> None:
    """ForeignFileError when the SavedModel's graph holds an op of UNSAFE_TF_OPS, or a
    link leads out of its folder."""
    from tensorflow.core.protobuf import saved_model_pb2

    for p in folder.rglob("*"):
        if p.is_symlink():
            raise ForeignFileError(f"{folder.name}: refused: {p.relative_to(folder)} is a link")
    proto = saved_model_pb2.SavedModel()
    try:
        proto.ParseFromString((folder / "saved_model.pb").read_bytes())
    except Exception as e:
        raise ForeignFileError(
            f"{folder.name}: not a readable SavedModel ({one_line(e)[:200]})"
        ) from None
    for graph in proto.meta_graphs:
        nodes = [*graph.graph_def.node]
        for fn in graph.graph_def.library.function:
            nodes += fn.node_def
        bad = sorted({n.op for n in nodes} & UNSAFE_TF_OPS)
        if bad:
            raise ForeignFileError(
                f"{folder.name}: refused: its graph holds {', '.join(bad)}, "
                "ops that read or write files or run Python"
            )


def load_saved_model(folder: Path):
    """A function from a float32 batch to the serving signature's one output."""
    import tensorflow as tf

    check_saved_model(folder)
    try:
        fn = tf.saved_model.load(str(folder)).signatures["serving_default"]
    except Exception as e:
        raise ForeignFileError(
            f"{folder.name}: TensorFlow cannot load it ({one_line(e)[:200]})"
        ) from None
    ((name, spec),) = fn.structured_input_signature[1].items()

    def call(x):
        out = fn(**{name: tf.constant(x, spec.dtype)})
        return np.asarray(next(iter(out.values())))

    call.input_shape = [-1 if d is None else int(d) for d in spec.shape]
    return call


def check_file(path: Path) -> tuple[str, dict | None]:
    """The format of ``path`` once it passes the checks above, and (tflite, onnx) the
    runtime's view of its input and output from the subprocess probe."""
    fmt = detect_format(path)
    if fmt == "onnx":
        check_onnx(path)
    if fmt in FILE_RUNTIMES:
        return fmt, probe(path, fmt)
    if fmt in ("keras", "h5"):
        check_keras_config(keras_config(path, fmt), path.name)
    else:
        check_saved_model(path)
    return fmt, None


# --------------------------------------------------------------------------- facts


def tflite_facts(model_bytes: bytes) -> dict:
    """Precision, parameters, kernel sparsity, MACs per image and ops of a .tflite file,
    read off its flatbuffer. MACs: FULLY_CONNECTED, CONV_2D and DEPTHWISE_CONV_2D, the rule
    of :func:`harness.export.footprint.macs_per_image` (prod(kernel) x output positions)."""
    from ai_edge_litert import schema_py_generated as schema

    from harness.export.footprint import read_ops

    names = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
    types = {v: k for k, v in vars(schema.TensorType).items() if not k.startswith("_")}
    dtypes = {
        "FLOAT32": np.float32,
        "FLOAT16": np.float16,
        "INT8": np.int8,
        "UINT8": np.uint8,
        "INT32": np.int32,
        "INT16": np.int16,
        "INT64": np.int64,
    }
    model = schema.Model.GetRootAs(bytes(model_bytes), 0)
    graph = model.Subgraphs(0)
    params, kernel_size, kernel_zeros, weight_types, macs = 0, 0, 0, set(), 0
    consts = {}
    for t in range(graph.TensorsLength()):
        tensor = graph.Tensors(t)
        buffer = model.Buffers(tensor.Buffer())
        if buffer is None or buffer.DataLength() == 0:
            continue
        shape = tensor.ShapeAsNumpy() if not tensor.ShapeIsNone() else np.array([])
        kind = types.get(tensor.Type(), "?")
        consts[t] = shape
        params += int(np.prod(shape)) if len(shape) else 1
        if len(shape) >= 2 and kind in dtypes:
            weight_types.add(kind)
            values = np.frombuffer(buffer.DataAsNumpy().tobytes(), dtypes[kind])
            kernel_size += values.size
            kernel_zeros += int((values == 0).sum())
    for o in range(graph.OperatorsLength()):
        op = graph.Operators(o)
        code = model.OperatorCodes(op.OpcodeIndex())
        name = names.get(max(code.BuiltinCode(), code.DeprecatedBuiltinCode()))
        inputs, outputs = op.InputsAsNumpy(), op.OutputsAsNumpy()
        if name not in ("FULLY_CONNECTED", "CONV_2D", "DEPTHWISE_CONV_2D") or len(inputs) < 2:
            continue
        weights = consts.get(int(inputs[1]))
        out = graph.Tensors(int(outputs[0])).ShapeAsNumpy()
        if weights is None or out is None:
            continue
        if name == "FULLY_CONNECTED":
            positions = int(np.prod(out[1:-1])) if len(out) > 2 else 1
            macs += int(np.prod(weights)) * positions
        else:  # kernels (out, kh, kw, in) or (1, kh, kw, channels): per output position
            macs += int(np.prod(weights)) * int(np.prod(out[1:-1]))
    input_type = types.get(graph.Tensors(int(graph.InputsAsNumpy()[0])).Type())
    if input_type in ("INT8", "UINT8"):
        precision = "int8"
    elif "FLOAT16" in weight_types:
        precision = "float16"
    elif weight_types & {"INT8", "UINT8"}:
        precision = "dynamic"
    else:
        precision = "float32"
    ops = [o["op"] for o in read_ops(model_bytes)]
    return {
        "precision": precision,
        "params": params,
        "macs": macs or None,
        "sparsity": kernel_zeros / kernel_size if kernel_size else 0.0,
        "ops": sorted(set(ops)),
        "op_count": len(ops),
    }


def onnx_facts(path: Path) -> dict:
    """Precision, parameters, kernel sparsity and ops of an .onnx file (MACs not counted:
    that needs shape inference through every op)."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path), load_external_data=True)
    params, kernel_size, kernel_zeros, types = 0, 0, 0, set()
    for tensor in model.graph.initializer:
        values = numpy_helper.to_array(tensor, base_dir=str(path.parent))
        params += values.size
        types.add(values.dtype.name)
        if values.ndim >= 2:
            kernel_size += values.size
            kernel_zeros += int((values == 0).sum())
    ops = [n.op_type for n in model.graph.node]
    precision = (
        "int8" if types & {"int8", "uint8"} else "float16" if "float16" in types else "float32"
    )
    return {
        "precision": precision,
        "params": params,
        "macs": None,
        "sparsity": kernel_zeros / kernel_size if kernel_size else 0.0,
        "ops": sorted(set(ops)),
        "op_count": len(ops),
    }


def keras_facts(model) -> dict:
    """Parameters, kernel sparsity, MACs and layer classes of a Keras model."""
    from harness.export.footprint import macs_per_image

    kernels = [np.asarray(w) for w in model.weights if w.name in ("kernel", "depthwise_kernel")]
    size = sum(k.size for k in kernels)
    try:
        macs = macs_per_image(model)
    except ValueError:  # a layer with a kernel the MAC rule does not know
        macs = None
    classes = []

    def walk(m):
        for layer in m.layers:
            classes.append(type(layer).__name__)
            if hasattr(layer, "layers"):
                walk(layer)

    walk(model)
    return {
        "precision": "float32",
        "params": int(sum(np.prod(w.shape) for w in model.weights)),
        "macs": macs,
        "sparsity": sum(int((k == 0).sum()) for k in kernels) / size if size else 0.0,
        "ops": sorted(set(classes)),
        "op_count": len(classes),
    }
