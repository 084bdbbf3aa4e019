"""Fully connected against convolutional: the most accurate net of each kind given at most
the same training time, batch-1 latency or flash, from the records ``compare`` reads.

Each axis has its limits: the costs of the points on that axis' Pareto front (accuracy
against the cost, both kinds together), so every limit is one a real model sits at. For
each limit the answer is the most accurate net of each kind that costs no more. Costs are
compared only where they are comparable: training time within one budget record's machine,
latency within one bench machine, flash (the model file's bytes, int8 TFLite files, what a
microcontroller runs) everywhere.
"""

from __future__ import annotations

from dataclasses import dataclass

from harness.report.collect import Records, display_path
from harness.report.table import DENSE_ARCHS, describe_machine, flash_of, int8_rows, pareto_front

DENSE, CONV = "fully connected", "convolutional"
AXES = ("training time", "batch-1 latency", "flash")


@dataclass(frozen=True)
class Point:
    """One model at one cost: its name, kind, test accuracy and where the figure comes from."""

    model: str
    kind: str
    accuracy: float
    cost: float
    scope: str  # the machine the cost was measured on ("" where it does not matter)
    detail: str  # the runtime and precision, or the run's budget
    record: str


@dataclass(frozen=True)
class Matchup:
    axis: str
    scope: str
    limit: float
    dense: Point | None
    conv: Point | None

    @property
    def gap_points(self) -> float | None:
        """The fully connected net's accuracy minus the CNN's, in points."""
        if self.dense is None or self.conv is None:
            return None
        return 100 * (self.dense.accuracy - self.conv.accuracy)


def kind_of(architecture: str | None) -> str | None:
    """DENSE for the dense stacks (``plain``/``batchnorm ...``), CONV for the others, None
    when a bench record has no run to say."""
    if not architecture:
        return None
    if architecture.startswith("imported "):  # harness.report.table: "imported tflite CNN (...)"
        return CONV if architecture.split()[2] == "CNN" else DENSE
    return DENSE if architecture.split()[0] in DENSE_ARCHS else CONV


def time_points(records: Records) -> list[Point]:
    """Budgeted training runs (frontier records): test accuracy against the budget."""
    points = []
    for f in records.frontiers:
        r = f.record
        kind = kind_of(r["config"]["arch"])
        points.append(
            Point(
                r["run"],
                kind,
                r["accuracy"]["test"],
                r["budget_s"],
                trained_on(r["machine"]),
                f"{r['budget_s'] / 60:g} min budget",
                display_path(f.path),
            )
        )
    return points


def trained_on(machine: dict) -> str:
    """A frontier record's training machine. Records before the device field say a GPU host
    only by its platform string."""
    if machine.get("device"):
        return str(machine["device"])
    label = describe_machine(machine)
    return f"a GPU host ({label})" if "gpu" in str(machine.get("platform", "")) else label


def latency_points(rows: list[dict]) -> list[Point]:
    return [
        Point(
            r["model"],
            kind_of(r["architecture"]),
            r["accuracy"],
            r["p50_us"],
            r["machine"],
            f"{r['runtime']} {r['precision']}",
            r["record"],
        )
        for r in rows
        if r["p50_us"] is not None and kind_of(r["architecture"])
    ]


def flash_points(rows: list[dict]) -> list[Point]:
    return [
        Point(
            r["model"],
            kind_of(r["architecture"]),
            r["accuracy"],
            flash_of(r),
            "",
            "tflite int8",
            r["record"],
        )
        for r in int8_rows(rows)
        if kind_of(r["architecture"])
    ]


def matchups(axis: str, points: list[Point]) -> list[Matchup]:
    """Per scope, for each cost on the front of ``points``: the best of each kind within it.
    Only scopes where both kinds have a point are kept."""
    out = []
    for scope in sorted({p.scope for p in points}):
        group = [p for p in points if p.scope == scope]
        if {p.kind for p in group} != {DENSE, CONV}:
            continue
        front = pareto_front([(p.accuracy, p.cost) for p in group])
        for limit in sorted({p.cost for p, on in zip(group, front) if on}):
            best = {
                kind: max(
                    (p for p in group if p.kind == kind and p.cost <= limit),
                    key=lambda p: (p.accuracy, -p.cost),
                    default=None,
                )
                for kind in (DENSE, CONV)
            }
            out.append(Matchup(axis, scope, limit, best[DENSE], best[CONV]))
    return out


def all_matchups(records: Records, rows: list[dict]) -> dict[str, list[Matchup]]:
    return dict(
        zip(
            AXES,
            (
                matchups(AXES[0], time_points(records)),
                matchups(AXES[1], latency_points(rows)),
                matchups(AXES[2], flash_points(rows)),
            ),
        )
    )


def _cost(axis: str, value: float) -> str:
    if axis == AXES[0]:
        return f"{value / 60:g} min"
    if axis == AXES[1]:
        return f"{value:.1f} us"
    return f"{value / 1024:,.0f} KiB"


def _who(p: Point | None) -> str:
    if p is None:
        return "none"
    return f"`{p.model}` {p.accuracy:.2%} ({p.detail})"


def render(found: dict[str, list[Matchup]]) -> list[str]:
    """The report's section: one table per axis, or a line saying what is missing."""
    lines = [
        "## Fully connected against convolutional",
        "",
        (
            "The most accurate net of each kind that costs no more than the limit: each "
            "limit is the cost of a point on that axis' Pareto front. Training time is the "
            "budget of `benchmarks/frontier.py` records (given as many minutes on the same "
            "machine); latency is compared within one bench machine; flash is the int8 "
            "TFLite file a microcontroller holds. A negative gap: the CNN is ahead."
        ),
        "",
    ]
    for axis, found_axis in found.items():
        lines += [f"### At equal {axis}", ""]
        if not found_axis:
            lines += [f"No records of both kinds with a {axis} figure on one machine.", ""]
            continue
        lines += [
            "| at most | measured on | fully connected | convolutional | gap (points) |",
            "| --- | --- | --- | --- | --- |",
        ]
        for m in found_axis:
            gap = "-" if m.gap_points is None else f"{m.gap_points:+.2f}"
            lines.append(
                f"| {_cost(axis, m.limit)} | {m.scope or 'any machine'} | "
                f"{_who(m.dense)} | {_who(m.conv)} | {gap} |"
            )
        lines.append("")
    return lines


def summary(found: dict[str, list[Matchup]]) -> list[str]:
    """One line per axis and scope for the terminal: the matchup at the largest limit where
    both kinds have a net (the best each kind reaches there)."""
    out = []
    for axis, found_axis in found.items():
        for scope in sorted({m.scope for m in found_axis}):
            both = [m for m in found_axis if m.scope == scope and m.gap_points is not None]
            if not both:
                continue
            m = max(both, key=lambda m: m.limit)
            out.append(
                f"equal {axis} (<= {_cost(axis, m.limit)}{', ' + scope if scope else ''}):"
                f" fully connected {m.dense.accuracy:.2%} ({m.dense.model}) vs CNN "
                f"{m.conv.accuracy:.2%} ({m.conv.model}), {m.gap_points:+.2f} points"
            )
    return out
