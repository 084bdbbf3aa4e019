"""Shared fixtures: a tiny synthetic CIFAR-10 archive and an isolated cache/results folder.

No test touches the network or the real dataset: every archive is written here, in the
official format, by harness.data.synthetic.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import pytest

from harness.data import synthetic

PER_BATCH = 100  # images per batch: 500 training (450 train + 50 val) and 100 test


@pytest.fixture(scope="session")
def batches():
    return synthetic.make_batches(PER_BATCH, seed=0)


@pytest.fixture(scope="session")
def archive(tmp_path_factory, batches):
    return synthetic.write_archive(
        tmp_path_factory.mktemp("data") / "cifar.tar.gz", batches=batches
    )


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
