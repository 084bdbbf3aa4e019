"""Stopping a search's trials that are clearly behind: the median rule.

A trial stops at the end of an epoch when the best validation accuracy it has reached so
far is below the median of what the search's finished trials had at that same epoch
(Optuna's ``MedianPruner``; the "median stopping rule" of Google Vizier, Golovin et al.
2017). Not in its first :data:`WARMUP_EPOCHS` epochs, and not before
:data:`STARTUP_TRIALS` trials have finished, so a search's first trials always run whole.
A stopped trial keeps the best score it reached, which is what the tuner learns from.

Written here because KerasTuner 1.4.8 has no way to stop a running trial (its
``Oracle.update_trial`` keeps "to signal early stopping" as a to-do).

At each epoch's end the finished trials' curves are read from ``trial_meta/<id>.json``,
where every trial's per-epoch history is written when it ends: a resumed search, every
worker of a distributed one and every tuner side by side judge against the same curves.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import keras

WARMUP_EPOCHS = 2  # no trial stops in its first two epochs
STARTUP_TRIALS = 3  # nor before three trials have run to their end
STOPPED_AT = "stopped_at"  # a stopped trial's meta: the epochs it trained


def finished_curves(meta_dir: Path, objective: str) -> list[list[float]]:
    """Per-epoch ``objective`` of every trial that ran to its end (a stopped trial's
    curve stops where it was cut, so it does not count)."""
    curves = []
    for path in sorted(meta_dir.glob("*.json")):
        try:
            meta = json.loads(path.read_text())
        except (OSError, ValueError):
            continue  # being written by another worker: its trial is not finished
        curve = meta.get("history", {}).get(objective)
        if curve and meta.get(STOPPED_AT) is None:
            curves.append([float(v) for v in curve])
    return curves


def behind(so_far: list[float], finished: list[list[float]]) -> bool:
    """Whether a trial whose objective (higher is better) has been ``so_far``, epoch by
    epoch, is behind the median of the ``finished`` trials at its latest epoch."""
    epoch = len(so_far) - 1
    if epoch < WARMUP_EPOCHS:
        return False
    at_epoch = [curve[epoch] for curve in finished if len(curve) > epoch]
    if len(at_epoch) < STARTUP_TRIALS:
        return False
    return max(so_far) < statistics.median(at_epoch)


class MedianStop(keras.callbacks.Callback):
    """Ends training (``model.stop_training``) when :func:`behind` says so; ``stopped_at``
    is then the number of epochs trained, else None.

    The finished trials are read again at each epoch's end, so a trial also counts those
    that ended while it ran (with trials side by side, or a chief's workers, few have ended
    when a trial starts)."""

    def __init__(self, meta_dir: Path, objective: str):
        super().__init__()
        self.meta_dir, self.objective = meta_dir, objective
        self.so_far: list[float] = []
        self.stopped_at: int | None = None

    def __deepcopy__(self, memo):
        return self  # KerasTuner copies a trial's callbacks: the caller keeps this one

    def on_train_begin(self, logs=None):
        self.so_far, self.stopped_at = [], None

    def on_epoch_end(self, epoch, logs=None):
        value = (logs or {}).get(self.objective)
        if value is None:
            return
        self.so_far.append(float(value))
        if behind(self.so_far, finished_curves(self.meta_dir, self.objective)):
            self.model.stop_training = True
            self.stopped_at = len(self.so_far)
