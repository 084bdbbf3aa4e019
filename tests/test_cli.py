import json
import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from harness.cli import main

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def run_cli(tmp_path, archive):
    def run(*args):
        result = CliRunner().invoke(
            main, ["--archive", str(archive), "--results", str(tmp_path / "results"), *args]
        )
        return result

    return run


def test_data_info_counts_every_split(run_cli):
    result = run_cli("data", "info", "--json")
    assert result.exit_code == 0, result.output
    info = json.loads(result.stdout)
    assert sum(info["per_class"]["train"].values()) == 450
    assert sum(info["per_class"]["val"].values()) == 50
    assert sum(info["per_class"]["test"].values()) == 100
    assert len(info["sha256"]) == 64


def test_data_import_and_missing_archive(tmp_path, archive):
    result = CliRunner().invoke(main, ["data", "import", str(archive)])
    assert result.exit_code == 0 and "imported 500 + 100 images" in result.output
    result = CliRunner().invoke(main, ["--archive", str(tmp_path / "none.tar.gz"), "data", "info"])
    assert result.exit_code == 1
    assert "none.tar.gz: no such file" in result.output


def test_corrupt_archive_gives_one_clear_line(tmp_path):
    bad = tmp_path / "bad.tar.gz"
    bad.write_bytes(b"not a tarball at all")
    result = CliRunner().invoke(main, ["--archive", str(bad), "data", "info"])
    assert result.exit_code == 1
    assert re.search(r"Error: .*bad.tar.gz: truncated or corrupt archive", result.output)
    assert "Traceback" not in result.output


@pytest.mark.parametrize(
    "args",
    [
        ["--preset", "nope"],
        ["--preset", "selu", "--layers", "0"],
        ["--preset", "selu", "--lr", "-1"],
        ["--preset", "selu", "--dropout", "1.5"],
        ["--preset", "selu", "--bogus"],
        [],
    ],
)
def test_bad_flags_exit_2_with_usage(run_cli, args):
    result = run_cli("train", *args)
    assert result.exit_code == 2
    assert "Usage:" in result.output


def test_bad_config_file_exits_2(run_cli, tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("preset: selu\nwidth: 3\n")
    result = run_cli("train", "--config", str(f))
    assert result.exit_code == 2 and "unknown setting 'width'" in result.output


def test_train_evaluate_and_rerun(run_cli, tmp_path):
    args = [
        "train",
        "--preset",
        "bn-elu",
        "--layers",
        "1",
        "--units",
        "16",
        "--epochs",
        "2",
        "--batch-size",
        "64",
        "--name",
        "cli",
    ]
    result = run_cli(*args)
    assert result.exit_code == 0, result.output
    assert "completed, 2 epochs" in result.output and "test  accuracy" in result.output
    metrics = json.loads((tmp_path / "results/runs/cli/metrics.json").read_text())
    assert metrics["config"]["arch"] == "batchnorm" and metrics["config"]["max_norm"] == 1.0
    again = run_cli(*args)
    assert again.exit_code == 0 and "already complete" in again.output
    evaluated = run_cli("evaluate", "cli")
    assert evaluated.exit_code == 0 and "test  accuracy" in evaluated.output
    assert run_cli("evaluate", "no-such-run").exit_code == 2


def test_nan_run_exits_nonzero(run_cli, tmp_path):
    result = run_cli(
        "train",
        "--preset",
        "selu",
        "--layers",
        "1",
        "--units",
        "8",
        "--epochs",
        "2",
        "--l2",
        "1e38",
        "--name",
        "nan",
    )
    assert result.exit_code == 1 and "training failed" in result.output
    metrics = json.loads((tmp_path / "results/runs/nan/metrics.json").read_text())
    assert metrics["status"] == "failed"


def test_readme_test_command_is_what_ci_runs():
    readme = (REPO / "README.md").read_text()
    ci = (REPO / ".ci/run").read_text()
    command = re.search(r"^TEST_COMMAND='(.+)'$", ci, re.M).group(1)
    assert command in readme
