"""The package shows the pipeline: each stage imports only the core and the stages before it.

Read with ``ast`` (every import, at module level or inside a function), so a cycle dodged by
a function-level import is still found. Fast: no module is imported.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "harness"
# The stages in the order data flows; a stage may import those before it, never after.
# edge is the bundle's standalone predict.py (numpy and one runtime: no harness at all);
# export stands below search because a search within a device budget benchmarks its
# candidates' exports.
FLOORS = ("edge", "core", "data", "train", "export", "search", "imports", "deploy", "report", "cli")
MAX_LINES = 600


def _modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def _stage(path: Path) -> str:
    return path.relative_to(PACKAGE).parts[0]


def _imported_stages(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
        for name in names:
            parts = name.split(".")
            if parts[0] == "harness" and len(parts) > 1:
                found.add(parts[1])
    return found


def stage_graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for path in _modules():
        if path.parent == PACKAGE:  # harness/__init__.py: the version only
            continue
        graph.setdefault(_stage(path), set()).update(_imported_stages(path) - {_stage(path)})
    return graph


def test_every_stage_is_named_in_the_floors():
    assert set(stage_graph()) == set(FLOORS)


@pytest.mark.parametrize("stage", FLOORS)
def test_a_stage_imports_only_the_stages_below_it(stage):
    below = set(FLOORS[: FLOORS.index(stage)]) - ({"edge"} if stage == "edge" else set())
    upward = stage_graph()[stage] - below
    assert not upward, f"harness.{stage} imports stages above it: {sorted(upward)}"


def test_the_edge_stands_alone():
    """The bundle's predict.py is copied onto devices: it may not import harness."""
    assert stage_graph()["edge"] == set()


def test_no_module_is_long():
    long = {
        str(p.relative_to(PACKAGE)): n
        for p in _modules()
        if (n := len(p.read_text().splitlines())) > MAX_LINES
    }
    assert not long, f"modules over {MAX_LINES} lines: {long}"


def test_every_stage_says_what_it_takes_and_gives():
    for stage in FLOORS:
        doc = ast.get_docstring(ast.parse((PACKAGE / stage / "__init__.py").read_text()))
        assert doc and len(doc) > 40, f"harness/{stage}/__init__.py has no docstring"
