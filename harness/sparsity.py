"""Fast-response variants of a trained run: L1 sparsification and structured pruning.

Each variant is a normal run directory whose metrics.json names its ``parent`` run and
its ``variant``, so bench and compare read it like any other run.

- :func:`sparsify` zeroes the Dense weights under a magnitude threshold, or the smallest
  ones up to a target sparsity (over all Dense kernels together). Meant for models trained
  with an L1 penalty (``harness train --l1 ...``), whose weights are already mostly tiny.
  Zeros shrink a compressed file but not dense matrix arithmetic.
- :func:`prune_units` removes whole hidden units, those with the smallest incoming-weight
  norm, rebuilds narrower Dense layers (slicing the BatchNorm statistics that follow them)
  and fine-tunes. Narrower layers are what speeds dense inference up.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np

from harness import data as data_mod
from harness.config import from_dict
from harness.evaluate import evaluate_splits
from harness.records import COMPLETED, RunDir, atomic_write_text, library_versions


def _dense_layers(model):
    import keras

    return [layer for layer in model.layers if isinstance(layer, keras.layers.Dense)]


def sparsify(parent: RunDir, ds: data_mod.Dataset, results: Path, name: str,
             threshold: float | None = None, target: float | None = None) -> dict:
    """Zero small Dense weights of ``parent``'s model; write and return the new run's metrics."""
    import keras

    from harness.models import count_params
    from harness.train import save_model

    if (threshold is None) == (target is None):
        raise ValueError("give exactly one of threshold or target sparsity")
    model = keras.saving.load_model(parent.model)
    dense = _dense_layers(model)
    if target is not None:
        magnitudes = np.concatenate([np.abs(np.asarray(l.kernel)).ravel() for l in dense])
        threshold = float(np.quantile(magnitudes, target))
    per_layer = []
    for layer in dense:
        kernel = np.asarray(layer.kernel)
        pruned = np.where(np.abs(kernel) <= threshold, 0.0, kernel).astype(kernel.dtype)
        layer.kernel.assign(pruned)
        per_layer.append({"layer": layer.name, "shape": list(kernel.shape),
                          "sparsity": float((pruned == 0).mean())})
    total = sum(np.prod(p["shape"]) for p in per_layer)
    overall = sum(p["sparsity"] * np.prod(p["shape"]) for p in per_layer) / total
    run = RunDir.named(results, name)
    run.path.mkdir(parents=True, exist_ok=True)
    cfg = replace(from_dict(parent.read_config()), name=name)
    atomic_write_text(run.config, json.dumps(cfg.to_dict(), indent=2, sort_keys=True) + "\n")
    save_model(model, run.model)
    metrics = {"run": name, "status": COMPLETED, "parent": parent.name, "variant": "sparsified",
               "config": cfg.to_dict(), "threshold": threshold, "sparsity": float(overall),
               "sparsity_per_layer": per_layer, "data": ds.record, "params": count_params(model),
               "versions": library_versions(), "backend": keras.backend.backend(),
               **evaluate_splits(model, data_mod.split(ds))}
    run.write_metrics(metrics)
    return metrics


def shrink_weights(old_model, new_model, keeps: list[np.ndarray]) -> list[np.ndarray]:
    """``old_model``'s weights cut down to ``new_model``'s shapes.

    ``keeps[i]`` holds the unit indices kept in hidden Dense layer i. Layers pair up in
    order (both models come from the same builder); a BatchNormalization after a hidden
    Dense layer keeps the same units.
    """
    import keras

    weights, hidden = [], 0
    kept_in = None  # the previous Dense layer's kept units: this layer's kept input rows
    for old, new in zip(old_model.layers, new_model.layers):
        w = [np.asarray(v) for v in old.weights]
        if isinstance(old, keras.layers.Dense):
            kernel, bias = w
            rows = kept_in if kept_in is not None else slice(None)
            cols = keeps[hidden] if hidden < len(keeps) else slice(None)
            w = [kernel[rows][:, cols], bias[cols]]
            kept_in = keeps[hidden] if hidden < len(keeps) else None
            hidden += 1
        elif isinstance(old, keras.layers.BatchNormalization) and kept_in is not None:
            w = [v[kept_in] for v in w]
        assert [x.shape for x in w] == [tuple(v.shape) for v in new.weights], old.name
        weights.extend(w)
    return weights


def prune_units(parent: RunDir, ds: data_mod.Dataset, results: Path, name: str,
                keep: float = 0.5, epochs: int = 5, lr_scale: float = 0.1,
                verbose: int | None = None) -> dict:
    """Keep the ``keep`` fraction of units with the largest incoming-weight norm in every
    hidden layer, then fine-tune for ``epochs`` at ``lr_scale`` times the parent's rate."""
    import keras

    from harness.models import build_model
    from harness.train import train

    cfg = from_dict(parent.read_config())
    units = max(1, int(round(cfg.units * keep)))
    model = keras.saving.load_model(parent.model)
    hidden = _dense_layers(model)[:-1]
    keeps = [np.sort(np.argsort(-np.linalg.norm(np.asarray(l.kernel), axis=0))[:units])
             for l in hidden]
    small = replace(cfg, units=units, name=name, epochs=epochs, lr=cfg.lr * lr_scale,
                    warmup_epochs=0.0).validate()
    splits = data_mod.split(ds)
    weights = shrink_weights(model, build_model(small, *splits.norm_stats()), keeps)
    return train(small, ds, results, verbose=verbose, initial_weights=weights,
                 record={"parent": parent.name, "variant": "structured-pruned",
                         "kept_units": units, "parent_units": cfg.units})
