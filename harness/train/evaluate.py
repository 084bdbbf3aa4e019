"""Evaluation, written once: accuracy and cross-entropy from predicted probabilities.

Every runtime (Keras now; pruned, ONNX and TFLite models later) produces a probability
matrix and is scored by :func:`score`, so their figures are comparable to the digit.
"""

from __future__ import annotations

import numpy as np

from harness.data.cifar import Split, Splits

EVAL_BATCH = 1024  # images per predict call; evaluation only, no effect on results


def score(probs: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Accuracy and mean cross-entropy (natural log) of ``probs`` (N, 10) against labels."""
    probs = np.asarray(probs, dtype=np.float64)
    labels = np.asarray(labels)
    if probs.ndim != 2 or len(probs) != len(labels):
        raise ValueError(
            f"expected probabilities (N, classes) for {len(labels)} labels, got {probs.shape}"
        )
    picked = probs[np.arange(len(labels)), labels]
    return {
        "accuracy": float((probs.argmax(axis=1) == labels).mean()),
        "loss": float(-np.log(np.clip(picked, 1e-12, 1.0)).mean()),
    }


def predict_keras(model, x: np.ndarray) -> np.ndarray:
    return np.asarray(model.predict(x, batch_size=EVAL_BATCH, verbose=0))


def evaluate_keras(model, part: Split) -> dict[str, float]:
    return score(predict_keras(model, part.x), part.y)


def evaluate_splits(model, splits: Splits, names=("train", "val", "test")) -> dict[str, dict]:
    return {name: evaluate_keras(model, getattr(splits, name)) for name in names}
