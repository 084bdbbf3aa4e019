"""The report's two pictures, as PNG bytes: accuracy against latency, and training curves.

accuracy_vs_latency.png: test accuracy against batch-1 p50 latency (log scale), one point per
model x runtime, the Pareto front drawn and labelled. training_curves.png: validation accuracy
per epoch of every run with a history.csv. Matplotlib is imported only when a picture is drawn,
through its object API (no pyplot), so that the rest of compare never loads it.
"""

from __future__ import annotations

import io
from pathlib import Path

from harness.collect import RunRecord

DPI = 120
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
