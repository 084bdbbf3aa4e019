import json
import sys
import zipfile

import keras
import numpy as np
import pytest

from harness.core.config import resolve
from harness.train.models import build_model, count_params

MEAN, VAR = np.array([125.3, 123.0, 113.9]), np.array([62.99, 62.09, 66.70]) ** 2


def dense_layers(model):
    return [l for l in model.layers if isinstance(l, keras.layers.Dense)]


def test_selu_is_the_studys_network():
    model = build_model(resolve("selu"), MEAN, VAR)
    kinds = [type(l).__name__ for l in model.layers]
    # the layer reading the pixels computes its gradients in row-major products on JAX
    assert kinds == ["BatchNormalization", "Flatten", "RowMajorDense"] + ["Dense"] * 5
    assert model.layers[0].name == "standardize" and not model.layers[0].trainable
    hidden = dense_layers(model)[:-1]
    assert all(l.units == 100 and l.activation.__name__ == "selu" for l in hidden)
    assert all(l.kernel_initializer.name == "lecun_normal" for l in hidden)
    assert all(l.kernel_constraint is None and l.kernel_regularizer is None for l in hidden)
    assert dense_layers(model)[-1].activation.__name__ == "softmax"
    assert count_params(model)["trainable"] == 348_710


def test_bn_elu_is_the_studys_network():
    model = build_model(resolve("bn-elu"), MEAN, VAR)
    kinds = [type(l).__name__ for l in model.layers]
    assert kinds[:3] == ["BatchNormalization", "Flatten", "BatchNormalization"]
    assert kinds[3:-1] == (
        ["RowMajorDense", "BatchNormalization", "Activation"]
        + ["Dense", "BatchNormalization", "Activation"] * 4
    )
    hidden = dense_layers(model)[:-1]
    assert all(l.kernel_initializer.name == "he_normal" for l in hidden)
    assert all(
        isinstance(l.kernel_constraint, keras.constraints.MaxNorm)
        and l.kernel_constraint.max_value == 1.0
        for l in hidden
    )
    assert all(l.activation.__name__ == "linear" for l in hidden)
    acts = [l for l in model.layers if isinstance(l, keras.layers.Activation)]
    assert all(a.activation.__name__ == "elu" for a in acts)
    # 3072*2 BN + 5 Dense + 5*200 BN (gamma, beta) + output = trainable
    assert count_params(model)["trainable"] == 6144 + 348_710 + 5 * 200


def test_the_fast_recipe_reads_raw_pixels_into_batch_statistics_and_bfloat16_products():
    """bn-elu-fast: no standardization before the input BatchNorm of batch statistics (it
    would change nothing that BatchNorm computes), and every hidden layer a RowMajorDense
    with bfloat16 products; a float32 net keeps plain Dense layers after the first."""
    from harness.train.layers import RowMajorDense

    cfg = resolve("bn-elu-fast", overrides={"layers": 3, "units": 32})
    model = build_model(cfg, MEAN, VAR)
    kinds = [type(l).__name__ for l in model.layers]
    assert kinds[:2] == ["Flatten", "BatchNormalization"]
    assert "standardize" not in [l.name for l in model.layers]
    assert not model.layers[1].center and not model.layers[1].scale
    hidden = dense_layers(model)[:-1]
    assert len(hidden) == 3 and all(type(l) is RowMajorDense for l in hidden)
    assert all(l.products == "bfloat16" for l in hidden)
    assert type(dense_layers(model)[-1]) is keras.layers.Dense
    plain = build_model(resolve("bn-elu-fast", overrides={"products": "float32"}), MEAN, VAR)
    assert [type(l) for l in dense_layers(plain)[1:]] == [keras.layers.Dense] * 5
    assert dense_layers(plain)[0].products == "float32"
    # anything between the pixels and that BatchNorm keeps the standardization
    for between in ({"pca": 64}, {"pool": 2}, {"augment": "flip"}, {"input_bn": "stats"}):
        kept = build_model(resolve("bn-elu-fast", overrides=between), MEAN, VAR)
        assert kept.layers[0].name == "standardize", between


@pytest.mark.parametrize(
    "activation,init",
    [("relu", "he_normal"), ("gelu", "he_normal"), ("elu", "he_normal"), ("selu", "lecun_normal")],
)
def test_each_activation_gets_its_initializer(activation, init):
    model = build_model(resolve("selu", overrides={"activation": activation}), MEAN, VAR)
    assert all(l.kernel_initializer.name == init for l in dense_layers(model)[:-1])


@pytest.mark.parametrize("name", ["he_normal", "lecun_normal", "glorot_uniform", "glorot_normal"])
def test_host_initializer_draws_what_keras_draws(name):
    """The same distribution as Keras' initializer of that name (spread, bound, shape),
    reproducible from the seed keras.utils.set_random_seed sets."""
    from harness.train.layers import HostInitializer

    shape = (300, 200)
    keras.utils.set_random_seed(3)
    ours = HostInitializer(name)(shape)
    keras.utils.set_random_seed(3)
    again = HostInitializer(name)(shape)
    theirs = np.asarray(keras.initializers.get(name)(shape))
    assert ours.shape == shape and ours.dtype == np.float32
    np.testing.assert_array_equal(ours, again)
    assert ours.std() == pytest.approx(theirs.std(), rel=0.03)
    assert abs(ours.mean()) < 0.1 * ours.std()
    assert np.abs(ours).max() <= np.abs(theirs).max() * 1.05
    with pytest.raises(ValueError, match="variance-scaling"):
        HostInitializer("zeros")


def test_zeros_and_ones_are_filled_on_the_host():
    """Keras' Zeros and Ones (biases, normalization, optimizer slots) come as NumPy arrays
    of Keras' values and dtype; a dtype NumPy lacks keeps Keras' own fill."""
    import harness.train.layers  # noqa: F401  (patches the two initializers)

    for cls, fill in ((keras.initializers.Zeros, 0.0), (keras.initializers.Ones, 1.0)):
        value = cls()((4, 3))
        assert isinstance(value, np.ndarray) and value.dtype == np.float32
        np.testing.assert_array_equal(value, np.full((4, 3), fill, np.float32))
        assert cls()((2,), dtype="int32").dtype == np.int32
        low = cls()((2,), dtype="bfloat16")
        assert keras.backend.standardize_dtype(low.dtype) == "bfloat16"
        assert float(np.asarray(low, np.float32)[0]) == fill
    optimizer = keras.optimizers.Nadam()
    optimizer.build([keras.Variable(np.ones((3, 2), np.float32))])
    slots = [v for v in optimizer.variables if tuple(v.shape) == (3, 2)]
    assert len(slots) == 2 and all(not np.asarray(v).any() for v in slots)


def test_saving_asks_for_tensorflow_only_once_it_is_loaded(monkeypatch, tmp_path):
    """Keras' saving checks objects against TensorFlow's types only when TensorFlow is
    loaded (asking whether it is installed would import it, seconds of a JAX run's first
    save); the saved model is the same."""
    from keras.src.saving import serialization_lib

    import harness.train.layers  # noqa: F401  (sets serialization_lib.tf)

    model = build_model(resolve("bn-elu"), MEAN, VAR)
    model.save(tmp_path / "loaded.keras")
    assert serialization_lib.tf.available  # this suite runs Keras on TensorFlow
    monkeypatch.delitem(sys.modules, "tensorflow")
    assert not serialization_lib.tf.available
    model.save(tmp_path / "unloaded.keras")
    monkeypatch.undo()
    configs = [
        json.loads(zipfile.ZipFile(tmp_path / f"{n}.keras").read("config.json"))
        for n in ("loaded", "unloaded")
    ]
    assert configs[0] == configs[1] and "tensorflow" in sys.modules


def test_leaky_relu_depth_width_dropout_and_penalties():
    cfg = resolve(
        "selu",
        overrides=dict(activation="leaky-relu", layers=3, units=64, dropout=0.2, l1=1e-5, l2=1e-4),
    )
    model = build_model(cfg, MEAN, VAR)
    hidden = dense_layers(model)[:-1]
    assert len(hidden) == 3 and all(l.units == 64 for l in hidden)
    assert sum(isinstance(l, keras.layers.LeakyReLU) for l in model.layers) == 3
    assert sum(type(l) is keras.layers.Dropout for l in model.layers) == 3
    reg = hidden[0].kernel_regularizer
    assert reg.l1 == pytest.approx(1e-5) and reg.l2 == pytest.approx(1e-4)


def test_selu_dropout_is_alpha_dropout():
    model = build_model(resolve("selu", overrides={"dropout": 0.1}), MEAN, VAR)
    assert sum(isinstance(l, keras.layers.AlphaDropout) for l in model.layers) == 5


def test_model_standardizes_raw_pixels_itself():
    model = build_model(resolve("selu"), MEAN, VAR)
    x = np.random.default_rng(0).integers(0, 256, size=(4, 32, 32, 3)).astype(np.float32)
    out = np.asarray(model.layers[0](x))
    np.testing.assert_allclose(out, (x - MEAN) / np.sqrt(VAR), rtol=1e-4, atol=1e-4)
    probs = np.asarray(model(x))
    assert probs.shape == (4, 10)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)
