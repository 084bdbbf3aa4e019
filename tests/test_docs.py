"""The README and docs/ stay a user's pages whose every link and cited record exists.

Fast: reads Markdown files only, no TensorFlow, no data.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
README_LIMIT = 12_000  # characters: long tables and lab notes belong in docs/
PAGES = [README, *sorted((REPO / "docs").glob("*.md"))]
LAB_PAGES = sorted((REPO / "docs" / "lab").glob("*.md"))  # the lab notebook: no length limit
LINKED_PAGES = [*PAGES, *LAB_PAGES, REPO / "results/reference/README.md"]

FENCE = re.compile(r"^```.*?^```", re.S | re.M)
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
RECORD = re.compile(r"results/reference/[\w.<>*/-]*[\w>*/]")
# Files the commands make and git ignores (models, exports, logs): named by the docs as
# what a command writes, never as a committed record.
MADE_NOT_COMMITTED = (".keras", ".tflite", ".onnx", "/saved_model", "/logs")
# The set-up commands the README keeps verbatim (the second is also what .ci/run runs).
SETUP_COMMANDS = (
    "python3 -m venv .venv && . .venv/bin/activate && pip install -e . && harness train --preset selu",  # noqa: E501 (verbatim)
    'python3 -m venv .venv && . .venv/bin/activate && pip install -e ".[test]" && pytest',  # noqa: E501 (verbatim)
)


def _name(page: Path) -> str:
    return str(page.relative_to(REPO))


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[`*_]", "", heading.strip().lower())
    return re.sub(r"\s", "-", re.sub(r"[^\w\s-]", "", text))


def _anchors(page: Path) -> set[str]:
    text = FENCE.sub("", page.read_text(encoding="utf-8"))
    return {_slug(m) for m in re.findall(r"^#+\s+(.+)$", text, re.M)}


def test_docs_exist():
    assert README.is_file()
    assert len(PAGES) > 1, "docs/*.md missing"


def test_readme_is_short():
    size = len(README.read_text(encoding="utf-8"))
    assert size <= README_LIMIT, f"README.md has {size} characters (at most {README_LIMIT})"


@pytest.mark.parametrize("command", SETUP_COMMANDS)
def test_readme_keeps_the_setup_commands(command):
    assert command in README.read_text(encoding="utf-8")


@pytest.mark.parametrize("page", LINKED_PAGES, ids=_name)
def test_relative_links_point_to_existing_files(page):
    text = FENCE.sub("", page.read_text(encoding="utf-8"))
    broken = []
    for target in LINK.findall(text):
        if re.match(r"[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        if not file.exists():
            broken.append(f"{target} (no such file)")
        elif anchor and file.suffix == ".md" and anchor not in _anchors(file):
            broken.append(f"{target} (no such heading)")
    assert not broken, f"{_name(page)}: broken links: {broken}"


@pytest.mark.parametrize("page", [*PAGES, *LAB_PAGES], ids=_name)
def test_cited_records_exist(page):
    missing = []
    for path in sorted(set(RECORD.findall(page.read_text(encoding="utf-8")))):
        if any(part in path for part in MADE_NOT_COMMITTED):
            continue
        if path.endswith(".tar.gz"):  # a deploy archive: made again, its checksum committed
            path += ".sha256"
        # A placeholder such as results/reference/runs/<run>/config.json must match a file.
        pattern = re.sub(r"<[^>]+>", "*", path)
        if not list(REPO.glob(pattern.rstrip("/"))):
            missing.append(path)
    assert not missing, f"{_name(page)} cites records that do not exist: {missing}"


def test_record_pattern_finds_paths():
    """The checks above see what they should (a guard against a regex that matches nothing)."""
    text = "see `results/reference/runs/<run>/config.json`, and results/reference/bench/a.json."
    assert RECORD.findall(text) == [
        "results/reference/runs/<run>/config.json",
        "results/reference/bench/a.json",
    ]
    assert LINK.findall("[a](docs/x.md) ![b](img.png) [c](https://e.org)") == [
        "docs/x.md",
        "img.png",
        "https://e.org",
    ]
    assert _slug("Against the CNN, and the targets") == "against-the-cnn-and-the-targets"


@pytest.mark.parametrize("page", PAGES[1:], ids=_name)
def test_user_pages_are_short(page):
    """A user page says how to do a job; how each result was reached goes to docs/lab/."""
    size = len(page.read_text(encoding="utf-8"))
    assert size <= README_LIMIT, f"{_name(page)} is {size} characters (at most {README_LIMIT})"
