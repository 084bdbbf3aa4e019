"""Figures in README.md and docs/ that come from the committed records, and cannot drift.

A page marks each block of figures that is generated::

    <!-- generated:NAME -->
    ...
    <!-- generated:end -->

NAME is a key of GENERATORS: a function of the repository's root that reads the committed
records and returns the block's Markdown. ``harness compare results/reference --docs``
rewrites every block (``refresh``); tests/test_docs_figures.py fails while a page differs
from what it would write (``stale``).

Prose outside the blocks cites its figures by a record's path. ``cited_mismatches`` checks
them: each figure with a unit (12.3%, 4.7 us, 204 KiB, 1,234 bytes) in a paragraph or table
row that names a record under ``results/`` must be one of that record's numbers, as written
at the figure's precision. Figures under a heading that says "Unreproduced" are exempt.

Hand-written here, not a templating library: the blocks are a few tables and command
outputs, and the check needs the records' numbers, which no docs tool knows.
"""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

from harness.core.records import atomic_write_text
from harness.report.doc_tables import GENERATORS, DocsError

__all__ = ["GENERATORS", "DocsError", "cited_mismatches", "find_root", "pages", "refresh", "stale"]

BLOCK = re.compile(r"(<!-- generated:([\w-]+) -->\n)(.*?)(<!-- generated:end -->)", re.S)


def pages(root: Path) -> list[Path]:
    """README.md and every Markdown page under docs/ (the lab notebook included)."""
    found = [root / "README.md", *sorted((root / "docs").rglob("*.md"))]
    return [p for p in found if p.is_file()]


def render(text: str, root: Path) -> str:
    """``text`` with every generated block rewritten from the records under ``root``."""

    def fill(m: re.Match) -> str:
        name = m.group(2)
        if name not in GENERATORS:
            raise DocsError(f"no generator for block {name!r}; known: {', '.join(GENERATORS)}")
        return m.group(1) + GENERATORS[name](root).rstrip("\n") + "\n" + m.group(4)

    return BLOCK.sub(fill, text)


def stale(root: Path) -> list[str]:
    """'page: block' for every generated block that differs from what the records say."""
    out = []
    for page in pages(root):
        text = page.read_text()
        fresh = render(text, root)
        if fresh != text:
            old = {m.group(2): m.group(3) for m in BLOCK.finditer(text)}
            new = {m.group(2): m.group(3) for m in BLOCK.finditer(fresh)}
            names = [n for n in new if old.get(n) != new[n]]
            out.extend(f"{page.relative_to(root)}: {n}" for n in names)
    return out


def refresh(root: Path) -> list[Path]:
    """Rewrites the generated blocks of every page; returns the pages that changed."""
    changed = []
    for page in pages(root):
        text = page.read_text()
        fresh = render(text, root)
        if fresh != text:
            atomic_write_text(page, fresh)
            changed.append(page)
    return changed


def find_root(path: Path) -> Path:
    """The repository root of a results folder: the folder above ``results/`` that holds
    README.md (``results/reference`` -> ``.``)."""
    here = Path(path).resolve()
    for folder in (here, *here.parents):
        if folder.name == "results" and (folder.parent / "README.md").is_file():
            return folder.parent
    raise DocsError(f"{path}: not inside a results/ folder beside a README.md")


# --------------------------------------------------------------------------- figure check

FIGURE = re.compile(
    r"(?<![\w.,-])(\d{1,3}(?:,\d{3})+|\d+(?:\.\d+)?)\s?(%|us|ms|s|KiB|KB|MiB|MB|bytes|B)(?!\w)"
)
# A record's path, or one at a commit (``git show d753ff6:results/bench/x.json``).
CITATION = re.compile(r"(?<![\w/.-])(?:[0-9a-f]{7,40}:)?results/[\w./-]*[\w/]")
# A figure's unit -> the factors a record's number may be written with (0.5732 -> 57.32%).
SCALES = {
    "%": (100, 1),
    "us": (1, 1e6),
    "ms": (1, 1e3, 1e-3),
    "s": (1, 1e-3, 1e-6),
    "KiB": (1 / 1024, 1),
    "KB": (1e-3, 1),
    "MiB": (1 / 2**20, 1),
    "MB": (1e-6, 1),
    "bytes": (1,),
    "B": (1,),
}


def _numbers(obj, out: list[float]) -> None:
    if isinstance(obj, bool):
        return
    if isinstance(obj, (int, float)):
        out.append(float(obj))
    elif isinstance(obj, dict):
        for v in obj.values():
            _numbers(v, out)
    elif isinstance(obj, list):
        for v in obj:
            _numbers(v, out)


def record_numbers(root: Path, cited: str, cache: dict) -> list[float]:
    """Every number in the cited record: a JSON file, the JSON files of a folder, or a JSON
    file as committed at a revision (read with ``git show``)."""
    if cited not in cache:
        found: list[float] = []
        for text in _record_texts(root, cited):
            try:
                _numbers(json.loads(text), found)
            except ValueError:
                continue
        cache[cited] = found
    return cache[cited]


def _record_texts(root: Path, cited: str) -> list[str]:
    if ":" in cited:
        done = subprocess.run(
            ["git", "show", cited], cwd=root, capture_output=True, text=True, check=False
        )
        return [done.stdout] if done.returncode == 0 else []
    path = root / cited
    files = [path] if path.suffix == ".json" else sorted(path.rglob("*.json"))
    return [f.read_text() for f in files if f.is_file()]


# A folder cited as a record: one run, search or bundle, not a whole tree of them (a
# figure would then match almost anything).
FOLDER_LIMIT = 40


def is_record(root: Path, cited: str) -> bool:
    """A citation names a record when the path is a file, a revision's file, or a folder of
    at most FOLDER_LIMIT JSON files."""
    path = root / cited
    if ":" in cited or path.is_file():
        return True
    return path.is_dir() and len(list(path.rglob("*.json"))) <= FOLDER_LIMIT


def written_as(figure: str, unit: str, numbers: list[float]) -> bool:
    """Whether one of ``numbers`` reads as ``figure`` (its decimals) in ``unit``."""
    value = float(figure.replace(",", ""))
    decimals = len(figure.split(".")[1]) if "." in figure else 0
    slack = 0.5 * 10**-decimals + 1e-9
    return any(abs(x * k - value) <= slack for x in numbers for k in SCALES[unit])


def _paragraphs(text: str) -> Iterator[tuple[str, list[str]]]:
    """(heading, lines) of each paragraph, list or table; fenced code is one paragraph."""
    heading, lines, fenced = "", [], False
    for line in [*text.splitlines(), ""]:
        if line.startswith("```"):
            fenced = not fenced
        if not fenced and (line.startswith("#") or not line.strip()):
            if lines:
                yield heading, lines
            lines = []
            heading = line if line.startswith("#") else heading
            continue
        lines.append(line)


def cited_mismatches(page: Path, root: Path, cache: dict | None = None) -> list[str]:
    """The figures of ``page`` (outside generated blocks) that a cited record does not hold:
    'page:line: figure (cites ...)'. A table row is checked against the records it cites,
    or, when it cites none, against those its table and the paragraph before it cite."""
    cache = {} if cache is None else cache
    text = BLOCK.sub(
        lambda m: m.group(1) + "\n" * m.group(3).count("\n") + m.group(4), page.read_text()
    )
    lines_of = text.splitlines()
    out, before = [], []
    cursor = 0
    for heading, para in _paragraphs(text):
        start = lines_of.index(para[0], cursor)
        cursor = start + len(para)
        if "unreproduced" in heading.lower():
            before = []
            continue
        around = [c for c in CITATION.findall(" ".join(para)) if is_record(root, c)]
        table = para[0].startswith("|")
        for offset, line in enumerate(para):
            own = [c for c in CITATION.findall(line) if is_record(root, c)] if table else []
            cited = own or around or (before if table else [])
            if not cited:
                continue
            numbers = [x for c in cited for x in record_numbers(root, c, cache)]
            for m in FIGURE.finditer(line):
                if not written_as(m.group(1), m.group(2), numbers):
                    out.append(
                        f"{page.relative_to(root)}:{start + offset + 1}: {m.group(0)} "
                        f"(cites {', '.join(sorted(set(cited)))})"
                    )
        before = around
    return out
