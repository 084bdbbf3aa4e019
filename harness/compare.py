"""Every result side by side: runs, tuning searches and benchmarks in one table and two pictures.

``compare(paths, out)`` walks ``paths`` recursively, validates every record it finds against
the schema below, and writes to ``out``::

    report.md                 the pictures and the table, with notes on skipped files
    results.csv               the table, raw numbers (seconds as microseconds, bytes)
    accuracy_vs_latency.png   test accuracy against batch-1 p50 latency (log scale), one point
                              per model x runtime, the Pareto front drawn and labelled
    training_curves.png       validation accuracy per epoch of every run with a history.csv

A run with a bench record gives one row per benchmarked runtime (accuracy measured through
that runtime); a run without one gives a single ``keras-evaluate`` row (the accuracy from
training, no latency). A tuning summary names the search on its best run's row, or gives a
row of its own when that run is not among the records. A row is Pareto-optimal (``*``) when
no other row is at least as accurate and at least as fast at batch 1, and better in one.

Which files are records, and what each must hold (``a.b`` is field ``b`` inside ``a``;
a file that breaks a rule is named with the reason and skipped; reading never imports
TensorFlow or Keras)::

    runs/<name>/metrics.json   written by train, tune (best/), sparsify, prune, prune-units
      schema                   integer, at most records.METRICS_SCHEMA_VERSION
      run, status              strings; status running, completed or failed
      completed runs also:     config.arch, config.activation (strings),
                               config.layers, config.units (integers), params.total (integer),
                               test.accuracy (number in [0, 1]), test.loss (number)
      optional:                variant, parent (strings), sparsity (number in [0, 1]),
                               tuning.name, tuning.trial_id (strings),
                               config.dropout, config.l1, config.l2 (numbers)
      history.csv beside it    optional: header with epoch and val_accuracy, numbers below
    tuning/<name>/summary.json written by tune
      name, best_trial, best_run                   strings
      trials, completed                            integers >= 0
      search_seconds                               number >= 0
      best_val_accuracy, best_test_accuracy        numbers in [0, 1]
      best_hyperparameters                         object
    bench/<run>.json           written by bench (see harness.bench)
      benchmark                "bench"; JSON files under bench/ from other benchmarks
                               (train_speed, tune_search) are noted and left out
      run, created             strings;  machine, data, threads: objects
      calls, warmup            integers >= 0
      rows                     a non-empty list; each row:
        run (as above), runtime, format, precision, file    strings
        params, size_bytes                                  integers >= 0
        sparsity, test.accuracy                             numbers in [0, 1]
        p50_us, p90_us, p99_us, throughput_ips              positive numbers
        test.loss                                           number
        optional: flagged (true/false)

Runs that are not completed (running, failed) are noted and left out: their numbers are
partial. Folders named keras_tuner, logs, backup, exports, saved_model and trial_meta are
not searched (other tools' files).
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from harness.records import (
    COMPLETED,
    FAILED,
    METRICS_SCHEMA_VERSION,
    RUNNING,
    atomic_write_bytes,
    atomic_write_csv,
    atomic_write_text,
    read_json,
)

# --------------------------------------------------------------------------- the table

# (key, header). The keys are what --sort accepts and what results.csv and JSON carry.
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
)
SORT_KEYS = tuple(key for key, _ in COLUMNS)
DESCENDING = {"accuracy", "throughput_ips"}  # higher is better: listed first
FORMATS = ("table", "markdown", "csv", "json")
# Beyond the columns, each row carries these (results.csv, JSON).
EXTRA_KEYS = ("pareto", "flagged", "record")

SKIP_DIRS = {"keras_tuner", "logs", "backup", "exports", "saved_model", "trial_meta"}
DPI = 120


class RecordError(ValueError):
    """A record file that cannot be used; the message says why."""


class NoRecords(ValueError):
    """Nothing valid to compare."""


# --------------------------------------------------------------------------- the schema

class Field(NamedTuple):
    types: tuple
    what: str                                   # for the error message: "expected ..."
    test: Callable[[Any], bool] | None = None


STR = Field((str,), "a string")
INT = Field((int,), "an integer")
COUNT = Field((int,), "an integer >= 0", lambda v: v >= 0)
OBJECT = Field((dict,), "an object")
LIST = Field((list,), "a list")
BOOL = Field((bool,), "true or false")
NUMBER = Field((int, float), "a number")
SECONDS = Field((int, float), "a number >= 0", lambda v: math.isfinite(v) and v >= 0)
FRACTION = Field((int, float), "a number in [0, 1]", lambda v: 0 <= v <= 1)
POSITIVE = Field((int, float), "a positive number", lambda v: math.isfinite(v) and v > 0)

RUN_SCHEMA = {"schema": INT, "run": STR, "status": STR}
COMPLETED_RUN_SCHEMA = {"config.arch": STR, "config.activation": STR, "config.layers": INT,
                        "config.units": INT, "params.total": COUNT, "test.accuracy": FRACTION,
                        "test.loss": NUMBER}
RUN_OPTIONAL = {"variant": STR, "parent": STR, "sparsity": FRACTION, "tuning.name": STR,
                "tuning.trial_id": STR, "config.dropout": NUMBER, "config.l1": NUMBER,
                "config.l2": NUMBER}
DENSE_ARCHS = ("plain", "batchnorm")  # others (a CNN reference) ignore layers and units
TUNING_SCHEMA = {"name": STR, "best_trial": STR, "best_run": STR, "trials": COUNT,
                 "completed": COUNT, "search_seconds": SECONDS, "best_val_accuracy": FRACTION,
                 "best_test_accuracy": FRACTION, "best_hyperparameters": OBJECT}
BENCH_SCHEMA = {"benchmark": STR, "run": STR, "created": STR, "machine": OBJECT, "data": OBJECT,
                "threads": OBJECT, "calls": COUNT, "warmup": COUNT, "rows": LIST}
BENCH_ROW_SCHEMA = {"run": STR, "runtime": STR, "format": STR, "precision": STR, "file": STR,
                    "params": COUNT, "size_bytes": COUNT, "sparsity": FRACTION,
                    "p50_us": POSITIVE, "p90_us": POSITIVE, "p99_us": POSITIVE,
                    "throughput_ips": POSITIVE, "test.accuracy": FRACTION, "test.loss": NUMBER}
BENCH_ROW_OPTIONAL = {"flagged": BOOL}

_MISSING = object()


def _lookup(record: dict, dotted: str):
    value = record
    for part in dotted.split("."):
        if not isinstance(value, dict) or part not in value:
            return _MISSING
        value = value[part]
    return value


def check_fields(record: dict, schema: dict[str, Field], optional: bool = False,
                 prefix: str = "") -> list[str]:
    """Problems of ``record`` against ``schema`` (all of them, not just the first)."""
    problems = []
    for key, spec in schema.items():
        value = _lookup(record, key)
        if value is _MISSING:
            if not optional:
                problems.append(f"missing field '{prefix}{key}'")
            continue
        # JSON true/false load as bool, a subclass of int: not a count, not a number.
        wrong_type = not isinstance(value, spec.types) or (
            isinstance(value, bool) and bool not in spec.types)
        if wrong_type or (spec.test is not None and not spec.test(value)):
            shown = json.dumps(value)
            shown = shown if len(shown) <= 40 else shown[:37] + "..."
            problems.append(f"field '{prefix}{key}' is {shown}, expected {spec.what}")
    return problems


def _raise_if(problems: list[str]) -> None:
    if problems:
        raise RecordError("; ".join(problems))


def read_record(path: Path) -> dict:
    """A JSON object from ``path``, or RecordError saying why not."""
    try:
        record = read_json(path)
    except json.JSONDecodeError as e:
        raise RecordError(f"not valid JSON (line {e.lineno}: {e.msg})") from None
    except UnicodeDecodeError:
        raise RecordError("not valid JSON (not UTF-8 text)") from None
    except OSError as e:
        raise RecordError(f"unreadable ({e.strerror or e})") from None
    if not isinstance(record, dict):
        raise RecordError(f"expected a JSON object, found {type(record).__name__}")
    return record


def validate_run(metrics: dict) -> dict:
    """A metrics.json record, or RecordError naming every missing or bad field."""
    _raise_if(check_fields(metrics, RUN_SCHEMA))
    if metrics["schema"] > METRICS_SCHEMA_VERSION:
        raise RecordError(f"schema {metrics['schema']} is newer than this harness reads "
                          f"({METRICS_SCHEMA_VERSION})")
    if metrics["status"] not in (RUNNING, COMPLETED, FAILED):
        raise RecordError(f"field 'status' is {metrics['status']!r}, expected "
                          f"{RUNNING}, {COMPLETED} or {FAILED}")
    if metrics["status"] == COMPLETED:
        _raise_if(check_fields(metrics, COMPLETED_RUN_SCHEMA) +
                  check_fields(metrics, RUN_OPTIONAL, optional=True))
    return metrics


def validate_tuning(summary: dict) -> dict:
    _raise_if(check_fields(summary, TUNING_SCHEMA))
    return summary


def validate_bench(record: dict) -> dict:
    """A bench record; RecordError if malformed (``benchmark`` is checked by the caller)."""
    problems = check_fields(record, BENCH_SCHEMA)
    if not problems and not record["rows"]:
        problems.append("field 'rows' is empty")
    for i, row in enumerate(record.get("rows") or []):
        where = f"rows[{i}]."
        if not isinstance(row, dict):
            problems.append(f"field 'rows[{i}]' is not an object")
            continue
        problems += check_fields(row, BENCH_ROW_SCHEMA, prefix=where)
        problems += check_fields(row, BENCH_ROW_OPTIONAL, optional=True, prefix=where)
        if isinstance(row.get("run"), str) and row["run"] != record.get("run"):
            problems.append(f"field '{where}run' is {row['run']!r}, expected the record's run "
                            f"{record.get('run')!r}")
    _raise_if(problems)
    return record


def read_history(path: Path) -> list[tuple[int, float]]:
    """(epoch from 1, val_accuracy) pairs of a history.csv; RecordError if malformed.

    Empty cells (a tuning trial's history may have them) are left out.
    """
    try:
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            missing = [c for c in ("epoch", "val_accuracy") if c not in (reader.fieldnames or [])]
            if missing:
                raise RecordError(f"no column {' or '.join(repr(c) for c in missing)}")
            points = []
            for line, row in enumerate(reader, start=2):
                if row["val_accuracy"] in ("", None):
                    continue
                try:
                    points.append((int(float(row["epoch"])) + 1, float(row["val_accuracy"])))
                except (TypeError, ValueError):
                    raise RecordError(f"line {line}: epoch {row['epoch']!r} or val_accuracy "
                                      f"{row['val_accuracy']!r} is not a number") from None
    except (OSError, UnicodeDecodeError) as e:
        raise RecordError(f"unreadable ({getattr(e, 'strerror', None) or e})") from None
    return points


# --------------------------------------------------------------------------- collecting

@dataclass
class RunRecord:
    path: Path                        # its metrics.json
    metrics: dict
    history: list[tuple[int, float]]  # (epoch, val_accuracy)

    @property
    def dir(self) -> Path:
        return self.path.parent


@dataclass
class BenchRecord:
    path: Path
    record: dict


@dataclass
class TuningRecord:
    path: Path                        # its summary.json
    summary: dict


@dataclass
class Records:
    runs: list[RunRecord] = field(default_factory=list)
    benches: list[BenchRecord] = field(default_factory=list)
    tunings: list[TuningRecord] = field(default_factory=list)
    skipped: list[tuple[Path, str]] = field(default_factory=list)   # malformed: path, reason
    notes: list[str] = field(default_factory=list)                  # left out on purpose

    def __len__(self) -> int:
        return len(self.runs) + len(self.benches) + len(self.tunings)


def record_kind(path: Path) -> str | None:
    """'run', 'tuning', 'bench' or None, from where the file sits and its name."""
    if path.name == "metrics.json":
        return "run"
    if path.name == "summary.json":
        return "tuning"
    if path.suffix == ".json" and path.parent.name == "bench":
        return "bench"
    return None


def find_record_files(paths: Sequence[Path]) -> list[Path]:
    """Record files under ``paths`` (files given directly are kept whatever their name)."""
    found: dict[Path, Path] = {}
    for root in map(Path, paths):
        if root.is_file():
            found.setdefault(root.resolve(), root)
            continue
        for folder, dirs, files in os.walk(root):
            dirs[:] = sorted(d for d in dirs if d not in SKIP_DIRS and not d.startswith("."))
            for name in sorted(files):
                path = Path(folder) / name
                if record_kind(path):
                    found.setdefault(path.resolve(), path)
    return list(found.values())


def collect_records(paths: Sequence[Path]) -> Records:
    """Read and validate every record under ``paths``; bad files land in ``skipped``."""
    records = Records()
    for path in find_record_files(paths):
        kind = record_kind(path)
        try:
            if kind is None:
                raise RecordError("not a run (metrics.json), tuning (summary.json) or "
                                  "bench (bench/*.json) record")
            record = read_record(path)
            if kind == "run":
                _add_run(records, path, validate_run(record))
            elif kind == "tuning":
                records.tunings.append(TuningRecord(path, validate_tuning(record)))
            elif isinstance(record.get("benchmark"), str) and record["benchmark"] != "bench":
                records.notes.append(f"{_display(path)}: a {record['benchmark']!r} benchmark, "
                                     "not a bench record; left out")
            else:
                records.benches.append(BenchRecord(path, validate_bench(record)))
        except RecordError as e:
            records.skipped.append((path, str(e)))
    return records


def _add_run(records: Records, path: Path, metrics: dict) -> None:
    if metrics["status"] != COMPLETED:
        records.notes.append(f"{_display(path)}: run {metrics['run']!r} is "
                             f"{metrics['status']}, not compared")
        return
    history = []
    if (path.parent / "history.csv").exists():
        try:
            history = read_history(path.parent / "history.csv")
        except RecordError as e:
            records.skipped.append((path.parent / "history.csv", str(e)))
    records.runs.append(RunRecord(path, metrics, history))


def _display(path: Path) -> str:
    """A path relative to the working folder when it lies inside it."""
    try:
        return str(Path(path).resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


# --------------------------------------------------------------------------- rows

def build_rows(records: Records) -> list[dict]:
    """One row per bench row, per unbenchmarked run, and per tuning without its best run."""
    labels = _run_labels(records.runs)
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
            rows += [_bench_row(common, bench, r) for bench in benches
                     for r in bench.record["rows"]]
        else:
            rows.append({**common, "format": "keras", "runtime": "keras-evaluate",
                         "precision": "float32", "accuracy": run.metrics["test"]["accuracy"],
                         "p50_us": None, "p99_us": None, "throughput_ips": None,
                         "size_bytes": None, "flagged": None, "record": _display(run.path)})
    for bench in orphans:
        common = {"model": bench.record["run"], "architecture": None, "variant": None}
        rows += [_bench_row(common, bench, r) for r in bench.record["rows"]]
    ran = {run.dir.resolve() for run in records.runs}
    for tuning in records.tunings:
        if tuning.path.parent.resolve() / "best" not in ran:
            rows.append(_tuning_row(tuning))
    return rows


def _run_labels(runs: list[RunRecord]) -> dict[Path, str]:
    """The run name; its path where two runs share a name (say, two results folders)."""
    names = [r.metrics["run"] for r in runs]
    return {r.path: r.metrics["run"] if names.count(r.metrics["run"]) == 1 else _display(r.dir)
            for r in runs}


def _match_run(bench: BenchRecord, runs: list[RunRecord]) -> RunRecord | None:
    """The run a bench record measured: results/bench/X.json belongs to results/runs/X/,
    else to the one run named X anywhere."""
    name = bench.record["run"]
    home = bench.path.parent.parent.resolve() / "runs" / name
    for run in runs:
        if run.dir.resolve() == home:
            return run
    named = [run for run in runs if name in (run.dir.name, run.metrics["run"])]
    return named[0] if len(named) == 1 else None


def _run_fields(run: RunRecord, label: str, summary: dict | None) -> dict:
    m, cfg = run.metrics, run.metrics["config"]
    if "tuning" in m:
        t = m["tuning"]
        trials = f" of {summary['trials']}" if summary else ""
        variant = f"tuned ({t.get('name', '?')} trial {t.get('trial_id', '?')}{trials})"
    elif "variant" in m:
        variant = m["variant"] + (f" ({m['parent']})" if "parent" in m else "")
    else:
        # The regularizers the preset name does not tell, when set.
        extra = "".join(f", {k} {cfg[k]:g}" for k in ("dropout", "l1", "l2", "mixup", "ema")
                        if cfg.get(k))
        if cfg.get("teacher"):
            extra += f", teacher {cfg['teacher']}"
        variant = f"trained ({cfg.get('preset') or 'no preset'}{extra})"
    architecture = cfg["arch"]
    if architecture in DENSE_ARCHS:
        first = "".join(f"{prefix}{cfg[k]}+" for k, prefix in (("pca", "pca"), ("bottleneck", ""))
                        if cfg.get(k))
        architecture += f" {first}{cfg['layers']}x{cfg['units']} {cfg['activation']}"
    if cfg.get("tta", "none") != "none":  # part of the model at inference
        architecture += f" + {cfg['tta']} TTA"
    return {"model": label, "architecture": architecture, "variant": variant,
            "params": m["params"]["total"], "sparsity": m.get("sparsity")}


def _bench_row(common: dict, bench: BenchRecord, r: dict) -> dict:
    return {**common, "params": r["params"], "sparsity": r["sparsity"], "format": r["format"],
            "runtime": r["runtime"], "precision": r["precision"],
            "accuracy": r["test"]["accuracy"], "p50_us": r["p50_us"], "p99_us": r["p99_us"],
            "throughput_ips": r["throughput_ips"], "size_bytes": r["size_bytes"],
            "flagged": r.get("flagged"), "record": _display(bench.path)}


def _tuning_row(tuning: TuningRecord) -> dict:
    s = tuning.summary
    hp = s["best_hyperparameters"]
    shape = f"{hp['n_hidden']}x{hp['n_neurons']}" if {"n_hidden", "n_neurons"} <= hp.keys() else None
    return {"model": f"{s['name']}/best", "architecture": shape,
            "variant": f"tuned ({s['name']} trial {s['best_trial']} of {s['trials']})",
            "params": None, "sparsity": None, "format": "keras", "runtime": "keras-evaluate",
            "precision": "float32", "accuracy": s["best_test_accuracy"], "p50_us": None,
            "p99_us": None, "throughput_ips": None, "size_bytes": None, "flagged": None,
            "record": _display(tuning.path)}


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
    """Set each row's ``pareto`` (accuracy against batch-1 p50)."""
    front = pareto_front([(r["accuracy"], r["p50_us"]) for r in rows])
    for row, on in zip(rows, front):
        row["pareto"] = on
    return rows


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

    return sorted(rows, key=lambda r: (order(key, r), order("accuracy", r), order("p50_us", r),
                                       r["model"]))


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
    if key == "size_bytes":
        return f"{v / 1024:.0f} KiB" if v < 2**20 else f"{v / 2**20:.2f} MiB"
    return str(v)


_NUMERIC = {"params", "sparsity", "accuracy", "p50_us", "p99_us", "throughput_ips", "size_bytes"}


def format_rows(rows: list[dict], fmt: str = "table") -> str:
    """The rows as an aligned text table, a Markdown table, CSV or JSON."""
    if fmt == "json":
        return json.dumps([{k: r[k] for k in (*SORT_KEYS, *EXTRA_KEYS)} for r in rows],
                          indent=2, allow_nan=False)
    if fmt == "csv":
        out = io.StringIO()
        csv.writer(out, lineterminator="\n").writerows(_csv_rows(rows))
        return out.getvalue().rstrip("\n")
    headers = ["", *(h for _, h in COLUMNS)]
    cells = [["*" if r["pareto"] else "",
              *(_cell(k, r[k]) + (" !" if k == "accuracy" and r["flagged"] else "")
                for k, _ in COLUMNS)] for r in rows]
    if fmt == "markdown":
        align = ["---", *("---:" if k in _NUMERIC else "---" for k, _ in COLUMNS)]
        lines = [headers, align, *cells]
        return "\n".join("| " + " | ".join(c.replace("|", "\\|") for c in line) + " |"
                         for line in lines)
    if fmt != "table":
        raise ValueError(f"format {fmt!r}: must be one of {', '.join(FORMATS)}")
    widths = [max(len(line[i]) for line in [headers, *cells]) for i in range(len(headers))]
    right = [False, *(k in _NUMERIC for k, _ in COLUMNS)]
    return "\n".join("  ".join(c.rjust(w) if r else c.ljust(w)
                               for c, w, r in zip(line, widths, right)).rstrip()
                     for line in [headers, *cells])


def _csv_rows(rows: list[dict]) -> list[list]:
    keys = (*SORT_KEYS, *EXTRA_KEYS)
    return [list(keys), *([("" if r[k] is None else r[k]) for k in keys] for r in rows)]


# --------------------------------------------------------------------------- pictures

MARKERS = ("o", "s", "^", "D", "v", "P", "X", "<", ">", "h", "p", "*")


def _figure(width: float, height: float):
    # The object API with no pyplot: no global state, no display, no backend to switch.
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, metadata={"Software": None})
    return buf.getvalue()


def _latency_label(us: float, _pos=None) -> str:
    return f"{us:g} us" if us < 1e3 else f"{us / 1e3:g} ms" if us < 1e6 else f"{us / 1e6:g} s"


def plot_accuracy_latency(rows: list[dict], machine: str = "") -> bytes:
    """PNG: test accuracy against batch-1 p50 on a log axis; colour = model, marker =
    runtime and precision; the Pareto front as a step line, its points labelled."""
    from matplotlib.ticker import FuncFormatter, LogLocator

    timed = [r for r in rows if r["p50_us"] is not None]
    fig = _figure(11, 6.5)
    ax = fig.add_subplot()
    title = "Test accuracy against batch-1 latency (p50, one thread)"
    ax.set_title(title + (f"\n{machine}" if machine else ""), fontsize=11)
    if not timed:
        ax.text(0.5, 0.5, "no bench records: no latency to plot", ha="center", va="center",
                transform=ax.transAxes)
        ax.set_axis_off()
        return _png(fig)
    models = list(dict.fromkeys(r["model"] for r in timed))
    kinds = list(dict.fromkeys(_kind_label(r) for r in timed))
    cmap = _colours(len(models))
    for r in timed:
        ax.scatter(r["p50_us"], r["accuracy"] * 100, s=46, alpha=0.85, zorder=3,
                   color=cmap[models.index(r["model"])],
                   marker=MARKERS[kinds.index(_kind_label(r)) % len(MARKERS)],
                   edgecolors="black" if r["pareto"] else "none", linewidths=1.2)
    front = sorted((r for r in timed if r["pareto"]), key=lambda r: (r["p50_us"], r["accuracy"]))
    ax.plot([r["p50_us"] for r in front], [r["accuracy"] * 100 for r in front],
            drawstyle="steps-post", color="black", linestyle="--", linewidth=1, zorder=2)
    # Up and to the left of a point on the front nothing can lie (it would dominate the
    # point), so the labels go there, with room made at the left and top edges. Labels of
    # neighbours on the front (close in latency and accuracy) are stacked upwards, with a
    # leader line, so they do not cover each other.
    stack, previous = 0, None
    for r in front:
        close = (previous is not None and r["p50_us"] < 3 * previous["p50_us"]
                 and abs(r["accuracy"] - previous["accuracy"]) < 0.04)
        stack = stack + 1 if close else 0
        ax.annotate(f"{r['model']}\n{_kind_label(r)}", (r["p50_us"], r["accuracy"] * 100),
                    xytext=(-7, 5 + 26 * stack), textcoords="offset points", fontsize=8,
                    ha="right", va="bottom",
                    bbox={"boxstyle": "round,pad=0.2", "fc": "white", "ec": "0.6", "alpha": 0.9},
                    arrowprops={"arrowstyle": "-", "color": "0.5", "lw": 0.6} if stack else None)
        previous = r
    ax.set_xscale("log")
    p50s, accs = [r["p50_us"] for r in timed], [r["accuracy"] * 100 for r in timed]
    ax.set_xlim(min(p50s) / 6, max(p50s) * 1.6)
    ax.set_ylim(min(accs) - 2, max(accs) + 4)
    ax.xaxis.set_major_locator(LogLocator(base=10))
    ax.xaxis.set_major_formatter(FuncFormatter(_latency_label))
    ax.set_xlabel("batch-1 latency, p50 (log scale; left is faster)")
    ax.set_ylabel("test accuracy (%)")
    ax.grid(True, which="major", alpha=0.4)
    ax.grid(True, which="minor", axis="x", alpha=0.15)
    _legends(ax, models, kinds, cmap)
    return _png(fig)


def _kind_label(row: dict) -> str:
    return f"{row['runtime']} {row['precision']}"


def _colours(n: int) -> list:
    from matplotlib import colormaps

    cmap = colormaps["tab10" if n <= 10 else "tab20"]
    return [cmap(i % cmap.N) for i in range(n)]


def _legends(ax, models: list[str], kinds: list[str], cmap: list) -> None:
    from matplotlib.lines import Line2D

    by_model = [Line2D([], [], marker="o", linestyle="", color=c, label=m)
                for m, c in zip(models, cmap)]
    by_kind = [Line2D([], [], marker=MARKERS[i % len(MARKERS)], linestyle="", color="0.4",
                      label=k) for i, k in enumerate(kinds)]
    by_kind.append(Line2D([], [], color="black", linestyle="--", marker="o", markerfacecolor="w",
                          markeredgecolor="black", label="Pareto front"))
    first = ax.legend(handles=by_model, title="model", loc="upper left",
                      bbox_to_anchor=(1.01, 1), fontsize=8, title_fontsize=9)
    ax.add_artist(first)
    ax.legend(handles=by_kind, title="runtime, precision", loc="lower left",
              bbox_to_anchor=(1.01, 0), fontsize=8, title_fontsize=9)


def plot_training_curves(runs: list[RunRecord], labels: dict[Path, str]) -> bytes:
    """PNG: validation accuracy per epoch, one line per run with a history."""
    fig = _figure(10, 5.5)
    ax = fig.add_subplot()
    ax.set_title("Validation accuracy per epoch", fontsize=11)
    with_history = [r for r in runs if r.history]
    if not with_history:
        ax.text(0.5, 0.5, "no history.csv among the runs", ha="center", va="center",
                transform=ax.transAxes)
        ax.set_axis_off()
        return _png(fig)
    colours = _colours(len(with_history))
    for run, colour in zip(sorted(with_history, key=lambda r: labels[r.path]), colours):
        epochs, acc = zip(*run.history)
        ax.plot(epochs, [a * 100 for a in acc], marker="o", markersize=3, linewidth=1.4,
                color=colour, label=labels[run.path])
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation accuracy (%)")
    ax.grid(True, alpha=0.4)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=8, title="run",
              title_fontsize=9)
    return _png(fig)


# --------------------------------------------------------------------------- the report

@dataclass
class Report:
    records: Records
    rows: list[dict]
    files: list[Path]


def compare(paths: Sequence[Path], out: Path, sort: str = "accuracy") -> Report:
    """Collect, validate and tabulate every record under ``paths``; write the report to
    ``out``. Raises NoRecords when not one valid record is found."""
    return report(collect_records(paths), out, sort, paths)


def report(records: Records, out: Path, sort: str = "accuracy",
           sources: Sequence[Path] = ()) -> Report:
    """The rows of ``records``, sorted and Pareto-marked, and the report files in ``out``."""
    if not len(records):
        raise NoRecords(f"no valid run, tuning or bench record under "
                        f"{', '.join(str(p) for p in sources) or 'the paths'} "
                        f"({len(records.skipped)} file(s) skipped)")
    rows = sort_rows(mark_pareto(build_rows(records)), sort)
    return Report(records, rows, write_report(records, rows, Path(out), sources))


def _machines(records: Records) -> str:
    seen = dict.fromkeys(f"{b.record['machine'].get('cpu', '?')}, "
                         f"{b.record['machine'].get('cores', '?')} cores"
                         for b in records.benches)
    return "; ".join(seen)


def write_report(records: Records, rows: list[dict], out: Path, sources: Sequence[Path]) -> list[Path]:
    """report.md, results.csv and the two PNGs in ``out``, each written atomically."""
    machine = _machines(records)
    files = {"accuracy_vs_latency.png": plot_accuracy_latency(rows, machine),
             "training_curves.png": plot_training_curves(records.runs, _run_labels(records.runs))}
    for name, png in files.items():
        atomic_write_bytes(out / name, png)
    atomic_write_csv(out / "results.csv", _csv_rows(rows))
    atomic_write_text(out / "report.md", render_markdown(records, rows, sources, machine))
    return [out / "report.md", out / "results.csv", *(out / name for name in files)]


def _count(items: list, noun: str, plural: str = "s") -> str:
    return f"{len(items)} {noun}{'' if len(items) == 1 else plural}"


def render_markdown(records: Records, rows: list[dict], sources: Sequence[Path],
                    machine: str) -> str:
    calls = sorted({(b.record["calls"], b.record["warmup"]) for b in records.benches})
    timing = ", ".join(f"{c} timed calls after {w} warm-up calls" for c, w in calls)
    lines = [
        "# Results report", "",
        f"Made by `harness compare {' '.join(str(s) for s in sources)}` from "
        f"{_count(records.runs, 'run')}, {_count(records.tunings, 'tuning search', 'es')} and "
        f"{_count(records.benches, 'bench record')}. Latency: batch 1, one thread"
        + (f", {timing}" if timing else "") + (f", on {machine}" if machine else "")
        + "; throughput: batch 256, all cores.", "",
        "## Accuracy against batch-1 latency", "",
        "![accuracy vs latency](accuracy_vs_latency.png)", "",
        ("Each point is one model through one runtime at one precision: up is more accurate, "
        "left answers a single image faster (log scale: each grid line is ten times slower "
        "than the one to its left). Colour names the model, the marker the runtime and "
        "precision. The dashed step line is the Pareto front: the outlined points, for which "
        "no other point is both at least as accurate and at least as fast. Anything below "
        "and to the right of the line is beaten on both counts by a point on it. Runs "
        "without a bench record have no latency and appear only in the table."), "",
        "## Training curves", "",
        "![training curves](training_curves.png)", "",
        ("Validation accuracy after each epoch, from each run's `history.csv` (runs made by "
        "sparsify or prune have none; prune-units runs show their fine-tuning epochs)."), "",
        "## All results", "",
        ("`*`: Pareto-optimal (test accuracy against batch-1 p50). `!`: flagged by export, "
         "the file lost more accuracy than allowed. `keras-evaluate` rows are "
        "the accuracy recorded at the end of training, with no latency measured. "
        "Raw numbers: `results.csv`."), "",
        format_rows(rows, "markdown"), "",
    ]
    if records.skipped:
        lines += ["## Skipped records", "",
                  *(f"- `{_display(p)}`: {reason}" for p, reason in records.skipped), ""]
    if records.notes:
        lines += ["## Left out", "", *(f"- {note}" for note in records.notes), ""]
    return "\n".join(lines)
