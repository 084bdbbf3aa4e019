"""Microcontroller boards, and what a model would cost on each: an estimate, not a measurement.

A board is a Cortex-M core at a clock with the RAM and flash of a typical part (each
overridable). For an int8 .tflite file the estimate is:

- **fit**: the model's bytes plus TFLM_FLASH_KIB against flash; TFLM's measured tensor arena
  plus TFLM_RAM_KIB against RAM (both overheads stated assumptions, not measured);
- **latency**: the file's operators, each costed from its MACs at the core's cycles per MAC
  for its kind (convolution or dense), plus ELEMENT_CYCLES per output element of the other
  operators; cycles / clock;
- **energy**: cycles x the nanojoules per cycle of the core's MLPerf boards that submitted
  energy (at their own supply voltage), where any did.

The cycles per MAC are calibrated on MLPerf Tiny's published closed-division results
(``data/mlperf_tiny_cpu.json``: v1.2 and v1.3, Cortex-M CPUs without an accelerator, int8):
image classification (ResNet-8, convolutions) gives the convolution rate, anomaly detection
(a dense autoencoder) the dense rate. Per core the median over its boards is the estimate
and the fastest and slowest its spread: different inference engines (X-CUBE-AI, Bosch's
HALE, TFLM with CMSIS-NN) on the same core differ by that much. The Cortex-M55 has no
published CPU result; it borrows the Cortex-M85's rates (both run Helium kernels) with the
spread doubled each way, and says so.

Hand-written: no library estimates Cortex-M latency from a .tflite file; this is MACs times
a calibrated rate, with its calibration shown (``calibration``).
"""

from __future__ import annotations

import functools
import json
import statistics
from dataclasses import asdict, dataclass
from pathlib import Path

ANCHORS = Path(__file__).with_name("data") / "mlperf_tiny_cpu.json"
# Multiply-accumulates of MLPerf Tiny's two models, per inference (counted from the files:
# ResNet-8 by harness.export.footprint on models/mlperf-tiny-ic; the autoencoder's ten Dense
# layers 640-128-128-128-128-8-128-128-128-128-640).
BENCH_MACS = {"ic": 12_501_632, "ad": 264_192}
BENCH_KIND = {"ic": "conv", "ad": "dense"}
KINDS = {"CONV_2D": "conv", "DEPTHWISE_CONV_2D": "conv", "FULLY_CONNECTED": "dense"}
# Assumptions, stated with every estimate (not calibrated): cycles per output element of an
# operator without MACs (integer; a float one, such as ELU inside an int8 file, costs more),
# and what TFLM itself takes beside the model and the arena.
ELEMENT_CYCLES = {"int": 2, "float": 100}
FLOAT_OPS = {"ELU", "EXP", "LOGISTIC", "TANH", "GELU", "DEQUANTIZE", "QUANTIZE"}
TFLM_FLASH_KIB = 64  # interpreter, kernels of a handful of ops, and the application
TFLM_RAM_KIB = 8  # stack and interpreter structures beyond the arena
BORROWED = {"cortex-m55": ("cortex-m85", 2.0)}  # core: (core whose rates it takes, spread factor)


class BoardError(ValueError):
    """An unknown board, or a file the estimate cannot read: one line."""


@dataclass(frozen=True)
class Board:
    name: str
    core: str
    mhz: float
    flash_kib: int
    ram_kib: int
    part: str


BOARDS = {
    b.name: b
    for b in (
        Board("m4-80", "cortex-m4", 80, 1024, 128, "STM32L476RG (Nucleo-L476RG)"),
        Board("m4-120", "cortex-m4", 120, 2048, 640, "STM32L4R5ZI (MLPerf Tiny's reference)"),
        Board("m7-216", "cortex-m7", 216, 1024, 320, "STM32F746NG (32F746G-DISCO)"),
        Board("m7-480", "cortex-m7", 480, 2048, 1024, "STM32H743ZI (Nucleo-H743ZI)"),
        Board("m33-160", "cortex-m33", 160, 2048, 786, "STM32U575ZI (Nucleo-U575ZI-Q)"),
        Board("m55-400", "cortex-m55", 400, 2048, 512, "a generic Cortex-M55 part"),
        Board("m85-480", "cortex-m85", 480, 2048, 1024, "Renesas RA8D1 (EK-RA8D1)"),
    )
}


@functools.cache
def anchors() -> dict:
    """The published figures (read once a process; callers do not change them)."""
    return json.loads(ANCHORS.read_text())


def _cycles(anchor: dict) -> float:
    return anchor["latency_ms"] * 1e-3 * anchor["clock_mhz"] * 1e6


@functools.cache
def calibration() -> dict[str, dict]:
    """Per core (once a process): cycles per MAC by kind (median, low, high, boards), and
    nanojoules per cycle where MLPerf boards of the core submitted energy; borrowed cores
    say whose."""
    fitted = anchors()["fitted"]
    cores: dict[str, dict] = {}
    for core in sorted({a["core"] for a in fitted}):
        mine = [a for a in fitted if a["core"] == core]
        rates = {}
        for bench, kind in BENCH_KIND.items():
            cpm = [_cycles(a) / BENCH_MACS[bench] for a in mine if a["benchmark"] == bench]
            rates[kind] = {
                "median": statistics.median(cpm),
                "low": min(cpm),
                "high": max(cpm),
                "boards": len(cpm),
            }
        energy = [a["energy_uj"] * 1e3 / _cycles(a) for a in mine if a["energy_uj"]]
        cores[core] = {
            "cycles_per_mac": rates,
            "nj_per_cycle": statistics.median(energy) if energy else None,
            "energy_boards": len(energy),
            "source": "MLPerf Tiny v1.2/v1.3 closed, CPU only (harness/deploy/data)",
        }
    for core, (donor, spread) in BORROWED.items():
        rates = {
            kind: {**r, "low": r["low"] / spread, "high": r["high"] * spread, "boards": 0}
            for kind, r in cores[donor]["cycles_per_mac"].items()
        }
        cores[core] = {
            "cycles_per_mac": rates,
            "nj_per_cycle": None,
            "energy_boards": 0,
            "source": f"no published {core} CPU result: {donor}'s rates, spread x{spread:g}",
        }
    return cores


def calibration_rows() -> list[dict]:
    """The estimator beside every published figure it is calibrated on (fitted) or shown
    against (context: older TFLM): the core's median rate applied to the benchmark's MACs at
    the board's clock."""
    cal, data = calibration(), anchors()
    rows = []
    for group in ("fitted", "context"):
        for a in data[group]:
            rate = cal[a["core"]]["cycles_per_mac"][BENCH_KIND[a["benchmark"]]]["median"]
            estimate = BENCH_MACS[a["benchmark"]] * rate / (a["clock_mhz"] * 1e3)
            rows.append(
                {
                    "group": group,
                    "version": a["version"],
                    "system": f"{a['org']} {a['system_id']}",
                    "core": a["core"],
                    "mhz": a["clock_mhz"],
                    "benchmark": a["benchmark"],
                    "framework": a["framework"],
                    "published_ms": a["latency_ms"],
                    "estimated_ms": round(estimate, 3),
                    "ratio": round(estimate / a["latency_ms"], 2),
                    "source": a["source"],
                }
            )
    return rows


def operator_costs(model: Path) -> list[dict]:
    """Each operator of a .tflite file: name, kind (conv, dense, float or int), MACs and
    output elements, from the file's tensor shapes (batch taken as 1)."""
    from harness.edge.predict import without_info_lines

    try:
        from ai_edge_litert.interpreter import Interpreter

        with without_info_lines():
            interpreter = Interpreter(model_path=str(model))
            ops = interpreter._get_ops_details()  # no public API lists operators and tensors
            tensors = {t["index"]: t for t in interpreter.get_tensor_details()}
    except (ImportError, ValueError, RuntimeError, AttributeError) as e:
        raise BoardError(f"{model}: cannot read its operators ({e})") from None

    def shape(index: int) -> list[int]:
        return [max(int(d), 1) for d in tensors[index]["shape"]]

    costs = []
    for op in ops:
        name, out = op["op_name"], shape(op["outputs"][0])
        elements = 1
        for d in out[1:]:
            elements *= d
        kind = KINDS.get(name, "float" if name in FLOAT_OPS else "int")
        macs = 0
        if kind != "int" and kind != "float":
            weights = shape(op["inputs"][1])
            per_output = 1
            for d in weights[1:] if name != "DEPTHWISE_CONV_2D" else weights[1:3]:
                per_output *= d
            macs = elements * per_output
        costs.append({"op": name, "kind": kind, "macs": macs, "elements": elements})
    return costs


def estimate(costs: list[dict], board: Board, flash_bytes: int, arena_bytes: int | None) -> dict:
    """What ``board`` would take for a model of these operator costs: fit, latency (median,
    low, high) and energy, every figure labelled an estimate with its source."""
    cal = calibration()
    if board.core not in cal:
        raise BoardError(f"{board.name}: no calibration for {board.core}")
    rates, nj = cal[board.core]["cycles_per_mac"], cal[board.core]["nj_per_cycle"]
    fixed = sum(
        c["elements"] * ELEMENT_CYCLES[c["kind"]] for c in costs if c["kind"] in ("int", "float")
    )
    cycles = {
        which: fixed + sum(c["macs"] * rates[c["kind"]][which] for c in costs if c["macs"])
        for which in ("median", "low", "high")
    }
    flash_need = flash_bytes + TFLM_FLASH_KIB * 1024
    ram_need = None if arena_bytes is None else arena_bytes + TFLM_RAM_KIB * 1024
    fits = flash_need <= board.flash_kib * 1024 and (
        ram_need is None or ram_need <= board.ram_kib * 1024
    )
    return {
        "kind": "estimate",
        "board": asdict(board),
        "fits": fits,
        "flash_bytes": {
            "model": flash_bytes,
            "with_tflm": flash_need,
            "board": board.flash_kib * 1024,
        },
        "ram_bytes": {"arena": arena_bytes, "with_tflm": ram_need, "board": board.ram_kib * 1024},
        "macs": sum(c["macs"] for c in costs),
        "latency_ms": {k: round(v / (board.mhz * 1e3), 4) for k, v in cycles.items()},
        "energy_uj": None if nj is None else {k: round(v * nj / 1e3, 2) for k, v in cycles.items()},
        "source": cal[board.core]["source"],
        "assumptions": (
            f"cycles per MAC by kind from MLPerf Tiny (median, fastest, slowest board); "
            f"{ELEMENT_CYCLES['int']} cycles per element of an integer operator without MACs, "
            f"{ELEMENT_CYCLES['float']} of a float one; TFLM takes {TFLM_FLASH_KIB} KiB of "
            f"flash and {TFLM_RAM_KIB} KiB of RAM beside the model and arena; energy at the "
            f"MLPerf boards' supply voltage"
        ),
    }


def board_named(name: str, flash_kib: int | None = None, ram_kib: int | None = None) -> Board:
    if name not in BOARDS:
        raise BoardError(f"unknown board {name!r}; choose from {', '.join(BOARDS)}")
    board = BOARDS[name]
    return Board(
        board.name,
        board.core,
        board.mhz,
        flash_kib or board.flash_kib,
        ram_kib or board.ram_kib,
        board.part,
    )


def format_estimate(e: dict) -> str:
    """One line: board, fit, latency and energy, marked as an estimate."""
    b, lat = e["board"], e["latency_ms"]
    flash, ram = e["flash_bytes"], e["ram_bytes"]
    energy = e["energy_uj"]
    words = (
        f"{b['name']} ({b['core']} @ {b['mhz']:g} MHz): "
        f"{'fits' if e['fits'] else 'does NOT fit'} "
        f"(flash {flash['with_tflm'] / 1024:.0f} of {flash['board'] / 1024:.0f} KiB"
        + (
            ""
            if ram["with_tflm"] is None
            else f", RAM {ram['with_tflm'] / 1024:.0f} of {ram['board'] / 1024:.0f} KiB"
        )
        + f"); estimated {lat['median']:.2f} ms ({lat['low']:.2f}-{lat['high']:.2f})"
    )
    if energy:
        words += f", {energy['median']:.0f} uJ ({energy['low']:.0f}-{energy['high']:.0f})"
    return words


def estimate_record(model: Path, boards: list[Board], name: str | None = None) -> dict:
    """The estimate record of an int8 .tflite file, or of a microcontroller bundle's model
    (its manifest gives the run and TFLM's measured arena), on each of ``boards``: what
    ``harness boards`` writes to ``<results>/estimates/<name>.json`` for compare."""
    model = Path(model)
    manifest, run = None, None
    if model.is_dir():
        manifest = json.loads((model / "manifest.json").read_text())
        if "footprint" not in manifest:
            raise BoardError(f"{model}: not a microcontroller bundle (harness deploy --target mcu)")
        run, arena = manifest["source"]["run"], manifest["footprint"]["arena_bytes"]
        if not (model / manifest["model"]["file"]).is_file():  # only the text files kept
            return _from_footprint(manifest, name or run, boards)
        model = model / manifest["model"]["file"]
    else:
        arena = _arena(model)
    costs = operator_costs(model)
    flash = model.stat().st_size
    return {
        "benchmark": "estimate",
        "model": name or run or model.stem,
        "run": run,
        "file": model.name,
        "precision": "int8",
        "flash_bytes": flash,
        "arena_bytes": arena,
        "macs": sum(c["macs"] for c in costs),
        "operators": sorted({c["op"] for c in costs}),
        "estimates": [estimate(costs, board, flash, arena) for board in boards],
    }


def _from_footprint(manifest: dict, name: str, boards: list[Board]) -> dict:
    """The estimate of a bundle whose model file is not at hand, from its manifest's
    footprint: its MACs all dense or all convolution (as its operators say), its other
    operators' elements not counted (a few per cent of a small net's cycles at most)."""
    fp = manifest["footprint"]
    kinds = {KINDS[op] for op in fp["distinct_ops"] if op in KINDS}
    if len(kinds) != 1:
        raise BoardError(f"{name}: its model file is needed (convolution and dense MACs mixed)")
    costs = [{"op": "all", "kind": kinds.pop(), "macs": fp["macs_per_image"], "elements": 0}]
    flash = fp["flash_bytes"]
    return {
        "benchmark": "estimate",
        "model": name,
        "run": manifest["source"]["run"],
        "file": manifest["model"]["file"],
        "precision": "int8",
        "flash_bytes": flash,
        "arena_bytes": fp["arena_bytes"],
        "macs": fp["macs_per_image"],
        "operators": fp["distinct_ops"],
        "from": "the bundle's manifest.json footprint (its model file is not committed)",
        "estimates": [estimate(costs, board, flash, fp["arena_bytes"]) for board in boards],
    }


def _arena(model: Path) -> int | None:
    """TFLM's arena for the file where tflite-micro can measure it, else None."""
    try:
        from harness.export.footprint import TflmError, tflm_footprint

        return tflm_footprint(model.read_bytes())["arena_bytes"]
    except (ImportError, TflmError, KeyError):
        return None


def format_calibration() -> str:
    """The calibration as a text table: each published figure beside the estimator's."""
    head = f"{'core':<11} {'system':<40} {'MHz':>4} {'bench':<5} {'published':>10} "
    head += f"{'estimate':>9} ratio"
    lines = [head]
    for r in calibration_rows():
        mark = "" if r["group"] == "fitted" else "  (context: TFLM of its day, not fitted)"
        lines.append(
            f"{r['core']:<11} {r['version'] + ' ' + r['system']:<40.40} {r['mhz']:>4g} "
            f"{r['benchmark']:<5} {r['published_ms']:>8.2f}ms {r['estimated_ms']:>7.2f}ms "
            f"{r['ratio']:>5.2f}{mark}"
        )
    return "\n".join(lines)
