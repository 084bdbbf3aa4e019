"""harness bench's footprint columns: MACs, flash and TensorFlow Lite Micro's arena per row.

A 2 x 32 BatchNorm-ELU MLP (an int8 file TFLM runs) is trained for one epoch on the
synthetic archive and benchmarked once per module, TFLite exports only, with few calls.
The arena is measured where tflite-micro is installed; elsewhere the row says why not.
"""

import importlib.util

import numpy as np
import pytest

from harness.core.config import resolve
from harness.core.records import RunDir, read_json
from harness.data import cifar as data
from harness.export.bench import bench_run, file_footprint, write_bench
from harness.train.fit import train

HAS_TFLM = importlib.util.find_spec("tflite_micro") is not None
needs_tflm = pytest.mark.skipif(
    not HAS_TFLM, reason="tflite-micro is not installed (pip install 'harness[mcu]')"
)
HAND_MACS = 3072 * 32 + 32 * 32 + 32 * 10  # the three Dense layers, one image


@pytest.fixture(scope="module")
def benched(tmp_path_factory, archive):
    results = tmp_path_factory.mktemp("results")
    ds = data.load(archive, home=results / "home")
    cfg = resolve(
        "bn-elu",
        overrides=dict(layers=2, units=32, epochs=1, batch_size=64, backend=None, name="b"),
    )
    train(cfg, ds, results, verbose=0)
    run = RunDir.named(results, "b")
    return run, bench_run(run, ds, "tflite", calls=20, warmup=5)


def test_every_row_carries_the_footprint(benched, tmp_path):
    from harness.export.footprint import tflm_footprint

    run, record = benched
    assert read_json(write_bench(record, tmp_path)) == record  # the schema accepts it
    rows = {(r["runtime"], r["precision"]): r for r in record["rows"]}
    assert sorted(rows) == [
        ("keras-call", "float32"),
        ("keras-predict", "float32"),
        ("litert", "dynamic"),
        ("litert", "float16"),
        ("litert", "float32"),
        ("litert", "int8"),
    ]
    for row in rows.values():
        path = run.model if row["format"] == "keras" else run.path / "exports" / row["file"]
        assert row["macs"] == HAND_MACS  # the Keras model's, on every row
        assert row["flash_bytes"] == row["size_bytes"] == path.stat().st_size
    int8 = rows["litert", "int8"]
    if HAS_TFLM:
        model = (run.path / "exports" / int8["file"]).read_bytes()
        assert int8["arena_bytes"] == tflm_footprint(model)["arena_bytes"]
        assert 1000 < int8["arena_bytes"] < 64 * 1024 and "arena_note" not in int8
    else:
        assert int8["arena_bytes"] is None and "not installed" in int8["arena_note"]
    for key, row in rows.items():  # TFLM runs int8 only here
        if key != ("litert", "int8"):
            assert row["arena_bytes"] is None and "arena_note" not in row
    assert set(record["footprint"]) == {"macs", "flash", "arena"}


def test_without_tflm_the_row_says_why(benched, monkeypatch):
    from harness.export import footprint

    def missing():
        raise ImportError(
            "TensorFlow Lite Micro is not installed (test); pip install 'harness[mcu]'"
        )

    monkeypatch.setattr(footprint, "require_tflm", missing)
    path = benched[0].path / "exports" / "model_int8.tflite"
    assert file_footprint(path, "tflite", "int8") == {
        "flash_bytes": path.stat().st_size,
        "arena_bytes": None,
        "arena_note": "TensorFlow Lite Micro is not installed (test); pip install 'harness[mcu]'",
    }


@needs_tflm
def test_a_model_tflm_cannot_run_has_no_arena_and_says_why(tmp_path):
    import keras

    from harness.export.convert import export_saved_model, tflite_bytes

    model = keras.Sequential(
        [
            keras.Input((32, 32, 3)),
            keras.layers.Flatten(),
            keras.layers.Dense(8, activation="gelu"),
            keras.layers.Dense(10, activation="softmax"),
        ]
    )
    pixels = np.random.default_rng(0).integers(0, 256, (16, 32, 32, 3)).astype(np.uint8)
    path = tmp_path / "model_int8.tflite"
    path.write_bytes(tflite_bytes(export_saved_model(model, tmp_path / "saved"), "int8", pixels))
    fields = file_footprint(path, "tflite", "int8")
    assert fields["arena_bytes"] is None and fields["flash_bytes"] == path.stat().st_size
    assert fields["arena_note"] == (
        "TensorFlow Lite Micro cannot run op GELU: TFLM has no kernel for GELU"
    )


def test_a_clone_benches_committed_exports_without_the_keras_model(benched, tmp_path, archive):
    """A run committed with its exports but not its model.keras: `harness bench` checks each
    file against its export record's sha256, then times and scores the files as they are;
    a file changed since is refused in one line."""
    import shutil

    from click.testing import CliRunner

    from harness.cli import main

    run, record = benched
    clone = tmp_path / "results"
    copy = RunDir.named(clone, "b")
    shutil.copytree(run.path, copy.path, ignore=shutil.ignore_patterns("*.keras", "*.onnx"))
    assert not copy.model.exists()
    args = ["--archive", str(archive), "--results", str(clone), "bench"]
    done = CliRunner().invoke(main, [*args, "b", "--calls", "20", "--warmup", "5"])
    assert done.exit_code == 0, done.output
    again = read_json(clone / "bench" / "b.json")
    before = {r["file"]: r for r in record["rows"]}
    assert {r["file"] for r in again["rows"]} == {p.name for p in copy.exports.glob("*.tflite")}
    for row in again["rows"]:
        assert row["sha256"] == before[row["file"]]["sha256"]
        assert row["test"]["accuracy"] == pytest.approx(before[row["file"]]["test"]["accuracy"])
    int8 = copy.exports / "model_int8.tflite"
    int8.write_bytes(int8.read_bytes()[:-1] + b"\0")
    done = CliRunner().invoke(main, [*args, "b"])
    assert done.exit_code == 1 and "sha256" in done.output and len(done.output.splitlines()) == 1
    done = CliRunner().invoke(
        main, ["--archive", str(archive), "--results", str(clone), "export", "b"]
    )
    assert done.exit_code == 2 and "no model.keras" in done.output


def test_a_slow_model_is_timed_for_seconds_not_for_its_full_count(monkeypatch):
    import time

    from harness.edge import device_bench

    monkeypatch.setattr(device_bench, "WARMUP_S", 0.02)
    monkeypatch.setattr(device_bench, "TIMED_S", 0.1)
    monkeypatch.setattr(device_bench, "MIN_CALLS", 3)
    made = []

    def slow(image):
        made.append(image)
        time.sleep(0.04)

    timed = device_bench.latency_us(slow, np.zeros(1), calls=1000, warmup=100)
    # the warm-up stops after its 0.02 s (one call), the timed calls once a call starts
    # after their 0.1 s: a handful, each about 40 ms
    assert 3 <= timed["calls"] <= 5 and len(made) <= 1 + timed["calls"] + 1
    assert 40_000 <= timed["p50_us"] <= timed["p99_us"]
    fast = device_bench.latency_us(lambda image: None, np.zeros(1), calls=500, warmup=10)
    assert fast["calls"] == 500  # a fast call gets every call it asked for
