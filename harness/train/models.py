"""Model builders: pure functions from a TrainConfig (and the train split's statistics) to an
uncompiled ``keras.Model``. Keras 3 API only, so the same code runs on the TensorFlow and
JAX backends.

Every model takes raw 0-255 pixels, shape (32, 32, 3), and standardizes them in its first
layer with the per-channel mean/variance of the 45k training split, so a saved or exported
model needs no preprocessing on an edge device.
"""

from __future__ import annotations

import numpy as np

from harness.core.config import TrainConfig

# Each activation with the initializer that keeps its activations' variance stable.
INITIALIZERS = {
    "selu": "lecun_normal",
    "elu": "he_normal",
    "relu": "he_normal",
    "leaky-relu": "he_normal",
    "gelu": "he_normal",
}


def _initializer(name: str):
    """Keras' initializer of that name, drawn on the host (harness.train.layers.HostInitializer)."""
    from harness.train.layers import HostInitializer

    return HostInitializer(name)


def _activation(name: str):
    import keras

    if name == "leaky-relu":
        return keras.layers.LeakyReLU(negative_slope=0.2)
    return keras.layers.Activation(name)


def _dense(cfg: TrainConfig, reads_pixels: bool = False, **kwargs):
    """A hidden Dense layer. The one that reads the flattened pixels is a RowMajorDense,
    whose kernel gradient (thousands of inputs) is the largest product of a small net, and
    with bfloat16 products every one is (each product needs the row-major operands)."""
    import keras

    from harness.train.layers import RowMajorDense

    regularizer = keras.regularizers.L1L2(l1=cfg.l1, l2=cfg.l2) if (cfg.l1 or cfg.l2) else None
    constraint = keras.constraints.MaxNorm(cfg.max_norm) if cfg.max_norm else None
    products = {} if cfg.products == "float32" else {"products": cfg.products}
    return (RowMajorDense if (reads_pixels or products) else keras.layers.Dense)(
        cfg.units,
        kernel_initializer=_initializer(INITIALIZERS[cfg.activation]),
        kernel_regularizer=regularizer,
        kernel_constraint=constraint,
        **products,
        **kwargs,
    )


def _dropout(cfg: TrainConfig):
    import keras

    from harness.train.layers import dropout_seed

    # SELU's self-normalization survives only AlphaDropout, which keeps mean and variance.
    if cfg.activation == "selu":
        return keras.layers.AlphaDropout(cfg.dropout, seed=dropout_seed())
    return keras.layers.Dropout(cfg.dropout, seed=dropout_seed())


def standardize_layer(mean: np.ndarray, variance: np.ndarray):
    """A frozen per-channel standardization, (x - mean) / sqrt(variance), as the first layer.

    It is a BatchNormalization layer with no scale or offset, frozen (so it always uses its
    moving statistics) and loaded with the train split's statistics. Keras' Normalization
    layer would do the same arithmetic, but it keeps its statistics as constants, which the
    ONNX exporter turns into extra model inputs; these are ordinary weights.
    """
    import keras

    layer = keras.layers.BatchNormalization(
        axis=-1, center=False, scale=False, epsilon=1e-6, name="standardize", trainable=False
    )
    layer.build((None, 32, 32, 3))
    layer.set_weights([np.asarray(mean, np.float32), np.asarray(variance, np.float32)])
    return layer


def custom_objects() -> dict:
    """harness' own Keras classes by class name (see :mod:`harness.train.layers`), for
    ``keras.saving.load_model``. Imported here, not at the top, so importing this module
    does not import Keras."""
    from harness.train.layers import CUSTOM_OBJECTS

    return dict(CUSTOM_OBJECTS)


def load_keras_model(path):
    """``keras.saving.load_model`` with harness' own layers and losses known."""
    import keras

    return keras.saving.load_model(path, custom_objects=custom_objects())


def loss_for(cfg: TrainConfig):
    """The training loss: sparse cross-entropy, with label smoothing when configured; with
    mixup or a teacher the targets are probability vectors, so categorical cross-entropy."""
    if cfg.mixup or cfg.teacher:
        import keras

        return keras.losses.CategoricalCrossentropy(label_smoothing=cfg.label_smoothing)
    if cfg.label_smoothing:
        from harness.train.layers import SmoothedSparseCrossentropy

        return SmoothedSparseCrossentropy(cfg.label_smoothing)
    return "sparse_categorical_crossentropy"


def _augmentation(cfg: TrainConfig):
    """The model's training-time augmentation; none where the teacher's views (augmented
    before training, harness.train.targets.augmented_views) already are."""
    return None if cfg.teacher_views else augmentation_layer(cfg)


def augmentation_layer(cfg: TrainConfig):
    """The configured augmentation layer (identity at inference), or None."""
    if cfg.augment == "none":
        return None
    from harness.train.layers import RandomFlipShift

    shift, zoom = (cfg.shift, cfg.zoom) if cfg.augment == "flip-shift" else (0, 0.0)
    return RandomFlipShift(shift=shift, seed=cfg.seed, zoom=zoom, name="augment")


def _tta(cfg: TrainConfig):
    """The test-time augmentation's two layers (first and last in the model), or Nones."""
    if cfg.tta == "none":
        return None, None
    from harness.train.layers import FlipPair, PairMean

    return FlipPair(name="tta_flip"), PairMean(name="tta_mean")


def build_resnet8(cfg: TrainConfig, mean: np.ndarray, variance: np.ndarray):
    """The CNN reference: MLPerf Tiny's ResNet-8 for CIFAR-10 (three residual stages of 16, 32
    and 64 filters, global average pooling; 78k parameters), behind the same standardization
    and augmentation as the MLPs, so compare and bench put DNN and CNN side by side."""
    import keras
    from keras import layers

    l2 = keras.regularizers.L2(cfg.l2) if cfg.l2 else None

    def conv(x, filters, kernel=3, strides=1):
        return layers.Conv2D(
            filters,
            kernel,
            strides=strides,
            padding="same",
            kernel_initializer=_initializer("he_normal"),
            kernel_regularizer=l2,
        )(x)

    inputs = keras.Input(shape=(32, 32, 3), name="pixels")
    tta_first, tta_last = _tta(cfg)
    x = inputs if tta_first is None else tta_first(inputs)
    x = standardize_layer(mean, variance)(x)
    augment = _augmentation(cfg)
    if augment is not None:
        x = augment(x)
    x = layers.ReLU()(layers.BatchNormalization()(conv(x, 16)))
    for filters, strides in ((16, 1), (32, 2), (64, 2)):
        y = layers.ReLU()(layers.BatchNormalization()(conv(x, filters, strides=strides)))
        y = layers.BatchNormalization()(conv(y, filters))
        if strides != 1:
            x = conv(x, filters, kernel=1, strides=strides)
        x = layers.ReLU()(layers.Add()([x, y]))
    x = layers.GlobalAveragePooling2D()(x)
    outputs = layers.Dense(
        10,
        activation="softmax",
        name="probabilities",
        kernel_initializer=_initializer("glorot_uniform"),
    )(x)
    if tta_last is not None:
        outputs = tta_last(outputs)
    return keras.Model(inputs, outputs, name="resnet8")


def build_model(
    cfg: TrainConfig, mean: np.ndarray, variance: np.ndarray, components: np.ndarray | None = None
):
    """The network described by ``cfg``; ``mean``/``variance`` are per-channel, 0-255 scale;
    ``components`` (inputs, ``cfg.pca``) the PCA layer's fixed kernel (if None, left at its
    initialization, for callers that load weights next).

    plain:     [TTA] -> Normalize -> [Augment] -> [Pool] -> Flatten -> [PCA] -> [Bottleneck]
               -> N x [Dense(act)] -> Dense(10, softmax) -> [TTA mean]
    batchnorm: [TTA] -> Normalize -> [Augment] -> [Pool] -> Flatten -> [PCA] -> BN (input_bn;
               raw-stats with none of Augment, Pool, PCA: no Normalize)
               -> [Bottleneck -> BN] -> N x [Dense -> BN -> act] -> Dense(10, softmax)
               -> [TTA mean]
    PCA (``cfg.pca`` outputs) is a frozen linear Dense without bias: the projection onto the
    training images' top principal directions. Pool (``cfg.pool``) averages each pool x pool
    block of pixels, so everything after it sees 3072 / pool ** 2 inputs. Bottleneck
    (``cfg.bottleneck`` units) is a learned linear Dense.
    resnet8:   see :func:`build_resnet8`
    """
    import keras
    from keras import layers

    from harness.train.layers import RowMajorDense

    if cfg.arch == "resnet8":
        return build_resnet8(cfg, mean, variance)
    # One list, one Sequential: adding layers one by one re-traces the model at every add.
    stack = [keras.Input(shape=(32, 32, 3), name="pixels")]
    tta_first, tta_last = _tta(cfg)
    if tta_first is not None:
        stack.append(tta_first)
    if not _reads_raw_pixels(cfg):
        stack.append(standardize_layer(mean, variance))
    augment = _augmentation(cfg)
    if augment is not None:
        stack.append(augment)
    if cfg.pool > 1:
        stack.append(layers.AveragePooling2D(cfg.pool, name="pool"))
    stack.append(layers.Flatten())
    if cfg.pca:
        stack.append(
            layers.Dense(
                cfg.pca,
                use_bias=False,
                trainable=False,
                name="pca",
                kernel_initializer=_initializer("glorot_uniform"),
            )
        )
    if cfg.arch == "batchnorm":
        affine = cfg.input_bn == "affine"
        stack.append(layers.BatchNormalization(center=affine, scale=affine))
    # The first learned Dense (bottleneck or first hidden layer) reads the pixels unless the
    # PCA projection comes first.
    reads_pixels = not cfg.pca
    if cfg.bottleneck:
        stack.append(
            (RowMajorDense if reads_pixels else layers.Dense)(
                cfg.bottleneck, name="bottleneck", kernel_initializer=_initializer("glorot_normal")
            )
        )
        if cfg.arch == "batchnorm":
            stack.append(layers.BatchNormalization())
        reads_pixels = False
    for _ in range(cfg.layers):
        if cfg.arch == "batchnorm":
            # The study's ordering: linear Dense, then BN, then the activation.
            stack.append(_dense(cfg, reads_pixels))
            stack.append(layers.BatchNormalization())
            stack.append(_activation(cfg.activation))
        elif cfg.activation in ("leaky-relu",):
            stack.append(_dense(cfg, reads_pixels))
            stack.append(_activation(cfg.activation))
        else:
            stack.append(_dense(cfg, reads_pixels, activation=cfg.activation))
        if cfg.dropout:
            stack.append(_dropout(cfg))
        reads_pixels = False
    stack.append(
        layers.Dense(
            10,
            activation="softmax",
            name="probabilities",
            kernel_initializer=_initializer("glorot_uniform"),
        )
    )
    if tta_last is not None:
        stack.append(tta_last)
    model = keras.Sequential(stack, name=f"{cfg.arch}_{cfg.activation}_{cfg.layers}x{cfg.units}")
    if cfg.pca and components is not None:
        model.get_layer("pca").set_weights([np.asarray(components, np.float32)])
    return model


def _reads_raw_pixels(cfg: TrainConfig) -> bool:
    """Whether the input BatchNorm of batch statistics reads the pixels as they come
    (``input_bn`` raw-stats with nothing between them: per-input batch statistics absorb any
    per-channel standardization)."""
    return (
        cfg.arch == "batchnorm"
        and cfg.input_bn == "raw-stats"
        and not cfg.pca
        and cfg.pool == 1
        and cfg.augment == "none"
    )


def count_params(model) -> dict[str, int]:
    trainable = int(sum(np.prod(w.shape) for w in model.trainable_weights))
    total = int(sum(np.prod(w.shape) for w in model.weights))
    return {"trainable": trainable, "non_trainable": total - trainable, "total": total}
