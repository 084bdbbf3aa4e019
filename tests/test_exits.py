"""The one mapping from the library's errors to exit statuses (harness.cli.app.EXITS)."""

from __future__ import annotations

import builtins
import importlib

import click
import pytest

from harness.cli.app import EXITS, Failed, Refused, as_click


@pytest.mark.parametrize("name", sorted(EXITS))
def test_every_named_error_exists(name):
    """EXITS names classes rather than importing them: a moved or renamed class fails here."""
    module, _, cls = name.rpartition(".")
    owner = builtins if module == "builtins" else importlib.import_module(module)
    assert isinstance(getattr(owner, cls), type)


def test_a_library_error_becomes_its_line_and_status():
    from harness.core.config import ConfigError
    from harness.deploy.bundle import DeployRefused
    from harness.train.fit import TrainingFailed

    refused = as_click(ConfigError("lr=-1: must be > 0"))
    assert isinstance(refused, Refused) and refused.exit_code == 2
    assert refused.format_message() == "lr=-1: must be > 0"
    failed = as_click(TrainingFailed("loss became NaN at epoch 3"))
    assert isinstance(failed, Failed) and failed.exit_code == 1
    assert failed.format_message() == "training failed: loss became NaN at epoch 3"
    assert as_click(DeployRefused("x")).exit_code == 2  # a subclass of DeployError (1)


def test_anything_else_is_a_bug_and_keeps_its_traceback():
    assert as_click(KeyError("x")) is None
    same = click.BadParameter("y")
    assert as_click(same) is same
