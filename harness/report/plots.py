"""The report's three pictures, as PNG bytes: accuracy against latency, accuracy against
flash, and training curves.

accuracy_vs_latency.png: test accuracy against batch-1 p50 latency (log scale), one point per
model x runtime, the Pareto front drawn and labelled (one front per machine when the bench
records come from several). accuracy_vs_flash.png: test accuracy against flash (log scale),
one point per full-integer int8 TFLite file, with MLPerf Tiny's ResNet-8 and its quality
target as dashed lines. training_curves.png: validation accuracy per epoch of every run
with a history.csv. Matplotlib is imported only when a picture is drawn, through its object
API (no pyplot), so that the rest of compare never loads it.
"""

from __future__ import annotations

import io
import math
from itertools import groupby
from pathlib import Path

from harness.report.collect import RunRecord
from harness.report.table import flash_of, int8_rows, pareto_front, reference_row

DPI = 120
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "<", ">", "h", "p", "*")
# (colour, line style) of each machine's front, in the order of harness.report.table.machines; a
# single front is the first.
FRONTS = (("black", "--"), ("crimson", "-."), ("royalblue", ":"), ("darkgreen", (0, (5, 1, 1, 1))))
# MLPerf Tiny's quality target for image classification (CIFAR-10, ResNet-8): 85% top-1,
# from the benchmarks table at https://mlcommons.org/en/inference-tiny-05 (the same in every
# version of the suite to date, v0.5 to v1.3).
MLPERF_TINY_TARGET = 0.85


def _figure(width: float, height: float):
    # The object API with no pyplot: no global state, no display, no backend to switch.
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, metadata={"Software": None})
    return buf.getvalue()


def _nothing_to_plot(ax, message: str) -> None:
    ax.text(0.5, 0.5, message, ha="center", va="center", transform=ax.transAxes)
    ax.set_axis_off()


def _latency_label(us: float, _pos=None) -> str:
    return f"{us:g} us" if us < 1e3 else f"{us / 1e3:g} ms" if us < 1e6 else f"{us / 1e6:g} s"


def _bytes_label(n: float, _pos=None) -> str:
    return f"{n / 1024:g} KiB" if n < 2**20 else f"{n / 2**20:g} MiB"


def plot_accuracy_latency(rows: list[dict], machine: str = "") -> bytes:
    """PNG: test accuracy against batch-1 p50 on a log axis; colour = model, marker =
    runtime and precision; each machine's Pareto front as a step line, its points labelled.
    ``machine`` is the title's second line."""
    return _png(accuracy_latency_figure(rows, machine))


def accuracy_latency_figure(rows: list[dict], machine: str = ""):
    """The Matplotlib Figure plot_accuracy_latency saves: colour = the model's family
    (fully connected, CNN, imported), marker = precision; points off their machine's
    front faded; each front a step line, its points labelled."""
    from matplotlib.ticker import FuncFormatter, LogLocator

    timed = [r for r in rows if r["p50_us"] is not None]
    machines = sorted({r["machine"] for r in timed})
    fig = _figure(11, 6.5 if len(machines) < 3 else 8)  # room for each front's labels
    ax = fig.add_subplot()
    title = "Test accuracy against batch-1 latency (p50, one thread)"
    ax.set_title(title + (f"\n{machine}" if machine else ""), fontsize=11)
    if not timed:
        _nothing_to_plot(ax, "no bench records: no latency to plot")
        return fig
    for r in sorted(timed, key=lambda r: r["pareto"]):  # the front drawn last, on top
        ax.scatter(
            r["p50_us"],
            r["accuracy"] * 100,
            s=46 if r["pareto"] else 30,
            zorder=3,
            alpha=0.95 if r["pareto"] else 0.3,
            color=FAMILY_COLOURS[family_of(r)],
            marker=PRECISION_MARKERS.get(r["precision"], "X"),
            edgecolors="black" if r["pareto"] else "none",
            linewidths=1.2,
        )
    front = sorted((r for r in timed if r["pareto"]), key=lambda r: (r["p50_us"], r["accuracy"]))
    for (colour, style), on in zip(FRONTS * len(machines), machines):
        line = [r for r in front if r["machine"] == on]
        ax.plot(
            [r["p50_us"] for r in line],
            [r["accuracy"] * 100 for r in line],
            drawstyle="steps-post",
            color=colour,
            linestyle=style,
            linewidth=1,
            zorder=2,
            gid=f"front {on}",
        )
    ax.set_xscale("log")
    p50s, accs = [r["p50_us"] for r in timed], [r["accuracy"] * 100 for r in timed]
    ax.set_xlim(min(p50s) / 6, max(p50s) * 1.6)
    ax.set_ylim(min(accs) - 2, max(accs) + 16)  # room above the front for its labels
    ax.xaxis.set_major_locator(LogLocator(base=10))
    ax.xaxis.set_major_formatter(FuncFormatter(_latency_label))
    ax.set_xlabel("batch-1 latency, p50 (log scale; left is faster)")
    ax.set_ylabel("test accuracy (%)")
    ax.grid(True, which="major", alpha=0.4)
    ax.grid(True, which="minor", axis="x", alpha=0.15)
    _legends(
        ax,
        sorted({family_of(r) for r in timed}, key=list(FAMILY_COLOURS).index),
        sorted({r["precision"] for r in timed}, key=_precision_order),
        machines,
    )
    # One label per imported model off the fronts (its fastest point); none for a model the
    # fronts already name (a Keras import has a point per runtime and precision), nor for
    # one an imported model on its machine's front beats on both axes.
    on_front, imported = {r["model"] for r in front}, {}
    beaten = {
        r["model"]
        for r in timed
        for f in front
        if family_of(f) == "imported"
        and f["machine"] == r["machine"]
        and f["p50_us"] <= r["p50_us"]
        and f["accuracy"] >= r["accuracy"]
    }
    for r in sorted(timed, key=lambda r: r["p50_us"]):
        if not r["pareto"] and family_of(r) == "imported" and r["model"] not in on_front | beaten:
            imported.setdefault(r["model"], r)
    imported = list(imported.values())
    if len(machines) > 1:
        _label_fronts(fig, ax, front, imported)
    else:
        _label_front(ax, front)
        _label_imported(ax, imported)
    return fig


# The chart's colours: a model's family (harness.report.versus.kind_of, imports apart).
FAMILY_COLOURS = {
    "fully connected": "tab:blue",
    "CNN": "tab:orange",
    "imported": "tab:green",
    "unknown": "0.5",
}
PRECISION_MARKERS = {"float32": "o", "float16": "D", "dynamic": "P", "int8": "s"}


def family_of(row: dict) -> str:
    """fully connected, CNN, imported (a model harness did not train) or unknown (a bench
    record without its run)."""
    from harness.report.versus import CONV, DENSE, kind_of

    if str(row.get("variant") or "").startswith("imported"):
        return "imported"
    return {DENSE: "fully connected", CONV: "CNN"}.get(kind_of(row["architecture"]), "unknown")


def _label_imported(ax, rows: list[dict]) -> None:
    """Imported models (harness import: a published reference, say) are labelled as such
    wherever they lie; off the front, below and to the right of the point, where front
    labels (up and to the left) do not go."""
    for r in rows:
        if family_of(r) == "imported":
            ax.annotate(
                f"{_model_label(r)}\n{_kind_label(r)}",
                (r["p50_us"], r["accuracy"] * 100),
                xytext=(7, -6),
                textcoords="offset points",
                fontsize=8,
                ha="left",
                va="top",
                bbox=_LABEL_BOX,
            )


def _precision_order(name: str) -> int:
    order = list(PRECISION_MARKERS)
    return order.index(name) if name in order else len(order)


_LABEL_BOX = {"boxstyle": "round,pad=0.2", "fc": "white", "ec": "0.6", "alpha": 0.9}
_LEADER = {"arrowstyle": "-", "color": "0.5", "lw": 0.6}


def _label_front(ax, front: list[dict], x: str = "p50_us", text=None) -> None:
    """One front, sorted by ``x`` (the key of the x axis, a log one): each point labelled
    with ``text(row)``, by default its model, runtime and precision."""
    # Up and to the left of a point on the front nothing can lie (it would dominate the
    # point), so the labels go there, with room made at the left and top edges. Labels of
    # neighbours on the front (close in latency and accuracy) are stacked upwards, with a
    # leader line, so they do not cover each other.
    text = text or (lambda r: f"{_model_label(r)}\n{_kind_label(r)}")
    stack, previous = 0, None
    for r in front:
        close = (
            previous is not None
            and r[x] < 3 * previous[x]
            and abs(r["accuracy"] - previous["accuracy"]) < 0.04
        )
        stack = stack + 1 if close else 0
        ax.annotate(
            text(r),
            (r[x], r["accuracy"] * 100),
            xytext=(-7, 5 + 26 * stack),
            textcoords="offset points",
            fontsize=8,
            ha="right",
            va="bottom",
            bbox=_LABEL_BOX,
            arrowprops=_LEADER if stack else None,
        )
        previous = r


def _label_fronts(fig, ax, front: list[dict], others: list[dict] = ()) -> None:
    """One label per model's stretch of its machine's front, and one per imported model off
    the fronts (``others``), each set where it covers no other label and no point of a
    front: tried up and to the left of the point, stacked upwards, then up and to the
    right, then further out with a leader line, then below; the labels go last, when the
    axes have their place."""
    from matplotlib.transforms import Bbox

    fig.draw_without_rendering()  # the layout settled, so that points map to pixels
    frame, px = ax.get_window_extent(), fig.dpi / 72  # pixels per point
    marks = [ax.transData.transform((r["p50_us"], r["accuracy"] * 100)) for r in front]
    # (x, y) offsets in points of the label's bottom corner next to the point.
    tries = [(side, 5 + 13 * k) for side in (-7, 7) for k in range(12)]
    tries += [(side, 5 + 13 * k) for side in (-60, 60, -120, 120, -200, 200) for k in range(16)]
    tries += [(side, -30 - 13 * k) for side in (-7, 7, -60, 60, 120, 200, 300) for k in range(16)]
    tries += [(side, 5 + 13 * k) for side in (-300, 300) for k in range(16)]
    items = [(first, f"{_model_label(first)}\n{names}") for first, names in _stretches(front)]
    items += [(r, f"{_model_label(r)}\n{_kind_label(r)}") for r in others]
    placed, said = [], []
    for first, text in items:
        at = (first["p50_us"], first["accuracy"] * 100)
        # One label for one model's points of two fronts that coincide (within 5% and 0.5 point).
        if any(
            t == text and abs(at[0] / x - 1) < 0.05 and abs(at[1] - y) < 0.5 for t, x, y in said
        ):
            continue
        said.append((text, *at))
        probe = ax.text(*at, text, fontsize=8)
        width, height = probe.get_window_extent().size
        probe.remove()
        x, y = ax.transData.transform(at)

        def box(offset):  # left of the point: its right edge at the offset, else its left
            edge, bottom = x + offset[0] * px, y + offset[1] * px
            left = edge - width if offset[0] < 0 else edge
            return Bbox.from_extents(left, bottom, left + width, bottom + height).padded(4)

        def clash(offset):
            b = box(offset)
            outside = not (frame.contains(b.x0, b.y0) and frame.contains(b.x1, b.y1))
            covered = sum(b.overlaps(other) for other in placed)
            covered += sum(b.contains(*mark) for mark, r in zip(marks, front) if r is not first)
            return outside, covered, tries.index(offset)

        best = min(tries, key=clash)
        ax.annotate(
            text,
            at,
            xytext=best,
            textcoords="offset points",
            fontsize=8,
            ha="right" if best[0] < 0 else "left",
            va="bottom",
            bbox=_LABEL_BOX,
            arrowprops=_LEADER if best != tries[0] else None,
            gid="label",
        )
        placed.append(box(best))


def _stretches(front: list[dict]):
    """(fastest point, "runtime precision, precision, ...") for each run of neighbouring
    points, by latency, that are one model on one machine's front."""
    for on in sorted({r["machine"] for r in front}):
        line = [r for r in front if r["machine"] == on]
        for _, group in groupby(line, key=lambda r: r["model"]):
            group = list(group)
            names = [
                r["precision"] if r["runtime"] == before["runtime"] else _kind_label(r)
                for before, r in zip([{"runtime": None}, *group], group)
            ]
            yield group[0], ", ".join(names)


def _model_label(row: dict) -> str:
    """The model's name, marked when it was imported (harness import)."""
    imported = str(row.get("variant") or "").startswith("imported")
    return f"{row['model']} (imported)" if imported else row["model"]


def _kind_label(row: dict) -> str:
    return f"{row['runtime']} {row['precision']}"


def _colours(n: int) -> list:
    from matplotlib import colormaps

    cmap = colormaps["tab10" if n <= 10 else "tab20"]
    return [cmap(i % cmap.N) for i in range(n)]


def _model_legend(ax, models: list[str], cmap: list) -> None:
    """The legend of colours, one per model, right of the axes at the top."""
    from matplotlib.lines import Line2D

    by_model = [
        Line2D([], [], marker="o", linestyle="", color=c, label=m) for m, c in zip(models, cmap)
    ]
    ax.add_artist(
        ax.legend(
            handles=by_model,
            title="model",
            loc="upper left",
            bbox_to_anchor=(1.01, 1),
            fontsize=8,
            title_fontsize=9,
        )
    )


def _legends(ax, families: list[str], precisions: list[str], machines: list[str]) -> None:
    """Colour by family (top right), marker by precision and each machine's front (below)."""
    from matplotlib.lines import Line2D

    by_family = [
        Line2D([], [], marker="o", linestyle="", color=FAMILY_COLOURS[f], label=f) for f in families
    ]
    by_family.append(
        Line2D(
            [], [], marker="o", linestyle="", color="0.5", alpha=0.3, label="off the front (faded)"
        )
    )
    ax.add_artist(
        ax.legend(
            handles=by_family,
            title="family",
            loc="upper left",
            bbox_to_anchor=(1.01, 1),
            fontsize=8,
            title_fontsize=9,
        )
    )
    by_kind = [
        Line2D([], [], marker=PRECISION_MARKERS.get(p, "X"), linestyle="", color="0.4", label=p)
        for p in precisions
    ]
    by_kind += [
        Line2D(
            [],
            [],
            color=colour,
            linestyle=style,
            marker="o",
            markerfacecolor="w",
            markeredgecolor="black",
            label="Pareto front" + (f", {on}" if len(machines) > 1 else ""),
        )
        for (colour, style), on in zip(FRONTS * len(machines), machines)
    ]
    ax.legend(
        handles=by_kind,
        title="precision",
        loc="lower left",
        bbox_to_anchor=(1.01, 0),
        fontsize=8,
        title_fontsize=9,
    )


def plot_accuracy_flash(rows: list[dict]) -> bytes:
    """PNG: test accuracy against flash on a log axis, one point per int8 TFLite file
    (colour = model), the files no other beats on both outlined and labelled, and MLPerf
    Tiny's reference as dashed lines (see accuracy_flash_figure)."""
    return _png(accuracy_flash_figure(rows))


def accuracy_flash_figure(rows: list[dict]):
    """The Matplotlib Figure plot_accuracy_flash saves. Points: the rows of
    :func:`harness.report.table.int8_rows` (what TensorFlow Lite Micro runs), identical ones once.
    Lines (gid ``reference flash`` and ``quality target``): the int8 file of our ResNet-8
    (:func:`harness.report.table.reference_row`; no line when no ResNet-8 was benchmarked), and
    MLPerf Tiny's 85% top-1 target."""
    from matplotlib.lines import Line2D
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    points = list(
        {
            (r["model"], r["runtime"], flash_of(r), r["accuracy"]): {**r, "flash": flash_of(r)}
            for r in int8_rows(rows)
        }.values()
    )
    models = list(dict.fromkeys(p["model"] for p in points))
    # As in the latency picture: 6.5 inches hold 28 legend rows (here 3 are the reference's).
    fig = _figure(11, 6.5 + 0.18 * max(0, len(models) + 3 - 28))
    ax = fig.add_subplot()
    ax.set_title(
        "Test accuracy against flash: the int8 TFLite file a microcontroller stores", fontsize=11
    )
    if not points:
        _nothing_to_plot(ax, "no int8 TFLite rows: no flash to plot")
        return fig
    cmap = _colours(len(models))
    on_front = pareto_front([(p["accuracy"], p["flash"]) for p in points])
    for p, on in zip(points, on_front):
        ax.scatter(
            p["flash"],
            p["accuracy"] * 100,
            s=46,
            alpha=0.85,
            zorder=3,
            color=cmap[models.index(p["model"])],
            edgecolors="black" if on else "none",
            linewidths=1.2,
        )
    reference = reference_row(rows)
    lines = [
        ax.axhline(
            MLPERF_TINY_TARGET * 100,
            color="0.3",
            linestyle="--",
            linewidth=1,
            zorder=2,
            gid="quality target",
            label=f"MLPerf Tiny quality target: {MLPERF_TINY_TARGET:.0%} top-1",
        )
    ]
    if reference is not None:
        flash = flash_of(reference)
        lines.insert(
            0,
            ax.axvline(
                flash,
                color="crimson",
                linestyle="--",
                linewidth=1,
                zorder=2,
                gid="reference flash",
                label=f"MLPerf Tiny's ResNet-8, int8: {flash / 1024:.1f} KiB"
                f"\n(our run {reference['model']})",
            ),
        )
    ax.set_xscale("log")
    xs = [p["flash"] for p in points] + ([flash_of(reference)] if reference else [])
    accs = [p["accuracy"] * 100 for p in points] + [MLPERF_TINY_TARGET * 100]
    ax.set_xlim(min(xs) / 6, max(xs) * 1.6)
    ax.set_ylim(min(accs) - 2, max(accs) + 8)  # room above the front for its labels
    ax.xaxis.set_major_locator(LogLocator(base=4))  # 16 KiB, 64 KiB, 256 KiB, 1 MiB, ...
    ax.xaxis.set_major_formatter(FuncFormatter(_bytes_label))
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("flash: the int8 model file's bytes (log scale; left is smaller)")
    ax.set_ylabel("test accuracy (%)")
    ax.grid(True, which="major", alpha=0.4)
    _model_legend(ax, models, cmap)
    front = Line2D(
        [],
        [],
        marker="o",
        linestyle="",
        markerfacecolor="w",
        markeredgecolor="black",
        label="outlined: no other file is at least\nas accurate and as small",
    )
    ax.legend(
        handles=[*lines, front],
        title="reference",
        loc="lower left",
        bbox_to_anchor=(1.01, 0),
        fontsize=8,
        title_fontsize=9,
    )
    _label_front(
        ax,
        sorted(
            (p for p, on in zip(points, on_front) if on), key=lambda p: (p["flash"], p["accuracy"])
        ),
        x="flash",
        text=lambda p: p["model"],
    )
    return fig


LEGEND_ROWS = 24  # runs per legend column in the training curves


def plot_training_curves(runs: list[RunRecord], labels: dict[Path, str]) -> bytes:
    """PNG: validation accuracy per epoch, one line per run with a history. Many runs get
    more legend columns (the figure widens) and line styles beside the colours; markers
    only on short histories, where they show the epochs."""
    with_history = sorted((r for r in runs if r.history), key=lambda r: labels[r.path])
    columns = max(1, math.ceil(len(with_history) / LEGEND_ROWS))
    fig = _figure(10 + 2.2 * (columns - 1), 5.5 if columns == 1 else 6.5)
    ax = fig.add_subplot()
    ax.set_title("Validation accuracy per epoch", fontsize=11)
    if not with_history:
        _nothing_to_plot(ax, "no history.csv among the runs")
        return _png(fig)
    colours = _colours(len(with_history))
    styles = ("-", "--", ":", "-.")
    for i, (run, colour) in enumerate(zip(with_history, colours)):
        epochs, acc = zip(*run.history)
        ax.plot(
            epochs,
            [a * 100 for a in acc],
            marker="o" if len(epochs) <= 40 else None,
            markersize=3,
            linewidth=1.4,
            color=colour,
            label=labels[run.path],
            linestyle=styles[(i // 20) % len(styles)] if columns > 1 else "-",
        )
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation accuracy (%)")
    ax.grid(True, alpha=0.4)
    ax.legend(
        loc="upper left",
        bbox_to_anchor=(1.01, 1),
        fontsize=8,
        title="run",
        title_fontsize=9,
        ncols=columns,
    )
    return _png(fig)
