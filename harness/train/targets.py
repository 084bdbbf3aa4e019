"""What a net learns from: one-hot labels, a teacher's answers (distillation, on clean or
augmented views of the training images) and mixup batches."""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np

from harness.core.config import ConfigError, TrainConfig
from harness.core.records import RunDir
from harness.train.evaluate import predict_keras
from harness.train.models import load_keras_model

CLASSES = 10


def one_hot(labels: np.ndarray) -> np.ndarray:
    return np.eye(CLASSES, dtype=np.float32)[labels]


def soften(probs: np.ndarray, temperature: float) -> np.ndarray:
    """``probs`` at ``temperature``: softmax(log p / T), the softmax of the logits / T (a
    softmax's logits are its log-probabilities up to a constant per row)."""
    if temperature == 1:
        return probs
    logits = np.log(np.maximum(probs.astype(np.float64), 1e-30)) / temperature
    soft = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return (soft / soft.sum(axis=-1, keepdims=True)).astype(probs.dtype)


def teacher_targets(
    cfg: TrainConfig, results: Path, splits
) -> tuple[np.ndarray, dict, np.ndarray | None]:
    """Distillation targets for the training split: ``teacher_weight`` x the teacher run's
    probabilities + the rest on the one-hot labels; what metrics.json records of it; and,
    with ``teacher_views``, the augmented views they belong to (else None).

    Without views the targets are (N, 10), the teacher's answers on the clean images. With
    V views, the training images augmented V times as the model would augment them (the
    same layer and settings, seeded by ``seed``), shape (V, N, 32, 32, 3) uint8, and the
    targets (V, N, 10): the teacher's answer on each view."""
    teacher = RunDir.named(results, cfg.teacher)
    if not teacher.model.exists():
        raise ConfigError(f"teacher={cfg.teacher!r}: no finished run at {teacher.path}")
    model = load_keras_model(teacher.model)
    labels = one_hot(splits.train.y)
    t0 = time.perf_counter()
    views = augmented_views(cfg, splits.train.x) if cfg.teacher_views else None
    probs = (
        np.stack([predict_keras(model, v) for v in views])
        if views is not None
        else predict_keras(model, splits.train.x)
    )
    clean = probs if views is None else predict_keras(model, splits.train.x)
    probs = soften(probs, cfg.teacher_temperature)
    targets = cfg.teacher_weight * probs + (1 - cfg.teacher_weight) * labels
    record = {
        "run": cfg.teacher,
        "weight": cfg.teacher_weight,
        "temperature": cfg.teacher_temperature,
        "train_accuracy": float((clean.argmax(axis=-1) == splits.train.y).mean()),
        "test_accuracy": (teacher.read_metrics() or {}).get("test", {}).get("accuracy"),
    }
    if views is not None:
        record.update(
            views=len(views),
            seconds=round(time.perf_counter() - t0, 1),
            views_accuracy=float((probs.argmax(axis=-1) == splits.train.y).mean()),
        )
    return targets.astype(np.float32), record, views


def augmented_views(cfg: TrainConfig, x: np.ndarray, chunk: int = 2048) -> np.ndarray:
    """``cfg.teacher_views`` augmented copies of ``x`` (uint8 images), made by the model's
    own augmentation layer in training mode, rounded back to uint8."""
    from harness.train.models import augmentation_layer

    layer = augmentation_layer(cfg)
    views = np.empty((cfg.teacher_views, *x.shape), np.uint8)
    for v in range(cfg.teacher_views):
        for start in range(0, len(x), chunk):
            part = layer(x[start : start + chunk].astype(np.float32), training=True)
            views[v, start : start + chunk] = np.clip(np.rint(np.asarray(part)), 0, 255)
    return views


def mixup_batches(
    x: np.ndarray,
    y: np.ndarray,
    batch_size: int,
    alpha: float,
    seed: int,
    workers: int | None = None,
    epoch: int = 0,
):
    """Shuffled batches of mixed images and targets (Zhang et al. 2018, one l per image);
    ``y`` holds integer labels or (N, 10) probability vectors; or, with views, ``x`` is
    (V, N, ...) and ``y`` (V, N, 10) (see :class:`harness.train.callbacks.MixupBatches`).

    Mixing happens on raw pixels; the model's first layer standardizes linearly, so this is
    the same as mixing standardized inputs. Whole batches are mixed at once in numpy, on
    ``workers`` threads (default: half the cores, at most 8), so on a GPU the host keeps up
    with a small net. Each batch draws from its own generator, seeded by (seed, epoch,
    batch), so the batches are the same whatever the number of threads; ``epoch`` is the
    first epoch's number."""
    from harness.train.callbacks import MixupBatches

    if workers is None:
        workers = max(1, min(8, (os.cpu_count() or 2) // 2))
    targets = one_hot(y) if y.ndim == 1 else y
    return MixupBatches(x, targets, batch_size, alpha, seed, workers, epoch=epoch)
