"""The accuracy-latency chart as one self-contained HTML page: hover a point for its model,
runtime, precision, figures, machine and record. Offline from the file: inline SVG and no
script, each point's details in its SVG ``<title>`` (which every browser shows on hover).
Written by hand because matplotlib's SVG has no per-point hover text and the interactive
plotting libraries (plotly, bokeh) would be a dependency for one page.
"""

from __future__ import annotations

import math
from html import escape

from harness.report.plots import FAMILY_COLOURS, FRONTS, family_of

WIDTH, HEIGHT, LEFT, RIGHT, TOP, BOTTOM = 960, 560, 70, 220, 40, 60
CSS_COLOURS = {
    "tab:blue": "#1f77b4",
    "tab:orange": "#ff7f0e",
    "tab:green": "#2ca02c",
    "0.5": "#808080",
}
SHAPES = {"float32": "circle", "float16": "diamond", "dynamic": "plus", "int8": "square"}


def accuracy_latency_html(rows: list[dict], title: str = "") -> str:
    """The page for ``rows`` (harness.report.table's, Pareto front marked)."""
    timed = [r for r in rows if r["p50_us"] is not None]
    body = _svg(timed) if timed else "<p>No bench records: no latency to plot.</p>"
    return (
        f'<!doctype html>\n<html lang="en"><head><meta charset="utf-8">\n'
        f"<title>Test accuracy against batch-1 latency</title>\n"
        f"<style>body{{font-family:sans-serif;margin:1em}} circle,rect,path{{"
        f"cursor:pointer}} text{{font-size:12px}}</style></head><body>\n"
        f'<h1 style="font-size:16px">Test accuracy against batch-1 latency (p50, one '
        f"thread)</h1>\n<p>{escape(title)}</p>\n{body}\n<p>Hover a point for its model, "
        f"runtime, precision, figures, machine and record. Outlined points are on their "
        f"machine's Pareto front; the others are faded.</p>\n</body></html>\n"
    )


def _svg(timed: list[dict]) -> str:
    lo = math.floor(math.log10(min(r["p50_us"] for r in timed)))
    hi = math.ceil(math.log10(max(r["p50_us"] for r in timed)))
    hi = max(hi, lo + 1)
    accs = [r["accuracy"] * 100 for r in timed]
    bottom, top = math.floor(min(accs) - 2), math.ceil(max(accs) + 2)
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM

    def x(us: float) -> float:
        return LEFT + (math.log10(us) - lo) / (hi - lo) * plot_w

    def y(acc: float) -> float:
        return TOP + (top - acc) / (top - bottom) * plot_h

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}">',
        f'<rect x="{LEFT}" y="{TOP}" width="{plot_w}" height="{plot_h}" fill="none" '
        f'stroke="#999"/>',
    ]
    for decade in range(lo, hi + 1):
        gx = x(10**decade)
        parts.append(
            f'<line x1="{gx:.1f}" y1="{TOP}" x2="{gx:.1f}" y2="{TOP + plot_h}" '
            f'stroke="#ddd"/><text x="{gx:.1f}" y="{TOP + plot_h + 18}" '
            f'text-anchor="middle">{_latency(10**decade)}</text>'
        )
    for acc in range(bottom, top + 1, max(1, (top - bottom) // 8)):
        parts.append(
            f'<line x1="{LEFT}" y1="{y(acc):.1f}" x2="{LEFT + plot_w}" '
            f'y2="{y(acc):.1f}" stroke="#eee"/><text x="{LEFT - 8}" '
            f'y="{y(acc) + 4:.1f}" text-anchor="end">{acc}%</text>'
        )
    parts.append(
        f'<text x="{LEFT + plot_w / 2}" y="{HEIGHT - 15}" text-anchor="middle">'
        f"batch-1 latency, p50 (log scale; left is faster)</text>"
    )
    machines = sorted({r["machine"] for r in timed})
    for (colour, _), on in zip(FRONTS * len(machines), machines):
        front = sorted(
            (r for r in timed if r["pareto"] and r["machine"] == on), key=lambda r: r["p50_us"]
        )
        points = [(x(r["p50_us"]), y(r["accuracy"] * 100)) for r in front]
        if points:  # a step line, as matplotlib's steps-post: across, then up or down
            d = f"M{points[0][0]:.1f} {points[0][1]:.1f}" + "".join(
                f" H{px:.1f} V{py:.1f}" for px, py in points[1:]
            )
            parts.append(
                f'<path d="{d}" fill="none" stroke="{colour}" '
                f'stroke-dasharray="5,3"><title>Pareto front, {escape(on)}</title>'
                f"</path>"
            )
    for r in sorted(timed, key=lambda r: r["pareto"]):
        parts.append(_point(r, x(r["p50_us"]), y(r["accuracy"] * 100)))
    for i, family in enumerate(FAMILY_COLOURS):
        ly = TOP + 10 + 20 * i
        parts.append(
            f'<circle cx="{WIDTH - RIGHT + 20}" cy="{ly}" r="5" '
            f'fill="{CSS_COLOURS[FAMILY_COLOURS[family]]}"/><text '
            f'x="{WIDTH - RIGHT + 32}" y="{ly + 4}">{family}</text>'
        )
    parts.append("</svg>")
    return "\n".join(parts)


def _point(r: dict, cx: float, cy: float) -> str:
    """One point: its shape by precision, colour by family, its details in its title."""
    colour = CSS_COLOURS[FAMILY_COLOURS[family_of(r)]]
    style = f'fill="{colour}" fill-opacity="{0.95 if r["pareto"] else 0.3}" ' + (
        'stroke="black" stroke-width="1.2"' if r["pareto"] else 'stroke="none"'
    )
    details = escape(
        f"{r['model']}: {r['runtime']} {r['precision']}, "
        f"{r['accuracy']:.2%} test accuracy, {_latency(r['p50_us'])} p50"
        f"{', on the Pareto front' if r['pareto'] else ''}\n"
        f"{r.get('architecture') or '?'}; {r.get('variant') or ''}\n"
        f"machine: {r.get('machine') or '?'}\nrecord: {r.get('record') or '?'}"
    )
    shape = SHAPES.get(r["precision"], "circle")
    if shape == "square":
        element = f'<rect x="{cx - 5:.1f}" y="{cy - 5:.1f}" width="10" height="10" {style}>'
        close = "</rect>"
    elif shape in ("diamond", "plus"):
        d = (
            f"M{cx:.1f} {cy - 6:.1f} L{cx + 6:.1f} {cy:.1f} L{cx:.1f} {cy + 6:.1f} "
            f"L{cx - 6:.1f} {cy:.1f} Z"
            if shape == "diamond"
            else f"M{cx - 2:.1f} {cy - 6:.1f} h4 v4 h4 v4 h-4 v4 h-4 v-4 h-4 v-4 h4 Z"
        )
        element, close = f'<path d="{d}" {style}>', "</path>"
    else:
        element, close = f'<circle cx="{cx:.1f}" cy="{cy:.1f}" r="5" {style}>', "</circle>"
    return f"{element}<title>{details}</title>{close}"


def _latency(us: float) -> str:
    return f"{us / 1000:g} ms" if us >= 1000 else f"{us:g} us"
