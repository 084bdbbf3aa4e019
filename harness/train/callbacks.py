"""The Keras callbacks (and the mixup batch source) that :mod:`harness.train.fit` wires around
one ``model.fit``; benchmarks add their own instruments from here (:class:`Stopwatch`).

Importing this module imports Keras, so :mod:`harness.train.fit` imports it inside its
functions: the CLI chooses the Keras backend before Keras loads.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import keras
import numpy as np

from harness.core.records import atomic_write_text
from harness.train.models import load_keras_model

# A backup is written when the time since the last one is at least this many times what the
# last one took, so backups cost at most about 1/BACKUP_COST_RATIO of the training time.
BACKUP_COST_RATIO = 10
STATES_KEPT = 200  # callback states kept for resuming (covers the backup's lag)
STATE_FILE = "harness_state.json"  # ResumeState's file, in the backup folder


class EpochLog(keras.callbacks.Callback):
    """Adds ``epoch_seconds`` (training + validation) and ``learning_rate`` to the logs."""

    def on_train_begin(self, logs=None):
        self._rate = learning_rate_reader(self.model.optimizer)

    def on_epoch_begin(self, epoch, logs=None):
        self._t0 = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["epoch_seconds"] = time.perf_counter() - self._t0
            # ReduceLROnPlateau logs the rate the epoch ran with; so do schedules.
            if "learning_rate" not in logs:
                logs["learning_rate"] = self._rate()


def learning_rate_reader(optimizer):
    """A function that returns ``optimizer``'s current learning rate as a float.

    Read eagerly, a Keras schedule runs op by op, each dispatched alone, which on JAX costs
    a search of small networks a noticeable share of its time; there the schedule is
    compiled once per fit instead (the same function of the same step counter)."""
    schedule = getattr(optimizer, "_learning_rate", None)
    if keras.backend.backend() == "jax" and isinstance(
        schedule, keras.optimizers.schedules.LearningRateSchedule
    ):
        import jax

        compiled = jax.jit(schedule)
        return lambda: float(compiled(optimizer.iterations.value))
    return lambda: float(np.asarray(optimizer.learning_rate))


class ResumableSwapEMAWeights(keras.callbacks.SwapEMAWeights):
    """SwapEMAWeights(swap_on_epoch=True) that knows whether the model it resumes holds the
    averaged weights (``resumed``: a backup is written while they are swapped in)."""

    def __init__(self, resumed: bool = False):
        super().__init__(swap_on_epoch=True)
        self._ema_weights_in_model = resumed


class MixupBatches(keras.utils.PyDataset):
    """Shuffled batches of mixed images and targets (Zhang et al. 2018, one lambda per
    image) from ``x`` and (N, classes) float ``targets``; see
    :func:`harness.train.targets.mixup_batches`, which makes them. ``alpha`` 0 mixes nothing.

    With views, ``x`` is (V, N, ...) and ``targets`` (V, N, classes): each image of a
    batch comes as one of its V views, drawn at random, with that view's targets.

    Batch ``i`` of epoch ``e`` draws from its own generator, seeded by (seed, e, i), so
    the batches are the same whatever the number of ``workers``; ``epoch`` is the first
    epoch's number. ``refresh(epoch)``, if given, renews views and their targets in place
    before each later epoch (Keras calls on_epoch_end after its workers have stopped)."""

    def __init__(
        self,
        x: np.ndarray,
        targets: np.ndarray,
        batch_size: int,
        alpha: float,
        seed: int,
        workers: int,
        epoch: int = 0,
        refresh=None,
    ):
        super().__init__(workers=workers)
        self.x, self.targets, self.batch_size = x, targets, batch_size
        self.refresh = refresh
        self.views = targets.ndim == 3
        self.n = x.shape[1] if self.views else len(x)
        self.alpha, self.seed = alpha, seed
        self.epoch, self.first = epoch - 1, epoch
        self.on_epoch_end()

    def __len__(self):
        return math.ceil(self.n / self.batch_size)

    def __getitem__(self, i):
        rng = np.random.default_rng([self.seed, self.epoch, i])
        idx = self.order[i * self.batch_size : (i + 1) * self.batch_size]
        if self.views:
            view = rng.integers(len(self.x), size=len(idx))
            images = self.x[view, idx].astype(np.float32)
            labels = self.targets[view, idx].astype(np.float32)
        else:
            images = self.x[idx].astype(np.float32)
            labels = self.targets[idx].astype(np.float32)
        if not self.alpha:
            return images, labels
        lam = rng.beta(self.alpha, self.alpha, size=len(idx)).astype(np.float32)
        partner = rng.permutation(len(idx))
        w = lam.reshape(-1, *[1] * (images.ndim - 1))
        images = w * images + (1 - w) * images[partner]
        labels = lam[:, None] * labels + (1 - lam[:, None]) * labels[partner]
        return images, labels

    def on_epoch_end(self):
        self.epoch += 1
        self.order = np.random.default_rng([self.seed, self.epoch]).permutation(self.n)
        if self.refresh is not None and self.epoch > self.first:
            self.refresh(self.epoch)


class AtomicCheckpoint(keras.callbacks.ModelCheckpoint):
    """ModelCheckpoint(save_best_only) that saves beside the target, then renames."""

    def __init__(self, target: Path, monitor: str):
        self.target = Path(target)
        super().__init__(
            str(self.target.with_name(".checkpoint.tmp.keras")),
            monitor=monitor,
            mode="min" if monitor.endswith("loss") else "max",
            save_best_only=True,
        )

    def on_epoch_end(self, epoch, logs=None):
        super().on_epoch_end(epoch, logs)
        if Path(self.filepath).exists():
            Path(self.filepath).replace(self.target)


class ResumeState(keras.callbacks.Callback):
    """Saves, and on resume restores, the state of the stateful callbacks given to it.

    ``early`` (EarlyStopping), ``plateau`` (ReduceLROnPlateau or None) and ``checkpoint``
    (:class:`AtomicCheckpoint`, whose target is the best model so far) are the run's own;
    ``state`` is what was saved after the epoch the run resumes from (None: a fresh run).
    Listed after them, so its on_train_begin runs after theirs (which reset state) and its
    on_epoch_end sees their updates. Kept in ``folder``, the backup folder, which
    BackupAndRestore deletes when the run ends.
    """

    def __init__(
        self, folder: Path, early, plateau, checkpoint: AtomicCheckpoint, state: dict | None = None
    ):
        super().__init__()
        self.path = Path(folder) / STATE_FILE
        self.early, self.plateau, self.checkpoint = early, plateau, checkpoint
        self.state = state

    def on_train_begin(self, logs=None):
        state, early, plateau = self.state, self.early, self.plateau
        if not state:
            return
        early.best, early.wait = state["early_best"], state["early_wait"]
        early.best_epoch = state["early_best_epoch"]
        if plateau is not None:
            plateau.best, plateau.wait = state["plateau_best"], state["plateau_wait"]
            plateau.cooldown_counter = state["plateau_cooldown"]
        self.checkpoint.best = state["checkpoint_best"]
        if self.checkpoint.target.exists():  # so restore_best_weights still has the best weights
            early.best_weights = load_keras_model(self.checkpoint.target).get_weights()

    def on_epoch_end(self, epoch, logs=None):
        early, plateau = self.early, self.plateau
        state = {
            "early_best": early.best,
            "early_wait": early.wait,
            "early_best_epoch": early.best_epoch,
            "checkpoint_best": self.checkpoint.best,
        }
        if plateau is not None:
            state.update(
                plateau_best=plateau.best,
                plateau_wait=plateau.wait,
                plateau_cooldown=plateau.cooldown_counter,
            )
        saved = read_states(self.path.parent)
        saved[str(epoch + 1)] = {k: _plain(v) for k, v in state.items()}
        # The backup lags this epoch by one or more (see ThrottledBackup): keep enough.
        keep = sorted(saved, key=int)[-STATES_KEPT:]
        self.path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.path, json.dumps({k: saved[k] for k in keep}))


def read_states(folder: Path) -> dict:
    """The states :class:`ResumeState` saved in ``folder``, by finished-epoch count (a
    string); empty when there are none."""
    try:
        return json.loads((Path(folder) / STATE_FILE).read_text())
    except (OSError, ValueError):
        return {}


def _plain(v):
    if v is None:
        return None
    return float(v) if isinstance(v, (float, np.floating)) else int(v)


class ThrottledBackup(keras.callbacks.BackupAndRestore):
    """Keras' BackupAndRestore into ``folder``, writing only when the time since its last
    write is at least BACKUP_COST_RATIO times what that write took.

    A small net's backup is quick beside its epoch, so it backs up every epoch; a net of
    tens of millions of parameters whose epoch is short on a GPU would otherwise spend most
    of its time writing backups (benchmarks/frontier.py's calibration reports the backup's
    seconds per epoch as ``backup_s``). double_checkpoint keeps the previous backup, which
    BackupAndRestore falls back to when a kill -9 lands in the middle of a write.
    """

    def __init__(self, folder: Path):
        super().__init__(str(folder), double_checkpoint=True)
        self._saved_at, self._save_seconds = -math.inf, 0.0

    def on_epoch_end(self, epoch, logs=None):
        if time.monotonic() - self._saved_at < BACKUP_COST_RATIO * self._save_seconds:
            return
        t0 = time.monotonic()
        super().on_epoch_end(epoch, logs)
        self._saved_at = time.monotonic()
        self._save_seconds = self._saved_at - t0


# Keras runs the training loop ahead of the device ("async dispatch", JAX backend) only
# while no callback has a per-batch hook that must see each batch's logs at once; one such
# hook makes every step wait for the previous one. Both per-batch callbacks below can see
# their logs late, so they say so (``async_safe``): Keras then hands them their logs on a
# worker thread. Its effect shows in the seconds per epoch that benchmarks/train_speed.py
# measures (results/bench/train_speed.json).


class TerminateOnNaN(keras.callbacks.TerminateOnNaN):
    """TerminateOnNaN, checking each batch's loss without holding the training loop."""

    async_safe = True


class EpochTensorBoard(keras.callbacks.TensorBoard):
    """TensorBoard, written per epoch (``update_freq="epoch"``), without holding the
    training loop. It needs TensorFlow's summary ops."""

    async_safe = True

    def on_train_batch_end(self, batch, logs=None):
        # update_freq="epoch": the parent would only issue a no-op summary per batch
        # metric; keep its one-time graph write.
        super().on_train_batch_end(batch, logs=None)


class Stopwatch(keras.callbacks.Callback):
    """For benchmarks/frontier.py's calibration: per epoch, the seconds the run's callbacks
    spend after the timed part of the epoch (training + validation) up to this callback
    (logs, callback state, and on improving epochs the best model's save and weight copy),
    in ``gaps``, and the seconds from here to the next epoch (mostly the throttled backup),
    in ``after``. Listed after :class:`EpochLog`, whose ``epoch_seconds`` it reads."""

    def __init__(self):
        super().__init__()
        self.gaps, self.after, self._end = [], [], None

    def on_epoch_begin(self, epoch, logs=None):
        self._begin = time.perf_counter()
        if self._end is not None:
            self.after.append(self._begin - self._end)

    def on_epoch_end(self, epoch, logs=None):
        self._end = time.perf_counter()
        self.gaps.append(max(self._end - self._begin - logs["epoch_seconds"], 0.0))
