"""Model builders: pure functions from a TrainConfig (and the train split's statistics) to an
uncompiled ``keras.Model``. Keras 3 API only, so the same code runs on the TensorFlow and
JAX backends.

Every model takes raw 0-255 pixels, shape (32, 32, 3), and standardizes them in its first
layer with the per-channel mean/variance of the 45k training split, so a saved or exported
model needs no preprocessing on an edge device.
"""

from __future__ import annotations

import numpy as np

from harness.config import TrainConfig

# Each activation with the initializer that keeps its activations' variance stable.
INITIALIZERS = {
    "selu": "lecun_normal",
    "elu": "he_normal",
    "relu": "he_normal",
    "leaky-relu": "he_normal",
    "gelu": "he_normal",
}


def _activation(name: str):
    import keras

    if name == "leaky-relu":
        return keras.layers.LeakyReLU(negative_slope=0.2)
    return keras.layers.Activation(name)


def _dense(cfg: TrainConfig, **kwargs):
    import keras

    regularizer = keras.regularizers.L1L2(l1=cfg.l1, l2=cfg.l2) if (cfg.l1 or cfg.l2) else None
    constraint = keras.constraints.MaxNorm(cfg.max_norm) if cfg.max_norm else None
    return keras.layers.Dense(cfg.units, kernel_initializer=INITIALIZERS[cfg.activation],
                              kernel_regularizer=regularizer, kernel_constraint=constraint,
                              **kwargs)


def _dropout(cfg: TrainConfig):
    import keras

    # SELU's self-normalization survives only AlphaDropout, which keeps mean and variance.
    if cfg.activation == "selu":
        return keras.layers.AlphaDropout(cfg.dropout)
    return keras.layers.Dropout(cfg.dropout)


def standardize_layer(mean: np.ndarray, variance: np.ndarray):
    """A frozen per-channel standardization, (x - mean) / sqrt(variance), as the first layer.

    It is a BatchNormalization layer with no scale or offset, frozen (so it always uses its
    moving statistics) and loaded with the train split's statistics. Keras' Normalization
    layer would do the same arithmetic, but it keeps its statistics as constants, which the
    ONNX exporter turns into extra model inputs; these are ordinary weights.
    """
    import keras

    layer = keras.layers.BatchNormalization(axis=-1, center=False, scale=False, epsilon=1e-6,
                                            name="standardize", trainable=False)
    layer.build((None, 32, 32, 3))
    layer.set_weights([np.asarray(mean, np.float32), np.asarray(variance, np.float32)])
    return layer


def build_model(cfg: TrainConfig, mean: np.ndarray, variance: np.ndarray):
    """The network described by ``cfg``; ``mean``/``variance`` are per-channel, 0-255 scale.

    plain:     Normalize -> Flatten -> N x [Dense(act)] -> Dense(10, softmax)
    batchnorm: Normalize -> Flatten -> BN -> N x [Dense -> BN -> act] -> Dense(10, softmax)
    """
    import keras
    from keras import layers

    model = keras.Sequential(name=f"{cfg.arch}_{cfg.activation}_{cfg.layers}x{cfg.units}")
    model.add(keras.Input(shape=(32, 32, 3), name="pixels"))
    model.add(standardize_layer(mean, variance))
    model.add(layers.Flatten())
    if cfg.arch == "batchnorm":
        model.add(layers.BatchNormalization())
    for _ in range(cfg.layers):
        if cfg.arch == "batchnorm":
            # The study's ordering: linear Dense, then BN, then the activation.
            model.add(_dense(cfg))
            model.add(layers.BatchNormalization())
            model.add(_activation(cfg.activation))
        elif cfg.activation in ("leaky-relu",):
            model.add(_dense(cfg))
            model.add(_activation(cfg.activation))
        else:
            model.add(_dense(cfg, activation=cfg.activation))
        if cfg.dropout:
            model.add(_dropout(cfg))
    model.add(layers.Dense(10, activation="softmax", name="probabilities"))
    return model


def count_params(model) -> dict[str, int]:
    trainable = int(sum(np.prod(w.shape) for w in model.trainable_weights))
    total = int(sum(np.prod(w.shape) for w in model.weights))
    return {"trainable": trainable, "non_trainable": total - trainable, "total": total}
