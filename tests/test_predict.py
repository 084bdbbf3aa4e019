"""harness predict on files and folders, with a tiny ONNX model made here (no training)."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from harness.cli import main


@pytest.fixture
def model(tmp_path) -> Path:
    """An .onnx classifier: pixels (N, 32, 32, 3) -> softmax of a fixed random projection."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weights = np.random.default_rng(0).normal(0, 1e-3, (32 * 32 * 3, 10)).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("Flatten", ["x"], ["flat"], axis=1),
            helper.make_node("MatMul", ["flat", "w"], ["logits"]),
            helper.make_node("Softmax", ["logits"], ["probs"], axis=1),
        ],
        "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 32, 32, 3])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, [None, 10])],
        initializer=[numpy_helper.from_array(weights, "w")],
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    proto.ir_version = 8  # readable by older onnxruntime releases too
    path = tmp_path / "model.onnx"
    onnx.save(proto, path)
    return path


def _image(path: Path, seed: int, size=(32, 32)) -> Path:
    from PIL import Image

    pixels = np.random.default_rng(seed).integers(0, 256, (*size[::-1], 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return path


def test_predict_takes_every_image_of_a_folder(model, tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    _image(folder / "b.png", 1)
    _image(folder / "a.JPG", 2, size=(64, 48))
    (folder / "notes.txt").write_text("not an image")
    (folder / "more").mkdir()
    _image(folder / "more" / "c.png", 3)  # subfolders are not searched
    single = _image(tmp_path / "single.png", 4)

    # In a fresh process where TensorFlow and Keras cannot be imported: predict needs neither.
    code = (
        "import sys; sys.modules['tensorflow'] = None; sys.modules['keras'] = None\n"
        "from harness.cli import main; main()"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, "predict", "--top", "2", str(model), str(folder), str(single)],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stdout.splitlines()
    assert [line.split(": ")[0] for line in lines] == [
        str(folder / "a.JPG"),
        str(folder / "b.png"),
        str(single),
    ]
    assert all(line.count(",") == 1 for line in lines)  # two classes with probabilities


def test_a_folder_without_images_is_a_usage_error(model, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("not an image")
    result = CliRunner().invoke(main, ["predict", str(model), str(empty)])
    assert result.exit_code == 2
    assert f"{empty}: a folder without PNG or JPEG images" in result.output
