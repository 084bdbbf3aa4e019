"""The record formats, declared once: what each JSON record of a results folder must hold.

Four kinds of record (kind, file, who writes it)::

    run        runs/<name>/metrics.json     train, tune (its best/), sparsify, prune, prune-units,
                                            import (kind "imported")
    tuning     tuning/<name>/summary.json   tune
    bench      bench/<run>.json             bench ("benchmark": "bench")
    frontier   <out>/frontier-<run>.json    benchmarks/frontier.py ("benchmark": "frontier")

Each writer checks its record here before the atomic write and refuses a bad one
(``records.write_record``); ``harness compare`` checks every record it reads against the
same declarations and skips a bad one with the reason. A field name ``a.b`` is field ``b``
inside object ``a``. Only the fields a reader relies on are declared; a record may carry
more. This module imports nothing of the harness and nothing heavy.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from typing import Any, NamedTuple

METRICS_SCHEMA_VERSION = 1

# Run statuses written to metrics.json.
RUNNING, COMPLETED, FAILED = "running", "completed", "failed"


class RecordError(ValueError):
    """A record that breaks its format; the message names every problem."""


class Field(NamedTuple):
    types: tuple
    what: str  # for the error message: "expected ..."
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
COUNT_OR_NULL = Field((int, type(None)), "an integer >= 0 or null", lambda v: v is None or v >= 0)


def exactly(value: str) -> Field:
    return Field((str,), json.dumps(value), lambda v: v == value)


# --------------------------------------------------------------------------- the formats

# runs/<name>/metrics.json. Every run, whatever its status:
RUN = {"schema": INT, "run": STR, "status": STR}
# What the run trained on (harness.core.hardware.Device; since issue 21, so older records lack it):
# the Keras backend, the device's kind ("gpu" or "cpu") and model, and how many the backend saw.
RUN_DEVICE = {
    "backend": STR,
    "device.backend": STR,
    "device.kind": STR,
    "device.name": STR,
    "device.count": COUNT,
}
# A completed run also (a running or failed one has partial numbers and need not):
RUN_COMPLETED = {
    "config.arch": STR,
    "config.activation": STR,
    "config.layers": INT,
    "config.units": INT,
    "params.total": COUNT,
    "test.accuracy": FRACTION,
    "test.loss": NUMBER,
}
# A completed imported run (harness import: a model harness did not train, kind "imported")
# in place of RUN_COMPLETED: the file, its sha256 and input contract, and its scores.
RUN_IMPORTED = {
    "kind": exactly("imported"),
    "import.format": STR,
    "import.file": STR,
    "import.sha256": STR,
    "import.contract": OBJECT,
    "params.total": COUNT,
    "val.accuracy": FRACTION,
    "test.accuracy": FRACTION,
    "test.loss": NUMBER,
}
RUN_OPTIONAL = {
    "variant": STR,
    "parent": STR,
    "sparsity": FRACTION,
    "tuning.name": STR,
    "tuning.trial_id": STR,
    "config.dropout": NUMBER,
    "config.l1": NUMBER,
    "config.l2": NUMBER,
    **RUN_DEVICE,
}

# tuning/<name>/summary.json; best_run is relative to the summary's folder.
TUNING = {
    "name": STR,
    "best_trial": STR,
    "best_run": STR,
    "trials": COUNT,
    "completed": COUNT,
    "search_seconds": SECONDS,
    "best_val_accuracy": FRACTION,
    "best_test_accuracy": FRACTION,
    "best_hyperparameters": OBJECT,
}
# A search under a device budget (tune --max-latency-us/--max-flash-kb/--max-macs) also has
# its best trials as measured: harness.search.budget.judge_benched.
TUNING_OPTIONAL = {"budget.limits": OBJECT, "budget.candidates": LIST, "budget.described": STR}

# bench/<run>.json: one row per runtime and precision, in a non-empty list ``rows``.
BENCH = {
    "benchmark": exactly("bench"),
    "run": STR,
    "created": STR,
    "machine": OBJECT,
    "data": OBJECT,
    "threads": OBJECT,
    "calls": COUNT,
    "warmup": COUNT,
    "rows": LIST,
}
BENCH_ROW = {
    "run": STR,
    "runtime": STR,
    "format": STR,
    "precision": STR,
    "file": STR,
    "params": COUNT,
    "size_bytes": COUNT,
    "sparsity": FRACTION,
    "p50_us": POSITIVE,
    "p90_us": POSITIVE,
    "p99_us": POSITIVE,
    "throughput_ips": POSITIVE,
    "test.accuracy": FRACTION,
    "test.loss": NUMBER,
}
# The footprint (since issue 19; older records lack it): MACs per image of the Keras model,
# flash (the model file's bytes) and TensorFlow Lite Micro's arena, measured on int8 TFLite
# files only (null on other rows, or with arena_note saying why TFLM could not measure it).
BENCH_ROW_OPTIONAL = {
    "flagged": BOOL,
    "sha256": STR,  # the file's (since issue 36): a committed copy is checked against it
    "macs": COUNT,
    "flash_bytes": COUNT,
    "arena_bytes": COUNT_OR_NULL,
    "arena_note": STR,
    "imported": BOOL,
    # MLPerf Tiny's modes (bench --mode; harness.export.mlperf), when asked for:
    "mlperf.accuracy.accuracy": FRACTION,
    "mlperf.performance.throughput_ips": POSITIVE,
    "mlperf.performance.latency_us": POSITIVE,
    # A device's own record (a bundle's predict.py --bench): the shipped samples there.
    "device_samples.accuracy": FRACTION,
    "device_samples.max_abs_diff_vs_recorded": NUMBER,
}

# estimates/<model>.json: an int8 file's estimated cost on microcontroller boards
# (harness boards; harness.deploy.boards). Estimates, never measurements.
ESTIMATE = {
    "benchmark": exactly("estimate"),
    "model": STR,
    "precision": STR,
    "flash_bytes": COUNT,
    "macs": COUNT,
    "estimates": LIST,
}


# frontier-<run>.json: a preset trained within a wall-time budget.
FRONTIER = {
    "benchmark": exactly("frontier"),
    "created": STR,
    "command": STR,
    "preset": STR,
    "run": STR,
    "config": OBJECT,
    "budget_s": POSITIVE,
    "train_call_s": SECONDS,
    "within_budget": BOOL,
    "epochs": COUNT,
    "seconds_per_epoch": SECONDS,
    "best_epoch": COUNT,
    "params.total": COUNT,
    "backend": STR,
    "calibration.epochs": COUNT,
    "calibration.seconds_per_epoch": SECONDS,
    "calibration.first_epoch_extra_s": NUMBER,
    "calibration.after_fit_s": SECONDS,
    "calibration.total_s": SECONDS,
    "accuracy.train": FRACTION,
    "accuracy.val": FRACTION,
    "accuracy.test": FRACTION,
    "data": OBJECT,
    "machine": OBJECT,
}
FRONTIER_OPTIONAL = {
    "budget_used": SECONDS,
    "fit_seconds_per_epoch": SECONDS,
    "accuracy_without_tta.test": FRACTION,
}


# --------------------------------------------------------------------------- checking

_MISSING = object()


def _lookup(record: dict, dotted: str):
    value = record
    for part in dotted.split("."):
        if not isinstance(value, dict) or part not in value:
            return _MISSING
        value = value[part]
    return value


def check_fields(
    record: dict, fields: dict[str, Field], optional: bool = False, prefix: str = ""
) -> list[str]:
    """Problems of ``record`` against ``fields`` (all of them, not just the first)."""
    problems = []
    for key, spec in fields.items():
        value = _lookup(record, key)
        if value is _MISSING:
            if not optional:
                problems.append(f"missing field '{prefix}{key}'")
            continue
        # JSON true/false load as bool, a subclass of int: not a count, not a number.
        wrong_type = not isinstance(value, spec.types) or (
            isinstance(value, bool) and bool not in spec.types
        )
        if wrong_type or (spec.test is not None and not spec.test(value)):
            shown = json.dumps(value, default=repr)
            shown = shown if len(shown) <= 40 else shown[:37] + "..."
            problems.append(f"field '{prefix}{key}' is {shown}, expected {spec.what}")
    return problems


def _raise_if(problems: list[str]) -> None:
    if problems:
        raise RecordError("; ".join(problems))


def check_run(metrics: dict) -> dict:
    """A metrics.json record, or RecordError naming every missing or bad field."""
    _raise_if(check_fields(metrics, RUN))
    if metrics["schema"] > METRICS_SCHEMA_VERSION:
        raise RecordError(
            f"schema {metrics['schema']} is newer than this harness reads "
            f"({METRICS_SCHEMA_VERSION})"
        )
    if metrics["status"] not in (RUNNING, COMPLETED, FAILED):
        raise RecordError(
            f"field 'status' is {metrics['status']!r}, expected {RUNNING}, {COMPLETED} or {FAILED}"
        )
    if metrics["status"] == COMPLETED and metrics.get("kind") == "imported":
        _raise_if(check_fields(metrics, RUN_IMPORTED))
    elif metrics["status"] == COMPLETED:
        _raise_if(
            check_fields(metrics, RUN_COMPLETED)
            + check_fields(metrics, RUN_OPTIONAL, optional=True)
        )
    return metrics


def check_tuning(summary: dict) -> dict:
    """A tuning summary.json, or RecordError naming every missing or bad field."""
    _raise_if(check_fields(summary, TUNING) + check_fields(summary, TUNING_OPTIONAL, optional=True))
    return summary


def check_bench(record: dict) -> dict:
    """A bench record, or RecordError naming every missing or bad field of it and its rows."""
    problems = check_fields(record, BENCH)
    if not problems and not record["rows"]:
        problems.append("field 'rows' is empty")
    for i, row in enumerate(record.get("rows") or []):
        where = f"rows[{i}]."
        if not isinstance(row, dict):
            problems.append(f"field 'rows[{i}]' is not an object")
            continue
        problems += check_fields(row, BENCH_ROW, prefix=where)
        problems += check_fields(row, BENCH_ROW_OPTIONAL, optional=True, prefix=where)
        if isinstance(row.get("run"), str) and row["run"] != record.get("run"):
            problems.append(
                f"field '{where}run' is {row['run']!r}, expected the record's run "
                f"{record.get('run')!r}"
            )
    _raise_if(problems)
    return record


def check_estimate(record: dict) -> dict:
    """An estimate record, or RecordError naming every missing or bad field."""
    problems = check_fields(record, ESTIMATE)
    for i, e in enumerate(record.get("estimates") or []):
        if not isinstance(e, dict) or not isinstance(e.get("latency_ms"), dict):
            problems.append(f"field 'estimates[{i}]' has no latency_ms")
    _raise_if(problems)
    return record


def check_frontier(record: dict) -> dict:
    """A frontier record, or RecordError naming every missing or bad field."""
    _raise_if(
        check_fields(record, FRONTIER) + check_fields(record, FRONTIER_OPTIONAL, optional=True)
    )
    return record


CHECKS: dict[str, Callable[[dict], dict]] = {
    "run": check_run,
    "tuning": check_tuning,
    "bench": check_bench,
    "frontier": check_frontier,
    "estimate": check_estimate,
}


def check_record(kind: str, record: dict) -> dict:
    """``record`` if it keeps the format ``kind`` (a key of CHECKS), else RecordError."""
    return CHECKS[kind](record)
