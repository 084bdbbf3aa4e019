"""Fast-response variants of a trained run: L1 sparsification and structured pruning.

Each variant is a normal run directory whose metrics.json names its ``parent`` run and
its ``variant``, so bench and compare read it like any other run.

- :func:`sparsify` zeroes the Dense weights under a magnitude threshold, or the smallest
  ones up to a target sparsity (over all Dense kernels together). Meant for models trained
  with an L1 penalty (``harness train --l1 ...``), whose weights are already mostly tiny.
  Zeros shrink a compressed file but not dense matrix arithmetic.
- :func:`prune_units` removes whole hidden units, the least salient ones (see
  :func:`unit_saliency`), rebuilds narrower Dense layers (slicing the BatchNorm statistics
  that follow them) and fine-tunes, optionally distilling from a teacher run. Narrower
  layers are what speeds dense inference up.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np

from harness.core.config import from_dict
from harness.core.records import COMPLETED, RunDir
from harness.data import cifar as data_mod
from harness.train.evaluate import evaluate_splits
from harness.train.models import load_keras_model


def learned_dense_layers(model):
    """The Dense layers whose kernels were learned: every trainable Dense. The frozen PCA
    projection (``name="pca"``, trainable=False) is data, the training images' principal
    directions, not a learned weight: it is neither sparsified, pruned nor counted."""
    import keras

    return [
        layer for layer in model.layers if isinstance(layer, keras.layers.Dense) and layer.trainable
    ]


def kernel_sparsity(model) -> tuple[float, list[dict]]:
    """The sparsity of ``model``, the one definition that variants' metrics.json and bench
    records use: the fraction of exactly-zero weights over the kernels of
    :func:`learned_dense_layers` together (biases, BatchNorm and the frozen PCA projection
    left out; 0.0 when there are none), and per layer ``{"layer", "shape", "sparsity"}``.

    Bench records written before this definition counted the PCA projection's kernel too,
    so theirs is lower for a net with PCA."""
    kernels = [(l.name, np.asarray(l.kernel)) for l in learned_dense_layers(model)]
    per_layer = [
        {"layer": name, "shape": list(k.shape), "sparsity": float((k == 0).mean())}
        for name, k in kernels
    ]
    total = sum(k.size for _, k in kernels)
    zeros = sum(int((k == 0).sum()) for _, k in kernels)
    return (zeros / total if total else 0.0), per_layer


def _write_variant(
    parent: RunDir, model, ds: data_mod.Dataset, results: Path, name: str, record: dict
) -> dict:
    """A derived model as a run directory: parent's config, model.keras, metrics.json."""
    from harness.train.fit import run_record, save_model

    cfg = replace(from_dict(parent.read_config()), name=name)
    overall, per_layer = kernel_sparsity(model)
    run = RunDir.named(results, name)
    run.path.mkdir(parents=True, exist_ok=True)
    run.write_config(cfg.to_dict())
    save_model(model, run.model)
    metrics = run_record(
        name,
        cfg,
        model,
        ds,
        status=COMPLETED,
        parent=parent.name,
        **record,
        sparsity=overall,
        sparsity_per_layer=per_layer,
        **evaluate_splits(model, data_mod.split(ds)),
    )
    run.write_metrics(metrics)
    return metrics


def sparsify(
    parent: RunDir,
    ds: data_mod.Dataset,
    results: Path,
    name: str,
    threshold: float | None = None,
    target: float | None = None,
) -> dict:
    """Zero small Dense weights of ``parent``'s model; write and return the new run's metrics."""

    if (threshold is None) == (target is None):
        raise ValueError("give exactly one of threshold or target sparsity")
    model = load_keras_model(parent.model)
    dense = learned_dense_layers(model)
    if target is not None:
        magnitudes = np.concatenate([np.abs(np.asarray(l.kernel)).ravel() for l in dense])
        threshold = float(np.quantile(magnitudes, target))
    for layer in dense:
        kernel = np.asarray(layer.kernel)
        layer.kernel.assign(np.where(np.abs(kernel) <= threshold, 0.0, kernel).astype(kernel.dtype))
    return _write_variant(
        parent, model, ds, results, name, {"variant": "sparsified", "threshold": threshold}
    )


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
            kernel, *bias = w  # the PCA projection has no bias
            rows = kept_in if kept_in is not None else slice(None)
            cols = keeps[hidden] if hidden < len(keeps) else slice(None)
            w = [kernel[rows][:, cols], *(b[cols] for b in bias)]
            kept_in = keeps[hidden] if hidden < len(keeps) else None
            hidden += 1
        elif isinstance(old, keras.layers.BatchNormalization) and kept_in is not None:
            w = [v[kept_in] for v in w]
        assert [x.shape for x in w] == [tuple(v.shape) for v in new.weights], old.name
        weights.extend(w)
    return weights


def unit_saliency(model) -> list[np.ndarray]:
    """How much each hidden unit can move the next layer: its output scale times the norm of
    its outgoing weights.

    The output scale is the |gamma| of the BatchNormalization after the unit (BN fixes the
    unit's spread to gamma, whatever its incoming weights; "network slimming", Liu et al.
    2017) or, without BN, the norm of its incoming weights. One array per hidden Dense
    layer, one value per unit."""
    import keras

    layers = list(model.layers)
    dense = [i for i, layer in enumerate(layers) if isinstance(layer, keras.layers.Dense)]
    saliency = []
    for i, nxt in zip(dense[:-1], dense[1:]):
        bn = next(
            (
                layer
                for layer in layers[i + 1 : nxt]
                if isinstance(layer, keras.layers.BatchNormalization)
            ),
            None,
        )
        scale = (
            np.abs(np.asarray(bn.gamma))
            if bn is not None and bn.scale
            else np.linalg.norm(np.asarray(layers[i].kernel), axis=0)
        )
        saliency.append(scale * np.linalg.norm(np.asarray(layers[nxt].kernel), axis=1))
    return saliency


def prune_units(
    parent: RunDir,
    ds: data_mod.Dataset,
    results: Path,
    name: str | None,
    keep: float = 0.5,
    epochs: int = 5,
    lr_scale: float = 1.0,
    teacher: str | None = None,
    verbose: int | None = None,
) -> dict:
    """Keep the ``keep`` fraction of the most salient units in every hidden layer, then
    fine-tune for ``epochs`` with the parent's schedule at ``lr_scale`` times its rate,
    distilling from the run ``teacher`` if given (the parent itself is a good one). The new
    run is ``name``, or ``<parent>-units<N>``."""

    from harness.train.fit import train
    from harness.train.models import build_model

    cfg = from_dict(parent.read_config())
    units = max(1, int(round(cfg.units * keep)))
    name = name or f"{parent.name}-units{units}"
    model = load_keras_model(parent.model)
    keeps = [np.sort(np.argsort(-s)[:units]) for s in unit_saliency(model)]
    # the PCA projection and the linear bottleneck stay whole; only hidden layers shrink
    for i, width in enumerate(n for n in (cfg.pca, cfg.bottleneck) if n):
        keeps[i] = np.arange(width)
    small = replace(
        cfg,
        units=units,
        name=name,
        epochs=epochs,
        lr=cfg.lr * lr_scale,
        warmup_epochs=0.0,
        teacher=teacher,
    ).validate()
    splits = data_mod.split(ds)
    weights = shrink_weights(model, build_model(small, *splits.norm_stats()), keeps)
    return train(
        small,
        ds,
        results,
        verbose=verbose,
        initial_weights=weights,
        record={
            "parent": parent.name,
            "variant": "structured-pruned",
            "kept_units": units,
            "parent_units": cfg.units,
            "saliency": "BN |gamma| (or incoming norm) x outgoing norm",
        },
    )


# --------------------------------------------------------------------------- magnitude pruning


def _mirror_in_tf_keras(model):
    """The same Sequential rebuilt layer by layer in tf_keras (tfmot accepts no Keras 3)."""
    import keras
    import tf_keras

    from harness.train.layers import FlipPair, PairMean, RandomFlipShift

    tl = tf_keras.layers
    mirror = tf_keras.Sequential([tl.InputLayer(input_shape=(32, 32, 3))])
    for layer in model.layers:
        if isinstance(layer, keras.layers.Dense):
            reg = layer.kernel_regularizer
            con = layer.kernel_constraint
            mirror.add(
                tl.Dense(
                    layer.units,
                    activation=keras.activations.serialize(layer.activation),
                    use_bias=layer.use_bias,
                    trainable=layer.trainable,
                    kernel_regularizer=tf_keras.regularizers.L1L2(
                        l1=float(reg.l1), l2=float(reg.l2)
                    )
                    if reg is not None
                    else None,
                    kernel_constraint=tf_keras.constraints.MaxNorm(float(con.max_value))
                    if con is not None
                    else None,
                    name=layer.name,
                )
            )
        elif isinstance(layer, keras.layers.BatchNormalization):
            mirror.add(
                tl.BatchNormalization(
                    axis=-1,
                    center=layer.center,
                    scale=layer.scale,
                    epsilon=layer.epsilon,
                    trainable=layer.trainable,
                    name=layer.name,
                )
            )
        elif isinstance(layer, keras.layers.Flatten):
            mirror.add(tl.Flatten(name=layer.name))
        elif isinstance(layer, keras.layers.AveragePooling2D):
            mirror.add(tl.AveragePooling2D(layer.pool_size, name=layer.name))
        elif isinstance(layer, keras.layers.LeakyReLU):
            mirror.add(tl.LeakyReLU(alpha=float(layer.negative_slope), name=layer.name))
        elif isinstance(layer, keras.layers.Activation):
            mirror.add(
                tl.Activation(keras.activations.serialize(layer.activation), name=layer.name)
            )
        elif isinstance(layer, keras.layers.AlphaDropout):
            mirror.add(tl.AlphaDropout(layer.rate, name=layer.name))
        elif isinstance(layer, keras.layers.Dropout):
            mirror.add(tl.Dropout(layer.rate, name=layer.name))
        elif isinstance(layer, (RandomFlipShift, FlipPair, PairMean)):
            # augmentation without weights, at training (RandomFlipShift) or test time:
            # fine-tuning goes without; the weights come back into the full model
            continue
        else:
            raise TypeError(f"cannot mirror layer {layer.name} ({type(layer).__name__})")
    mirror.set_weights(model.get_weights())
    return mirror


def prune_magnitude(
    parent: RunDir,
    ds: data_mod.Dataset,
    results: Path,
    name: str,
    sparsity: float = 0.8,
    epochs: int = 5,
    lr_scale: float = 0.1,
    verbose: int = 2,
) -> dict:
    """tensorflow-model-optimization's magnitude pruning of every Dense kernel to
    ``sparsity`` on a polynomial schedule while fine-tuning for ``epochs``.

    The bridge: mirror the model in tf_keras, copy the weights, wrap the Dense layers with
    ``prune_low_magnitude``, fine-tune, strip the wrappers, copy the weights back into the
    Keras 3 model. Writes and returns the new run's metrics.
    """
    import tensorflow_model_optimization as tfmot
    import tf_keras

    cfg = from_dict(parent.read_config())
    model = load_keras_model(parent.model)
    splits = data_mod.split(ds)
    mirror = _mirror_in_tf_keras(model)
    steps = int(np.ceil(len(splits.train) / cfg.batch_size)) * epochs
    schedule = tfmot.sparsity.keras.PolynomialDecay(
        initial_sparsity=0.0,
        final_sparsity=sparsity,
        begin_step=0,
        end_step=max(1, int(steps * 0.8)),
        frequency=max(1, steps // 50),
    )

    def wrap(layer):
        if isinstance(layer, tf_keras.layers.Dense) and layer.trainable:
            return tfmot.sparsity.keras.prune_low_magnitude(layer, pruning_schedule=schedule)
        return layer

    pruned = tf_keras.models.clone_model(mirror, clone_function=wrap)
    pruned.set_weights(_wrapped_weights(mirror, pruned))
    pruned.compile(
        optimizer=tf_keras.optimizers.Nadam(cfg.lr * lr_scale),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    pruned.fit(
        splits.train.x.astype(np.float32),
        splits.train.y,
        batch_size=cfg.batch_size,
        epochs=epochs,
        validation_data=(splits.val.x.astype(np.float32), splits.val.y),
        callbacks=[tfmot.sparsity.keras.UpdatePruningStep()],
        verbose=verbose,
    )
    stripped = tfmot.sparsity.keras.strip_pruning(pruned)
    model.set_weights(stripped.get_weights())
    return _write_variant(
        parent,
        model,
        ds,
        results,
        name,
        {"variant": "magnitude-pruned", "target_sparsity": sparsity, "fine_tune_epochs": epochs},
    )


def _wrapped_weights(plain, wrapped) -> list[np.ndarray]:
    """``plain``'s weights in ``wrapped``'s order: pruning wrappers add a mask and counters."""
    out = []
    for p_layer, w_layer in zip(plain.layers, wrapped.layers):
        if hasattr(w_layer, "layer"):  # PruneLowMagnitude: kernel, bias, then mask, threshold, step
            kernel, bias = p_layer.get_weights()
            extra = [np.asarray(v) for v in w_layer.weights[2:]]
            out.extend([kernel, bias, *extra])
        else:
            out.extend(p_layer.get_weights())
    return out
