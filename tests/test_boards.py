"""Microcontroller estimates (harness.deploy.boards) and Ethos-U compilation (harness.deploy.npu).

The calibration is checked against MLPerf Tiny's published figures it claims to cover; the
estimates against hand arithmetic; Vela on MLPerf Tiny's own int8 ResNet-8 (models/).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from harness.cli import main
from harness.deploy import boards, npu

REPO = Path(__file__).resolve().parents[1]
RESNET8 = REPO / "models" / "mlperf-tiny-ic" / "pretrainedResnet_quant.tflite"


def test_every_fitted_published_figure_is_within_2x_of_the_estimate():
    rows = boards.calibration_rows()
    fitted = [r for r in rows if r["group"] == "fitted"]
    assert len(fitted) >= 20 and {r["core"] for r in fitted} >= {
        "cortex-m4",
        "cortex-m7",
        "cortex-m33",
        "cortex-m85",
    }
    far = [(r["system"], r["benchmark"], r["ratio"]) for r in fitted if not 0.5 <= r["ratio"] <= 2]
    assert not far


def test_the_rates_are_the_published_cycles_per_mac():
    """ST's L4R5 at 120 MHz ran ResNet-8 in 165.125 ms: 19.8 M cycles for 12.5 M MACs."""
    l4r5 = next(
        a
        for a in boards.anchors()["fitted"]
        if a["system_id"] == "NUCLEO_L4R5ZI" and a["benchmark"] == "ic" and a["version"] == "v1.2"
    )
    cpm = l4r5["latency_ms"] * 1e-3 * 120e6 / boards.BENCH_MACS["ic"]
    rates = boards.calibration()["cortex-m4"]["cycles_per_mac"]["conv"]
    assert rates["low"] <= cpm <= rates["high"] and rates["boards"] == 4
    assert boards.calibration()["cortex-m55"]["source"].startswith("no published")


def test_the_operators_of_mlperfs_resnet8_add_up_to_its_macs():
    costs = boards.operator_costs(RESNET8)
    assert sum(c["macs"] for c in costs) == boards.BENCH_MACS["ic"]
    assert {c["kind"] for c in costs if c["macs"]} == {"conv", "dense"}


def test_an_estimate_is_macs_times_the_rate_and_a_board_can_refuse_it():
    costs = [{"op": "FULLY_CONNECTED", "kind": "dense", "macs": 1_000_000, "elements": 10}]
    board = boards.board_named("m7-216")
    e = boards.estimate(costs, board, flash_bytes=200_000, arena_bytes=10_000)
    rate = boards.calibration()["cortex-m7"]["cycles_per_mac"]["dense"]["median"]
    expected_ms = (1_000_000 * rate + 10 * boards.ELEMENT_CYCLES["int"]) / 216e3
    assert e["latency_ms"]["median"] == pytest.approx(expected_ms, rel=1e-3)
    assert e["latency_ms"]["low"] <= e["latency_ms"]["median"] <= e["latency_ms"]["high"]
    assert e["fits"] and e["kind"] == "estimate" and e["energy_uj"]["median"] > 0
    small = boards.board_named("m7-216", flash_kib=200, ram_kib=16)
    assert not boards.estimate(costs, small, 200_000, 10_000)["fits"]  # + TFLM's 64 KiB
    with pytest.raises(boards.BoardError, match="unknown board 'm9'"):
        boards.board_named("m9")


def test_vela_compiles_the_reference_for_the_npu_and_says_what_it_costs(tmp_path):
    out = tmp_path / "model_vela.tflite"
    figures = npu.compile_for_npu(RESNET8, out, "ethos-u55", 128)
    assert out.stat().st_size > 0 and figures["accelerator"] == "ethos-u55-128"
    assert figures["cpu_operators"] == 0 and figures["npu_operators"] >= 30
    assert figures["macs"] >= boards.BENCH_MACS["ic"] and figures["npu_cycles"] > 0
    assert figures["inference_ms"] == pytest.approx(
        figures["npu_cycles"] / (figures["clock_mhz"] * 1e3), rel=1e-3
    )
    assert 0 < figures["sram_kib"] < 512
    with pytest.raises(npu.NpuChoice, match="comes with 32, 64, 128, 256"):
        npu.accelerator("ethos-u55", 512)


def test_boards_writes_estimate_records_compare_shows_apart(tmp_path):
    done = CliRunner().invoke(
        main, ["--results", str(tmp_path), "boards", str(RESNET8), "--board", "m4-80"]
    )
    assert done.exit_code == 0, done.output
    record = json.loads((tmp_path / "estimates" / "pretrainedResnet_quant.json").read_text())
    assert record["estimates"][0]["board"]["name"] == "m4-80"
    assert "estimated" in done.output and "fits" in done.output
    listed = CliRunner().invoke(main, ["boards", "--calibration"])
    assert "EK-RA8D1" in listed.output and "context" in listed.output
    refused = CliRunner().invoke(main, ["boards", str(RESNET8), "--board", "m9"])
    assert refused.exit_code == 2 and "unknown board" in refused.output


def test_a_bundle_without_its_model_file_is_estimated_from_its_manifest(tmp_path):
    """Committed microcontroller bundles keep only text: their manifest's footprint (dense
    MACs, flash, arena) gives the estimate, and says so."""
    manifest = {
        "source": {"run": "edge"},
        "model": {"file": "model_int8.tflite"},
        "footprint": {
            "distinct_ops": ["FULLY_CONNECTED", "ELU", "SOFTMAX"],
            "macs_per_image": 246_480,
            "flash_bytes": 255_240,
            "arena_bytes": 10_576,
        },
    }
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    record = boards.estimate_record(tmp_path, [boards.board_named("m4-80")])
    assert record["from"].startswith("the bundle's manifest.json") and record["run"] == "edge"
    direct = boards.estimate(
        [{"op": "all", "kind": "dense", "macs": 246_480, "elements": 0}],
        boards.board_named("m4-80"),
        255_240,
        10_576,
    )
    assert record["estimates"][0]["latency_ms"] == direct["latency_ms"]
    manifest["footprint"]["distinct_ops"] += ["CONV_2D"]  # mixed kinds need the file
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(boards.BoardError, match="its model file is needed"):
        boards.estimate_record(tmp_path, [boards.board_named("m4-80")])
