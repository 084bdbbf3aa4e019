"""The microcontroller bundle (harness.deploy.mcu) and its measurements (harness.export.footprint).

A 2 x 32 BatchNorm-ELU MLP is trained for two epochs on the synthetic archive and bundled
once per module; TensorFlow Lite Micro runs it on the synthetic test set (100 images).
Tests that need TFLM are skipped where its wheel does not exist (it is x86-64 Linux only).
"""

import importlib.util
import json
import shutil
import subprocess

import numpy as np
import pytest

from harness.core.config import resolve
from harness.core.records import RunDir
from harness.data import cifar as data
from harness.deploy.bundle import DeployError, sha256_file
from harness.deploy.linux import deploy_run
from harness.deploy.mcu import (
    check_budget,
    compare_runtimes,
    parse_c_array,
    refuse_unsupported,
    write_mcu_bundle,
)
from harness.train.fit import train

needs_tflm = pytest.mark.skipif(
    importlib.util.find_spec("tflite_micro") is None,
    reason="tflite-micro is not installed (pip install 'harness[mcu]')",
)
HAND_MACS_2X32 = 3072 * 32 + 32 * 32 + 32 * 10  # the three Dense layers of the fixture's MLP


def tiny_run(results, ds, preset, **overrides):
    cfg = resolve(preset, overrides=dict(batch_size=64, backend=None, **overrides))
    train(cfg, ds, results, verbose=0)
    return RunDir.named(results, cfg.name)


@pytest.fixture(scope="module")
def bundled(tmp_path_factory, archive):
    results = tmp_path_factory.mktemp("results")
    ds = data.load(archive, home=results / "home")
    run = tiny_run(results, ds, "bn-elu", layers=2, units=32, epochs=2, name="m")
    # allow_flagged: on 100 synthetic test images one image is a whole point
    made = deploy_run(run, ds, results / "deploy", target="mcu", name="m-mcu", allow_flagged=True)
    return run, ds, made["folder"], made["manifest"]


@needs_tflm
def test_bundle_files_and_manifest(bundled):
    run, ds, folder, manifest = bundled
    assert sorted(p.name for p in folder.iterdir()) == [
        "manifest.json",
        "model_data.cc",
        "model_data.h",
        "model_int8.tflite",
    ]
    assert json.loads((folder / "manifest.json").read_text()) == manifest
    assert set(manifest["files"]) == {"model_data.cc", "model_data.h", "model_int8.tflite"}
    for name, entry in manifest["files"].items():
        assert entry["sha256"] == sha256_file(folder / name)
        assert entry["bytes"] == (folder / name).stat().st_size
    archive = folder.with_name("m-mcu.tar.gz")
    assert archive.with_name("m-mcu.tar.gz.sha256").read_text().split()[0] == sha256_file(archive)
    model = (folder / "model_int8.tflite").read_bytes()
    assert not (run.path / "exports").exists()  # exported in a scratch copy of the run
    assert not list(folder.parent.glob(".mcu-export.*"))  # which is gone
    assert manifest["input"]["dtype"] == "int8" and manifest["input"]["shape"] == [1, 32, 32, 3]
    assert manifest["input"]["quantization"] == {
        "scale": 1.0,
        "zero_point": -128,
        "rule": "q = pixel - 128: each byte with its top bit flipped (pixel ^ 0x80)",
    }
    assert manifest["output"]["shape"] == [1, 10]
    assert manifest["classes"] == list(ds.label_names)
    assert manifest["source"]["run"] == "m" and manifest["source"]["config"]["units"] == 32
    fp = manifest["footprint"]
    assert fp["flash_bytes"] == len(model) == manifest["model"]["bytes"]
    assert fp["arena_bytes"] == fp["arena_head_bytes"] + fp["arena_tail_bytes"]
    assert 1000 < fp["arena_bytes"] < 64 * 1024
    assert fp["ops"].count("FULLY_CONNECTED") == 3 and fp["ops"][0] == "RESHAPE"
    assert fp["distinct_ops"] == sorted(set(fp["ops"]))
    assert fp["macs_per_image"] == HAND_MACS_2X32


@needs_tflm
def test_tflm_accuracy_agrees_with_litert(bundled):
    from harness.export.runtimes import load, predict_batched
    from harness.train.evaluate import score

    _, ds, folder, manifest = bundled
    acc = manifest["accuracy"]
    assert acc["images"] == 100
    # LiteRT's figure, recomputed here from the bundle's own file, not taken from the record
    test = data.split(ds).test
    litert = score(predict_batched(load(folder / "model_int8.tflite"), test.x), test.y)
    assert acc["litert"]["accuracy"] == litert["accuracy"]
    assert abs(acc["tflm"]["accuracy"] - acc["litert_reference"]["accuracy"]) <= 0.001
    agreement = acc["tflm_vs_litert_reference"]
    assert agreement["same_class"] >= 0.99 and agreement["bitwise_equal"] >= 0.9
    assert acc["tflm"]["seconds"] > 0


@needs_tflm
def test_measured_arena_is_the_smallest_that_allocates(bundled):
    from harness.export.footprint import TflmError, TflmRuntime

    _, ds, folder, manifest = bundled
    model = (folder / "model_int8.tflite").read_bytes()
    arena = manifest["footprint"]["arena_bytes"]
    probs = TflmRuntime(model, arena).predict(ds.x_test[:3])
    assert probs.shape == (3, 10) and np.allclose(probs.sum(1), 1, atol=0.02)
    with pytest.raises(TflmError, match="cannot run the model") as e:
        TflmRuntime(model, arena - 16)
    assert e.value.op is None


def test_c_array_round_trips(tmp_path):
    from harness.deploy.mcu import c_array_files

    model = bytes(range(256)) * 3 + b"\x00\x7f"  # every byte value, not a multiple of a line
    header, source = c_array_files(model, 1234, ["FULLY_CONNECTED"], "test")
    assert parse_c_array(source) == model
    assert "alignas(16) const unsigned char g_model_data[]" in source
    assert f"g_model_data_len = {len(model)};" in source
    assert "extern const unsigned int g_model_data_len;" in header
    with pytest.raises(ValueError, match="holds 769 bytes but g_model_data_len says 770"):
        parse_c_array(source.replace("0x00, 0x7f,\n", "0x00,\n"))  # one byte lost
    with pytest.raises(ValueError, match="no array"):
        parse_c_array(header)


@needs_tflm
@pytest.mark.skipif(shutil.which("g++") is None, reason="no C++ compiler")
def test_c_array_compiles_to_the_model(bundled, tmp_path):
    """The bundle's model_data.cc, compiled, holds the .tflite's bytes at a 16-byte
    aligned address."""
    _, _, folder, _ = bundled
    (tmp_path / "main.cc").write_text(
        '#include <cstdint>\n#include <cstdio>\n#include "model_data.h"\n'
        "int main() {\n"
        "  if (reinterpret_cast<std::uintptr_t>(g_model_data) % 16) return 3;\n"
        "  std::fwrite(g_model_data, 1, g_model_data_len, stdout);\n  return 0;\n}\n"
    )
    exe = tmp_path / "dump"
    subprocess.run(
        [
            "g++",
            "-std=c++17",
            "-Wall",
            "-Werror",
            "-I",
            str(folder),
            str(tmp_path / "main.cc"),
            str(folder / "model_data.cc"),
            "-o",
            str(exe),
        ],
        check=True,
        capture_output=True,
    )
    done = subprocess.run([str(exe)], capture_output=True)
    assert done.returncode == 0
    assert done.stdout == (folder / "model_int8.tflite").read_bytes()
    assert parse_c_array((folder / "model_data.cc").read_text()) == done.stdout


@needs_tflm
@pytest.mark.parametrize(
    "budget,words",
    [
        ({"flash_kb": 8}, ["model needs", "--flash-kb 8"]),
        ({"ram_kb": 1}, ["tensor arena needs", "--ram-kb 1"]),
    ],
)
def test_budgets_refuse_with_one_line(bundled, tmp_path, budget, words):
    run, ds, _, manifest = bundled
    with pytest.raises(DeployError) as e:
        write_mcu_bundle(run, ds, tmp_path / "b", allow_flagged=True, **budget)
    message = str(e.value)
    assert "\n" not in message and all(w in message for w in words), message
    key = "flash_bytes" if "flash_kb" in budget else "arena_bytes"
    assert f"{manifest['footprint'][key]:,} bytes" in message
    assert not (tmp_path / "b").exists()  # refused before anything is written
    assert not list(tmp_path.glob(".mcu-export.*"))


def test_budget_at_the_limit_passes_one_byte_over_refuses():
    check_budget({"flash_bytes": 2048, "arena_bytes": 1024}, flash_kb=2, ram_kb=1)
    with pytest.raises(DeployError, match="over --ram-kb 1"):
        check_budget({"flash_bytes": 2048, "arena_bytes": 1025}, flash_kb=2, ram_kb=1)


def test_refusals_before_any_work(tmp_path):
    with pytest.raises(DeployError, match="int8 models only, not float32"):
        write_mcu_bundle(tmp_path / "no-run", None, tmp_path / "b", quantization="float32")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "old.txt").write_text("x")
    with pytest.raises(DeployError, match="is not empty"):
        write_mcu_bundle(tmp_path / "no-run", None, tmp_path / "full")


def test_unsupported_op_refusal_names_the_op():
    refuse_unsupported({})
    with pytest.raises(
        DeployError,
        match=r"^TensorFlow Lite Micro cannot run op GELU: TFLM "
        r"has no kernel for GELU$",
    ):
        refuse_unsupported({"GELU": "TFLM has no kernel for GELU"})


def test_tflm_messages_name_the_op():
    """TFLM's own stderr lines (from this wheel) are read into the op and the reason."""
    from harness.export.footprint import _diagnose

    missing = _diagnose(
        "Didn't find op for builtin opcode 'GELU'\n"
        "Failed to get registration from op code GELU\n \n"
    )
    assert (missing.op, missing.reason) == ("GELU", "TFLM has no kernel for GELU")
    refused = _diagnose(
        "tensorflow/lite/micro/kernels/exp.cc:41 input->type != kTfLiteFloat32 "
        "(INT8 != FLOAT32)\nNode EXP (number 5) failed to prepare with status 1\n"
    )
    assert (
        refused.op == "EXP" and "node 5" in refused.reason and "INT8 != FLOAT32" in refused.reason
    )
    arena = _diagnose("Failed to resize buffer. Requested: 6144, available 4400, missing: 1744\n")
    assert arena.op is None and "Failed to resize buffer" in str(arena)


@needs_tflm
def test_selu_net_is_refused_naming_exp(bundled, tmp_path):
    """SELU's int8 export keeps an EXP on int8 tensors, which TFLM's EXP kernel (float32
    only) refuses: the bundle names the op, and writes nothing."""
    _, ds, _, _ = bundled
    run = tiny_run(tmp_path / "results", ds, "selu", layers=1, units=8, epochs=1, name="s")
    with pytest.raises(DeployError, match=r"cannot run op EXP: its kernel refuses node \d+") as e:
        write_mcu_bundle(run, ds, tmp_path / "b", allow_flagged=True)
    assert "\n" not in str(e.value) and not (tmp_path / "b").exists()


@needs_tflm
def test_gelu_is_an_op_tflm_lacks(tmp_path):
    import keras

    from harness.export.convert import export_saved_model, exportable, tflite_bytes
    from harness.export.footprint import unsupported_ops

    model = keras.Sequential(
        [
            keras.Input((32, 32, 3)),
            keras.layers.Flatten(),
            keras.layers.Dense(8, activation="gelu"),
            keras.layers.Dense(10, activation="softmax"),
        ]
    )
    saved = export_saved_model(exportable(model), tmp_path / "saved_model")
    pixels = np.random.default_rng(0).integers(0, 256, (16, 32, 32, 3)).astype(np.uint8)
    problems = unsupported_ops(tflite_bytes(saved, "int8", pixels))
    assert problems == {"GELU": "TFLM has no kernel for GELU"}


def test_accuracy_gap_over_a_tenth_of_a_point_refuses():
    probs = np.eye(10, dtype=np.float32)[[0, 1, 2]]
    tflm = {"test": {"accuracy": 0.8}, "probs": probs}
    close = compare_runtimes(tflm, {"test": {"accuracy": 0.8009}, "probs": probs})
    assert close["gap_points"] == 0.09 and close["same_class"] == close["bitwise_equal"] == 1.0
    with pytest.raises(DeployError, match="0.20 points from LiteRT's 0.8020"):
        compare_runtimes(tflm, {"test": {"accuracy": 0.802}, "probs": probs})


def _small_net(tta: bool):
    import keras

    from harness.train.layers import FlipPair, PairMean

    layers = (
        [keras.Input((32, 32, 3))]
        + ([FlipPair()] if tta else [])
        + [
            keras.layers.Conv2D(4, 3, strides=2, padding="same"),  # 16 x 16 x 4
            keras.layers.DepthwiseConv2D(3, padding="same"),  # 16 x 16 x 4
            keras.layers.BatchNormalization(),
            keras.layers.ReLU(),
            keras.layers.Flatten(),
            keras.layers.Dense(10),
        ]
        + ([PairMean()] if tta else [])
    )
    return keras.Sequential(layers)


def test_macs_per_image_by_hand():
    import keras

    from harness.export.footprint import macs_per_image

    conv = 16 * 16 * (3 * 3 * 3 * 4)  # output positions x kernel
    depthwise = 16 * 16 * (3 * 3 * 4 * 1)
    dense = 16 * 16 * 4 * 10
    assert macs_per_image(_small_net(tta=False)) == conv + depthwise + dense == 47104
    assert macs_per_image(_small_net(tta=True)) == 2 * 47104  # each image and its mirror
    separable = keras.Sequential(
        [keras.Input((8, 8, 3)), keras.layers.SeparableConv2D(5, 3, padding="same")]
    )
    assert macs_per_image(separable) == 8 * 8 * (3 * 3 * 3) + 8 * 8 * (3 * 5)  # depth, point


def test_macs_of_resnet8_match_mlperf_tiny():
    """MLPerf Tiny's ResNet-8 is quoted at 12.5 M MACs; counted layer by layer here."""
    import keras

    from harness.export.footprint import macs_per_image
    from harness.train.models import build_model

    hand = (
        32 * 32 * 3 * 3 * 3 * 16
        + 2 * 32 * 32 * 3 * 3 * 16 * 16  # stem, stage 1
        + 16 * 16 * (3 * 3 * 16 * 32 + 3 * 3 * 32 * 32 + 16 * 32)  # stage 2 + 1x1
        + 8 * 8 * (3 * 3 * 32 * 64 + 3 * 3 * 64 * 64 + 32 * 64)  # stage 3 + 1x1
        + 64 * 10
    )
    assert hand == 12_501_632
    for tta, factor in (("none", 1), ("flip", 2)):
        cnn = build_model(
            resolve("resnet8", overrides=dict(backend=None, tta=tta)),
            mean=np.zeros(3),
            variance=np.ones(3),
        )
        assert macs_per_image(cnn) == factor * hand
    with pytest.raises(ValueError, match="no MAC rule"):
        macs_per_image(
            keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Conv2DTranspose(2, 3)])
        )


@needs_tflm
def test_deploy_command_writes_the_mcu_bundle(bundled, archive, tmp_path):
    """``harness deploy --target mcu`` (harness.deploy.linux) through write_mcu_bundle."""
    from click.testing import CliRunner

    from harness.cli import main

    run, _, _, manifest = bundled
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
            "mcu",
            "--name",
            "x",
            "--allow-flagged",
            "--ram-kb",
            "64",
        ],
    )
    assert result.exit_code == 0, result.output
    written = json.loads((tmp_path / "deploy" / "x" / "manifest.json").read_text())
    assert written["footprint"]["arena_bytes"] == manifest["footprint"]["arena_bytes"]
    assert written["bundle"] == "x" and written["footprint"]["budget_kib"]["ram"] == 64
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
            "mcu",
            "--name",
            "y",
            "--allow-flagged",
            "--ram-kb",
            "1",
        ],
    )
    assert result.exit_code == 1 and "--ram-kb 1" in result.output
    assert len(result.output.strip().splitlines()) == 1, result.output


@needs_tflm
def test_an_ethos_u_bundle_holds_velas_file_and_the_boards_estimates(bundled, tmp_path):
    run, ds, _, _ = bundled
    made = deploy_run(
        run,
        ds,
        tmp_path,
        target="ethos-u55",
        name="m-u55",
        allow_flagged=True,
        boards=("m4-80", "m55-400"),
        npu_macs=128,
    )
    manifest = made["manifest"]
    assert {"model_int8.tflite", "model_int8_vela.tflite"} <= set(manifest["files"])
    assert manifest["target"] == "ethos-u55"
    assert "ELU" in manifest["npu"]["cpu_operator_types"]  # in float inside the int8 file
    assert (
        manifest["npu"]["accelerator"] == "ethos-u55-128" and manifest["npu"]["kind"] == "estimate"
    )
    # Vela counts a few more (its own rule for the Dense layers' bias): within 1%.
    assert manifest["npu"]["macs"] == pytest.approx(
        manifest["footprint"]["macs_per_image"], rel=0.01
    )
    names = [e["board"]["name"] for e in manifest["estimates"]]
    assert names == ["m4-80", "m55-400"] and all(
        e["kind"] == "estimate" for e in manifest["estimates"]
    )
    assert manifest["estimates"][0]["macs"] == manifest["footprint"]["macs_per_image"]


def test_boards_and_npu_options_are_refused_off_their_targets(tmp_path):
    from click.testing import CliRunner

    from harness.cli import main

    for args in (
        ["--target", "linux", "--board", "m4-80"],
        ["--target", "mcu", "--npu-macs", "128"],
        ["--target", "mcu", "--board", "m9"],
        ["--target", "ethos-u65", "--npu-macs", "128"],
    ):
        done = CliRunner().invoke(main, ["--results", str(tmp_path), "deploy", "x", *args])
        assert done.exit_code == 2 and done.output.count("Error") == 1, (args, done.output)
