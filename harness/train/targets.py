"""What a net learns from: one-hot labels, a teacher's answers (distillation, on clean or
augmented views of the training images) and mixup batches."""

from __future__ import annotations

import os
import time
from dataclasses import replace
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
    targets (V, N, 10): the teacher's answer on each view. With ``teacher_refresh`` the
    teacher answers through its int8 export (see :func:`teacher_labeller`)."""
    teacher = RunDir.named(results, cfg.teacher)
    label = teacher_labeller(cfg, teacher)
    labels = one_hot(splits.train.y)
    t0 = time.perf_counter()
    views = augmented_views(cfg, splits.train.x) if cfg.teacher_views else None
    probs = np.stack([label(v) for v in views]) if views is not None else label(splits.train.x)
    clean = probs if views is None else label(splits.train.x)
    targets = mix_targets(cfg, probs, labels)
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
    if cfg.teacher_refresh:
        record.update(refresh=cfg.teacher_refresh, labelled_by=TEACHER_INT8)
    return targets, record, views


TEACHER_INT8 = "exports/model_int8.tflite"  # the teacher file refreshed views are labelled by


def teacher_labeller(cfg: TrainConfig, teacher: RunDir):
    """The teacher as a function from uint8 images to probabilities: its Keras model, or,
    with ``teacher_refresh`` (a pass every epoch), its int8 export through LiteRT on every
    core. ConfigError, one line, when the file it needs is missing."""
    if not teacher.model.exists():
        raise ConfigError(f"teacher={cfg.teacher!r}: no finished run at {teacher.path}")
    if not cfg.teacher_refresh:
        model = load_keras_model(teacher.model)
        return lambda x: predict_keras(model, x)
    from harness.edge import predict as edge  # the bundles' runtime wrapper, the lowest stage

    path = teacher.path / TEACHER_INT8
    if not path.exists():
        raise ConfigError(
            f"teacher_refresh: the teacher's int8 file {path} is missing; make it with "
            f"`harness export {cfg.teacher} --format tflite --quantize int8`"
        )
    runtime = edge.LiteRT(path, os.cpu_count() or 1)
    return lambda x: edge.predict(runtime, x)


def mix_targets(cfg: TrainConfig, probs: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """``teacher_weight`` x the teacher's (softened) probabilities + the rest on the labels."""
    probs = soften(probs, cfg.teacher_temperature)
    return (cfg.teacher_weight * probs + (1 - cfg.teacher_weight) * labels).astype(np.float32)


def augmenter(cfg: TrainConfig, seed_offset: int = 0):
    """The model's own augmentation layer in training mode as a function from uint8 images
    to uint8 images (rounded back), compiled once on JAX (eager, it costs several times
    more than the teacher's int8 pass)."""
    import keras

    from harness.train.models import augmentation_layer

    layer = augmentation_layer(replace(cfg, seed=cfg.seed + seed_offset))
    layer.build((None, *IMAGE))
    state = [v.value for v in layer.non_trainable_variables]

    def apply(state, x):
        out, state = layer.stateless_call([], state, keras.ops.cast(x, "float32"), training=True)
        return keras.ops.cast(keras.ops.clip(keras.ops.round(out), 0, 255), "uint8"), state

    if keras.backend.backend() == "jax":
        import jax

        apply = jax.jit(apply)

    def augment(x: np.ndarray) -> np.ndarray:
        nonlocal state
        out, state = apply(state, x)
        return np.asarray(out)

    return augment


IMAGE = (32, 32, 3)


def augmented_views(cfg: TrainConfig, x: np.ndarray, chunk: int = 2500) -> np.ndarray:
    """``cfg.teacher_views`` augmented copies of ``x`` (uint8 images), made by the model's
    own augmentation layer in training mode, rounded back to uint8."""
    augment = augmenter(cfg)
    views = np.empty((cfg.teacher_views, *x.shape), np.uint8)
    for v in range(cfg.teacher_views):
        for start in range(0, len(x), chunk):
            views[v, start : start + chunk] = augment(x[start : start + chunk])
    return views


class ViewRefresh:
    """``teacher_refresh``: called with an epoch's number before its batches are drawn, it
    gives a rotating slice of the training images (that fraction of them) fresh augmented
    views, in view slot ``epoch % V``, and the teacher's targets for them, in place in the
    arrays the batches read. Each call augments with the next draws of its own seeded
    generator, so the views differ from epoch to epoch (a resumed run draws its own)."""

    def __init__(self, cfg: TrainConfig, results: Path, splits, views, targets, chunk=2500):
        self.cfg, self.x, self.y = cfg, splits.train.x, splits.train.y
        self.views, self.targets, self.chunk = views, targets, chunk
        self.label = teacher_labeller(cfg, RunDir.named(results, cfg.teacher))
        self.augment = augmenter(cfg, seed_offset=1)
        self.size = max(1, int(round(cfg.teacher_refresh * len(self.x))))

    def __call__(self, epoch: int) -> None:
        n = len(self.x)
        first = (epoch * self.size) % n
        idx = np.arange(first, first + self.size) % n
        slot = epoch % len(self.views)
        for start in range(0, len(idx), self.chunk):
            part = idx[start : start + self.chunk]
            view = self.augment(self.x[part])
            self.views[slot, part] = view
            labels = one_hot(self.y[part])
            self.targets[slot, part] = mix_targets(self.cfg, self.label(view), labels)


def mixup_batches(
    x: np.ndarray,
    y: np.ndarray,
    batch_size: int,
    alpha: float,
    seed: int,
    workers: int | None = None,
    epoch: int = 0,
    refresh=None,
):
    """Shuffled batches of mixed images and targets (Zhang et al. 2018, one l per image);
    ``y`` holds integer labels or (N, 10) probability vectors; or, with views, ``x`` is
    (V, N, ...) and ``y`` (V, N, 10) (see :class:`harness.train.callbacks.MixupBatches`).

    Mixing happens on raw pixels; the model's first layer standardizes linearly, so this is
    the same as mixing standardized inputs. Whole batches are mixed at once in numpy, on
    ``workers`` threads (default: half the cores, at most 8), so on a GPU the host keeps up
    with a small net. Each batch draws from its own generator, seeded by (seed, epoch,
    batch), so the batches are the same whatever the number of threads; ``epoch`` is the
    first epoch's number; ``refresh`` (a :class:`ViewRefresh`) renews views between epochs."""
    from harness.train.callbacks import MixupBatches

    if workers is None:
        workers = max(1, min(8, (os.cpu_count() or 2) // 2))
    targets = one_hot(y) if y.ndim == 1 else y
    return MixupBatches(x, targets, batch_size, alpha, seed, workers, epoch=epoch, refresh=refresh)
