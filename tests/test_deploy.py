"""harness deploy: the linux bundle, its standalone predict.py and its selftest.

One tiny trained run (synthetic data), bundled once for LiteRT int8 and once for ONNX
float32; predict.py runs in fresh processes where harness, TensorFlow, Keras and JAX
cannot be imported.
"""

import hashlib
import json
import shutil
import subprocess
import sys
import tarfile
from importlib import metadata
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from harness.cli import main
from harness.core.config import resolve
from harness.core.records import RunDir
from harness.data import cifar as data
from harness.deploy import bundle as bundle_mod
from harness.deploy import linux as deploy
from harness.edge import predict as predict_mod
from harness.export.convert import QUANTIZATIONS
from harness.train.fit import train

BUNDLES = {"litert": "int8", "onnx": "float32"}  # runtime -> precision
BLOCKED = ("harness", "tensorflow", "keras", "jax", "tf_keras")
# Runs predict.py (argv[1]) with argv[2:] in a process that cannot import BLOCKED.
STANDALONE = f"""
import importlib.abc, runpy, sys
class Blocker(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in {BLOCKED!r}:
            raise ImportError(f'{{name}} is blocked: predict.py must run without it')
sys.meta_path.insert(0, Blocker())
script, sys.argv = sys.argv[1], sys.argv[1:]
runpy.run_path(script, run_name='__main__')
"""


def standalone(bundle: Path, *args) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-I", "-c", STANDALONE, str(bundle / "predict.py"), *map(str, args)],
        capture_output=True,
        text=True,
        cwd=bundle.parent,
    )


@pytest.fixture(scope="module")
def trained(tmp_path_factory, archive):
    results = tmp_path_factory.mktemp("results")
    ds = data.load(archive, home=results / "home")
    cfg = resolve("bn-elu", overrides=dict(layers=2, units=32, epochs=3, batch_size=64, name="d"))
    train(cfg, ds, results, verbose=0)
    return RunDir.named(results, "d"), ds, results


def _files(folder: Path) -> dict[str, float]:
    return {str(p.relative_to(folder)): p.stat().st_mtime for p in folder.rglob("*")}


@pytest.fixture(scope="module")
def bundles(trained):
    run, ds, results = trained
    before = _files(run.path)
    made = {
        runtime: deploy.deploy_run(
            run, ds, results / "deploy", "linux", runtime, precision, calls=20, warmup=2
        )
        for runtime, precision in BUNDLES.items()
    }
    return {**made, "run files": (before, _files(run.path))}


@pytest.fixture(params=sorted(BUNDLES))
def bundle(request, bundles):
    return bundles[request.param]


def test_bundle_folder_archive_and_sha256(bundle, trained):
    run, ds, results = trained
    folder, manifest = bundle["folder"], bundle["manifest"]
    precision = manifest["model"]["precision"]
    runtime = {"tflite": "litert", "onnx": "onnx"}[manifest["model"]["format"]]
    assert folder == results / "deploy" / f"d-linux-{runtime}-{precision}"
    assert manifest["bundle"] == folder.name and BUNDLES[runtime] == precision
    model_file = manifest["model"]["file"]
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        ["README.md", "device_bench.py", "manifest.json", model_file, "predict.py"]
        + ["requirements.txt", "samples.npz"]
    )
    archive = bundle["archive"]
    digest = hashlib.sha256(archive.read_bytes()).hexdigest()
    assert bundle["sha256"] == digest
    assert archive.with_name(archive.name + ".sha256").read_text() == f"{digest}  {archive.name}\n"
    with tarfile.open(archive) as tar:
        members = {m.name: m for m in tar.getmembers() if m.isfile()}
        assert set(members) == {f"{folder.name}/{p.name}" for p in folder.iterdir()}
        assert (
            tar.extractfile(f"{folder.name}/manifest.json").read()
            == (folder / "manifest.json").read_bytes()
        )
        assert {(m.uid, m.uname) for m in members.values()} == {(0, "")}
    assert not [p for p in folder.parent.iterdir() if p.name.startswith(".")]  # no staging left


def test_deploying_leaves_the_run_as_it_was(bundles):
    before, after = bundles["run files"]
    assert after == before and "model.keras" in before


def test_manifest_sha256s_match_the_files(bundle):
    folder = bundle["folder"]
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest == bundle["manifest"]
    assert set(manifest["files"]) == {p.name for p in folder.iterdir()} - {"manifest.json"}
    for name, facts in manifest["files"].items():
        blob = (folder / name).read_bytes()
        assert facts == {"sha256": hashlib.sha256(blob).hexdigest(), "bytes": len(blob)}, name


def test_manifest_figures_are_the_measured_ones(bundle, trained):
    from harness.export import runtimes
    from harness.train.evaluate import score

    run, ds, _ = trained
    manifest = bundle["manifest"]
    model = manifest["model"]
    measured = manifest["measured"]
    probs = runtimes.predict_batched(runtimes.load(bundle["folder"] / model["file"]), ds.x_test)
    assert measured["test"]["accuracy"] == score(probs, ds.y_test)["accuracy"]
    assert measured["test"]["images"] == len(ds.x_test)
    latency = measured["latency_batch1"]
    assert 0 < latency["p50_us"] <= latency["p90_us"] <= latency["p99_us"]
    assert latency["calls"] == 20 and latency["threads"] == 1
    assert {"cpu", "cores", "versions"} <= set(measured["machine"])
    assert manifest["input"]["dtype"] == ("int8" if model["precision"] == "int8" else "float32")
    assert manifest["input"]["shape"] == [-1, 32, 32, 3]
    assert manifest["classes"] == list(data.LABEL_NAMES)
    assert manifest["source"] == {"run": "d", "config": run.read_config(), "data": ds.record}
    assert manifest["harness_version"] == metadata.version("harness")
    assert manifest["selftest"]["tolerance"] == deploy.TOLERANCES[model["precision"]]
    package = manifest["runtime"]["package"]
    pins = [f"{p}=={metadata.version(p)}" for p in ("numpy", "pillow", package)]
    assert (bundle["folder"] / "requirements.txt").read_text().split() == pins
    with np.load(bundle["folder"] / "samples.npz") as samples:
        assert samples["x"].dtype == np.uint8 and samples["x"].shape == (100, 32, 32, 3)
        np.testing.assert_array_equal(samples["x"], ds.x_test[samples["index"]])
        assert sorted(np.bincount(samples["y"])) == [10] * 10
    readme = (bundle["folder"] / "README.md").read_text()
    assert f"{measured['test']['accuracy']:.2%}" in readme and "--selftest" in readme


def test_selftest_passes_without_harness_tensorflow_keras_jax(bundle, tmp_path):
    (tmp_path / "imports.py").write_text("import tensorflow\n")
    blocked = subprocess.run(
        [sys.executable, "-I", "-c", STANDALONE, tmp_path / "imports.py"],
        capture_output=True,
        text=True,
    )
    assert blocked.returncode == 1 and "tensorflow is blocked" in blocked.stderr  # it works
    with tarfile.open(bundle["archive"]) as tar:  # ... and the archive alone is enough
        tar.extractall(tmp_path, filter="data")
    done = standalone(tmp_path / bundle["folder"].name, "--selftest")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("selftest ok: 100 samples"), done.stdout


def _copy(bundle, tmp_path) -> Path:
    return Path(shutil.copytree(bundle["folder"], tmp_path / bundle["folder"].name))


def _tamper(folder: Path, change) -> None:
    """Change samples.npz's recorded probabilities, and its sha256 in the manifest, so only
    the comparison can catch it."""
    with np.load(folder / "samples.npz") as samples:
        arrays = dict(samples)
    change(arrays["probs"])
    np.savez_compressed(folder / "samples.npz", **arrays)
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["files"]["samples.npz"]["sha256"] = predict_mod.sha256(folder / "samples.npz")
    (folder / "manifest.json").write_text(json.dumps(manifest))


def test_a_tampered_probability_fails_the_selftest(bundle, tmp_path):
    folder = _copy(bundle, tmp_path)

    def nudge(probs):  # 0.05 moved between two classes: the class stays, the values do not
        low = probs[7].argmin()
        probs[7, low] += 0.05
        probs[7, probs[7].argmax()] -= 0.05

    _tamper(folder, nudge)
    done = standalone(folder, "--selftest")
    assert done.returncode == 1
    assert done.stderr.startswith("predict.py: selftest failed: sample 7: probability")
    assert len(done.stderr.strip().splitlines()) == 1


def test_a_tampered_class_fails_the_selftest(bundle, tmp_path):
    folder = _copy(bundle, tmp_path)

    def swap(probs):  # image 3 recorded with a confident other class
        probs[3] = np.roll(np.eye(10, dtype=np.float32)[probs[3].argmax()], 1)

    _tamper(folder, swap)
    done = standalone(folder, "--selftest")
    assert done.returncode == 1 and "sample 3: class" in done.stderr, done.stderr


def test_a_changed_file_fails_the_selftest(bundle, tmp_path):
    folder = _copy(bundle, tmp_path)
    (folder / "README.md").write_text("changed")
    done = standalone(folder, "--selftest")
    assert done.returncode == 1
    assert (
        done.stderr == "predict.py: README.md: sha256 differs from manifest.json "
        "(damaged or changed)\n"
    )


def test_near_ties_may_change_class_far_ones_may_not():
    classes = list("abc")
    recorded = np.array([[0.500, 0.496, 0.004]], np.float32)
    flipped = np.array([[0.497, 0.499, 0.004]], np.float32)  # off by 3e-3 each
    assert predict_mod.compare(flipped, recorded, 1e-2, classes) is None
    assert "class b, recorded a" in predict_mod.compare(flipped, recorded, 2e-3, classes)
    assert "off by" in predict_mod.compare(recorded + [[0, 0.02, -0.02]], recorded, 1e-2, classes)
    assert set(deploy.TOLERANCES) == set(QUANTIZATIONS)


def _png(path: Path, pixels: np.ndarray, size=None) -> Path:
    from PIL import Image

    image = Image.fromarray(pixels)
    (image.resize(size, Image.Resampling.NEAREST) if size else image).save(path)
    return path


def test_predict_names_the_class_of_a_known_image(bundle, tmp_path):
    folder = bundle["folder"]
    with np.load(folder / "samples.npz") as samples:
        x, y, probs = samples["x"], samples["y"], samples["probs"]
    sure = np.flatnonzero((probs.argmax(1) == y) & (probs.max(1) > 0.5))
    assert len(sure) >= 5, "the tiny model should know a few samples"
    pick = [int(i) for i in sure[:3]]
    images = tmp_path / "images"
    images.mkdir()
    for i in pick:
        _png(images / f"{i:03d}.png", x[i])
    big = _png(tmp_path / "big.png", x[pick[0]], size=(64, 64))
    done = standalone(folder, images, big, "--json", "--top", "2")
    assert done.returncode == 0, done.stderr
    rows = [json.loads(line) for line in done.stdout.splitlines()]
    assert [r["image"] for r in rows] == [str(images / f"{i:03d}.png") for i in pick] + [str(big)]
    tolerance = bundle["manifest"]["selftest"]["tolerance"]
    for row, i in zip(rows, pick):
        assert [t["class"] for t in row["top"]][0] == data.LABEL_NAMES[y[i]]
        assert abs(row["top"][0]["probability"] - probs[i].max()) <= tolerance
        assert len(row["top"]) == 2 and row["top"][0]["probability"] >= row["top"][1]["probability"]
    assert done.stderr.count("note:") == 1 and "big.png is 64x64; resized to 32x32" in done.stderr
    table = standalone(folder, images / f"{pick[0]:03d}.png")
    assert table.returncode == 0 and data.LABEL_NAMES[y[pick[0]]] in table.stdout.splitlines()[1]


def test_npz_in_probabilities_out(bundle, trained, tmp_path):
    from harness.export import runtimes

    run, ds, _ = trained
    np.savez(tmp_path / "test.npz", x=ds.x_test, y=ds.y_test)
    done = standalone(
        bundle["folder"], "--npz", tmp_path / "test.npz", "--dump-probs", tmp_path / "probs.npy"
    )
    assert done.returncode == 0, done.stderr
    probs = np.load(tmp_path / "probs.npy")
    expected = runtimes.predict_batched(
        runtimes.load(bundle["folder"] / bundle["manifest"]["model"]["file"]), ds.x_test
    )
    np.testing.assert_allclose(probs, expected, atol=1e-6)
    accuracy = bundle["manifest"]["measured"]["test"]["accuracy"]
    assert done.stdout.splitlines()[-1] == f"accuracy {accuracy:.4f} on {len(ds.x_test)} images"


@pytest.mark.parametrize(
    "args,message",
    [
        (["missing.png"], "missing.png: no such file or folder"),
        ([], "give image files/folders, or --npz FILE, --selftest or --bench"),
        (["--selftest", "a.png"], "--selftest takes no images"),
        (["a.png", "--top", "11"], "--top 11: must be 1 to 10"),
        (["--npz", "notes.txt"], "notes.txt: not a readable .npz file"),
        (["--npz", "wrong.npz"], "expected key x of uint8 images (N, 32, 32, 3), got x float32"),
        (["--frobnicate"], "unrecognized arguments: --frobnicate"),
    ],
)
def test_bad_input_exits_2_with_one_line(bundles, tmp_path, args, message):
    folder = _copy(bundles["onnx"], tmp_path)
    (tmp_path / "notes.txt").write_text("not an image")
    _png(tmp_path / "a.png", np.zeros((32, 32, 3), np.uint8))
    np.savez(tmp_path / "wrong.npz", x=np.zeros((2, 32, 32, 3), np.float32))
    done = standalone(folder, *args)  # cwd is tmp_path
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith("predict.py: error: ") and message in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and done.stdout == ""


def test_a_model_the_runtime_cannot_run_exits_1(bundles, tmp_path):
    folder = _copy(bundles["onnx"], tmp_path)
    (folder / "model.onnx").write_bytes(b"not a model")
    np.savez(tmp_path / "x.npz", x=np.zeros((1, 32, 32, 3), np.uint8))
    done = standalone(folder, "--npz", tmp_path / "x.npz")
    assert done.returncode == 1 and done.stderr.startswith(
        "predict.py: model.onnx: the runtime cannot load it"
    ), done.stderr


@pytest.mark.parametrize("name", ["../escape", ".hidden", "a/b", "", "a b", "-rf", "x" * 101])
def test_a_bad_bundle_name_exits_2(trained, name):
    run, _, results = trained
    result = CliRunner().invoke(
        main,
        ["--results", str(results), "deploy", str(run.path), "--target", "linux", "--name", name],
    )
    assert result.exit_code == 2, result.output
    assert "a bundle name is 1 to 100 letters" in result.output
    with pytest.raises(bundle_mod.DeployError):
        bundle_mod.check_name(name)
    assert bundle_mod.check_name("fr-edge_r2.v1") == "fr-edge_r2.v1"


@pytest.mark.parametrize(
    "options,message",
    [
        (["--target", "linux", "--runtime", "onnx", "--quantize", "int8"], "float32 only"),
        (["--target", "linux", "--flash-kb", "64"], "budgets for a microcontroller only"),
        (["--target", "mcu", "--quantize", "float32"], "int8 only"),
        (["--target", "mcu", "--runtime", "onnx"], "int8 only"),
    ],
)
def test_impossible_options_exit_2(trained, options, message):
    run, _, results = trained
    result = CliRunner().invoke(
        main, ["--results", str(results), "deploy", str(run.path), *options]
    )
    assert result.exit_code == 2 and message in result.output, result.output


def test_cli_writes_the_bundle_under_results(trained, archive, tmp_path):
    run, _, _ = trained
    result = CliRunner().invoke(
        main,
        [
            "--archive",
            str(archive),
            "--results",
            str(tmp_path),
            "deploy",
            str(run.path),
            "--target",
            "linux",
            "--runtime",
            "onnx",
            "--calls",
            "10",
            "--warmup",
            "0",
        ],
    )
    assert result.exit_code == 0, result.output
    folder = tmp_path / "deploy" / "d-linux-onnx-float32"
    assert (folder / "manifest.json").exists() and (folder / "model.onnx").exists()
    digest = hashlib.sha256(folder.with_name(folder.name + ".tar.gz").read_bytes()).hexdigest()
    assert f"sha256 {digest}" in result.output and "selftest passed here" in result.output


def test_a_flagged_export_is_refused_and_nothing_is_written(trained, monkeypatch, tmp_path):
    from harness.export import convert as export

    run, ds, _ = trained
    monkeypatch.setitem(export.MAX_DROP_POINTS, "float32", -1.0)  # every export "loses"
    with pytest.raises(bundle_mod.DeployError, match="--allow-flagged"):
        deploy.deploy_run(run, ds, tmp_path, "linux", "onnx", calls=10, warmup=0)
    assert list(tmp_path.iterdir()) == []


def test_mcu_without_harness_mcu_is_a_clear_error(trained, monkeypatch, tmp_path):
    run, ds, _ = trained
    monkeypatch.setitem(sys.modules, "harness.deploy.mcu", None)  # as if it were not installed
    with pytest.raises(bundle_mod.DeployError, match="needs harness.deploy.mcu"):
        deploy.deploy_run(run, ds, tmp_path, "mcu")
    assert list(tmp_path.iterdir()) == []


def test_mcu_bundle(trained, tmp_path):
    pytest.importorskip("harness.deploy.mcu")
    run, ds, _ = trained
    result = deploy.deploy_run(run, ds, tmp_path, "mcu")
    assert result["folder"] == tmp_path / "d-mcu-litert-int8"
    manifest = json.loads((result["folder"] / "manifest.json").read_text())
    assert manifest["target"] == "mcu" and manifest["source"]["run"] == "d"
    for name, facts in manifest["files"].items():
        assert facts["sha256"] == bundle_mod.sha256_file(result["folder"] / name), name
    assert bundle_mod.sha256_file(result["archive"]) == result["sha256"]


@pytest.mark.parametrize("runtime", sorted(BUNDLES))
def test_the_device_benchmark_runs_without_deep_learning_libraries(bundles, runtime, tmp_path):
    """predict.py --bench in a process that cannot import harness, TensorFlow, Keras or JAX:
    a bench record harness compare reads, with the device's facts and the samples' check."""
    from harness.core.schemas import check_record
    from harness.report.collect import collect_records
    from harness.report.table import build_rows

    folder, manifest = bundles[runtime]["folder"], bundles[runtime]["manifest"]
    out = tmp_path / "device" / "bench.json"
    done = standalone(folder, "--bench", "--calls", 30, "--warmup", 3, "--out", out)
    assert done.returncode == 0, done.stderr
    assert f"record: {out}" in done.stdout and "batch-1 p50" in done.stdout
    record = json.loads(out.read_text())
    check_record("bench", record)
    (row,) = record["rows"]
    assert row["calls"] == 30 and 0 < row["p50_us"] <= row["p90_us"] <= row["p99_us"]
    assert row["test"]["accuracy"] == manifest["measured"]["test"]["accuracy"]
    assert row["device_samples"]["accuracy"] == manifest["selftest"]["accuracy"]
    assert row["device_samples"]["max_abs_diff_vs_recorded"] <= manifest["selftest"]["tolerance"]
    assert record["machine"]["cpu"] and record["machine"]["cores"] >= 1
    assert record["machine"]["versions"][manifest["runtime"]["package"]]
    (compared,) = build_rows(collect_records([out]))
    assert compared["p50_us"] == row["p50_us"] and compared["model"] == manifest["source"]["run"]


def test_the_device_benchmark_refuses_bad_counts(bundles):
    folder = bundles["litert"]["folder"]
    for args in (("--calls", 0), ("--warmup", -1), ("--selftest",), ("x.png",)):
        done = standalone(folder, "--bench", *args)
        assert done.returncode == 2 and done.stderr.count("\n") == 1, (args, done.stderr)
