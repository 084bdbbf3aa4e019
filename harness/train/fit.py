"""Training: the study's recipe as Keras callbacks around one ``model.fit``.

A run lives in ``<results>/runs/<name>/`` (see :mod:`harness.core.records`). Re-running the
same command after an interruption, ``kill -9`` included, resumes from the last finished
epoch: Keras' BackupAndRestore restores weights and optimizer state, and
:class:`harness.train.callbacks.ResumeState` restores what the other callbacks had learned
(best val_loss, patience counters), so a resumed run makes the same decisions an
uninterrupted one would.
"""

from __future__ import annotations

import csv
import json
import math
import shutil
import sys
import time
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from harness.core.config import ConfigError, TrainConfig, from_dict
from harness.core.records import (
    COMPLETED,
    FAILED,
    RUNNING,
    RunDir,
    atomic_write_csv,
    library_versions,
    run_lock,
)
from harness.data import cifar as data_mod
from harness.train.evaluate import evaluate_splits
from harness.train.models import build_model, count_params, load_keras_model, loss_for
from harness.train.targets import ViewRefresh, mixup_batches, one_hot, teacher_targets


class TrainingFailed(Exception):
    """The run ended without a usable model (NaN loss); metrics.json says why."""


class RunComplete(Exception):
    """The run already finished; nothing to do without --overwrite."""


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def epoch_log():
    """A callback adding ``epoch_seconds`` (training + validation) and ``learning_rate``
    (:class:`harness.train.callbacks.EpochLog`; that module imports Keras, so it is imported here,
    when called)."""
    from harness.train.callbacks import EpochLog

    return EpochLog()


def monitor_mode(monitor: str) -> str:
    """Whether a monitored log is best high or low, said outright (Keras' "auto" reads it
    off the compiled metrics, which compiled epochs never build)."""
    return "min" if monitor.endswith("loss") else "max"


def recipe_callbacks(cfg: TrainConfig, resumed: bool = False) -> tuple:
    """The recipe's own callbacks: EarlyStopping, (plateau schedule) ReduceLROnPlateau and
    (``cfg.ema``) the swap of the weights' moving average into the model, listed first.

    With EMA, validation runs on the averaged weights, and at each epoch's end they are
    swapped into the model for the callbacks after it (checkpoint, early stopping, backup),
    then swapped out again before the next epoch trains. A backup therefore holds the
    averaged weights in the model and the trained ones in the optimizer's average slots:
    a ``resumed`` run starts by swapping them back."""
    import keras

    from harness.train.callbacks import ResumableSwapEMAWeights

    ema = ResumableSwapEMAWeights(resumed) if cfg.ema else None
    mode = monitor_mode(cfg.monitor)
    early = keras.callbacks.EarlyStopping(
        monitor=cfg.monitor, mode=mode, patience=cfg.patience, restore_best_weights=True
    )
    # With a cosine schedule the learning rate is a function of the step: no plateau logic.
    plateau = (
        keras.callbacks.ReduceLROnPlateau(
            monitor=cfg.monitor, mode=mode, factor=cfg.lr_factor, patience=cfg.lr_patience
        )
        if cfg.schedule == "plateau"
        else None
    )
    return ema, early, plateau


def compile_model(model, cfg: TrainConfig, n_train: int) -> None:
    """The configured optimizer and schedule, sparse cross-entropy (optionally smoothed),
    accuracy."""
    model.compile(
        optimizer=_optimizer(cfg, math.ceil(n_train / cfg.batch_size)),
        loss=loss_for(cfg),
        metrics=["accuracy"],
        steps_per_execution=cfg.steps_per_execution,
    )


def fit_inputs(
    cfg: TrainConfig,
    x: np.ndarray,
    y: np.ndarray,
    val: tuple,
    targets: np.ndarray | None = None,
    first_epoch: int = 0,
    views: np.ndarray | None = None,
    refresh=None,
) -> dict:
    """``model.fit`` keyword arguments for the training arrays and validation pair.

    Integer labels: the arrays themselves (shuffled by Keras each epoch). With ``targets``
    (N, 10 probabilities, from a teacher) or mixup, the targets are probability vectors
    (mixed batches come from a generator) and validation labels become one-hot. train()
    and the tuner both fit through this; a resumed run passes the epoch it resumes at, so
    its mixed batches are those the uninterrupted run would have had. With ``views`` (V, N,
    ...) and targets (V, N, 10) from :func:`teacher_targets`, batches come from a generator
    that picks one view per image (and mixes them when mixup is on); ``refresh`` (a
    :class:`harness.train.targets.ViewRefresh`) renews some of them between epochs."""
    if views is not None:
        return {
            "x": mixup_batches(
                views,
                targets,
                cfg.batch_size,
                cfg.mixup,
                cfg.seed,
                epoch=first_epoch,
                refresh=refresh,
            ),
            "validation_data": (val[0], one_hot(val[1])),
        }
    if not cfg.mixup and targets is None:
        return {
            "x": x,
            "y": y,
            "batch_size": cfg.batch_size,
            "validation_data": val,
            "shuffle": True,
        }
    targets = one_hot(y) if targets is None else targets
    validation = (val[0], one_hot(val[1]))
    if not cfg.mixup:
        return {
            "x": x,
            "y": targets,
            "batch_size": cfg.batch_size,
            "validation_data": validation,
            "shuffle": True,
        }
    return {
        "x": mixup_batches(x, targets, cfg.batch_size, cfg.mixup, cfg.seed, epoch=first_epoch),
        "validation_data": validation,
    }


def fit_model(model, cfg: TrainConfig, inputs: dict, resumed: bool = False, **kwargs):
    """``model.fit(**inputs, **kwargs)``, or the same epochs as compiled programs where
    ``cfg.loop`` asks for them and they apply (:mod:`harness.train.epochs`). A resumed run
    goes on in model.fit, which restores its backup (epoch, weights, optimizer)."""
    from harness.train import epochs

    if (
        not resumed
        and "y" in inputs
        and epochs.applies(cfg, inputs["x"], inputs["y"], inputs["validation_data"])
    ):
        return epochs.fit_compiled(
            model,
            cfg,
            inputs["x"],
            inputs["y"],
            inputs["validation_data"],
            kwargs["epochs"],
            kwargs.get("callbacks", ()),
        )
    return model.fit(**inputs, **kwargs)


def _make_callbacks(
    cfg: TrainConfig, run: RunDir, resume_state: dict | None, extra=(), resumed: bool = False
):
    import keras

    from harness.train.callbacks import (
        AtomicCheckpoint,
        ResumeState,
        TerminateOnNaN,
        ThrottledBackup,
    )

    ema, early, plateau = recipe_callbacks(cfg, resumed=resumed)
    checkpoint = AtomicCheckpoint(run.model, cfg.monitor)
    # EarlyStopping after the epoch timer: its copy of the best weights, like the checkpoint,
    # happens only on improving epochs, and epoch_seconds measures training + validation.
    callbacks = [
        ema,
        plateau,
        epoch_log(),
        early,
        TerminateOnNaN(),
        keras.callbacks.CSVLogger(str(run.history), append=True),
        checkpoint,
        ResumeState(run.backup, early, plateau, checkpoint, resume_state),
        _tensorboard(run),
        *extra,
    ]
    callbacks = [c for c in callbacks if c is not None]
    # Last, so an epoch counts as done only once everything above has recorded it.
    callbacks.append(ThrottledBackup(run.backup))
    return callbacks


def _optimizer(cfg: TrainConfig, steps_per_epoch: int):
    """Nadam, AdamW or Lion with a constant learning rate (plateau) or warm-up + cosine
    decay; decoupled weight decay spares biases and normalization parameters."""
    import keras

    lr = cfg.lr
    if cfg.schedule == "cosine":
        warmup = int(round(cfg.warmup_epochs * steps_per_epoch))
        lr = keras.optimizers.schedules.CosineDecay(
            initial_learning_rate=cfg.lr / 10 if warmup else cfg.lr,
            decay_steps=cfg.epochs * steps_per_epoch - warmup,
            warmup_target=cfg.lr if warmup else None,
            warmup_steps=warmup,
        )
    kind = {
        "nadam": keras.optimizers.Nadam,
        "adamw": keras.optimizers.AdamW,
        "lion": keras.optimizers.Lion,
    }[cfg.optimizer]
    options = dict(use_ema=True, ema_momentum=cfg.ema) if cfg.ema else {}
    if cfg.clip_norm:
        options["global_clipnorm"] = cfg.clip_norm
    if not cfg.weight_decay:
        return (
            kind(learning_rate=lr, **options)
            if cfg.optimizer != "adamw"
            else kind(learning_rate=lr, weight_decay=0.0, **options)
        )
    optimizer = kind(learning_rate=lr, weight_decay=cfg.weight_decay, **options)
    optimizer.exclude_from_weight_decay(var_names=["bias", "gamma", "beta"])
    return optimizer


def check_backend(cfg: TrainConfig) -> None:
    """Keras picks its backend once per process, at import: it must be the asked one."""
    import keras

    if cfg.backend and keras.backend.backend() != cfg.backend:
        raise ConfigError(
            f"backend={cfg.backend!r}, but Keras in this process runs on "
            f"{keras.backend.backend()!r}; run with KERAS_BACKEND={cfg.backend}"
        )


def _tensorboard(run: RunDir):
    """TensorBoard, per epoch. It needs TensorFlow's summary ops; skipped where TF is absent."""
    import importlib.util

    from harness.train.callbacks import EpochTensorBoard

    if importlib.util.find_spec("tensorflow") is None:
        print("note: tensorflow is not installed; TensorBoard logs are skipped", file=sys.stderr)
        return None
    return EpochTensorBoard(log_dir=str(run.logs), update_freq="epoch")


def _backup_epoch(run: RunDir) -> int:
    """Epochs finished according to BackupAndRestore (0 when there is no backup)."""
    meta = run.backup / "training_metadata.json"
    try:
        return int(json.loads(meta.read_text())["epoch"])
    except (OSError, ValueError, KeyError):
        return 0


def read_history(run: RunDir) -> list[dict[str, float]]:
    if not run.history.exists():
        return []
    with open(run.history, newline="") as f:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(f)]


def _truncate_history(run: RunDir, epochs: int) -> None:
    """Drop history rows of epochs the backup does not cover (they will be run again)."""
    if not run.history.exists():
        return
    with open(run.history, newline="") as f:
        rows = list(csv.reader(f))
    atomic_write_csv(
        run.history, rows[:1] + [r for r in rows[1:] if r and int(float(r[0])) < epochs]
    )


def prepare_run(cfg: TrainConfig, results: Path, overwrite: bool = False) -> tuple[RunDir, int]:
    """Create or reopen the run directory; returns it and the epoch to resume from."""
    run = RunDir.named(results, cfg.run_name)
    if overwrite and run.path.exists():
        shutil.rmtree(run.path)
    if run.exists():
        saved = from_dict(run.read_config())
        if saved != cfg:
            diff = {
                k: (v, getattr(cfg, k)) for k, v in saved.to_dict().items() if getattr(cfg, k) != v
            }
            raise ConfigError(
                f"run {run.path} exists with other settings "
                f"(saved vs asked: {diff}); choose another --name or --overwrite"
            )
        status = (run.read_metrics() or {}).get("status")
        if status == COMPLETED:
            raise RunComplete(f"run {run.path} is already complete; use --overwrite to train again")
        resume_from = _backup_epoch(run)
        if resume_from == 0:  # failed, or killed before its first epoch ended: start again
            shutil.rmtree(run.path)
    else:
        resume_from = 0
    run.path.mkdir(parents=True, exist_ok=True)
    if resume_from == 0:
        run.write_config(cfg.to_dict())
    else:
        _truncate_history(run, resume_from)
    return run, resume_from


def train(
    cfg: TrainConfig,
    ds: data_mod.Dataset,
    results: Path,
    overwrite: bool = False,
    verbose: int | None = None,
    extra_callbacks=(),
    initial_weights=None,
    record: dict | None = None,
) -> dict:
    """Train ``cfg`` on ``ds``; write the run directory; return metrics.json's content.
    The run is locked while it trains (harness.core.records.run_lock): a second process
    training the same run gets RunBusy before it touches the folder.

    ``extra_callbacks`` run after the run's own (benchmarks use this to watch test accuracy
    per epoch outside the timed part of the epoch). ``initial_weights`` start the model
    from given weights instead of its initializers (fine-tuning a derived model), and
    ``record`` adds fields to metrics.json (such as the parent run). Raises RunComplete if
    the run already finished, TrainingFailed on a NaN/Inf loss, ConfigError on a backend
    mismatch, DeviceError when the asked device (HARNESS_DEVICE) is not there.
    """
    import keras

    from harness.core.hardware import select

    check_backend(cfg)
    device = select(keras.backend.backend())  # before any file is written
    splits = data_mod.split(ds)
    # The teacher's targets first: a missing teacher is an error before any file is written.
    targets, teacher, views = (
        teacher_targets(cfg, results, splits) if cfg.teacher else (None, None, None)
    )
    with run_lock(RunDir.named(results, cfg.run_name)):
        return _train(
            cfg,
            ds,
            results,
            overwrite,
            verbose,
            extra_callbacks,
            initial_weights,
            record,
            device,
            splits,
            (targets, teacher, views),
        )


def _train(
    cfg: TrainConfig,
    ds: data_mod.Dataset,
    results: Path,
    overwrite: bool,
    verbose: int | None,
    extra_callbacks,
    initial_weights,
    record: dict | None,
    device,
    splits,
    teaching: tuple,
) -> dict:
    """train()'s body, under the run's lock (its checks done, nothing written yet)."""
    import keras

    from harness.train.callbacks import read_states

    targets, teacher, views = teaching
    run, resume_from = prepare_run(cfg, results, overwrite)
    resume_state = read_states(run.backup).get(str(resume_from))
    keras.utils.set_random_seed(cfg.seed)
    # the PCA directions only when no given weights replace them (fine-tuning a derived model)
    fresh_pca = cfg.pca and initial_weights is None
    model = build_model(
        cfg,
        *splits.norm_stats(),
        components=(splits.principal_components(cfg.pca, cfg.pool) if fresh_pca else None),
    )
    if initial_weights is not None:
        model.set_weights(initial_weights)
    compile_model(model, cfg, len(splits.train))
    base = run_record(
        run.name,
        cfg,
        model,
        ds,
        device.record,
        **(record or {}),
        started_at=_now(),
        resumed_from_epoch=resume_from,
        **({"teacher": teacher} if teacher else {}),
    )
    run.write_metrics({**base, "status": RUNNING})
    if resume_from:
        print(f"Resuming {run.path} after epoch {resume_from}", file=sys.stderr)

    t0 = time.perf_counter()
    inputs = fit_inputs(
        cfg,
        splits.train.x,
        splits.train.y,
        (splits.val.x, splits.val.y),
        targets,
        first_epoch=resume_from,
        views=views,
        refresh=(
            ViewRefresh(cfg, results, splits, views, targets) if cfg.teacher_refresh else None
        ),
    )
    fit_model(
        model,
        cfg,
        inputs,
        resumed=resume_from > 0,
        epochs=cfg.epochs,
        callbacks=_make_callbacks(cfg, run, resume_state, extra_callbacks, resumed=resume_from > 0),
        verbose=verbose if verbose is not None else (1 if sys.stdout.isatty() else 2),
    )
    wall = time.perf_counter() - t0

    history = read_history(run)
    losses = [row.get("loss", math.nan) for row in history]
    summary = {
        **base,
        "finished_at": _now(),
        "wall_time_s": round(wall, 3),
        "epochs_run": len(history),
        "seconds_per_epoch": _median(
            [r["epoch_seconds"] for r in history[1:]] or [r["epoch_seconds"] for r in history]
        ),
    }
    if not history or not all(math.isfinite(v) for v in losses) or not run.model.exists():
        message = "loss became NaN/Inf; training stopped (try a lower --lr)"
        run.write_metrics({**summary, "status": FAILED, "message": message})
        raise TrainingFailed(f"{run.path}: {message}")

    best_model = load_keras_model(run.model)
    sign = 1 if cfg.monitor == "val_loss" else -1  # the same choice as the checkpoint's
    best_epoch = min(range(len(history)), key=lambda i: sign * history[i][cfg.monitor])
    metrics = {
        **summary,
        "status": COMPLETED,
        "best_epoch": best_epoch + 1,
        **evaluate_splits(best_model, splits),
        **_without_tta(cfg, best_model, splits),
    }
    run.write_metrics(metrics)
    return metrics


_THIS_PROCESS = object()


def run_record(
    name: str, cfg: TrainConfig, model, ds: data_mod.Dataset, device=_THIS_PROCESS, **fields
) -> dict:
    """The fields every trained run's metrics.json is made of, assembled here once (train,
    tune's trial runs, sparsify, prune, prune-units), then ``fields``: its name, config,
    data, parameters, library versions, Keras backend and the device it trained on (this
    process's, unless given; None leaves it out, for a trial whose worker did not say)."""
    import keras

    from harness.core.hardware import select

    if device is _THIS_PROCESS:
        device = select(keras.backend.backend()).record
    return {
        "run": name,
        "config": cfg.to_dict(),
        "data": ds.record,
        "params": count_params(model),
        "versions": library_versions(),
        "backend": keras.backend.backend(),
        **({"device": device} if device else {}),
        **fields,
    }


def _without_tta(cfg: TrainConfig, model, splits) -> dict:
    """For a run with test-time augmentation, the same weights evaluated without it (the
    augmentation layers have no weights), so every such figure has its plain twin."""
    if cfg.tta == "none":
        return {}
    plain = build_model(replace(cfg, tta="none"), np.zeros(3), np.ones(3))  # all copied:
    plain.set_weights(model.get_weights())  # the standardization's statistics are weights
    return {"without_tta": evaluate_splits(plain, splits, names=("val", "test"))}


def save_model(model, path: Path) -> None:
    """``model.save`` beside ``path``, then rename: never a half-written model.keras."""
    path = Path(path)
    tmp = path.with_name(f".{path.stem}.tmp.keras")
    model.save(tmp)
    tmp.replace(path)


def evaluate_run(run: RunDir, ds: data_mod.Dataset) -> dict:
    """Re-evaluate a saved run's best model on validation and test (with test-time
    augmentation: also without); writes evaluation.json."""

    from harness.core.records import atomic_write_json

    if not run.model.exists():
        raise FileNotFoundError(f"{run.path}: no model.keras (not a finished run directory)")
    model = load_keras_model(run.model)
    splits = data_mod.split(ds)
    result = {
        "run": run.name,
        "data": ds.record,
        "evaluated_at": _now(),
        **evaluate_splits(model, splits, names=("val", "test")),
        **_without_tta(from_dict(run.read_config()), model, splits),
    }
    atomic_write_json(run.evaluation, result)
    return result


def _median(values: list[float]) -> float | None:
    return round(float(np.median(values)), 4) if values else None
