"""Names that become folders, and what the CLI prints around TensorFlow.

Every command that makes a folder from a name keeps one rule (harness.core.records.NAME). A bad
--name stops it with exit 2 and a usage message naming the option, before it reads a run or
writes anything: nothing appears inside --results, nor in the folders around it.
"""

import json
import os
import re
import subprocess
import sys

import pytest
from click.testing import CliRunner

from harness.cli import main
from harness.core.config import ConfigError, resolve
from harness.core.records import NAME, BadName, RunDir, check_name
from harness.deploy import bundle

# Each command with what it needs besides --name; a run that does not exist is enough,
# because the name is checked (an option callback) before the command reads its run.
COMMANDS = {
    "train": ["train", "--preset", "selu"],
    "tune": ["tune", "--preset", "selu"],
    "sweep-lr": ["sweep-lr", "--preset", "selu"],
    "sparsify": ["sparsify", "no-such-run", "--target-sparsity", "0.5"],
    "prune": ["prune", "no-such-run"],
    "prune-units": ["prune-units", "no-such-run"],
    "deploy": ["deploy", "no-such-run", "--target", "linux"],
}
ESCAPES = ["../../x", ".hidden", "a/b"]
ALSO_BAD = ["", "..", "-rf", "a b", "x" * 101, "run\n", "café"]


def _tree(folder):
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


@pytest.fixture
def results(tmp_path):
    """An empty results folder two levels down, so ../../x would land inside tmp_path."""
    folder = tmp_path / "outer" / "inner" / "results"
    folder.mkdir(parents=True)
    return folder


def _invoke(archive, results, args):
    return CliRunner().invoke(main, ["--archive", str(archive), "--results", str(results), *args])


@pytest.mark.parametrize("name", ESCAPES)
@pytest.mark.parametrize("command", COMMANDS)
def test_a_bad_name_exits_2_and_writes_nothing(archive, results, tmp_path, command, name):
    before = _tree(tmp_path)
    result = _invoke(archive, results, [*COMMANDS[command], "--name", name])
    assert result.exit_code == 2, result.output
    assert "Usage:" in result.output and "Invalid value for '--name'" in result.output
    assert "Traceback" not in result.output and result.exception.__class__ is SystemExit
    assert len([line for line in result.output.splitlines() if line.startswith("Error:")]) == 1
    assert _tree(tmp_path) == before  # nothing in results, beside it, or in the cache


@pytest.mark.parametrize("name", ALSO_BAD)
def test_every_bad_name_is_refused(archive, results, tmp_path, name):
    result = _invoke(archive, results, ["train", "--preset", "selu", "--name", name])
    assert result.exit_code == 2 and "Invalid value for '--name'" in result.output
    assert _tree(tmp_path) == [
        str(p.relative_to(tmp_path)) for p in (results.parents[1], results.parent, results)
    ]
    with pytest.raises(BadName):
        check_name(name)
    with pytest.raises(BadName):
        RunDir.named(results, name)  # the library's own guard, below the CLI's
    with pytest.raises(bundle.DeployError):
        bundle.check_name(name)
    with pytest.raises(ConfigError):
        resolve("selu", overrides={"name": name})


def test_a_good_name_passes():
    for name in ["my-run_1.2", "_scratch", "0", "x" * 100]:
        assert check_name(name) == name == bundle.check_name(name)
        assert NAME.fullmatch(name)
    assert resolve("selu", overrides={"name": "my-run_1.2"}).run_name == "my-run_1.2"
    assert RunDir.named("results", "my-run_1.2").path.name == "my-run_1.2"


def test_a_bad_teacher_exits_2(archive, results):
    result = _invoke(archive, results, ["prune-units", "no-such-run", "--teacher", "../t"])
    assert result.exit_code == 2 and "Invalid value for '--teacher'" in result.output


@pytest.mark.parametrize("command", [["sparsify", "--target-sparsity", "0.5"], ["prune"]])
def test_a_default_name_from_an_odd_folder_exits_2(archive, results, tmp_path, command):
    """A run given by path keeps its folder's name, which may break the rule; the default
    name made from it (<run>-sparse, <run>-pruned80) is checked before anything is read."""
    from harness.core.config import resolve

    run = tmp_path / "my run"
    run.mkdir()
    (run / "model.keras").write_bytes(b"never read")
    (run / "config.json").write_text(json.dumps(resolve("selu", None, {}).to_dict()))
    before = _tree(tmp_path)
    result = _invoke(archive, results, [command[0], str(run), *command[1:]])
    assert result.exit_code == 2 and "give one with --name" in result.output, result.output
    assert _tree(tmp_path) == before


# --------------------------------------------------------------------------- TensorFlow's log

# absl's prefix (I0000 00:00:1796002891.906302    3972 port.cc:153]) and its banner.
TF_LOG_LINE = re.compile(
    r"^([IWEF]\d{4} \d\d:\d\d:\d+\.\d+ +\d+ \S+:\d+\]|WARNING: All log "
    r"messages before absl)",
    re.M,
)


def _env(**extra):
    env = {
        k: v for k, v in os.environ.items() if k not in ("TF_CPP_MIN_LOG_LEVEL", "HARNESS_VERBOSE")
    }
    return {**env, **extra}


@pytest.mark.slow
def test_training_prints_no_tensorflow_start_up_lines(harness_command, tmp_path):
    """On a machine without a GPU TensorFlow 2.21 logs oneDNN notes, 'Could not find cuda
    drivers' and 'failed call to cuInit' while it loads; harness hides them by default."""
    done = subprocess.run(
        harness_command(
            tmp_path / "results",
            "train",
            "--preset",
            "selu",
            "--layers",
            "1",
            "--units",
            "8",
            "--epochs",
            "1",
            "--name",
            "quiet",
        ),
        env=_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "completed" in done.stdout
    assert "cuInit" not in done.stderr and "cuda drivers" not in done.stderr, done.stderr
    assert not TF_LOG_LINE.search(done.stderr), done.stderr


# Runs the CLI in a fresh process, then says what it left for TensorFlow to read.
PROBE = (
    "import os, sys; from harness.cli import main; "
    "main(sys.argv[1:], standalone_mode=False); "
    "print(os.environ.get('TF_CPP_MIN_LOG_LEVEL'), "
    "any(type(f).__name__ == '_QuietTensorFlow' for f in sys.meta_path))"
)


@pytest.mark.parametrize(
    "flag,env,expected",
    [
        ([], {}, "3 True"),
        (["--verbose"], {}, "None False"),
        ([], {"HARNESS_VERBOSE": "1"}, "None False"),
        (["--verbose"], {"TF_CPP_MIN_LOG_LEVEL": "1"}, "1 False"),
    ],
)
def test_verbose_leaves_tensorflow_logging_alone(archive, flag, env, expected):
    done = subprocess.run(
        [sys.executable, "-c", PROBE, *flag, "--archive", str(archive), "data", "info", "--json"],
        env=_env(**env),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.splitlines()[-1] == expected
    assert "tensorflow" not in done.stderr.lower()


def test_help_names_the_switch():
    result = CliRunner().invoke(main, ["--help"])
    assert "--verbose" in result.output and "HARNESS_VERBOSE" in result.output
