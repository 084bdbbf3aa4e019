"""harness import: models harness did not train, with their input contracts, as runs.

Every model here is made in the test (a nearest-colour classifier as ONNX or Keras, in the
contract under test) or is the committed MLPerf Tiny reference; the archives are synthetic:
each class is a colour, and the test batch carries MLPerf Tiny's 200 file names.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from harness.cli import main
from harness.core.contract import CIFAR_MEAN, CIFAR_STD, Contract
from harness.data import synthetic
from harness.data.cifar import TEST_BATCH, TRAIN_BATCHES
from harness.export import mlperf

REPO = Path(__file__).resolve().parents[1]
MLPERF_INT8 = REPO / "models" / "mlperf-tiny-ic" / "pretrainedResnet_quant.tflite"
MLPERF_SHA256 = "3c002613d1b2475eb51dd78dfb85a546c8ae658dee71cf6ade43b022fe205415"
PER_BATCH = 200  # the test batch holds MLPerf Tiny's 200 listed images


# --------------------------------------------------------------------------- data


@pytest.fixture(scope="module")
def colours():
    return np.random.default_rng(3).permutation(synthetic.SPREAD_COLOURS)


def colour_batches(colours, labels_for_test=None, seed=0, noise=12.0):
    """Train batches of random classes, the test batch in MLPerf's list order and names."""
    rng = np.random.default_rng(seed)
    listed = mlperf.read_list()
    out = {}
    for name in (*TRAIN_BATCHES, TEST_BATCH):
        y = (
            np.array([label for _, label in listed])
            if name == TEST_BATCH
            else rng.permutation(np.arange(PER_BATCH) % 10)
        )
        x = colours[y].reshape(-1, 1, 1, 3) + rng.normal(0, noise, (PER_BATCH, 32, 32, 3))
        x = np.clip(x, 0, 255).astype(np.uint8)
        names = [n for n, _ in listed] if name == TEST_BATCH else None
        out[name] = (x, y, names) if names else (x, y)
    return out


@pytest.fixture(scope="module")
def colour_archive(tmp_path_factory, colours):
    path = tmp_path_factory.mktemp("colours") / "cifar.tar.gz"
    return synthetic.write_archive(path, batches=colour_batches(colours))


# --------------------------------------------------------------------------- models


def centroid_weights(colours, contract: Contract):
    """A nearest-colour classifier in the model's own input space: logits 2 m.mu - |mu|^2
    of the image's mean m, mu each class colour under ``contract``."""
    mu = colours.astype(np.float64) * (1.0 if contract.input == "raw" else 1 / 255)
    if contract.mean is not None:
        mu = (mu - np.array(contract.mean)) / np.array(contract.std)
    if contract.channels == "bgr":
        mu = mu[:, ::-1]
    return (2 * mu.T).astype(np.float32), (-(mu**2).sum(1)).astype(np.float32)


def centroid_onnx(path: Path, colours, contract: Contract) -> Path:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w, b = centroid_weights(colours, contract)
    nchw = contract.layout == "nchw"
    out = "logits" if contract.output == "logits" else "probs"
    nodes = [
        helper.make_node("ReduceMean", ["x"], ["m"], axes=[2, 3] if nchw else [1, 2], keepdims=0),
        helper.make_node("Gemm", ["m", "W", "b"], ["logits"]),
    ]
    if out == "probs":
        nodes.append(helper.make_node("Softmax", ["logits"], ["probs"], axis=1))
    graph = helper.make_graph(
        nodes,
        "centroid",
        [
            helper.make_tensor_value_info(
                "x", TensorProto.FLOAT, ["N", 3, 32, 32] if nchw else ["N", 32, 32, 3]
            )
        ],
        [helper.make_tensor_value_info(out, TensorProto.FLOAT, ["N", 10])],
        initializer=[numpy_helper.from_array(w, "W"), numpy_helper.from_array(b, "b")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def centroid_keras(path: Path, colours, contract: Contract) -> Path:
    import keras

    w, b = centroid_weights(colours, contract)
    model = keras.Sequential(
        [keras.Input((32, 32, 3)), keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(10)]
    )
    model.layers[-1].set_weights([w, b])
    model.save(path)
    return path


def invoke(*args, archive=None, results=None):
    base = [] if archive is None else ["--archive", str(archive)]
    base += [] if results is None else ["--results", str(results)]
    return CliRunner().invoke(main, [*base, *map(str, args)])


def refused_in_one_line(result) -> str:
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    # The synthetic archive's own warnings (not the full CIFAR-10) come first.
    lines = [
        line
        for line in result.output.strip().splitlines()
        if line.strip() and not line.startswith("warning: ")
    ]
    assert len(lines) == 1, result.output
    return lines[0]


# --------------------------------------------------------------------------- contracts


def test_contract_arithmetic_is_the_bundles(colours):
    """Contract.apply: scale, then mean/std in R G B, then channel order, then layout."""
    pixels = np.arange(2 * 32 * 32 * 3, dtype=np.uint8).reshape(2, 32, 32, 3)
    c = Contract(layout="nchw", channels="bgr", input="unit", mean=CIFAR_MEAN, std=CIFAR_STD)
    got = c.apply(pixels)
    want = ((pixels / 255.0 - CIFAR_MEAN) / CIFAR_STD)[..., ::-1].transpose(0, 3, 1, 2)
    assert got.shape == (2, 3, 32, 32) and got.dtype == np.float32
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    assert Contract().apply(pixels) is pixels  # the plain contract touches nothing
    logits = np.array([[1.0, 2.0, 3.0]], np.float32)
    np.testing.assert_allclose(Contract(output="logits").probs(logits).sum(), 1.0, rtol=1e-6)


def test_integer_input_takes_its_contract_from_its_quantization():
    from harness.imports.imported import quantized_contract

    def probed(dtype, scale, zero):
        return {"input": {"dtype": dtype, "quantization": {"scale": scale, "zero_point": zero}}}

    assert quantized_contract(probed("int8", 1.0, -128)) == {"input": "raw"}
    assert quantized_contract(probed("uint8", 1.0, 0)) == {"input": "raw"}
    assert quantized_contract(probed("int8", 1 / 255, -128)) == {"input": "unit"}
    mean_std = quantized_contract(probed("int8", 0.5, 0))  # float = (pixel - 128) / 2
    assert mean_std["mean"] == [128.0] * 3 and mean_std["std"] == [2.0] * 3
    assert quantized_contract({"input": {"dtype": "float32"}}) is None


# --------------------------------------------------------------------------- ONNX NCHW /255


def test_onnx_nchw_unit_logits_import_bench_predict_deploy_compare(
    tmp_path, colours, colour_archive
):
    """The whole path of an imported ONNX file that wants NCHW pixels / 255 and answers
    logits: the layout read off its shape, the logits off its outputs; bench with MLPerf
    Tiny's modes; predict and the bundle apply the contract; compare marks it imported."""
    contract = Contract(layout="nchw", input="unit", output="logits")
    model = centroid_onnx(tmp_path / "centroid.onnx", colours, contract)
    results = tmp_path / "results"
    done = invoke(
        "import",
        model,
        "--name",
        "centroid",
        "--input",
        "unit",
        "--source",
        "made in a test",
        archive=colour_archive,
        results=results,
    )
    assert done.exit_code == 0, done.output
    assert "decides the layout: nchw" in done.output
    run = results / "runs" / "centroid"
    config = json.loads((run / "config.json").read_text())
    metrics = json.loads((run / "metrics.json").read_text())
    assert config["contract"]["layout"] == "nchw" and config["contract"]["output"] == "logits"
    assert metrics["kind"] == "imported" and metrics["test"]["accuracy"] > 0.95
    assert (run / "source" / "centroid.onnx").read_bytes() == model.read_bytes()
    import hashlib

    assert config["sha256"] == hashlib.sha256(model.read_bytes()).hexdigest()

    bench = invoke(
        "bench",
        "centroid",
        "--calls",
        "20",
        "--warmup",
        "2",
        "--mode",
        "accuracy",
        "--mode",
        "performance",
        "--window-s",
        "0.05",
        archive=colour_archive,
        results=results,
    )
    assert bench.exit_code == 0, bench.output
    record = json.loads((results / "bench" / "centroid.json").read_text())
    (row,) = record["rows"]
    assert row["imported"] and row["runtime"] == "onnxruntime" and row["file"] == "centroid.onnx"
    assert row["test"]["accuracy"] == metrics["test"]["accuracy"]
    assert row["mlperf"]["accuracy"]["images"] == 200
    assert row["mlperf"]["accuracy"]["accuracy"] > 0.95
    perf = row["mlperf"]["performance"]
    assert perf["windows"] == 5
    assert perf["latency_us"] == pytest.approx(1e6 / perf["throughput_ips"])
    assert record["imported"]["sha256"] == config["sha256"]

    from PIL import Image

    from harness.data.cifar import load

    ds = load(colour_archive, tmp_path / "home")
    images = tmp_path / "images"
    images.mkdir()
    for i in range(5):
        Image.fromarray(ds.x_test[i]).save(images / f"{i}.png")
    predicted = invoke("predict", run, images)
    assert predicted.exit_code == 0, predicted.output
    classes = [line.split(": ")[1].split()[0] for line in predicted.output.strip().splitlines()]
    assert classes == [ds.label_names[c] for c in ds.y_test[:5]]

    deployed = invoke(
        "deploy",
        "centroid",
        "--target",
        "linux",
        "--runtime",
        "onnx",
        "--calls",
        "20",
        "--warmup",
        "2",
        archive=colour_archive,
        results=results,
    )
    assert deployed.exit_code == 0, deployed.output  # deploy runs the bundle's selftest
    bundle = results / "deploy" / "centroid-linux-onnx-float32"
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["files"]["centroid.onnx"]["sha256"] == config["sha256"]
    assert manifest["input"]["contract"] == config["contract"]
    assert "standardizes them itself" not in manifest["input"]["pixels"]
    assert "/ 255" in manifest["input"]["pixels"] and "NCHW" in manifest["input"]["pixels"]
    wrong_precision = invoke(
        "deploy",
        "centroid",
        "--target",
        "linux",
        "--runtime",
        "litert",
        archive=colour_archive,
        results=results,
    )
    assert "--runtime onnx" in refused_in_one_line(wrong_precision)

    report = invoke("compare", results, "--out", tmp_path / "report", "--format", "csv")
    assert report.exit_code == 0, report.output
    line = next(line for line in report.output.splitlines() if line.startswith("centroid,"))
    assert "imported onnx dense" in line and "imported (made in a test)" in line


def test_a_wrong_contract_is_refused_naming_the_one_that_scores(tmp_path, colours, colour_archive):
    model = centroid_onnx(
        tmp_path / "centroid.onnx", colours, Contract(layout="nchw", input="unit", output="logits")
    )
    done = invoke(
        "import", model, "--name", "wrong", archive=colour_archive, results=tmp_path / "results"
    )
    line = refused_in_one_line(done)
    assert "near chance" in line and "--input unit scores best" in line
    assert not (tmp_path / "results" / "runs" / "wrong").exists()


def test_a_bgr_model_scores_only_with_its_channels(tmp_path, colours, colour_archive):
    model = centroid_onnx(tmp_path / "bgr.onnx", colours, Contract(channels="bgr"))
    from harness.data.cifar import load
    from harness.imports.imported import import_model

    ds = load(colour_archive, tmp_path / "home")
    right = import_model(model, ds, tmp_path / "r", "bgr", channels="bgr")
    assert right["test"]["accuracy"] > 0.95
    assert right["import"]["contract"]["channels"] == "bgr"
    assert right["import"]["contract"]["output"] == "probs"  # read off its softmax
    try:
        as_rgb = import_model(model, ds, tmp_path / "r", "rgb")["test"]["accuracy"]
    except ValueError:
        as_rgb = 0.0  # refused as near chance
    assert as_rgb < right["test"]["accuracy"] - 0.2


# --------------------------------------------------------------------------- Keras


def test_a_keras_logits_model_gets_harness_form_and_exports(tmp_path, colours, colour_archive):
    model = centroid_keras(
        tmp_path / "centroid.keras", colours, Contract(input="unit", output="logits")
    )
    results = tmp_path / "results"
    done = invoke(
        "import", model, "--name", "kc", "--input", "unit", archive=colour_archive, results=results
    )
    assert done.exit_code == 0, done.output
    metrics = json.loads((results / "runs" / "kc" / "metrics.json").read_text())
    assert metrics["import"]["contract"]["output"] == "logits"
    assert metrics["test"]["accuracy"] > 0.95 and metrics["macs"] == 30
    assert (results / "runs" / "kc" / "model.keras").exists()  # contract and softmax folded
    exported = invoke(
        "export",
        "kc",
        "--format",
        "tflite",
        "--quantize",
        "float32",
        archive=colour_archive,
        results=results,
    )
    assert exported.exit_code == 0, exported.output
    rec = json.loads(
        (results / "runs" / "kc" / "exports" / "model_float32.tflite.json").read_text()
    )
    assert rec["test"]["accuracy"] == pytest.approx(metrics["test"]["accuracy"], abs=0.01)


def test_a_saved_model_imports_and_one_that_reads_files_is_refused(
    tmp_path, colours, colour_archive
):
    import tensorflow as tf

    keras_file = centroid_keras(tmp_path / "c.keras", colours, Contract())
    import keras

    keras.saving.load_model(keras_file).export(
        str(tmp_path / "sm"), format="tf_saved_model", verbose=False
    )
    results = tmp_path / "results"
    done = invoke(
        "import", tmp_path / "sm", "--name", "sm", archive=colour_archive, results=results
    )
    assert done.exit_code == 0, done.output
    metrics = json.loads((results / "runs" / "sm" / "metrics.json").read_text())
    assert metrics["import"]["format"] == "saved_model" and metrics["test"]["accuracy"] > 0.95
    assert (
        invoke(
            "deploy", "sm", "--target", "linux", archive=colour_archive, results=results
        ).exit_code
        == 2
    )

    class Reader(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, 32, 32, 3], tf.float32)])
        def serve(self, x):
            secret = tf.strings.length(tf.io.read_file("/etc/hostname"))
            return {
                "probs": tf.nn.softmax(
                    tf.reduce_mean(x, [1, 2]) @ tf.ones([3, 10]) + tf.cast(secret, tf.float32)
                )
            }

    reader = Reader()
    tf.saved_model.save(
        reader, str(tmp_path / "reader"), signatures={"serving_default": reader.serve}
    )
    refused = invoke(
        "import", tmp_path / "reader", "--name", "reader", archive=colour_archive, results=results
    )
    assert "ReadFile" in refused_in_one_line(refused)


def test_an_h5_with_a_lambda_is_refused_and_its_code_never_runs(tmp_path, colour_archive):
    tf_keras = pytest.importorskip("tf_keras")
    marker = tmp_path / "ran"

    def touch(x, marker=str(marker)):
        open(marker, "w").write("the Lambda's code ran")
        return x

    model = tf_keras.Sequential(
        [
            tf_keras.layers.InputLayer((32, 32, 3)),
            tf_keras.layers.Lambda(touch),
            tf_keras.layers.GlobalAveragePooling2D(),
            tf_keras.layers.Dense(10, activation="softmax"),
        ]
    )
    model.save(tmp_path / "lambda.h5")
    marker.unlink()  # building the model ran it; loading the file must not
    done = invoke(
        "import",
        tmp_path / "lambda.h5",
        "--name",
        "lam",
        archive=colour_archive,
        results=tmp_path / "results",
    )
    assert "Lambda" in refused_in_one_line(done)
    assert not marker.exists()


def test_a_custom_keras_class_is_refused_before_loading():
    from harness.imports.foreign import ForeignFileError, check_keras_config

    config = {
        "class_name": "Functional",
        "config": {
            "layers": [
                {"class_name": "InputLayer", "config": {"name": "x"}},
                {
                    "class_name": "Evil",
                    "module": "attacker.layers",
                    "registered_name": "Custom>Evil",
                    "config": {"name": "evil"},
                },
            ]
        },
    }
    with pytest.raises(ForeignFileError, match="custom class"):
        check_keras_config(config, "m.keras")


# --------------------------------------------------------------------------- bad files


def test_onnx_external_data_outside_its_folder_is_refused(tmp_path, colours, colour_archive):
    import onnx
    from onnx.external_data_helper import set_external_data

    secret = tmp_path / "secret.bin"
    secret.write_bytes(np.zeros(30, np.float32).tobytes())
    folder = tmp_path / "model"
    folder.mkdir()
    path = centroid_onnx(folder / "m.onnx", colours, Contract())
    model = onnx.load(str(path))
    weights = next(t for t in model.graph.initializer if t.name == "W")
    set_external_data(weights, location="../secret.bin")
    weights.ClearField("raw_data")
    weights.data_location = onnx.TensorProto.EXTERNAL
    onnx.save(model, str(path))
    done = invoke(
        "import", path, "--name", "ext", archive=colour_archive, results=tmp_path / "results"
    )
    assert "outside the model's folder" in refused_in_one_line(done)


@pytest.mark.parametrize("kind", ["tflite", "onnx", "empty", "keras"])
def test_a_truncated_or_empty_file_gets_one_line(tmp_path, colours, colour_archive, kind):
    if kind == "tflite":
        path = tmp_path / "cut.tflite"
        path.write_bytes(MLPERF_INT8.read_bytes()[:4000])
    elif kind == "onnx":
        whole = centroid_onnx(tmp_path / "whole.onnx", colours, Contract()).read_bytes()
        path = tmp_path / "cut.onnx"
        path.write_bytes(whole[: len(whole) // 2])
    elif kind == "keras":
        path = tmp_path / "cut.keras"
        path.write_bytes(b"PK\x03\x04 not really a zip")
    else:
        path = tmp_path / "empty.tflite"
        path.write_bytes(b"")
    done = invoke(
        "import", path, "--name", "cut", archive=colour_archive, results=tmp_path / "results"
    )
    refused_in_one_line(done)
    assert not (tmp_path / "results" / "runs" / "cut").exists()


def test_a_runtime_crash_ends_the_probe_not_harness(tmp_path):
    """A file that crashes its runtime: the probe's subprocess dies, harness names it."""
    from harness.imports import foreign

    script = tmp_path / "crash.py"
    script.write_text("import os, signal; os.kill(os.getpid(), signal.SIGSEGV)\n")
    original = foreign.PROBE
    try:
        foreign.PROBE = script.read_text()
        with pytest.raises(foreign.ForeignFileError, match="crashed reading it"):
            foreign.probe(MLPERF_INT8, "tflite")
    finally:
        foreign.PROBE = original


# --------------------------------------------------------------------------- MLPerf


def test_mlperf_accuracy_list_needs_the_file_names(tmp_path, archive):
    from harness.data.cifar import load

    ds = load(archive, tmp_path / "home")  # synthetic names img_00000.png ...
    with pytest.raises(mlperf.MlperfError, match="lacks 200 of the 200"):
        mlperf.accuracy_images(ds)
    ds.test_names = None
    with pytest.raises(mlperf.MlperfError, match="import the archive again"):
        mlperf.accuracy_images(ds)


def test_performance_mode_is_the_median_of_windows():
    calls = []
    figures = mlperf.performance_mode(lambda x: calls.append(1), np.zeros(1), window_s=0.01)
    assert figures["windows"] == 5 and len(figures["window_ips"]) == 5
    assert figures["throughput_ips"] == pytest.approx(np.median(figures["window_ips"]), rel=1e-3)
    assert len(calls) >= 5


def self_labelled_archive(path: Path, per_batch: int = 100) -> Path:
    """Colour images labelled by the MLPerf Tiny model's own answers: it scores 100% here."""
    from harness.export.runtimes import load, predict_batched

    model = load(MLPERF_INT8)
    batches = synthetic.make_batches(per_batch, seed=1, noise=20.0, spread=True)
    labelled = {
        name: (x, predict_batched(model, x).argmax(1).astype(np.int64))
        for name, (x, _) in batches.items()
    }
    return synthetic.write_archive(path, batches=labelled)


def test_the_committed_mlperf_reference_imports_and_deploys_unchanged(tmp_path):
    assert __import__("hashlib").sha256(MLPERF_INT8.read_bytes()).hexdigest() == MLPERF_SHA256
    archive = self_labelled_archive(tmp_path / "self.tar.gz")
    results = tmp_path / "results"
    done = invoke("import", MLPERF_INT8, "--name", "mlperf", archive=archive, results=results)
    assert done.exit_code == 0, done.output
    assert "the file's input quantization" in done.output
    metrics = json.loads((results / "runs" / "mlperf" / "metrics.json").read_text())
    assert metrics["precision"] == "int8" and metrics["macs"] == 12_501_632
    assert metrics["test"]["accuracy"] == 1.0
    assert invoke("export", "mlperf", archive=archive, results=results).exit_code == 2
    assert (
        invoke(
            "sparsify", "mlperf", "--threshold", "0.1", archive=archive, results=results
        ).exit_code
        == 2
    )
    linux = invoke(
        "deploy",
        "mlperf",
        "--target",
        "linux",
        "--calls",
        "20",
        "--warmup",
        "2",
        archive=archive,
        results=results,
    )
    assert linux.exit_code == 0, linux.output
    manifest = json.loads(
        (results / "deploy" / "mlperf-linux-litert-int8" / "manifest.json").read_text()
    )
    assert manifest["files"]["pretrainedResnet_quant.tflite"]["sha256"] == MLPERF_SHA256
    assert manifest["input"]["contract"]["input"] == "raw"
    pytest.importorskip("tflite_micro")
    mcu = invoke("deploy", "mlperf", "--target", "mcu", archive=archive, results=results)
    assert mcu.exit_code == 0, mcu.output
    folder = results / "deploy" / "mlperf-mcu-litert-int8"
    assert (folder / "pretrainedResnet_quant.tflite").read_bytes() == MLPERF_INT8.read_bytes()
    manifest = json.loads((folder / "manifest.json").read_text())
    accuracy = manifest["accuracy"]  # labelled by XNNPACK; TFLM's kernels round alike to
    assert accuracy["tflm"]["accuracy"] > 0.9  # LiteRT's reference ones, not XNNPACK's
    assert accuracy["tflm"]["accuracy"] == accuracy["litert_reference"]["accuracy"]
    assert manifest["footprint"]["macs_per_image"] == 12_501_632


def test_the_bundle_predict_applies_the_contract_without_harness(tmp_path, colours, colour_archive):
    """predict.py alone (python -I, its own folder): the same answers as harness."""
    model = centroid_onnx(
        tmp_path / "c.onnx",
        colours,
        Contract(input="unit", mean=CIFAR_MEAN, std=CIFAR_STD, output="logits"),
    )
    results = tmp_path / "results"
    assert (
        invoke(
            "import",
            model,
            "--name",
            "std",
            "--input",
            "unit",
            "--mean",
            ",".join(map(str, CIFAR_MEAN)),
            "--std",
            ",".join(map(str, CIFAR_STD)),
            archive=colour_archive,
            results=results,
        ).exit_code
        == 0
    )
    assert (
        invoke(
            "deploy",
            "std",
            "--target",
            "linux",
            "--runtime",
            "onnx",
            "--calls",
            "20",
            "--warmup",
            "2",
            archive=colour_archive,
            results=results,
        ).exit_code
        == 0
    )
    bundle = results / "deploy" / "std-linux-onnx-float32"
    from harness.data.cifar import load

    ds = load(colour_archive, tmp_path / "home")
    np.savez(tmp_path / "x.npz", x=ds.x_test, y=ds.y_test)
    done = subprocess.run(
        [
            sys.executable,
            "-I",
            str(bundle / "predict.py"),
            "--npz",
            str(tmp_path / "x.npz"),
            "--json",
        ],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    metrics = json.loads((results / "runs" / "std" / "metrics.json").read_text())
    assert summary["accuracy"] == pytest.approx(metrics["test"]["accuracy"], abs=1e-6)


IMPORTED = sorted(
    p
    for p in (REPO / "results" / "reference").glob("runs/*/config.json")
    if json.loads(p.read_text()).get("kind") == "imported"
)


@pytest.mark.parametrize("config", IMPORTED, ids=lambda p: p.parent.name)
def test_committed_imports_hold_the_files_they_name(config):
    """Each committed imported run: its metrics keep the run format, and its file (where
    committed; files over 1 MB are not) has the sha256 its config records."""
    import hashlib

    from harness.core.schemas import check_run

    info = json.loads(config.read_text())
    metrics = check_run(json.loads((config.parent / "metrics.json").read_text()))
    assert metrics["import"]["sha256"] == info["sha256"]
    source = config.parent / "source" / info["file"]
    if source.exists():
        assert hashlib.sha256(source.read_bytes()).hexdigest() == info["sha256"]
    else:
        assert info["bytes"] > 1_000_000


def test_the_reference_imports_are_committed():
    assert {p.parent.name for p in IMPORTED} >= {
        "mlperf-tiny-ic-int8",
        "mlperf-tiny-ic-float32",
        "mlperf-tiny-ic-h5",
    }
