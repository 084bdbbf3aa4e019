"""Shared fixtures: a tiny synthetic CIFAR-10 archive and an isolated cache/results folder.

No test touches the network or the real dataset: every archive is written here, in the
official format, by harness.data.synthetic.
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import pytest

from harness.data import synthetic

PER_BATCH = 100  # images per batch: 500 training (450 train + 50 val) and 100 test

# The suite's longest files, longest first. xdist hands each worker whole files (their
# module fixtures train once) in collection order (--no-loadscope-reorder, pyproject.toml);
# its own order, by number of tests, left the few long multi-process tests for last, on one
# worker, while the other had ended. Longest first, the workers end closer together. Order
# only: every other file runs after these, as collected.
LONGEST_FIRST = (
    "test_tune_processes.py",
    "test_budget.py",
    "test_train.py",
    "test_frontier.py",
    "test_sparsity.py",
    "test_device.py",
    "test_flows.py",
    "test_epochs.py",
    "test_tune.py",
)


def pytest_collection_modifyitems(items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: files stay whole


@pytest.fixture(scope="session")
def batches():
    return synthetic.make_batches(PER_BATCH, seed=0)


@pytest.fixture(scope="session")
def archive(tmp_path_factory, batches):
    return synthetic.write_archive(
        tmp_path_factory.mktemp("data") / "cifar.tar.gz", batches=batches
    )


@pytest.fixture
def harness_command(archive):
    """``harness_command(results, *args)``: the command line a user runs against the
    synthetic archive, ``harness --archive ARCHIVE --results RESULTS ARGS``, for a process of
    its own."""

    def command(results, *args):
        return [
            sys.executable,
            "-m",
            "harness.cli",
            "--archive",
            str(archive),
            "--results",
            str(results),
            *args,
        ]

    return command


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    """Each test gets its own cache; nothing leaks in from the developer's environment."""
    monkeypatch.setenv("HARNESS_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("HARNESS_ARCHIVE", raising=False)
    monkeypatch.delenv("HARNESS_RESULTS", raising=False)
    # `harness tune --tuner-id ...` sets KerasTuner's variables in the process it runs in
    # (os.environ): none may reach the next test, whatever order the tests run in.
    for key in [k for k in os.environ if k.startswith("KERASTUNER_")]:
        monkeypatch.delenv(key)
    yield tmp_path
    for key in [k for k in os.environ if k.startswith("KERASTUNER_")]:
        del os.environ[key]
