import keras
import numpy as np
import pytest

from harness.core.config import resolve
from harness.core.records import RunDir
from harness.data import cifar as data
from harness.train.fit import train
from harness.train.sparsity import prune_units, sparsify


@pytest.fixture(scope="module")
def parents(tmp_path_factory, archive):
    results = tmp_path_factory.mktemp("results")
    ds = data.load(archive, home=results / "home")
    for preset, name, extra in (
        ("selu", "p-selu", {}),
        ("bn-elu", "p-bn", {}),
        (
            "bn-elu",
            "p-bneck",
            dict(
                bottleneck=8, input_bn="stats", pca=16, augment="flip-shift", zoom=0.2, tta="flip"
            ),
        ),
    ):
        cfg = resolve(
            preset,
            overrides=dict(
                layers=2, units=32, epochs=2, batch_size=64, l1=1e-5, name=name, **extra
            ),
        )
        train(cfg, ds, results, verbose=0)
    return results, ds


def test_sparsify_reaches_the_target(parents):
    results, ds = parents
    m = sparsify(RunDir.named(results, "p-selu"), ds, results, "s80", target=0.8)
    assert m["sparsity"] == pytest.approx(0.8, abs=0.01)
    assert m["parent"] == "p-selu" and m["variant"] == "sparsified"
    assert m["device"]["kind"] == "cpu"  # where it was made, as every run record says
    assert [l["shape"] for l in m["sparsity_per_layer"]] == [[3072, 32], [32, 32], [32, 10]]
    model = keras.saving.load_model(RunDir.named(results, "s80").model)
    kernels = [np.asarray(l.kernel) for l in model.layers if isinstance(l, keras.layers.Dense)]
    zeros = sum((k == 0).sum() for k in kernels) / sum(k.size for k in kernels)
    assert zeros == pytest.approx(m["sparsity"])
    # the recorded accuracy is the saved model's; the largest fifth of the weights keep most
    # of what the parent knew (0.62 measured, the parent 0.69, chance 0.10)
    probs = model.predict(ds.x_test.astype(np.float32), verbose=0)
    assert m["test"]["accuracy"] == pytest.approx(float((probs.argmax(1) == ds.y_test).mean()))
    assert m["test"]["accuracy"] > 0.4
    with pytest.raises(ValueError):
        sparsify(RunDir.named(results, "p-selu"), ds, results, "x")


@pytest.mark.parametrize("parent", ["p-selu", "p-bn"])
def test_structured_pruning_shrinks_layers_and_keeps_outputs_sane(parents, parent):
    results, ds = parents
    m = prune_units(
        RunDir.named(results, parent),
        ds,
        results,
        f"{parent}-half",
        keep=0.5,
        epochs=2,
        teacher=parent,
        verbose=0,
    )
    assert m["status"] == "completed" and m["kept_units"] == 16 and m["parent"] == parent
    assert m["teacher"]["run"] == parent  # fine-tuned distilling from the parent
    model = keras.saving.load_model(RunDir.named(results, f"{parent}-half").model)
    dense = [l for l in model.layers if isinstance(l, keras.layers.Dense)]
    assert [tuple(l.kernel.shape) for l in dense] == [(3072, 16), (16, 16), (16, 10)]
    probs = model.predict(ds.x_test.astype(np.float32), verbose=0)
    np.testing.assert_allclose(probs.sum(axis=1), 1, rtol=1e-4)
    assert m["test"]["accuracy"] > 0.3  # far above chance (0.1) on the synthetic classes


@pytest.mark.parametrize("parent", ["p-selu", "p-bn"])
def test_keeping_every_unit_reproduces_the_parent_exactly(parents, parent):
    from harness.core.config import from_dict
    from harness.train.models import build_model
    from harness.train.sparsity import shrink_weights

    results, ds = parents
    run = RunDir.named(results, parent)
    old = keras.saving.load_model(run.model)
    cfg = from_dict(run.read_config())
    new = build_model(cfg, *data.split(ds).norm_stats())
    keeps = [np.arange(cfg.units)] * cfg.layers
    new.set_weights(shrink_weights(old, new, keeps))
    x = ds.x_test[:32].astype(np.float32)
    np.testing.assert_allclose(new.predict(x, verbose=0), old.predict(x, verbose=0), atol=1e-6)


def test_structured_pruning_keeps_the_pca_projection_and_linear_bottleneck_whole(parents):
    results, ds = parents
    m = prune_units(
        RunDir.named(results, "p-bneck"),
        ds,
        results,
        "p-bneck-half",
        keep=0.25,
        epochs=1,
        verbose=0,
    )
    assert m["status"] == "completed" and m["kept_units"] == 8
    model = keras.saving.load_model(RunDir.named(results, "p-bneck-half").model)
    dense = [l for l in model.layers if isinstance(l, keras.layers.Dense)]
    assert [tuple(l.kernel.shape) for l in dense] == [(3072, 16), (16, 8), (8, 8), (8, 8), (8, 10)]
    assert dense[1].name == "bottleneck" and dense[1].activation is keras.activations.linear
    parent = keras.saving.load_model(RunDir.named(results, "p-bneck").model)
    assert dense[0].name == "pca" and not dense[0].trainable
    np.testing.assert_array_equal(
        np.asarray(dense[0].kernel),  # frozen through fine-tuning
        np.asarray(parent.get_layer("pca").kernel),
    )


@pytest.mark.parametrize("parent", ["p-selu", "p-bn", "p-bneck"])
def test_tfmot_bridge_mirrors_exactly_and_prunes_to_the_target(parents, parent):
    from harness.train.sparsity import _mirror_in_tf_keras, prune_magnitude

    results, ds = parents
    run = RunDir.named(results, parent)
    model = keras.saving.load_model(run.model)
    x = ds.x_test[:16].astype(np.float32)
    mirror = _mirror_in_tf_keras(model)
    expected = mirror.predict(x, verbose=0)
    if parent == "p-bneck":  # test-time flips: the mirror is the net inside them
        expected = (expected + mirror.predict(x[:, :, ::-1], verbose=0)) / 2
    np.testing.assert_allclose(expected, model.predict(x, verbose=0), atol=1e-5)
    m = prune_magnitude(run, ds, results, f"{parent}-p80", sparsity=0.8, epochs=2, verbose=0)
    assert m["sparsity"] == pytest.approx(0.8, abs=0.01)
    assert all(l["sparsity"] == pytest.approx(0.8, abs=0.02) for l in m["sparsity_per_layer"])
    pruned = keras.saving.load_model(RunDir.named(results, f"{parent}-p80").model)
    if parent == "p-bneck":  # the frozen PCA projection is neither pruned nor counted
        assert "pca" not in [l["layer"] for l in m["sparsity_per_layer"]]
        np.testing.assert_array_equal(
            np.asarray(pruned.get_layer("pca").kernel), np.asarray(model.get_layer("pca").kernel)
        )
    probs = pruned.predict(x, verbose=0)
    np.testing.assert_allclose(probs.sum(axis=1), 1, rtol=1e-4)
    assert m["parent"] == parent and m["variant"] == "magnitude-pruned"


def test_saliency_follows_batchnorm_scale_and_outgoing_weights():
    from harness.train.sparsity import unit_saliency

    model = keras.Sequential(
        [
            keras.Input((4,)),
            keras.layers.Dense(3, use_bias=False),
            keras.layers.BatchNormalization(),
            keras.layers.Dense(2),
            keras.layers.Dense(2),
        ]
    )
    model.layers[0].set_weights([np.full((4, 3), 100.0)])  # incoming norm ignored after BN
    bn = model.layers[1]
    bn.set_weights([np.array([1.0, 0.01, 2.0]), *bn.get_weights()[1:]])
    model.layers[2].set_weights([np.array([[1.0, 0], [1, 0], [0, 0.1]]), np.zeros(2)])
    model.layers[3].set_weights([np.array([[3.0, 4], [0, 0]]), np.zeros(2)])
    first, second = unit_saliency(model)
    np.testing.assert_allclose(first, [1.0, 0.01, 0.2], rtol=1e-6)  # |gamma| x outgoing
    # no BatchNorm: incoming norm x outgoing norm
    np.testing.assert_allclose(second, [np.sqrt(2) * 5, 0.1 * 0], rtol=1e-6)


def test_sparsity_counts_learned_kernels_not_the_frozen_pca_projection():
    from harness.export import bench
    from harness.train.models import build_model
    from harness.train.sparsity import kernel_sparsity

    cfg = resolve("selu", overrides=dict(layers=1, units=16, pca=8))
    model = build_model(cfg, np.zeros(3), np.ones(3), components=np.zeros((3072, 8)))
    pca, hidden, out = (l for l in model.layers if isinstance(l, keras.layers.Dense))
    assert pca.name == "pca" and not pca.trainable  # all zeros, and data: not counted
    kernel = np.ones((8, 16), np.float32)
    kernel[:, :4] = 0  # a quarter of the hidden kernel
    hidden.kernel.assign(kernel)
    out.kernel.assign(np.ones((16, 10), np.float32))
    overall, per_layer = kernel_sparsity(model)
    assert [p["layer"] for p in per_layer] == [hidden.name, "probabilities"]
    assert [p["sparsity"] for p in per_layer] == [0.25, 0.0]
    assert overall == pytest.approx(32 / (8 * 16 + 16 * 10))
    assert bench.kernel_sparsity is kernel_sparsity  # bench records use the same figure
