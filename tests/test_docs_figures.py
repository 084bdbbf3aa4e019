"""The figures of README.md and docs/ are the committed records' (harness.report.docs).

Fast: reads Markdown and JSON only.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from harness.cli import main
from harness.report import docs

REPO = Path(__file__).resolve().parents[1]


def test_no_generated_table_is_stale():
    """Regenerate with `harness compare results/reference --docs` when this fails."""
    assert docs.stale(REPO) == []


@pytest.mark.parametrize("page", docs.pages(REPO), ids=lambda p: str(p.relative_to(REPO)))
def test_cited_figures_are_the_records(page):
    assert docs.cited_mismatches(page, REPO) == []


def test_every_block_a_page_names_has_a_generator_and_is_used():
    named = {m.group(2) for p in docs.pages(REPO) for m in docs.BLOCK.finditer(p.read_text())}
    assert named == set(docs.GENERATORS)


def _repo(tmp_path: Path, accuracy: float, page: str) -> Path:
    (tmp_path / "results" / "reference" / "runs" / "selu").mkdir(parents=True)
    (tmp_path / "README.md").write_text(page)
    run = {"epochs_run": 3, "best_epoch": 2, "wall_time_s": 12.34, "seconds_per_epoch": 4.1}
    run |= {k: {"accuracy": accuracy} for k in ("train", "val", "test")}
    for name in ("selu", "bn-elu"):
        folder = tmp_path / "results" / "reference" / "runs" / name
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "metrics.json").write_text(json.dumps(run))
    return tmp_path


def test_a_changed_record_makes_its_table_stale_and_the_command_rewrites_it(tmp_path):
    page = "# t\n\n<!-- generated:training-reference -->\nold\n<!-- generated:end -->\n"
    root = _repo(tmp_path, 0.5, page)
    assert docs.stale(root) == ["README.md: training-reference"]
    done = CliRunner().invoke(main, ["compare", str(root / "results" / "reference"), "--docs"])
    assert done.exit_code == 0, done.output
    assert "rewrote README.md" in done.output
    text = (root / "README.md").read_text()
    assert "| `selu` | 3 (2) | 12.3 s | 4.10 | 50.0% | 50.0% | 50.0% |" in text
    assert docs.stale(root) == []


def test_a_figure_the_cited_record_does_not_hold_is_named(tmp_path):
    root = _repo(tmp_path, 0.5732, "")
    page = root / "README.md"
    cite = "`results/reference/runs/selu/metrics.json`"
    page.write_text(f"It scored 57.3% and took 12.3 s ({cite}).\n\nIt scored 58.1% ({cite}).\n")
    assert [m.split(": ", 1)[1].split(" (")[0] for m in docs.cited_mismatches(page, root)] == [
        "58.1%"
    ]
    page.write_text(f"## Unreproduced notes\n\nIt scored 58.1% ({cite}).\n")
    assert docs.cited_mismatches(page, root) == []


def test_docs_outside_a_results_folder_is_one_line(tmp_path):
    done = CliRunner().invoke(main, ["compare", str(tmp_path), "--docs"])
    assert done.exit_code == 1
    assert "not inside a results/ folder" in done.output


def test_a_whole_tree_of_records_is_no_citation(tmp_path):
    """`--results results/reference` in a command names a tree, not a record: a figure
    beside it would match some number of hundreds of records."""
    root = _repo(tmp_path, 0.5, "")
    tree = root / "results" / "reference" / "bench"
    tree.mkdir(parents=True)
    for i in range(docs.FOLDER_LIMIT + 1):
        (tree / f"r{i}.json").write_text(json.dumps({"p50_us": 4.0 + i / 10}))
    assert not docs.is_record(root, "results/reference/bench")
    assert docs.is_record(root, "results/reference/runs/selu")
