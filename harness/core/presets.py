"""The presets: named recipes, each a set of settings over TrainConfig's defaults
(harness.core.config resolves them; `harness train --preset NAME`)."""

from __future__ import annotations

from typing import Any

# The accuracy frontier without convolutions (benchmarks/frontier.py): fully connected
# on flattened pixels, with what modern training adds: a fixed PCA projection, BatchNorm +
# GELU, flips, translations and zoom, mixup, label smoothing, AdamW, warm-up + cosine, and
# test-time flips. Sized for about 30 minutes on a 2-core CPU; the benchmark sets the
# epochs to fit a time budget. What each part is worth: docs/frontier.md, with the records.
MLP_FRONTIER = dict(
    arch="batchnorm",
    pca=512,
    input_bn="stats",
    activation="gelu",
    layers=3,
    units=1024,
    augment="flip-shift",
    zoom=0.2,
    tta="flip",
    mixup=0.8,
    label_smoothing=0.1,
    optimizer="adamw",
    weight_decay=0.05,
    lr=1e-3,
    batch_size=256,
    epochs=120,
    schedule="cosine",
    warmup_epochs=3,
    monitor="val_accuracy",
    patience=1000,
    backend="jax",
    steps_per_execution=4,
)


PRESETS: dict[str, dict[str, Any]] = {
    # The study's self-normalizing net: 5 x 100 Dense + SELU, LeCun-normal, Nadam 1e-4.
    "selu": dict(arch="plain", activation="selu", lr=1e-4),
    # The study's second net: BN + 5 x [Dense(he_normal, max_norm 1) + BN + ELU], Nadam 1e-3.
    "bn-elu": dict(arch="batchnorm", activation="elu", max_norm=1.0, lr=1e-3),
    # The same networks trained at the machine's limit (benchmarks/train_speed.py): large
    # batches with warm-up + cosine decay, compiled multi-step execution on the JAX backend.
    "selu-fast": dict(
        arch="plain",
        activation="selu",
        lr=5e-3,
        batch_size=1024,
        epochs=12,
        schedule="cosine",
        warmup_epochs=1,
        monitor="val_accuracy",
        patience=12,
        backend="jax",
        steps_per_execution=4,
    ),
    # bn-elu-fast is also the searches' recipe, where every trial is a new network: batches
    # of 1000 split the 45,000 training and 5,000 validation images whole, so each trial
    # compiles its steps once (a smaller last batch compiles them again); the input
    # BatchNorm standardizes the raw pixels with batch statistics only (the first Dense
    # already weights each input, and training skips that layer's input gradient), and
    # the hidden layers' products take bfloat16 operands.
    "bn-elu-fast": dict(
        arch="batchnorm",
        activation="elu",
        max_norm=1.0,
        lr=1e-2,
        input_bn="raw-stats",
        products="bfloat16",
        batch_size=1000,
        epochs=15,
        schedule="cosine",
        warmup_epochs=1,
        monitor="val_accuracy",
        patience=15,
        backend="jax",
        steps_per_execution=4,
        # each epoch one compiled program (docs/training-speed.md, "Whole epochs")
        loop="compiled",
    ),
    "mlp-frontier": MLP_FRONTIER,
    # The same recipe for a GPU, where an epoch takes a fraction of a second: 600 epochs
    # (about what an hour gives the 2-core CPU) and twice the width, which a GPU runs at
    # almost no cost (the width comparison: docs/frontier.md).
    "mlp-frontier-gpu": {**MLP_FRONTIER, "units": 2048, "epochs": 600},
    # The CNN reference row: MLPerf Tiny's ResNet-8 for CIFAR-10 (78k parameters), with the
    # same test-time flips as the fully connected nets, so the comparison stays even.
    "resnet8": dict(
        arch="resnet8",
        activation="relu",
        augment="flip-shift",
        tta="flip",
        label_smoothing=0.1,
        optimizer="adamw",
        weight_decay=5e-4,
        lr=3e-3,
        batch_size=256,
        epochs=40,
        schedule="cosine",
        warmup_epochs=2,
        monitor="val_accuracy",
        patience=1000,
        backend="jax",
        steps_per_execution=4,
    ),
}
