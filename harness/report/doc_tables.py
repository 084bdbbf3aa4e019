"""The generated blocks of README.md and docs/: each a function of the repository's root that
reads committed records (harness.report.docs puts them in the pages and checks them).

Which records a block shows is the page's editorial choice, declared here; every figure in
it is read from those records.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

REFERENCE = Path("results") / "reference"
DEPLOY = REFERENCE / "deploy"

GENERATORS: dict[str, Callable[[Path], str]] = {}


class DocsError(ValueError):
    """A page names a block no generator makes, or a record a block needs is missing."""


def generator(name: str):
    def register(fn: Callable[[Path], str]) -> Callable[[Path], str]:
        GENERATORS[name] = fn
        return fn

    return register


def _read(root: Path, path: Path | str) -> dict:
    try:
        return json.loads((root / path).read_text())
    except (OSError, ValueError) as e:
        raise DocsError(f"{path}: {e}") from None


def _table(headers: list[str], rows: list[list[str]]) -> str:
    lines = [headers, ["---"] * len(headers), *rows]
    return "\n".join("| " + " | ".join(cells) + " |" for cells in lines)


def _pct(x: float, digits: int = 2) -> str:
    return f"{x * 100:.{digits}f}%"


def _us(x: float) -> str:
    return f"{x:.1f} us" if x < 1000 else f"{x / 1000:.2f} ms"


def _sci(x: float) -> str:
    """3.9e-3, as written by hand (Python writes 3.9e-03)."""
    mantissa, exponent = f"{x:.1e}".split("e")
    return f"{mantissa}e{int(exponent)}"


def _short_cpu(cpu: str) -> str:
    """'Intel(R) Xeon(R) Processor' -> 'Intel Xeon', for narrow tables."""
    return " ".join(w for w in cpu.replace("(R)", "").split() if w != "Processor")


def _machine(m: dict) -> str:
    return f"{m['cpu']}, {m['cores']} cores"


# --------------------------------------------------------------------------- deploy.md


def _bundles(root: Path, target: str) -> list[tuple[str, dict]]:
    found = []
    for manifest in sorted((root / DEPLOY).glob("*/manifest.json")):
        m = json.loads(manifest.read_text())
        if m.get("target") == target and "kind" not in m.get("source", {}):
            found.append((manifest.parent.name, m))
    return sorted(found, key=lambda item: item[0])


@generator("deploy-linux")
def deploy_linux(root: Path) -> str:
    """Every committed Linux bundle of a harness run: what its manifest measured."""
    rows = []
    for name, m in _bundles(root, "linux"):
        measured, model = m["measured"], m["model"]
        rows.append(
            [
                f"`{name}`",
                model["precision"],
                m["runtime"]["name"],
                _pct(measured["test"]["accuracy"]),
                _us(measured["latency_batch1"]["p50_us"]),
                f"{model['bytes'] / 1024:.0f} KiB",
                _short_cpu(measured["machine"]["cpu"]),
            ]
        )
    headers = ["bundle (`results/reference/deploy/...`)", "precision", "runtime", "test acc"]
    return _table([*headers, "batch-1 p50", "model file", "measured on"], rows)


@generator("deploy-arm64")
def deploy_arm64(root: Path) -> str:
    """Every committed arm64 check: agreement with x86 on the 10,000 test images per core."""
    rows = []
    for path in sorted((root / DEPLOY).glob("*.arm64.json")):
        r = json.loads(path.read_text())
        x86 = r["x86_64"]["test_set"]["accuracy"]
        cells, accs = [f"`{r['bundle']['name']}`"], []
        for core in ("cortex-a72", "cortex-a76"):
            t = r["arm64"][core]["test_set"]
            agree = f"{t['argmax_agreement']:.2%}".replace("100.00%", "100%")
            agree = agree if t["passed"] else f"**{agree}**"
            cells.append(f"{agree} ({t['disagreements']}), {_sci(t['max_abs_prob_diff'])}")
            accs.append(t["accuracy"])
        arm = _pct(accs[0]) + ("" if accs[1] == accs[0] else f" (A76: {_pct(accs[1])})")
        rows.append([*cells, f"{_pct(x86)} / {arm}"])
    headers = [
        "bundle (`results/reference/deploy/<bundle>.arm64.json`)",
        "A72: agreement (images differing), max \\|dp\\|",
        "A76: agreement, max \\|dp\\|",
        "accuracy x86 / arm64",
    ]
    return _table(headers, rows)


@generator("deploy-mcu")
def deploy_mcu(root: Path) -> str:
    """Every committed microcontroller bundle of a harness run: footprint and TFLM check."""
    rows = []
    for name, m in _bundles(root, "mcu"):
        f, a = m["footprint"], m["accuracy"]
        rows.append(
            [
                f"`{name}`",
                f"{f['flash_bytes']:,}",
                f"{f['arena_bytes']:,}",
                f"{f['macs_per_image']:,}",
                _pct(a["tflm"]["accuracy"]),
                _pct(a["litert"]["accuracy"]),
                _pct(a["litert_reference"]["accuracy"]),
                f"{abs(a['tflm']['accuracy'] - a['litert_reference']['accuracy']) * 100:.2f}",
                f"{a['tflm']['seconds']:.0f} s"
                if a["tflm"]["seconds"] >= 10
                else f"{a['tflm']['seconds']:.1f} s",
            ]
        )
    headers = ["bundle (`results/reference/deploy/...`)", "flash bytes", "arena bytes"]
    headers += ["MACs / image", "TFLM acc", "LiteRT (XNNPACK)", "LiteRT (closest kernels)"]
    return _table([*headers, "TFLM gap (points)", "TFLM eval time"], rows)


# --------------------------------------------------------------------------- training


@generator("training-reference")
def training_reference(root: Path) -> str:
    """The study's two nets, trained with the study's recipe on this project's CPU."""
    rows = []
    for run in ("selu", "bn-elu"):
        path = REFERENCE / "runs" / run / "metrics.json"
        m = _read(root, path)
        rows.append(
            [
                f"`{run}`",
                f"{m['epochs_run']} ({m['best_epoch']})",
                f"{m['wall_time_s']:.1f} s",
                f"{m['seconds_per_epoch']:.2f}",
                _pct(m["train"]["accuracy"], 1),
                _pct(m["val"]["accuracy"], 1),
                _pct(m["test"]["accuracy"], 1),
                f"`{path}`",
            ]
        )
    headers = ["run", "epochs (best)", "training time", "s/epoch", "train acc", "val acc"]
    return _table([*headers, "test acc", "record"], rows)


@generator("train-speed")
def train_speed(root: Path) -> str:
    """benchmarks/train_speed.py's committed record: the study's recipes against the fast
    presets on one machine, in one call."""
    path = Path("results") / "bench" / "train_speed.json"
    r = _read(root, path)
    rows = []
    for e in r["results"]:
        study = e["preset"] in ("selu", "bn-elu")
        reached = (
            f"{e['time_to_target_s']:.0f} s"
            if e["time_to_target_s"] and e["time_to_target_s"] >= 100
            else f"{e['time_to_target_s']:.1f} s"
            if e["time_to_target_s"]
            else f"never (best {_pct(e['best_test_accuracy_seen'], 1)})"
        )
        rows.append(
            [
                f"`{e['preset']}`" + (" (study)" if study else ""),
                e["backend"],
                str(e["config"]["batch_size"]),
                f"{e['seconds_per_epoch']:.2f}",
                f"{e['speedup_vs_study']:.1f}x",
                reached,
                str(e["epochs"]),
                _pct(e["final_test_accuracy"], 1),
                f"{e['achieved_gflops']:.3g} ({e['sgemm_share']:.0%})",
            ]
        )
    target = f"time to {r['target']:.0%} test"
    headers = ["preset", "backend", "batch", "s/epoch", "vs study", target, "epochs"]
    table = _table([*headers, "final test acc", "GFLOP/s (share of sgemm)"], rows)
    head = (
        f"Record `{path}` ({r['created'][:10]}, {_machine(r['machine'])}; "
        f"sgemm {r['sgemm_gflops']:.0f} GFLOP/s in the same run):"
    )
    return f"{head}\n\n{table}"


# --------------------------------------------------------------------------- compare.md


@generator("fronts")
def fronts(root: Path) -> str:
    """Each machine's Pareto front of test accuracy against batch-1 latency, from every
    committed record (what `harness compare results/reference` marks with `*`)."""
    from harness.report.collect import collect_records, display_path
    from harness.report.table import build_rows, mark_pareto, sort_rows

    records = collect_records([root / REFERENCE])
    rows = [r for r in sort_rows(mark_pareto(build_rows(records)), "p50_us") if r["pareto"]]
    out = []
    for machine in sorted({r["machine"] for r in rows}):
        out.append(f"**{machine}**\n")
        cells = [
            [
                f"`{r['model']}`",
                r["runtime"],
                r["precision"] or "-",
                _pct(r["accuracy"]),
                _us(r["p50_us"]),
                f"`{_relative(display_path(Path(r['record'])), root)}`",
            ]
            for r in rows
            if r["machine"] == machine
        ]
        headers = ["model", "runtime", "precision", "test acc", "batch-1 p50", "record"]
        out.append(_table(headers, cells) + "\n")
    return "\n".join(out)


def _relative(shown: str, root: Path) -> str:
    path = Path(shown)
    try:
        return str(path.resolve().relative_to(root.resolve()))
    except ValueError:
        return shown


# --------------------------------------------------------------------------- README


@generator("tour-bench")
def tour_bench(root: Path) -> str:
    """The quick tour's bench output, from its record (the first rows)."""
    from harness.export.bench import format_rows

    r = _read(root, REFERENCE / "bench" / "tour-selu-fast.json")
    shown = [("keras-call", "model.keras")]
    shown += [("litert", f"model_{p}.tflite") for p in ("float32", "dynamic", "int8")]
    rows = [row for row in r["rows"] if (row["runtime"], row["file"]) in shown]
    return "```\n" + format_rows(rows) + "\n```"


@generator("tour-compare")
def tour_compare(root: Path) -> str:
    """The quick tour's compare output (the first rows), from the two records it names."""
    from harness.report.collect import collect_records
    from harness.report.table import build_rows, format_rows, mark_pareto, sort_rows

    paths = [root / REFERENCE / "bench" / f"{run}.json" for run in ("tour-selu-fast", "fr-edge")]
    rows = sort_rows(mark_pareto(build_rows(collect_records(paths))), "p50_us")
    columns = ("model", "runtime", "precision", "accuracy", "p50_us")
    first = format_rows(rows, "table", columns).splitlines()[:6]  # the header, five rows
    return "```\n" + "\n".join(first) + "\n```"


@generator("tour-deploy")
def tour_deploy(root: Path) -> str:
    """The quick tour's deploy output, from the bundle's manifest (sha256 shortened)."""
    from harness.deploy.linux import format_summary

    bundle = DEPLOY / "fr-edge-r2-linux-litert-int8"
    sha = (root / f"{bundle}.tar.gz.sha256").read_text().split()[0]
    result = {
        "folder": bundle,
        "archive": f"{bundle}.tar.gz",
        "sha256": f"{sha[:8]}...",
        "manifest": _read(root, bundle / "manifest.json"),
    }
    return "```\n" + format_summary(result) + "\n```"


@generator("tour-train")
def tour_train(root: Path) -> str:
    """The quick tour's train output, from the run's record."""
    from harness.core.records import format_run

    run = REFERENCE / "runs" / "tour-selu-fast"
    return "```\n" + format_run(run, _read(root, run / "metrics.json")) + "\n```"


@generator("tour-import")
def tour_import(root: Path) -> str:
    """The quick tour's import output (the file, its contract, the test line)."""
    from harness.imports.imported import format_import

    run = REFERENCE / "runs" / "mlperf-tiny-ic-int8"
    text = format_import(run, _read(root, run / "metrics.json"), _read(root, run / "config.json"))
    lines = text.splitlines()
    return "```\n" + "\n".join([lines[0], *(l for l in lines if l.startswith("  test"))]) + "\n```"


# --------------------------------------------------------------------------- devices.md


@generator("board-profiles")
def board_profiles(root: Path) -> str:
    """The boards `harness boards` knows (declared in harness.deploy.boards)."""
    from harness.deploy.boards import BOARDS

    rows = [
        [
            f"`{b.name}`",
            b.core,
            f"{b.mhz:g} MHz",
            f"{b.flash_kib:,} KiB",
            f"{b.ram_kib:,} KiB",
            b.part,
        ]
        for b in BOARDS.values()
    ]
    return _table(["board", "core", "clock", "flash", "RAM", "a part like it"], rows)


@generator("calibration")
def calibration(root: Path) -> str:
    """The estimator beside every MLPerf Tiny figure it is calibrated on, or shown against."""
    from harness.deploy.boards import calibration_rows

    rows = [
        [
            r["core"],
            f"{r['version']} {r['system']}" + ("" if r["group"] == "fitted" else " (context)"),
            f"{r['mhz']:g}",
            r["framework"],
            r["benchmark"],
            f"{r['published_ms']:.3g} ms",
            f"{r['estimated_ms']:.3g} ms",
            f"{r['ratio']:.2f}",
        ]
        for r in calibration_rows()
    ]
    headers = ["core", "MLPerf Tiny system", "MHz", "engine", "model", "published"]
    return _table([*headers, "estimate", "estimate / published"], rows)


@generator("board-estimates")
def board_estimates(root: Path) -> str:
    """Every committed estimate record: each model on each board."""
    rows = []
    for path in sorted((root / REFERENCE / "estimates").glob("*.json")):
        r = json.loads(path.read_text())
        for e in r["estimates"]:
            lat, energy = e["latency_ms"], e["energy_uj"]
            rows.append(
                [
                    f"`{r['model']}`",
                    e["board"]["name"],
                    "yes" if e["fits"] else "**no**",
                    _kib_of(e["flash_bytes"]),
                    _kib_of(e["ram_bytes"]),
                    f"{lat['median']:.3g} ms ({lat['low']:.3g}-{lat['high']:.3g})",
                    "-" if energy is None else f"{energy['median']:.3g} uJ",
                ]
            )
    headers = ["model", "board", "fits", "flash KiB (with TFLM) / board", "RAM KiB / board"]
    return _table([*headers, "latency, estimated (spread)", "energy, estimated"], rows)


def _kib_of(need: dict) -> str:
    """'160 / 1024': what the model needs with TFLM, of what the board has, KiB."""
    if need["with_tflm"] is None:
        return "-"
    return f"{need['with_tflm'] / 1024:.0f} / {need['board'] / 1024:.0f}"


@generator("npu")
def npu_table(root: Path) -> str:
    """Every committed Ethos-U bundle: Vela's figures."""
    rows = []
    for name, m in _bundles(root, "ethos-u55") + _bundles(root, "ethos-u65"):
        n = m["npu"]
        rows.append(
            [
                f"`{name}`",
                n["accelerator"],
                f"{n['clock_mhz']:g} MHz",
                f"{n['npu_cycles']:,}",
                f"{n['inference_ms']:.3f} ms",
                f"{n['inferences_per_second']:,.0f}",
                f"{n['sram_kib']:.1f}",
                f"{n['flash_kib'] + n.get('dram_kib', 0):.1f}",
                str(n["cpu_operators"]),
            ]
        )
    headers = ["bundle (`results/reference/deploy/...`)", "NPU", "clock", "cycles", "time"]
    return _table([*headers, "inferences/s", "SRAM KiB", "flash KiB", "ops left to the CPU"], rows)


@generator("device-bench")
def device_bench(root: Path) -> str:
    """Every committed device record (predict.py --bench, brought back by bench --on)."""
    rows = []
    for path in sorted((root / REFERENCE / "bench").glob("*-on-*.json")):
        r = json.loads(path.read_text())
        (row,) = r["rows"]
        m = r["machine"]
        rows.append(
            [
                f"`{r['bundle']}`",
                f"{m.get('device') or m['cpu']}, {m['cores']} cores, via {m.get('via', '-')}",
                _us(row["p50_us"]),
                _us(row["p99_us"]),
                f"{row['throughput_ips']:,.0f}",
                _pct(row["device_samples"]["accuracy"], 0),
                f"`{path.relative_to(root)}`",
            ]
        )
    headers = ["bundle", "device", "batch-1 p50", "p99", "img/s at 256", "samples"]
    return _table([*headers, "record"], rows)


@generator("tour-device")
def tour_device(root: Path) -> str:
    """The quick tour's bench --on output, from the device record it brought back."""
    from harness.deploy.device import format_result

    path = Path("results") / "reference" / "bench"
    path = path / "mlperf-tiny-ic-int8-linux-litert-int8-on-127.0.0.1.json"
    return "```\n" + format_result(_read(root, path), path) + "\n```"


def _fastest(root: Path, path: Path | str) -> dict:
    """The bench record's row with the lowest batch-1 p50."""
    return min(_read(root, path)["rows"], key=lambda r: r["p50_us"])


def best_hour(root: Path) -> tuple[str, dict]:
    """The one-hour budgeted run (benchmarks/frontier.py) with the best test accuracy
    without test-time flips: its record's path and the record."""
    found = []
    for path in sorted((root / REFERENCE / "frontier").glob("frontier-*.json")):
        record = json.loads(path.read_text())
        if record["budget_s"] == 3600:
            plain = record.get("accuracy_without_tta") or record["accuracy"]
            found.append((plain["test"], str(path.relative_to(root)), record))
    if not found:
        raise DocsError(f"{REFERENCE}/frontier: no one-hour record")
    _, path, record = max(found, key=lambda f: f[0])
    return path, record


@generator("headline")
def headline(root: Path) -> str:
    """README's opening figures: the best fully connected net in 30 minutes beside the
    CNN, the best in an hour (a teacher allowed; without test-time flips), both answering
    one image, and the 6 us budget net."""
    runs = REFERENCE / "runs"
    mlp, cnn = (
        _read(root, runs / r / "metrics.json") for r in ("mlp-frontier-pca512", "resnet8-30min")
    )
    hour_path, hour = best_hour(root)
    plain = hour.get("accuracy_without_tta") or hour["accuracy"]
    teacher = _read(root, runs / hour["run"] / "config.json").get("teacher")
    by = f", distilled from `{teacher}`" if teacher else ""
    fast = {
        name: (path, _fastest(root, path))
        for name, path in (
            ("mlp", REFERENCE / "bench" / "mlp-frontier-pca512-h200.json"),
            ("cnn", REFERENCE / "bench" / "resnet8-30min-h200.json"),
            ("edge", REFERENCE / "budget-6" / "bench" / "budget-6us-4-t3.json"),
        )
    }
    edge = fast["edge"][1]
    return (
        f"On this project's 2-core CPU the best fully connected net reached "
        f"{_pct(mlp['test']['accuracy'], 1)} test accuracy in 30 minutes, the ResNet-8 CNN "
        f"{_pct(cnn['test']['accuracy'], 1)} (`{runs}/mlp-frontier-pca512/metrics.json`, "
        f"`{runs}/resnet8-30min/metrics.json`); in an hour{by}, "
        f"{_pct(plain['test'])} without test-time flips (`{hour_path}`). Benchmarked in "
        f"one call, the MLP answers one image in {_us(fast['mlp'][1]['p50_us'])}, the CNN "
        f"in {_us(fast['cnn'][1]['p50_us'])} (`{fast['mlp'][0]}`, `{fast['cnn'][0]}`); the "
        f"2 x 78 net a 6 us budget search found ({edge['size_bytes'] / 1024:.0f} KiB, "
        f"{edge['precision']}) answers in {_us(edge['p50_us'])} at "
        f"{_pct(edge['test']['accuracy'], 1)} (`{fast['edge'][0]}`)."
    )
