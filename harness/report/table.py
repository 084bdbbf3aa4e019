"""The comparison table: one row per model and runtime, the Pareto front, and its text forms.

A run with a bench record gives one row per benchmarked runtime (accuracy measured through
that runtime); a run without one gives a single ``keras-evaluate`` row (the accuracy from
training, no latency). A tuning summary names the search on its best run's row, or gives a
row of its own when that run is not among the records. A row from a bench record names the
``machine`` it was timed on. A row is Pareto-optimal (``*``) when no other row of the same
machine is at least as accurate and at least as fast at batch 1, and better in one: latencies
from different machines are not comparable, so each machine has its own front.

The printed table puts first the columns a reader decides by and leaves out descriptive
ones, from the right, to fit the terminal (``printed_table``); report.md, results.csv and
the other formats keep every column in the order of COLUMNS.

The footprint columns (flash, arena, MACs) come from bench records that have them
(harness.export.bench): rows of older bench records, and rows without a bench record, show "-".
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from pathlib import Path

from harness.core.hardware import label_of
from harness.report.collect import BenchRecord, Records, RunRecord, TuningRecord, display_path

# (key, header), in the order of report.md and results.csv: the default columns. Their keys,
# and "machine" and "device", are what --sort and --columns accept; results.csv and JSON
# carry "machine" always, "device" when chosen.
COLUMNS = (
    ("model", "model"),
    ("architecture", "architecture"),
    ("variant", "variant"),
    ("params", "params"),
    ("sparsity", "sparsity"),
    ("format", "format"),
    ("runtime", "runtime"),
    ("precision", "precision"),
    ("accuracy", "test acc"),
    ("p50_us", "p50 b=1"),
    ("p99_us", "p99 b=1"),
    ("throughput_ips", "img/s b=256"),
    ("size_bytes", "file size"),
    ("flash_bytes", "flash"),  # the model file's bytes, as stored on a device
    ("arena_bytes", "arena"),  # TFLM's tensor arena, int8 TFLite rows only
    ("macs", "MACs"),  # multiply-accumulates per image
)
DEFAULT_KEYS = tuple(key for key, _ in COLUMNS)
# The machine a row was timed on is a column only when chosen (--columns) or, in report.md,
# when there is more than one machine; --sort and --columns take it with the others. So is
# the device the model trained on (harness.core.hardware: "jax gpu: NVIDIA H200"; "-" for runs
# recorded before issue 21).
# Estimated on microcontroller boards (harness boards), on int8 TFLite rows of the model:
# never a measurement, so never in p50/p99 and never on a front; a column of its own in
# report.md when some row has one, the last column of results.csv.
SORT_KEYS = (*DEFAULT_KEYS, "machine", "device", "estimated")
HEADERS = {
    **dict(COLUMNS),
    "machine": "machine",
    "device": "device",
    "record": "record",
    "estimated": "estimated on boards",
}
DESCENDING = {"accuracy", "throughput_ips"}  # higher is better: listed first
FORMATS = ("table", "markdown", "csv", "json")
# Beyond the columns, each row carries these (results.csv, JSON), each added after those
# before it, so that the columns results.csv had keep their order; arena_note says why an
# int8 row has no arena.
EXTRA_KEYS = ("pareto", "flagged", "record", "machine", "arena_note", "estimated")
# The printed table: what a reader decides by first (never left out to fit the terminal),
# then the rest; descriptive columns last, so that they are the first to go. Flash is the
# file size again, so it is printed only when chosen (--columns).
PRINTED = (
    "model",
    "runtime",
    "precision",
    "accuracy",
    "p50_us",
    "size_bytes",
    "p99_us",
    "throughput_ips",
    "arena_bytes",
    "macs",
    "params",
    "sparsity",
    "format",
    "architecture",
    "variant",
)
ALWAYS_PRINTED = 6

DENSE_ARCHS = ("plain", "batchnorm")  # others (a CNN reference) ignore layers and units
REFERENCE_ARCH = "resnet8"  # MLPerf Tiny's image-classification model (harness.train.models)
# What a row without a bench row has not measured.
UNMEASURED = dict.fromkeys(
    (
        "p50_us",
        "p99_us",
        "throughput_ips",
        "size_bytes",
        "flash_bytes",
        "arena_bytes",
        "macs",
        "flagged",
        "machine",
        "arena_note",
    )
)


# --------------------------------------------------------------------------- rows


def build_rows(records: Records) -> list[dict]:
    """One row per bench row, per unbenchmarked run, and per tuning without its best run."""
    labels = run_labels(records.runs)
    summaries = {t.path.parent.resolve() / "best": t.summary for t in records.tunings}
    benched: dict[Path, list[BenchRecord]] = {}
    orphans = []
    for bench in records.benches:
        run = _match_run(bench, records.runs)
        if run is None:
            orphans.append(bench)
        else:
            benched.setdefault(run.dir.resolve(), []).append(bench)

    rows = []
    for run in records.runs:
        common = _run_fields(run, labels[run.path], summaries.get(run.dir.resolve()))
        benches = benched.get(run.dir.resolve())
        if benches:
            rows += [
                _bench_row(common, bench, r) for bench in benches for r in bench.record["rows"]
            ]
        else:
            own = {"format": "keras", "runtime": "keras-evaluate", "precision": "float32"}
            if run.metrics.get("kind") == "imported":  # scored through the file's runtime
                own = {
                    "format": run.metrics["import"]["format"],
                    "runtime": run.metrics["import"].get("runtime", "?"),
                    "precision": run.metrics.get("precision", "?"),
                }
            rows.append(
                {
                    **common,
                    **UNMEASURED,
                    **own,
                    "accuracy": run.metrics["test"]["accuracy"],
                    "record": display_path(run.path),
                }
            )
    for bench in orphans:
        common = {
            "model": bench.record["run"],
            "architecture": None,
            "variant": None,
            "device": None,
        }
        rows += [_bench_row(common, bench, r) for r in bench.record["rows"]]
    ran = {run.dir.resolve() for run in records.runs}
    for tuning in records.tunings:
        if tuning.path.parent.resolve() / "best" not in ran:
            rows.append(_tuning_row(tuning))
    return _with_estimates(rows, records)


def _with_estimates(rows: list[dict], records: Records) -> list[dict]:
    """Each row's ``estimated``: for an int8 TFLite row of a model with an estimate record,
    its boards' estimated latency, in words; None elsewhere."""
    said = {}
    for e in records.estimates:
        r = e.record
        said[r.get("run") or r["model"]] = "; ".join(
            f"{x['board']['name']} {x['latency_ms']['median']:.3g} ms"
            + ("" if x["fits"] else " (does not fit)")
            for x in r["estimates"]
        )
    for row in rows:
        int8 = row.get("format") == "tflite" and row.get("precision") == "int8"
        row["estimated"] = said.get(row["model"]) if int8 else None
    return rows


def run_labels(runs: list[RunRecord]) -> dict[Path, str]:
    """The run name; its path where two runs share a name (say, two results folders)."""
    names = [r.metrics["run"] for r in runs]
    return {
        r.path: r.metrics["run"] if names.count(r.metrics["run"]) == 1 else display_path(r.dir)
        for r in runs
    }


def _match_run(bench: BenchRecord, runs: list[RunRecord]) -> RunRecord | None:
    """The run a bench record measured: results/bench/X.json belongs to results/runs/X/,
    else to the one run named X anywhere."""
    name = bench.record["run"]
    home = bench.path.parent.parent.resolve() / "runs" / name  # a record's name, unchecked
    for run in runs:
        if run.dir.resolve() == home:
            return run
    named = [run for run in runs if name in (run.dir.name, run.metrics["run"])]
    return named[0] if len(named) == 1 else None


def _imported_fields(m: dict, label: str) -> dict:
    """An imported model's row: what the file is, and where it came from."""
    info = m["import"]
    ops = m.get("ops") or []
    family = "CNN" if any("conv" in op.lower() for op in ops) else "dense"
    count = f" ({m['op_count']} ops)" if m.get("op_count") else ""
    return {
        "model": label,
        "architecture": f"imported {info['format']} {family}{count}",
        "variant": f"imported ({info.get('source', '?')})",
        "params": m["params"]["total"],
        "sparsity": m.get("sparsity"),
        "device": None,
    }


def _run_fields(run: RunRecord, label: str, summary: dict | None) -> dict:
    if run.metrics.get("kind") == "imported":
        return _imported_fields(run.metrics, label)
    m, cfg = run.metrics, run.metrics["config"]
    if "tuning" in m:
        t = m["tuning"]
        trials = f" of {summary['trials']}" if summary else ""
        variant = f"tuned ({t.get('name', '?')} trial {t.get('trial_id', '?')}{trials})"
    elif "variant" in m:
        variant = m["variant"] + (f" ({m['parent']})" if "parent" in m else "")
    else:
        # The regularizers the preset name does not tell, when set.
        extra = "".join(
            f", {k} {cfg[k]:g}" for k in ("dropout", "l1", "l2", "mixup", "ema") if cfg.get(k)
        )
        if cfg.get("teacher"):
            extra += f", teacher {cfg['teacher']}"
        variant = f"trained ({cfg.get('preset') or 'no preset'}{extra})"
    architecture = cfg["arch"]
    if architecture in DENSE_ARCHS:
        first = "".join(
            f"{prefix}{cfg[k]}+" for k, prefix in (("pca", "pca"), ("bottleneck", "")) if cfg.get(k)
        )
        if cfg.get("pool", 1) > 1:
            first = f"pool{cfg['pool']}+{first}"
        architecture += f" {first}{cfg['layers']}x{cfg['units']} {cfg['activation']}"
    if cfg.get("tta", "none") != "none":  # part of the model at inference
        architecture += f" + {cfg['tta']} TTA"
    return {
        "model": label,
        "architecture": architecture,
        "variant": variant,
        "params": m["params"]["total"],
        "sparsity": m.get("sparsity"),
        "device": label_of(m.get("device")),
    }


def _bench_row(common: dict, bench: BenchRecord, r: dict) -> dict:
    return {
        **common,
        "params": r["params"],
        "sparsity": r["sparsity"],
        "format": r["format"],
        "runtime": r["runtime"],
        "precision": r["precision"],
        "accuracy": r["test"]["accuracy"],
        "p50_us": r["p50_us"],
        "p99_us": r["p99_us"],
        "throughput_ips": r["throughput_ips"],
        "size_bytes": r["size_bytes"],
        "flash_bytes": r.get("flash_bytes"),
        "arena_bytes": r.get("arena_bytes"),
        "macs": r.get("macs"),
        "arena_note": r.get("arena_note"),
        "flagged": r.get("flagged"),
        "record": display_path(bench.path),
        "machine": machine_label(bench),
    }


def machine_label(bench: BenchRecord) -> str:
    """The machine a bench record was timed on: its processor and core count."""
    return describe_machine(bench.record["machine"])


def describe_machine(m: dict) -> str:
    """A record's machine facts (harness.core.records.machine_facts) in words: the processor (and
    the board, on a device) and its cores, or the cores the process was held to of them; a
    record brought back from a device says how it was reached, so that it has its own front."""
    cores = f"{m.get('cores', '?')} cores"
    if m.get("cores_allowed"):
        cores = f"{m['cores_allowed']} of {cores}"
    what = m.get("cpu", "?")
    if m.get("device"):  # a board, from a device benchmark (predict.py --bench)
        what = f"{m['device']} ({what})"
    label = f"{what}, {cores}"
    if m.get("via"):  # brought back by harness bench --on: how it was reached
        label += f", via {m['via']}"
    return label


def machines(rows: list[dict]) -> list[str]:
    """The machines of ``rows`` (those from bench records), sorted by name."""
    return sorted({r["machine"] for r in rows if r["machine"] is not None})


def _tuning_row(tuning: TuningRecord) -> dict:
    s = tuning.summary
    hp = s["best_hyperparameters"]
    known = {"n_hidden", "n_neurons"} <= hp.keys()
    shape = f"{hp['n_hidden']}x{hp['n_neurons']}" if known else None
    return {
        "model": f"{s['name']}/best",
        "architecture": shape,
        "variant": f"tuned ({s['name']} trial {s['best_trial']} of {s['trials']})",
        "params": None,
        "sparsity": None,
        "device": None,
        **UNMEASURED,
        "format": "keras",
        "runtime": "keras-evaluate",
        "precision": "float32",
        "accuracy": s["best_test_accuracy"],
        "record": display_path(tuning.path),
    }


def pareto_front(points: Sequence[tuple[float | None, float | None]]) -> list[bool]:
    """For (accuracy, latency) points: True where no other point is at least as accurate
    and at least as fast, and strictly better in one. A point missing either is never on
    the front; equal points are all on it."""

    def known(p):
        return p[0] is not None and p[1] is not None

    def dominates(a, b):
        return a[0] >= b[0] and a[1] <= b[1] and (a[0] > b[0] or a[1] < b[1])

    candidates = [p for p in points if known(p)]
    return [known(p) and not any(dominates(q, p) for q in candidates) for p in points]


def mark_pareto(rows: list[dict]) -> list[dict]:
    """Set each row's ``pareto`` (accuracy against batch-1 p50), among the rows of its
    machine: a latency is compared only with latencies timed on the same machine."""
    by_machine: dict[str | None, list[dict]] = {}
    for row in rows:
        by_machine.setdefault(row["machine"], []).append(row)
    for group in by_machine.values():
        front = pareto_front([(r["accuracy"], r["p50_us"]) for r in group])
        for row, on in zip(group, front):
            row["pareto"] = on
    return rows


def flash_of(row: dict) -> int | None:
    """A row's flash: ``flash_bytes``, or for a row of an older bench record, which lacks it,
    ``size_bytes`` (the same figure: the model file's bytes)."""
    return row["flash_bytes"] if row["flash_bytes"] is not None else row["size_bytes"]


def int8_rows(rows: list[dict]) -> list[dict]:
    """The rows of full-integer int8 TFLite files, what TensorFlow Lite Micro runs, that
    have a flash figure (every bench row has one)."""
    return [
        r
        for r in rows
        if (r["format"], r["precision"]) == ("tflite", "int8") and flash_of(r) is not None
    ]


def reference_row(rows: list[dict]) -> dict | None:
    """The int8 row of a ResNet-8 run without test-time augmentation, MLPerf Tiny's image
    classification model, as we trained and exported it: the most accurate such row when
    there are several (their files differ by a few bytes between converter versions);
    None when no ResNet-8 run was benchmarked."""
    resnets = [r for r in int8_rows(rows) if r["architecture"] == REFERENCE_ARCH]
    return max(resnets, key=lambda r: (r["accuracy"], r["model"]), default=None)


def sort_rows(rows: list[dict], key: str = "accuracy") -> list[dict]:
    """By ``key`` (accuracy and throughput high to low, the rest low to high), blanks last;
    ties by accuracy, then batch-1 p50, then model."""
    if key not in SORT_KEYS:
        raise ValueError(f"sort key {key!r}: must be one of {', '.join(SORT_KEYS)}")

    def order(k, row):
        v = row[k]
        if v is None:
            return (1, 0)
        return (0, -v if k in DESCENDING and not isinstance(v, str) else v)

    return sorted(
        rows, key=lambda r: (order(key, r), order("accuracy", r), order("p50_us", r), r["model"])
    )


# --------------------------------------------------------------------------- rendering


def _cell(key: str, v) -> str:
    if v is None:
        return "-"
    if key == "accuracy":
        return f"{v:.2%}"
    if key == "sparsity":
        return f"{v:.0%}"
    if key in ("p50_us", "p99_us"):
        return f"{v:.1f} us" if v < 1e3 else f"{v / 1e3:.1f} ms" if v < 1e6 else f"{v / 1e6:.2f} s"
    if key == "throughput_ips":
        return f"{v:,.0f}"
    if key == "params":
        return f"{v:,}"
    if key in ("size_bytes", "flash_bytes"):
        return f"{v / 1024:.0f} KiB" if v < 2**20 else f"{v / 2**20:.2f} MiB"
    if key == "arena_bytes":
        return f"{v / 1024:.1f} KiB"
    if key == "macs":
        return f"{v / 1e6:.1f} M" if v >= 1e6 else f"{v / 1e3:.1f} k" if v >= 1e3 else str(v)
    return str(v)


_NUMERIC = {
    "params",
    "sparsity",
    "accuracy",
    "p50_us",
    "p99_us",
    "throughput_ips",
    "size_bytes",
    "flash_bytes",
    "arena_bytes",
    "macs",
}


def parse_columns(text: str) -> tuple[str, ...]:
    """Column keys from ``"a,b,c"``; ValueError naming the unknown ones and the valid ones."""
    keys = tuple(k.strip() for k in text.split(",") if k.strip())
    unknown = [k for k in keys if k not in SORT_KEYS]
    if unknown or not keys:
        named = f"unknown column(s) {', '.join(map(repr, unknown))}" if unknown else "no column"
        raise ValueError(f"{named}; choose from {', '.join(SORT_KEYS)}")
    return keys


def format_rows(rows: list[dict], fmt: str = "table", columns: Sequence[str] = ()) -> str:
    """The rows as an aligned text table, a Markdown table, CSV or JSON, with ``columns``
    (keys of SORT_KEYS; default those of COLUMNS, in order). Text and Markdown tables start
    with the Pareto mark, CSV and JSON end with those EXTRA_KEYS not among the columns."""
    keys = tuple(columns) or DEFAULT_KEYS
    if fmt == "json":
        return json.dumps(
            [{k: r[k] for k in _with_extra(keys)} for r in rows], indent=2, allow_nan=False
        )
    if fmt == "csv":
        out = io.StringIO()
        csv.writer(out, lineterminator="\n").writerows(csv_rows(rows, keys))
        return out.getvalue().rstrip("\n")
    headers, cells = _text_cells(rows, keys)
    if fmt == "markdown":
        align = ["---", *("---:" if k in _NUMERIC else "---" for k in keys)]
        lines = [headers, align, *cells]
        return "\n".join(
            "| " + " | ".join(c.replace("|", "\\|") for c in line) + " |" for line in lines
        )
    if fmt != "table":
        raise ValueError(f"format {fmt!r}: must be one of {', '.join(FORMATS)}")
    widths = _widths(headers, cells)
    right = [False, *(k in _NUMERIC for k in keys)]
    return "\n".join(
        "  ".join(c.rjust(w) if r else c.ljust(w) for c, w, r in zip(line, widths, right)).rstrip()
        for line in [headers, *cells]
    )


def printed_table(
    rows: list[dict], fmt: str = "table", columns: Sequence[str] = (), width: int = 80
) -> tuple[str, list[str]]:
    """What ``harness compare`` prints, and the keys of the columns left out to fit.

    Chosen ``columns``, or a format other than ``table``, are printed whole. Otherwise the
    columns are those of PRINTED, and the last ones, after the first ALWAYS_PRINTED, are left
    out one by one until the table is at most ``width`` characters wide."""
    if columns or fmt != "table":
        return format_rows(rows, fmt, columns), []
    apart = telling_apart(rows)
    printed = (*PRINTED[:3], *apart, *PRINTED[3:])
    always = ALWAYS_PRINTED + len(apart)
    headers, cells = _text_cells(rows, printed)
    widths = _widths(headers, cells)
    keep = len(printed)
    # widths[0] is the Pareto mark; each column after it takes two spaces more.
    while keep > always and widths[0] + sum(w + 2 for w in widths[1 : keep + 1]) > width:
        keep -= 1
    return format_rows(rows, fmt, printed[:keep]), list(printed[keep:])


def telling_apart(rows: list[dict]) -> tuple[str, ...]:
    """The column that tells apart rows of one model, runtime and precision (a model
    benchmarked twice): the machine where each such row has its own, else the record; none
    where no row repeats. Printed after the precision, never left out to fit."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["model"], r["runtime"], r["precision"]), []).append(r)
    twins = [g for g in groups.values() if len(g) > 1]
    if not twins:
        return ()
    if all(len({r.get("machine") for r in g}) == len(g) for g in twins):
        return ("machine",)
    return ("record",)


def _text_cells(rows: list[dict], keys: Sequence[str]) -> tuple[list[str], list[list[str]]]:
    headers = ["", *(HEADERS[k] for k in keys)]
    cells = [
        [
            "*" if r["pareto"] else "",
            *(_cell(k, r[k]) + (" !" if k == "accuracy" and r["flagged"] else "") for k in keys),
        ]
        for r in rows
    ]
    return headers, cells


def _widths(headers: list[str], cells: list[list[str]]) -> list[int]:
    return [max(len(line[i]) for line in [headers, *cells]) for i in range(len(headers))]


def _with_extra(keys: Sequence[str]) -> tuple[str, ...]:
    return (*keys, *(k for k in EXTRA_KEYS if k not in keys))


def csv_rows(rows: list[dict], keys: Sequence[str] = DEFAULT_KEYS) -> list[list]:
    """A header of ``keys`` and EXTRA_KEYS, then a list per row (blank for None)."""
    keys = _with_extra(keys)
    return [list(keys), *([("" if r[k] is None else r[k]) for k in keys] for r in rows)]
