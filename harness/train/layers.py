"""harness' own Keras layers and loss, registered for saving and loading.

Each class is registered as ``harness>ClassName`` (Keras' registered name for a saved
``model.keras``), the names they have always had, so run directories written before these
classes moved here still load through :func:`harness.train.models.load_keras_model`.

Importing this module imports Keras, and sets two of its behaviours for the process, each
with the same results and fewer seconds: Zeros and Ones fill on the host
(:func:`_filled_on_host`), and saving checks for TensorFlow's types only once TensorFlow is
loaded (:class:`_TensorFlowOnceLoaded`). :mod:`harness.train.models`,
:mod:`harness.export.convert` and :mod:`harness.train.sparsity` import it inside their
functions, so the CLI can choose the Keras backend before Keras loads, and ``harness --help``
or ``harness predict`` never load it.
"""

from __future__ import annotations

import contextlib
import functools
import sys
import threading

import keras
import numpy as np
from keras import ops
from keras.src.saving import serialization_lib
from keras.src.utils.module_utils import LazyModule

from harness.core.config import PRODUCTS


@keras.saving.register_keras_serializable(package="harness")
class RandomFlipShift(keras.layers.Layer):
    """Training-time augmentation on whole batches: a random horizontal flip, a random
    translation by up to ``shift`` pixels and (``zoom`` > 0) a random isotropic scaling
    by a factor in [1 - zoom, 1 + zoom] about the image centre, with bilinear
    interpolation; zero padding (the mean pixel once inputs are standardized). The
    identity at inference, so exports carry no trace of it.

    Each move is a 32 x 32 resampling matrix per image and axis, applied with einsum,
    which runs unchanged on every backend and device, and is small beside the MLP's own
    matrix products (its cost is part of the epoch times that benchmarks/train_speed.py
    and benchmarks/frontier.py record). Without zoom the matrices are one-hot (whole-pixel
    moves).
    """

    def __init__(self, shift=4, seed=None, zoom=0.0, **kwargs):
        super().__init__(**kwargs)
        self.shift, self.seed, self.zoom = int(shift), seed, float(zoom)
        self.seed_generator = keras.random.SeedGenerator(seed)

    def _moves(self, batch, size, shift, flip, scale):
        offset = keras.random.randint((batch, 1), -shift, shift + 1, seed=self.seed_generator)
        pixels = ops.cast(ops.arange(size), self.compute_dtype)
        source = pixels[None, :]  # output pixel -> (fractional) input pixel
        if scale is not None:
            centre = (size - 1) / 2
            source = (source - centre) / scale + centre
        source = source - ops.cast(offset, self.compute_dtype)
        if flip:
            flipped = keras.random.randint((batch, 1), 0, 2, seed=self.seed_generator)
            source = ops.where(flipped == 1, size - 1 - source, source)
        # bilinear weights; exactly one-hot for whole-pixel sources, zero outside
        return ops.relu(1.0 - ops.abs(source[..., None] - pixels[None, None, :]))

    def call(self, x, training=None):
        if not training:
            return x
        batch = ops.shape(x)[0]
        scale = None
        if self.zoom:
            scale = keras.random.uniform(
                (batch, 1),
                1 - self.zoom,
                1 + self.zoom,
                dtype=self.compute_dtype,
                seed=self.seed_generator,
            )
        rows = self._moves(batch, x.shape[1], self.shift, flip=False, scale=scale)
        cols = self._moves(batch, x.shape[2], self.shift, flip=True, scale=scale)
        x = ops.einsum("bik,bkjc->bijc", rows, x)
        return ops.einsum("bjk,bikc->bijc", cols, x)

    def get_config(self):
        return {**super().get_config(), "shift": self.shift, "seed": self.seed, "zoom": self.zoom}


@keras.saving.register_keras_serializable(package="harness")
class FlipPair(keras.layers.Layer):
    """Test-time flip augmentation, first half: at inference each batch of images is
    followed by its mirror images (batch 2N), which the rest of the model sees as
    ordinary images; :class:`PairMean` at the end averages each image's two
    probability vectors. The identity in training, where random flips already are.

    At batch 1 the net then multiplies 2 rows instead of 1 by each weight matrix; on a
    CPU such products are bound by reading the weights, so the second row comes cheap
    (the batch-1 latencies of a run with ``tta="flip"`` are in its bench record, e.g.
    results/reference/bench/mlp-frontier-tta.json)."""

    def call(self, x, training=None):
        if training:
            return x
        return ops.concatenate([x, ops.flip(x, axis=2)], axis=0)

    def compute_output_shape(self, input_shape):
        return (None, *input_shape[1:])


@keras.saving.register_keras_serializable(package="harness")
class PairMean(keras.layers.Layer):
    """Test-time flip augmentation, second half: the mean of the first and second half
    of the batch (each image's and its mirror image's outputs, see FlipPair)."""

    def call(self, x, training=None):
        if training:
            return x
        return ops.mean(ops.reshape(x, (2, -1, x.shape[-1])), axis=0)

    def compute_output_shape(self, input_shape):
        return (None, *input_shape[1:])


@keras.saving.register_keras_serializable(package="harness")
class ContractLayer(keras.layers.Layer):
    """An imported model's input contract (:mod:`harness.core.contract`) as a layer: raw 0-255
    RGB pixels (N, 32, 32, 3) in, the model's input out (scaled, standardized, channels
    reordered, laid out). The same arithmetic as
    :func:`harness.edge.predict.apply_contract`, in Keras ops, so harness' exports of an
    imported Keras model take raw pixels as its own models do."""

    def __init__(self, contract: dict, **kwargs):
        super().__init__(**kwargs)
        self.contract = dict(contract)

    def call(self, x):
        c = self.contract
        x = ops.cast(x, "float32") * (1.0 if c["input"] == "raw" else 1.0 / 255.0)
        if c.get("mean") is not None:
            x = x - np.asarray(c["mean"], np.float32)
        if c.get("std") is not None:
            x = x / np.asarray(c["std"], np.float32)
        if c["channels"] == "bgr":
            x = ops.flip(x, axis=-1)
        if c["layout"] == "nchw":
            x = ops.transpose(x, (0, 3, 1, 2))
        return x

    def compute_output_shape(self, input_shape):
        n, h, w, c = input_shape
        return (n, c, h, w) if self.contract["layout"] == "nchw" else input_shape

    def get_config(self):
        return {**super().get_config(), "contract": self.contract}


@keras.saving.register_keras_serializable(package="harness")
class FlatPixels(keras.layers.Layer):
    """Flatten with a constant target shape: one reshape op in every exported graph (Keras'
    Flatten becomes SHAPE, STRIDED_SLICE and PACK in TFLite). Used by the lean inference
    graph of :func:`harness.export.convert.fold_input_affine`, never in a trained model."""

    def call(self, x):
        return ops.reshape(x, (-1, int(np.prod(x.shape[1:]))))


@keras.saving.register_keras_serializable(package="harness")
class SmoothedSparseCrossentropy(keras.losses.Loss):
    """Sparse categorical cross-entropy against smoothed targets: (1 - s) one-hot + s / K.
    (Keras' sparse loss has no label smoothing; this keeps integer labels everywhere.)"""

    def __init__(self, label_smoothing=0.1, name="smoothed_sparse_crossentropy", **kwargs):
        super().__init__(name=name, **kwargs)
        self.label_smoothing = float(label_smoothing)

    def call(self, y_true, y_pred):
        labels = ops.cast(ops.reshape(y_true, (-1,)), "int32")
        target = ops.one_hot(labels, ops.shape(y_pred)[-1], dtype=y_pred.dtype)
        return keras.losses.categorical_crossentropy(
            target, y_pred, label_smoothing=self.label_smoothing
        )

    def get_config(self):
        return {**super().get_config(), "label_smoothing": self.label_smoothing}


@keras.saving.register_keras_serializable(package="harness")
class HostInitializer(keras.initializers.Initializer):
    """One of Keras' variance-scaling initializers by name ("he_normal", "lecun_normal",
    "glorot_uniform", ...), drawn with NumPy's global generator (which
    ``keras.utils.set_random_seed`` seeds), or a search trial's own
    (:func:`weights_seeded`). Keras' own draw compiles a JAX program for every new weight
    shape, which each trial of a search pays again at build time; this draws from the same
    distribution with no compilation, on every backend alike."""

    def __init__(self, name="glorot_uniform"):
        keras_init = keras.initializers.get(name)
        if not isinstance(keras_init, keras.initializers.VarianceScaling):
            raise ValueError(f"not a variance-scaling initializer: {name}")
        self.name = name
        self.scale, self.mode, self.distribution = (
            keras_init.scale,
            keras_init.mode,
            keras_init.distribution,
        )

    def __call__(self, shape, dtype=None):
        receptive = int(np.prod(shape[:-2])) if len(shape) > 2 else 1
        fan_in = shape[-2] * receptive if len(shape) > 1 else shape[0]
        fan_out = shape[-1] * receptive
        fans = {"fan_in": fan_in, "fan_out": fan_out, "fan_avg": (fan_in + fan_out) / 2}
        scale = self.scale / max(1.0, fans[self.mode])
        if self.distribution == "uniform":
            limit = np.sqrt(3.0 * scale)
            value = _draws().uniform(-limit, limit, shape)
        elif self.distribution == "truncated_normal":
            # Keras' constant: the standard deviation of a unit normal cut at +-2
            value = _truncated_unit_normal(shape) * np.sqrt(scale) / 0.87962566103423978
        else:
            value = _draws().normal(0.0, np.sqrt(scale), shape)
        return value.astype(keras.backend.standardize_dtype(dtype or "float32"))

    def get_config(self):
        return {"name": self.name}


def _filled_on_host(cls: type, fill: float) -> None:
    """Keras' ``cls`` initializer (Zeros, Ones) returning a NumPy array of ``fill``: the
    same values, without the JAX program ``ops.zeros``/``ops.ones`` compile for every new
    shape. Each trial of a search makes its model's and its optimizer's variables in new
    shapes, and the optimizer's slots are made by Keras, so the class itself is patched
    (once, for every backend alike). Dtypes NumPy lacks (bfloat16) keep Keras' way."""
    keras_call = cls.__call__

    def __call__(self, shape, dtype=None):
        dtype = keras.backend.standardize_dtype(dtype)
        try:
            return np.full(shape, fill, np.dtype(dtype))
        except TypeError:
            return keras_call(self, shape, dtype=dtype)

    cls.__call__ = __call__


_filled_on_host(keras.initializers.Zeros, 0)
_filled_on_host(keras.initializers.Ones, 1)


class _TensorFlowOnceLoaded(LazyModule):
    """Keras' saving asks whether TensorFlow is installed before checking if an object is
    one of its types, and asking imports it: seconds of a JAX run's first checkpoint or
    saved model. No object is a TensorFlow type before TensorFlow is loaded, so here the
    question is whether it is loaded (and installed); the files written are the same."""

    @property
    def available(self):
        return "tensorflow" in sys.modules and super().available


serialization_lib.tf = _TensorFlowOnceLoaded("tensorflow")

_THREAD = threading.local()  # .draws: this thread's generator of initial weights, if set


@contextlib.contextmanager
def weights_seeded(seed: int):
    """Initial weights (and dropout layers' seeds, :func:`dropout_seed`) drawn in this
    block, on this thread, from their own ``seed``, not NumPy's global generator: a search's
    trials built side by side in threads each draw the same whatever the other thread draws
    meanwhile."""
    _THREAD.draws = np.random.RandomState(seed)
    try:
        yield
    finally:
        _THREAD.draws = None


def _draws():
    """The thread's generator inside :func:`weights_seeded`, else NumPy's global one."""
    return getattr(_THREAD, "draws", None) or np.random


def dropout_seed() -> int | None:
    """A dropout layer's seed: drawn from the thread's generator inside
    :func:`weights_seeded`, so a trial's dropout masks are its own too; else None (Keras
    then seeds it from Python's generator, which ``keras.utils.set_random_seed`` seeds)."""
    draws = getattr(_THREAD, "draws", None)
    return None if draws is None else int(draws.randint(1, 2**31 - 1))


def _truncated_unit_normal(shape) -> np.ndarray:
    """Unit normal draws within +-2, redrawing those outside (as Keras' truncated_normal)."""
    value = _draws().standard_normal(shape)
    outside = np.abs(value) > 2
    while outside.any():
        value[outside] = _draws().standard_normal(int(outside.sum()))
        outside = np.abs(value) > 2
    return value


@keras.saving.register_keras_serializable(package="harness")
class RowMajorDense(keras.layers.Dense):
    """``keras.layers.Dense`` whose training products XLA runs on its fast CPU kernels.

    Autodiff writes the kernel's gradient as ``x^T @ g`` and the input's as ``g @ W^T``:
    products with a transposed operand, which XLA's CPU backend leaves to a generic kernel
    because its YNNPACK kernels take only row-major operands (``IsDotSupportedByYnn`` in
    XLA's ``ynn_support.cc``). On JAX on a CPU this layer transposes ``g`` and ``W``
    first and computes the kernel's gradient as ``(g^T @ x)^T``: the same sums, in
    row-major products; its forward pass is Dense's product. With ``products="bfloat16"``
    the three products of a training step take bfloat16 operands and sum in float32
    (inference stays float32). Elsewhere (TensorFlow, a GPU) it is Dense; its weights are
    always Dense's."""

    def __init__(self, units, products="float32", **kwargs):
        super().__init__(units, **kwargs)
        if products not in PRODUCTS:
            raise ValueError(f"products={products!r}: must be one of {', '.join(PRODUCTS)}")
        self.products = products

    def call(self, inputs, training=None):
        if not (
            _row_major_backward()
            and len(inputs.shape) == 2
            and self.quantization_mode is None
            and not self.lora_enabled
        ):
            return super().call(inputs, training=training)
        products = self.products if training else "float32"
        x = _row_major_matmul(products)(inputs, ops.convert_to_tensor(self.kernel))
        if self.bias is not None:
            x = ops.add(x, self.bias)
        return x if self.activation is None else self.activation(x)

    def get_config(self):
        return {**super().get_config(), "products": self.products}


@functools.cache  # a process's Keras backend and JAX platform never change
def _row_major_backward() -> bool:
    if keras.backend.backend() != "jax":
        return False
    import jax

    return jax.default_backend() == "cpu"


@functools.cache  # made once per precision, on first use (it needs JAX)
def _row_major_matmul(products: str = "float32"):
    """``x @ w`` whose backward pass transposes ``g`` and ``w`` explicitly; XLA would fold
    a plain transpose back into the product, so in float32 each is behind an optimization
    barrier. In bfloat16, the operands are rounded (sums stay float32) and the transposes
    are gathers (:func:`_transposed`)."""
    import jax
    import jax.numpy as jnp

    barrier = jax.lax.optimization_barrier
    low = jnp.bfloat16 if products == "bfloat16" else jnp.float32
    # the operands' transposes, and the kernel gradient's back to the kernel's shape
    flip, unflip = (
        (_transposed, _transposed)
        if products == "bfloat16"
        else (lambda a: barrier(a.T), lambda a: barrier(a).T)
    )

    def forward(x, w):
        x, w = x.astype(low), w.astype(low)
        return jnp.dot(x, w, preferred_element_type=jnp.float32), (x, w)

    @jax.custom_vjp
    def matmul(x, w):
        return forward(x, w)[0]

    def backward(saved, g):
        x, w = saved
        g = g.astype(low)
        product = functools.partial(jnp.dot, preferred_element_type=jnp.float32)
        return product(g, flip(w)), unflip(product(flip(g), x))

    matmul.defvjp(forward, backward)
    return matmul


def _transposed(a):
    """``a.T``, written out row-major by a gather. XLA turns a transpose (even behind a
    barrier) into a column-major view, and a bfloat16 product with a column-major operand
    it computes in float32, off the CPU's bfloat16 units."""
    import jax.numpy as jnp

    rows, cols = a.shape
    index = jnp.arange(rows)[None, :] * cols + jnp.arange(cols)[:, None]
    return a.reshape(-1)[index.reshape(-1)].reshape(cols, rows)


# What load_keras_model passes as custom_objects: every class above, by its class name.
CUSTOM_OBJECTS = {
    cls.__name__: cls
    for cls in (
        RandomFlipShift,
        FlipPair,
        PairMean,
        FlatPixels,
        ContractLayer,
        SmoothedSparseCrossentropy,
        HostInitializer,
        RowMajorDense,
    )
}
