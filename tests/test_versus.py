"""Fully connected against convolutional at equal training time, latency and flash
(harness.report.versus), on hand-made records and on the committed ones."""

import copy
import json
from pathlib import Path

from click.testing import CliRunner

from harness.cli import main
from harness.report import collect
from harness.report.compare import render_markdown
from harness.report.table import build_rows, mark_pareto, sort_rows
from harness.report.versus import CONV, DENSE, Point, all_matchups, kind_of, matchups, summary

REPO = Path(__file__).resolve().parents[1]
COMMITTED = REPO / "results" / "reference"


def point(model, kind, accuracy, cost, scope="m1"):
    return Point(model, kind, accuracy, cost, scope, "", f"{model}.json")


def test_kind_of_architectures():
    assert kind_of("batchnorm pca512+3x1024 elu + flip TTA") == DENSE
    assert kind_of("plain 5x100 selu") == DENSE
    assert kind_of("resnet8") == CONV
    assert kind_of(None) is None


def test_best_of_each_kind_within_each_front_limit():
    points = [
        point("mlp-small", DENSE, 0.55, 5),
        point("mlp-big", DENSE, 0.75, 50),
        point("mlp-slow", DENSE, 0.70, 500),  # dominated: not a limit
        point("cnn", CONV, 0.80, 100),
        point("cnn-cheap", CONV, 0.60, 200),
        # another machine with only one kind: no matchup there
        point("mlp-other", DENSE, 0.9, 1, scope="m2"),
    ]
    found = matchups("batch-1 latency", points)
    assert [(m.scope, m.limit) for m in found] == [("m1", 5), ("m1", 50), ("m1", 100)]
    by_limit = {m.limit: m for m in found}
    assert by_limit[5].dense.model == "mlp-small" and by_limit[5].conv is None
    assert by_limit[5].gap_points is None
    assert by_limit[100].dense.model == "mlp-big" and by_limit[100].conv.model == "cnn"
    assert abs(by_limit[100].gap_points - (-5.0)) < 1e-9
    [line] = summary({"batch-1 latency": found})
    assert line.startswith("equal batch-1 latency (<= 100.0 us, m1)") and "-5.00 points" in line


def test_frontier_records_are_collected_and_set_against_each_other(tmp_path):
    """Two budgeted runs of the same machine and budget, one of each kind, and one on
    another machine: the report has the matchup of the first two only."""
    source = json.loads((COMMITTED / "frontier" / "frontier-resnet8-30min.json").read_text())
    made = {}
    for name, arch, acc, cpu in (
        ("cnn", "resnet8", 0.70, "A"),
        ("mlp", "batchnorm", 0.74, "A"),
        ("lonely", "batchnorm", 0.9, "B"),
    ):
        record = copy.deepcopy(source)
        record.update(run=name, config={**record["config"], "arch": arch})
        record["accuracy"]["test"] = acc
        record["machine"] = {"cpu": cpu, "cores": 2, "platform": "Linux"}
        made[name] = tmp_path / "frontier" / f"frontier-{name}.json"
        made[name].parent.mkdir(exist_ok=True)
        made[name].write_text(json.dumps(record))
    records = collect.collect_records([tmp_path])
    assert sorted(f.record["run"] for f in records.frontiers) == ["cnn", "lonely", "mlp"]
    [m] = all_matchups(records, [])["training time"]
    assert (m.scope, m.limit, m.dense.model, m.conv.model) == ("A, 2 cores", 1800.0, "mlp", "cnn")
    assert abs(m.gap_points - 4.0) < 1e-9


def test_committed_records_answer_all_three_questions():
    """The committed records hold a matchup on every axis; the CNN leads on each at the
    largest common limit (what docs/lab/frontier.md states). The report's text only: its
    pictures of every committed record take longer than the rest of the test."""
    records = collect.collect_records([COMMITTED])
    rows = sort_rows(mark_pareto(build_rows(records)), "accuracy")
    versus = all_matchups(records, rows)
    assert len(versus) == 3
    for axis, found in versus.items():
        both = [m for m in found if m.gap_points is not None]
        assert both, axis
        assert max(both, key=lambda m: m.limit).gap_points < 0, axis
    text = render_markdown(records, rows, versus, [COMMITTED])
    for heading in (
        "### At equal training time",
        "### At equal batch-1 latency",
        "### At equal flash",
    ):
        assert heading in text
    assert text.index("## Fully connected against convolutional") < text.index("## All results")


def test_compare_prints_the_summary_on_stderr(tmp_path):
    result = CliRunner().invoke(
        main,
        [
            "compare",
            str(COMMITTED / "frontier"),
            str(COMMITTED / "runs" / "resnet8-30min"),
            "--out",
            str(tmp_path / "r"),
            "--format",
            "csv",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "equal training time (<= 30 min" in result.stderr
    assert "equal training time" not in result.stdout  # csv output stays machine-readable
