"""Finding and reading records: every run, tuning search, bench record and budgeted training
run (``frontier/*.json``, written by benchmarks/frontier.py) under some paths.

``collect_records(paths)`` walks ``paths`` recursively and checks each record against its
format in harness.core.schemas. A file that breaks it is named with the reason and skipped; a
run that is not completed (running, failed: its numbers are partial) and a JSON file under
bench/ from another benchmark (train_speed, tune_search, frontier) are noted and left out.
Folders named keras_tuner, logs, backup, exports, saved_model and trial_meta are not
searched (other tools' files). Reading never imports TensorFlow or Keras.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from harness.core.records import COMPLETED, read_json
from harness.core.schemas import (
    RecordError,
    check_bench,
    check_estimate,
    check_frontier,
    check_run,
    check_tuning,
)

SKIP_DIRS = {"keras_tuner", "logs", "backup", "exports", "saved_model", "trial_meta"}


@dataclass
class RunRecord:
    path: Path  # its metrics.json
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
    path: Path  # its summary.json
    summary: dict


@dataclass
class FrontierRecord:
    path: Path  # frontier/frontier-<run>.json (benchmarks/frontier.py)
    record: dict


@dataclass
class EstimateRecord:
    path: Path  # estimates/<model>.json (harness boards)
    record: dict


@dataclass
class Records:
    runs: list[RunRecord] = field(default_factory=list)
    benches: list[BenchRecord] = field(default_factory=list)
    tunings: list[TuningRecord] = field(default_factory=list)
    frontiers: list[FrontierRecord] = field(default_factory=list)  # budgeted training runs
    estimates: list[EstimateRecord] = field(default_factory=list)  # boards, never measured
    skipped: list[tuple[Path, str]] = field(default_factory=list)  # malformed: path, reason
    notes: list[str] = field(default_factory=list)  # left out on purpose

    def __len__(self) -> int:
        return len(self.runs) + len(self.benches) + len(self.tunings)


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
                    raise RecordError(
                        f"line {line}: epoch {row['epoch']!r} or val_accuracy "
                        f"{row['val_accuracy']!r} is not a number"
                    ) from None
    except (OSError, UnicodeDecodeError) as e:
        raise RecordError(f"unreadable ({getattr(e, 'strerror', None) or e})") from None
    return points


def record_kind(path: Path) -> str | None:
    """'run', 'tuning', 'bench', 'frontier' or None, from where the file sits and its name."""
    if path.name == "metrics.json":
        return "run"
    if path.name == "summary.json":
        return "tuning"
    if path.suffix == ".json" and path.parent.name == "bench":
        return "bench"
    if path.suffix == ".json" and path.parent.name == "frontier":
        return "frontier"
    if path.suffix == ".json" and path.parent.name == "estimates":
        return "estimate"
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
    """Read and check every record under ``paths``; bad files land in ``skipped``."""
    records = Records()
    for path in find_record_files(paths):
        kind = record_kind(path)
        try:
            record = read_record(path) if kind or path.suffix == ".json" else {}
            if kind is None and isinstance(record, dict) and record.get("benchmark") == "bench":
                kind = "bench"  # given by name: a device's record copied back, say
            if isinstance(record, dict) and record.get("emulated"):
                records.notes.append(
                    f"{display_path(path)}: an emulated run (correctness only, its wall times "
                    "are the emulator's): on no front, left out"
                )
                continue
            if kind is None:
                raise RecordError(
                    "not a run (metrics.json), tuning (summary.json) or bench (bench/*.json) record"
                )
            if kind == "run":
                _add_run(records, path, check_run(record))
            elif kind == "tuning":
                records.tunings.append(TuningRecord(path, check_tuning(record)))
            elif kind == "frontier":
                records.frontiers.append(FrontierRecord(path, check_frontier(record)))
            elif kind == "estimate":
                records.estimates.append(EstimateRecord(path, check_estimate(record)))
            elif isinstance(record.get("benchmark"), str) and record["benchmark"] != "bench":
                if record["benchmark"] == "frontier":
                    check_frontier(record)
                records.notes.append(
                    f"{display_path(path)}: a {record['benchmark']!r} "
                    "benchmark, not a bench record; left out"
                )
            else:
                records.benches.append(BenchRecord(path, check_bench(record)))
        except RecordError as e:
            records.skipped.append((path, str(e)))
    return records


def _add_run(records: Records, path: Path, metrics: dict) -> None:
    if metrics["status"] != COMPLETED:
        records.notes.append(
            f"{display_path(path)}: run {metrics['run']!r} is {metrics['status']}, not compared"
        )
        return
    history = []
    if (path.parent / "history.csv").exists():
        try:
            history = read_history(path.parent / "history.csv")
        except RecordError as e:
            records.skipped.append((path.parent / "history.csv", str(e)))
    records.runs.append(RunRecord(path, metrics, history))


def display_path(path: Path) -> str:
    """A path relative to the working folder when it lies inside it."""
    try:
        return str(Path(path).resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)
