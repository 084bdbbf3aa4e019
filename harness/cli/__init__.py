"""The ``harness`` command line: thin Click commands over the library's stages.

``app`` holds the group (global options, TensorFlow's quiet start-up), the error mapping
and what every command that reads a run shares; each other module adds its commands:
``data``, ``train`` (train, sweep-lr, tune, evaluate, sparsify, prune, prune-units),
``models`` (import, export, bench, deploy, predict) and ``report`` (compare). Heavy
libraries are imported inside the commands that need them, so ``harness --help`` and
``harness data info`` answer at once.
"""

from harness.cli import data, models, report, train  # noqa: F401  (each adds its commands)
from harness.cli.app import main

__all__ = ["main"]
