"""Every result side by side: runs, tuning searches and benchmarks in one table and three pictures.

``compare(paths, out)`` reads and checks every record under ``paths`` (harness.report.collect,
against the formats declared in harness.core.schemas), builds the table and its Pareto front
(harness.report.table), draws the pictures (harness.report.plots) and writes to ``out``::

    report.md                 the pictures and the table, with notes on skipped files
    results.csv               the table, raw numbers (seconds as microseconds, bytes)
    accuracy_vs_latency.png   test accuracy against batch-1 p50 latency (log scale)
    accuracy_vs_flash.png     test accuracy against flash of every int8 TFLite file (log
                              scale), with MLPerf Tiny's ResNet-8 and quality target
    training_curves.png       validation accuracy per epoch of every run with a history.csv

report.md also sets the fully connected nets against the CNNs at equal training time,
latency and flash (harness.report.versus).

This module is what ``harness compare`` calls; it never imports TensorFlow or Keras, and
Matplotlib only to draw.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from harness.core.records import atomic_write_bytes, atomic_write_csv, atomic_write_text
from harness.report.collect import Records, collect_records, display_path
from harness.report.html import accuracy_latency_html
from harness.report.plots import (
    MLPERF_TINY_TARGET,
    plot_accuracy_flash,
    plot_accuracy_latency,
    plot_training_curves,
)
from harness.report.table import (
    DEFAULT_KEYS,
    FORMATS,
    SORT_KEYS,
    build_rows,
    csv_rows,
    flash_of,
    format_rows,
    machine_label,
    machines,
    mark_pareto,
    parse_columns,
    printed_table,
    reference_row,
    run_labels,
    sort_rows,
)
from harness.report.versus import Matchup, all_matchups
from harness.report.versus import render as versus_section
from harness.report.versus import summary as versus_summary

# What harness.cli's compare command uses, from this one module.
__all__ = [
    "FORMATS",
    "SORT_KEYS",
    "NoRecords",
    "Report",
    "collect_records",
    "compare",
    "format_rows",
    "parse_columns",
    "printed_table",
    "report",
    "versus_summary",
]


class NoRecords(ValueError):
    """Nothing valid to compare."""


@dataclass
class Report:
    records: Records
    rows: list[dict]
    files: list[Path]
    versus: dict[str, list[Matchup]]  # fully connected against CNN, per axis (report.versus)


def compare(paths: Sequence[Path], out: Path, sort: str = "accuracy") -> Report:
    """Collect, validate and tabulate every record under ``paths``; write the report to
    ``out``. Raises NoRecords when not one valid record is found."""
    return report(collect_records(paths), out, sort, paths)


def report(
    records: Records, out: Path, sort: str = "accuracy", sources: Sequence[Path] = ()
) -> Report:
    """The rows of ``records``, sorted and Pareto-marked, and the report files in ``out``."""
    if not len(records):
        raise NoRecords(
            f"no valid run, tuning or bench record under "
            f"{', '.join(str(p) for p in sources) or 'the paths'} "
            f"({len(records.skipped)} file(s) skipped)"
        )
    rows = sort_rows(mark_pareto(build_rows(records)), sort)
    versus = all_matchups(records, rows)
    return Report(records, rows, write_report(records, rows, versus, Path(out), sources), versus)


def write_report(
    records: Records,
    rows: list[dict],
    versus: dict[str, list[Matchup]],
    out: Path,
    sources: Sequence[Path],
) -> list[Path]:
    """report.md, results.csv, the three PNGs and the chart's HTML page (hover for each
    point's details) in ``out``, each written atomically."""
    files = {
        "accuracy_vs_latency.png": plot_accuracy_latency(rows, _machines_title(rows)),
        "accuracy_vs_latency.html": accuracy_latency_html(rows, _machines_title(rows)).encode(),
        "accuracy_vs_flash.png": plot_accuracy_flash(rows),
        "training_curves.png": plot_training_curves(records.runs, run_labels(records.runs)),
    }
    for name, png in files.items():
        atomic_write_bytes(out / name, png)
    atomic_write_csv(out / "results.csv", csv_rows(rows))
    atomic_write_text(out / "report.md", render_markdown(records, rows, versus, sources))
    return [out / "report.md", out / "results.csv", *(out / name for name in files)]


def _machines_title(rows: list[dict]) -> str:
    """The chart's second title line: the machine, or how many there are (the legend names
    each front's)."""
    on = machines(rows)
    return on[0] if len(on) == 1 else f"{len(on)} machines, each with its own Pareto front"


def _count(items: list, noun: str, plural: str = "s") -> str:
    return f"{len(items)} {noun}{'' if len(items) == 1 else plural}"


def _front_words(records: Records, several: list[str]) -> tuple[str, str]:
    """What the first paragraph adds and how the picture's note names the front(s): one
    front, or ``several`` machines, each with its own."""
    if not several:
        return "", (
            "The dashed step line is the Pareto front: the outlined points, for which "
            "no other point is both at least as accurate and at least as fast. Anything "
            "below and to the right of the line is beaten on both counts by a point on it."
        )
    counts = Counter(machine_label(b) for b in records.benches)
    listed = "; ".join(
        f"{m} ({counts[m]} bench record{'' if counts[m] == 1 else 's'})" for m in several
    )
    return (
        (
            f" The bench records come from {len(several)} machines, whose latencies are not "
            f"comparable, so each machine has its own Pareto front: {listed}."
        ),
        (
            "Each machine has its own step line, its Pareto front (the legend tells which): "
            "the outlined points, for which no other point timed on the same machine is both "
            "at least as accurate and at least as fast. Anything below and to the right of a "
            "line is beaten on both counts by a point on it, on that machine."
        ),
    )


def _flash_words(rows: list[dict]) -> str:
    """The note under the flash picture: what a point and each line is."""
    reference = reference_row(rows)
    line = (
        "no ResNet-8 run is among the records, so there is no vertical line"
        if reference is None
        else f"the vertical dashed line is the int8 file of MLPerf Tiny's model, ResNet-8, as we "
        f"trained it ({reference['model']}, {flash_of(reference):,} bytes)"
    )
    return (
        "Each point is one full-integer int8 TFLite file, what TensorFlow Lite Micro runs "
        "on a microcontroller: up is more accurate, left needs less flash (the file's "
        "bytes, log scale). Outlined and labelled: the files no other is both at least as "
        "accurate as and at least as small as. The horizontal dashed line is MLPerf Tiny's "
        f"quality target for image classification, {MLPERF_TINY_TARGET:.0%} top-1 on "
        f"CIFAR-10; {line}. A point above the target and left of the line would beat the "
        "reference on both counts. Rows of older bench records, without a flash figure, "
        "are placed by their file size, the same figure."
    )


def render_markdown(
    records: Records, rows: list[dict], versus: dict[str, list[Matchup]], sources: Sequence[Path]
) -> str:
    calls = sorted({(b.record["calls"], b.record["warmup"]) for b in records.benches})
    timing = ", ".join(f"{c} timed calls after {w} warm-up calls" for c, w in calls)
    on = machines(rows)
    estimated = any(r.get("estimated") for r in rows)
    several = on if len(on) > 1 else []
    machine_words, front = _front_words(records, several)
    lines = [
        "# Results report",
        "",
        f"Made by `harness compare {' '.join(str(s) for s in sources)}` from "
        f"{_count(records.runs, 'run')}, {_count(records.tunings, 'tuning search', 'es')} and "
        f"{_count(records.benches, 'bench record')}. Latency: batch 1, one thread"
        + (f", {timing}" if timing else "")
        + (f", on {on[0]}" if len(on) == 1 else "")
        + "; throughput: batch 256, all cores."
        + machine_words,
        "",
        "## Accuracy against batch-1 latency",
        "",
        "![accuracy vs latency](accuracy_vs_latency.png)",
        "",
        (
            "Each point is one model through one runtime at one precision: up is more accurate, "
            "left answers a single image faster (log scale: each grid line is ten times slower "
            "than the one to its left). Colour names the model's family (fully connected, CNN, "
            "imported), the marker its precision; points off their machine's front are faded. "
            "`accuracy_vs_latency.html` is the same chart with each point's model, runtime and "
            f"record on hover. {front} Runs "
            "without a bench record have no latency and appear only in the table."
        ),
        "",
        "## Accuracy against flash",
        "",
        "![accuracy vs flash](accuracy_vs_flash.png)",
        "",
        _flash_words(rows),
        "",
        "## Training curves",
        "",
        "![training curves](training_curves.png)",
        "",
        (
            "Validation accuracy after each epoch, from each run's `history.csv` (runs made by "
            "sparsify or prune have none; prune-units runs show their fine-tuning epochs)."
        ),
        "",
        *versus_section(versus),
        "## All results",
        "",
        (
            "`*`: Pareto-optimal (test accuracy against batch-1 p50"
            + (", among the rows of the same machine" if several else "")
            + "). `!`: flagged by "
            "export, the file lost more accuracy than allowed. `keras-evaluate` rows are "
            "the accuracy recorded at the end of training, with no latency measured. "
            "Footprint: flash is the model file's bytes, arena the tensor arena TensorFlow Lite "
            "Micro measured for an int8 TFLite file (the only files it runs here), MACs the "
            "multiply-accumulates per image; `-` where the bench record predates them or has no "
            "such figure. Raw numbers: `results.csv`."
        ),
        "",
        # With several machines the rows say which one timed them, to check the marks by.
        format_rows(
            rows,
            "markdown",
            (
                *DEFAULT_KEYS,
                *(["machine"] if several else []),
                *(["estimated"] if estimated else []),
            )
            if several or estimated
            else (),
        ),
        "",
    ]
    unmeasured = sorted({(r["model"], r["arena_note"]) for r in rows if r["arena_note"]})
    if unmeasured:
        lines += [
            "## Arena not measured",
            "",
            *(f"- {model}: {note}" for model, note in unmeasured),
            "",
        ]
    if records.skipped:
        lines += [
            "## Skipped records",
            "",
            *(f"- `{display_path(p)}`: {reason}" for p, reason in records.skipped),
            "",
        ]
    if records.notes:
        lines += ["## Left out", "", *(f"- {note}" for note in records.notes), ""]
    return "\n".join(lines)
