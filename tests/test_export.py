import json
import subprocess
import sys

import numpy as np
import pytest

from harness.core.config import resolve
from harness.core.records import RunDir
from harness.data import cifar as data
from harness.export import runtimes
from harness.export.convert import MAX_DROP_POINTS, export_run, verify
from harness.train.fit import train


@pytest.fixture(scope="module")
def exported(tmp_path_factory, archive):
    results = tmp_path_factory.mktemp("results")
    ds = data.load(archive, home=results / "home")
    cfg = resolve("selu", overrides=dict(layers=2, units=32, epochs=2, batch_size=64, name="e"))
    train(cfg, ds, results, verbose=0)
    run = RunDir.named(results, "e")
    return run, ds, export_run(run, ds)


def test_every_export_is_written_and_verified(exported):
    run, _, records = exported
    by_file = {r["file"]: r for r in records}
    assert set(by_file) == {
        "model.onnx",
        "model_float32.tflite",
        "model_float16.tflite",
        "model_dynamic.tflite",
        "model_int8.tflite",
    }
    assert (run.path / "exports" / "saved_model" / "saved_model.pb").exists()
    keras_accuracy = run.read_metrics()["test"]["accuracy"]
    for name, rec in by_file.items():
        assert (run.path / "exports" / name).stat().st_size == rec["size_bytes"] > 0
        assert json.loads((run.path / "exports" / f"{name}.json").read_text()) == rec
        # The drop is measured against the run's own test accuracy, the flag follows from it,
        # and every file still knows the classes: the Keras model scores 0.69, the float
        # files the same, dynamic 0.70, int8 0.63 (a drop of 6 points: flagged).
        assert rec["keras_test"]["accuracy"] == pytest.approx(keras_accuracy)
        assert rec["accuracy_drop_points"] == pytest.approx(
            100 * (keras_accuracy - rec["test"]["accuracy"]), abs=1e-3
        )
        assert rec["flagged"] == (
            rec["accuracy_drop_points"] > MAX_DROP_POINTS[rec["quantization"]]
        )
        assert rec["test"]["accuracy"] > 0.5, name
    assert by_file["model.onnx"]["max_abs_diff"] < 1e-4
    assert by_file["model_float32.tflite"]["max_abs_diff"] < 1e-4
    assert by_file["model_float16.tflite"]["max_abs_diff"] < 1e-2
    for name in ("model.onnx", "model_float32.tflite"):
        assert not by_file[name]["flagged"] and by_file[name]["accuracy_drop_points"] == 0
    assert by_file["model_int8.tflite"]["runtime"] == "litert"


def test_verification_catches_a_broken_export(exported):
    run, ds, records = exported
    splits = data.split(ds)
    onnx = run.path / "exports" / "model.onnx"
    wrong = np.full((len(splits.test.x[:256]), 10), 0.1, np.float32)  # not the model's answer
    result = verify(onnx, "float32", wrong, {"accuracy": 1.0, "loss": 0.0}, splits)
    assert result["max_abs_diff"] > 0.1
    assert result["flagged"]  # it "lost" accuracy against a perfect reference


def test_a_drop_of_exactly_the_limit_is_not_flagged(monkeypatch):
    """ "An int8 export that loses more than 1 point is flagged": one that loses 1 point (one
    image in 100) is not, whatever the two accuracies are."""
    from types import SimpleNamespace

    y = np.arange(100) % 10
    probs = np.eye(10, dtype=np.float32)[y]
    probs[:1] = np.roll(probs[:1], 1, axis=1)  # 99 of the 100 right
    monkeypatch.setattr(runtimes, "load", lambda path: SimpleNamespace(name="fake"))
    monkeypatch.setattr(runtimes, "predict_batched", lambda runtime, x: probs[: len(x)])
    splits = SimpleNamespace(test=SimpleNamespace(x=np.zeros((100, 32, 32, 3), np.uint8), y=y))
    result = verify(None, "int8", probs, {"accuracy": 1.0, "loss": 0.0}, splits)
    assert result["test"]["accuracy"] == 0.99 and result["accuracy_drop_points"] == 1.0
    assert not result["flagged"]


def test_runtimes_work_without_tensorflow(exported):
    run, ds, _ = exported
    code = (
        "import sys; sys.modules['tensorflow'] = None; sys.modules['keras'] = None\n"
        "import numpy as np; from harness.export import runtimes\n"
        f"x = np.load({str(run.path / 'x.npy')!r})\n"
        "for f in sys.argv[1:]:\n"
        "    p = runtimes.predict_batched(runtimes.load(f), x, 7)\n"
        "    assert p.shape == (len(x), 10) and np.allclose(p.sum(1), 1, atol=1e-2), f\n"
        "print('ok')"
    )
    np.save(run.path / "x.npy", ds.x_test[:20])
    files = [str(run.path / "exports" / f) for f in ("model.onnx", "model_int8.tflite")]
    done = subprocess.run([sys.executable, "-c", code, *files], capture_output=True, text=True)
    assert done.returncode == 0 and "ok" in done.stdout, done.stderr[-2000:]


def test_export_on_another_backend_is_a_clear_error(exported, archive, monkeypatch, tmp_path):
    """ONNX and TFLite come from TensorFlow's converters: on JAX, bench and export say so
    (exit 1, one line) instead of failing deep inside Keras with an ImportError."""
    import keras
    from click.testing import CliRunner

    from harness.cli import main

    run, ds, _ = exported
    monkeypatch.setattr(keras.backend, "backend", lambda: "jax")
    for command in (["export", str(run.path)], ["bench", str(run.path)]):
        result = CliRunner().invoke(
            main, ["--archive", str(archive), "--results", str(tmp_path), *command]
        )
        assert result.exit_code == 1, result.output
        assert "KERAS_BACKEND=tensorflow" in result.output and "Traceback" not in result.output


def test_unknown_model_file_is_refused(tmp_path):
    with pytest.raises(ValueError, match="not an .onnx or .tflite"):
        runtimes.load(tmp_path / "model.pt")


def test_bench_record_has_every_field(exported, tmp_path):
    from harness.export.bench import bench_run, write_bench

    run, ds, records = exported
    record = bench_run(run, ds, "all", calls=20, warmup=5)
    path = write_bench(record, tmp_path)
    assert json.loads(path.read_text()) == record
    assert {"cpu", "cores", "versions"} <= set(record["machine"])
    runtimes_seen = {r["runtime"] for r in record["rows"]}
    assert runtimes_seen == {"keras-predict", "keras-call", "onnxruntime", "litert"}
    assert len(record["rows"]) == 2 + 5  # two Keras ways, ONNX, four TFLite precisions
    exported_accuracy = {r["file"]: r["test"]["accuracy"] for r in records}
    metrics = run.read_metrics()
    for row in record["rows"]:
        assert 0 < row["p50_us"] <= row["p90_us"] <= row["p99_us"]
        assert row["throughput_ips"] > 0 and row["size_bytes"] > 0
        assert row["params"] == metrics["params"]["total"]
        assert row["sparsity"] == 0.0  # trained weights: none is exactly zero
        # the Keras rows score what training recorded, each export what export measured
        expected = exported_accuracy.get(row["file"], metrics["test"]["accuracy"])
        assert row["test"]["accuracy"] == pytest.approx(expected), row["file"]


def test_predict_runs_without_tensorflow(exported, tmp_path):
    from PIL import Image

    run, ds, _ = exported
    Image.fromarray(ds.x_test[0]).resize((64, 48)).save(tmp_path / "a.png")
    Image.fromarray(ds.x_test[1]).save(tmp_path / "b.jpg")
    (tmp_path / "notes.txt").write_text("not an image")
    code = (
        "import sys; sys.modules['tensorflow'] = None; sys.modules['keras'] = None\n"
        "from harness.cli import main; main()"
    )
    for model in ("model.onnx", "model_int8.tflite"):
        args = [
            sys.executable,
            "-c",
            code,
            "predict",
            "--top",
            "2",
            str(run.path / "exports" / model),
            str(tmp_path / "a.png"),
            str(tmp_path / "b.jpg"),
        ]
        done = subprocess.run(args, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr[-2000:]
        lines = done.stdout.strip().splitlines()
        assert len(lines) == 2 and lines[0].startswith(str(tmp_path / "a.png"))
        assert lines[0].count(",") == 1  # two classes with probabilities
    bad = subprocess.run(
        [
            sys.executable,
            "-c",
            code,
            "predict",
            str(run.path / "exports" / "model.onnx"),
            str(tmp_path / "notes.txt"),
        ],
        capture_output=True,
        text=True,
    )
    assert bad.returncode == 1 and "notes.txt: not an image" in bad.stderr


@pytest.mark.parametrize(
    "pca,tta,pool",
    [(0, "none", 1), (24, "none", 1), (24, "flip", 1), (0, "none", 2), (24, "flip", 4)],
)
def test_folded_inference_model_is_the_same_function(pca, tta, pool):
    import keras

    from harness.export.convert import exportable
    from harness.train.models import build_model

    cfg = resolve(
        "mlp-frontier",
        overrides=dict(layers=2, units=16, pca=pca, tta=tta, pool=pool, backend=None),
    )
    rng = np.random.default_rng(0)
    model = build_model(
        cfg, mean=np.array([125.0, 122.0, 113.0]), variance=np.array([3900.0, 3800.0, 4400.0])
    )
    for layer in model.layers:  # BatchNorm statistics far from the identity
        if isinstance(layer, keras.layers.BatchNormalization) and layer.name != "standardize":
            layer.set_weights(
                [rng.uniform(0.5, 2, w.shape).astype(np.float32) for w in layer.get_weights()]
            )
    pixels = rng.integers(0, 256, (64, 32, 32, 3)).astype(np.float32)
    expected = np.asarray(model(pixels, training=False))
    lean = exportable(model)
    kinds = [type(layer).__name__ for layer in lean.layers]
    if tta == "flip":  # the test-time flips stay in front, their mean at the end
        assert kinds.pop(1) == "FlipPair" and kinds.pop() == "PairMean", kinds
    if pool > 1:  # the pooling stays in front of the folded Dense (as a fixed convolution)
        assert kinds.pop(1) == "Conv2D", kinds
    assert kinds[:3] == ["InputLayer", "FlatPixels", "Dense"], kinds
    assert "Dropout" not in kinds and "RandomFlipShift" not in kinds
    first = next(layer for layer in lean.layers if isinstance(layer, keras.layers.Dense))
    assert first.kernel.shape == (3072 // pool**2, pca or 16)
    # the first Dense is linear, so the BatchNormalization after it is folded in too
    assert kinds[3] == ("Dense" if pca else "Activation"), kinds
    np.testing.assert_allclose(np.asarray(lean(pixels)), expected, atol=2e-5)

    cnn = build_model(
        resolve("resnet8", overrides=dict(backend=None)), mean=np.zeros(3), variance=np.ones(3)
    )
    assert exportable(cnn) is cnn  # nothing to fold


def test_exported_mlp_graph_starts_with_one_reshape(exported):
    from ai_edge_litert.interpreter import Interpreter

    run, _, _ = exported
    interpreter = Interpreter(model_path=str(run.path / "exports" / "model_float32.tflite"))
    interpreter.allocate_tensors()
    ops = [op["op_name"] for op in interpreter._get_ops_details()]
    assert ops[:2] == ["RESHAPE", "FULLY_CONNECTED"], ops
    assert not {"SHAPE", "STRIDED_SLICE", "PACK"} & set(ops), ops


def test_int8_file_takes_shifted_pixel_bytes_with_no_op_before_its_first_layer(exported):
    """The int8 file's input is int8 of scale 1, zero point -128 (pixel - 128), so its graph
    starts at the reshape: a uint8 input would need a QUANTIZE op that XNNPACK does not
    take. The runtime's byte path (pixel - 128 in a kept buffer) feeds the same values as
    the general rule round(pixel / scale) + zero point."""
    run, ds, _ = exported
    path = run.path / "exports" / "model_int8.tflite"
    rt = runtimes.load(path)
    assert np.dtype(rt.input["dtype"]) == np.int8 and rt.input["quantization"] == (1.0, -128)
    assert runtimes.pixel_rule(np.int8, 1.0, -128).startswith("q = pixel - 128")
    ops = [op["op_name"] for op in rt.interpreter._get_ops_details()]
    assert ops[:2] == ["RESHAPE", "FULLY_CONNECTED"], ops
    pixels = data.split(ds).test.x[:1].copy()
    pixels.reshape(-1)[:6] = [0, 1, 127, 128, 254, 255]  # both ends and the middle
    byte_path = rt.predict(pixels)
    assert rt._shifted.view(np.int8).reshape(-1)[:6].tolist() == [-128, -127, -1, 0, 126, 127]
    general = rt.interpreter
    general.set_tensor(
        rt.input["index"], np.clip(np.round(pixels / 1.0 - 128), -128, 127).astype(np.int8)
    )
    general.invoke()
    assert np.array_equal(byte_path, general.get_tensor(rt.output["index"]))


def test_a_file_the_converter_cannot_make_is_one_line(tmp_path, monkeypatch):
    """The TFLite converter's own errors (an op it cannot quantize) become ExportError, which
    the CLI shows as one line, not a traceback."""
    import tensorflow as tf

    from harness.export.convert import ExportError, tflite_bytes

    class Refusing:  # takes the settings, then fails as the converter does
        target_spec = type("Spec", (), {})()

        def convert(self):
            raise RuntimeError("calibration failed\nQuantization not yet supported for op: 'ELU'.")

    monkeypatch.setattr(tf.lite.TFLiteConverter, "from_saved_model", lambda path: Refusing())
    with pytest.raises(ExportError, match="cannot make a int8 file: Quantization not yet"):
        tflite_bytes(tmp_path, "int8", np.zeros((1, 32, 32, 3), np.uint8))
