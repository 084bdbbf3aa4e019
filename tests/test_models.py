import keras
import numpy as np
import pytest

from harness.config import resolve
from harness.models import build_model, count_params

MEAN, VAR = np.array([125.3, 123.0, 113.9]), np.array([62.99, 62.09, 66.70]) ** 2


def dense_layers(model):
    return [l for l in model.layers if isinstance(l, keras.layers.Dense)]


def test_selu_is_the_studys_network():
    model = build_model(resolve("selu"), MEAN, VAR)
    kinds = [type(l).__name__ for l in model.layers]
    assert kinds == ["BatchNormalization", "Flatten"] + ["Dense"] * 6
    assert model.layers[0].name == "standardize" and not model.layers[0].trainable
    hidden = dense_layers(model)[:-1]
    assert all(l.units == 100 and l.activation.__name__ == "selu" for l in hidden)
    assert all(isinstance(l.kernel_initializer, keras.initializers.LecunNormal) for l in hidden)
    assert all(l.kernel_constraint is None and l.kernel_regularizer is None for l in hidden)
    assert dense_layers(model)[-1].activation.__name__ == "softmax"
    assert count_params(model)["trainable"] == 348_710


def test_bn_elu_is_the_studys_network():
    model = build_model(resolve("bn-elu"), MEAN, VAR)
    kinds = [type(l).__name__ for l in model.layers]
    assert kinds[:3] == ["BatchNormalization", "Flatten", "BatchNormalization"]
    assert kinds[3:-1] == ["Dense", "BatchNormalization", "Activation"] * 5
    hidden = dense_layers(model)[:-1]
    assert all(isinstance(l.kernel_initializer, keras.initializers.HeNormal) for l in hidden)
    assert all(isinstance(l.kernel_constraint, keras.constraints.MaxNorm)
               and l.kernel_constraint.max_value == 1.0 for l in hidden)
    assert all(l.activation.__name__ == "linear" for l in hidden)
    acts = [l for l in model.layers if isinstance(l, keras.layers.Activation)]
    assert all(a.activation.__name__ == "elu" for a in acts)
    # 3072*2 BN + 5 Dense + 5*200 BN (gamma, beta) + output = trainable
    assert count_params(model)["trainable"] == 6144 + 348_710 + 5 * 200


@pytest.mark.parametrize("activation,init", [("relu", "HeNormal"), ("gelu", "HeNormal"),
                                             ("elu", "HeNormal"), ("selu", "LecunNormal")])
def test_each_activation_gets_its_initializer(activation, init):
    model = build_model(resolve("selu", overrides={"activation": activation}), MEAN, VAR)
    assert all(type(l.kernel_initializer).__name__ == init for l in dense_layers(model)[:-1])


def test_leaky_relu_depth_width_dropout_and_penalties():
    cfg = resolve("selu", overrides=dict(activation="leaky-relu", layers=3, units=64,
                                         dropout=0.2, l1=1e-5, l2=1e-4))
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
