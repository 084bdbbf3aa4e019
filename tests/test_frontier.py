"""The frontier building blocks: augmentation, smoothed loss, optimizers, the CNN reference."""

import dataclasses
import itertools

import keras
import numpy as np
import pytest

from harness.core.config import ConfigError, resolve
from harness.core.records import RunDir
from harness.data import cifar as data
from harness.train.fit import evaluate_run, train
from harness.train.models import build_model, custom_objects, load_keras_model


def _moved(image: np.ndarray, flip: bool, dy: int, dx: int) -> np.ndarray:
    """``image`` flipped left-right (if asked), then translated by (dy, dx) with zero fill."""
    src = image[:, ::-1] if flip else image
    out = np.zeros_like(src)
    h, w = src.shape[:2]
    out[max(dy, 0) : h + min(dy, 0), max(dx, 0) : w + min(dx, 0)] = src[
        max(-dy, 0) : h - max(dy, 0), max(-dx, 0) : w - max(dx, 0)
    ]
    return out


def test_augmentation_is_a_flip_and_a_shift_when_training_and_identity_otherwise():
    layer = custom_objects()["RandomFlipShift"](shift=2, seed=3)
    x = np.random.default_rng(0).normal(size=(64, 32, 32, 3)).astype("float32")
    np.testing.assert_array_equal(np.asarray(layer(x, training=False)), x)
    y = np.asarray(layer(x, training=True))
    seen = set()
    for image, out in zip(x, y):
        matches = [
            m
            for m in itertools.product((False, True), range(-2, 3), range(-2, 3))
            if np.allclose(_moved(image, *m), out, atol=1e-5)
        ]
        assert len(matches) == 1, "each output must be exactly one flip/shift of its input"
        seen.add(matches[0])
    assert len(seen) > 10  # the moves are random, not one fixed move
    assert any(m[0] for m in seen) and not all(m[0] for m in seen)


def test_zoom_rescales_about_the_centre_within_its_range():
    # A ramp along the columns stays a ramp under bilinear scaling: its slope is 1/scale
    # (negated when flipped) and the centre stays in place.
    zoom = 0.25
    layer = custom_objects()["RandomFlipShift"](shift=0, seed=5, zoom=zoom)
    ramp = np.broadcast_to(np.arange(32, dtype="float32")[None, :, None], (32, 32, 3))
    x = np.repeat(ramp[None], 64, axis=0)
    y = np.asarray(layer(x, training=True))
    inner = y[:, 16, 8:24, 0]  # inside the image for every scale in range
    slopes = np.array([np.polyfit(np.arange(8, 24), row, 1)[0] for row in inner])
    assert np.all(np.abs(slopes) >= 1 / (1 + zoom) - 1e-4)
    assert np.all(np.abs(slopes) <= 1 / (1 - zoom) + 1e-4)
    np.testing.assert_allclose((inner[:, 7] + inner[:, 8]) / 2, 15.5, atol=1e-4)  # centre
    assert np.ptp(np.abs(slopes)) > 0.1 and (slopes < 0).any() and (slopes > 0).any()
    np.testing.assert_array_equal(np.asarray(layer(x, training=False)), x)


def test_pca_layer_projects_onto_the_training_images_principal_directions(tmp_path, archive):
    splits = data.split(data.load(archive))
    k = 12
    v = splits.principal_components(k)
    assert v.shape == (32 * 32 * 3, k)
    np.testing.assert_allclose(v.T @ v, np.eye(k), atol=1e-4)  # orthonormal
    mean, variance = splits.norm_stats()
    x = (splits.train.x.reshape(len(splits.train), -1, 3) - mean) / np.sqrt(variance)
    x = x.reshape(len(splits.train), -1)
    spread = (x - x.mean(axis=0)) @ v
    assert np.all(np.diff(spread.var(axis=0)) <= 1e-3)  # largest variance first
    # no direction orthogonal to the first component carries more variance than it does
    other = np.linalg.qr(np.random.default_rng(0).normal(size=(x.shape[1], 20)))[0]
    other -= v[:, :1] @ (v[:, :1].T @ other)
    other /= np.linalg.norm(other, axis=0)
    assert spread[:, 0].var() >= ((x - x.mean(axis=0)) @ other).var(axis=0).max()
    cfg = dataclasses.replace(
        resolve("mlp-frontier", overrides={"layers": 1, "units": 8, "pca": k}), backend=None
    )
    model = build_model(cfg, mean, variance, components=v)
    layer = model.get_layer("pca")
    assert not layer.trainable and not layer.use_bias
    np.testing.assert_array_equal(np.asarray(layer.kernel), v)
    assert (
        model.count_params() - sum(int(np.prod(w.shape)) for w in model.trainable_weights) >= v.size
    )  # the projection is not trained

    # with pool 2, the directions of the 16 x 16 block means, as the model's pooling sees them
    pooled = splits.principal_components(k, pool=2)
    assert pooled.shape == (16 * 16 * 3, k)
    np.testing.assert_allclose(pooled.T @ pooled, np.eye(k), atol=1e-4)
    blocks = x.reshape(len(x), 16, 2, 16, 2, 3).mean(axis=(2, 4)).reshape(len(x), -1)
    spread = (blocks - blocks.mean(axis=0)) @ pooled
    assert np.all(np.diff(spread.var(axis=0)) <= 1e-3)
    model = build_model(dataclasses.replace(cfg, pool=2), mean, variance, components=pooled)
    assert model.get_layer("pool").pool_size == (2, 2)
    np.testing.assert_array_equal(np.asarray(model.get_layer("pca").kernel), pooled)

    # fewer images than pixels (an SVD of the images) against the pixels' covariance
    cov = np.linalg.eigh(np.cov(blocks, rowvar=False))[1][:, ::-1][:, :k]
    np.testing.assert_allclose(np.abs(np.sum(cov * pooled, axis=0)), 1, atol=1e-4)
    wide = splits.principal_components(len(x) + 5, pool=2)  # past the images' own directions
    np.testing.assert_allclose(wide.T @ wide, np.eye(len(x) + 5), atol=1e-4)
    np.testing.assert_allclose(np.abs(wide[:, :k]), np.abs(pooled), atol=1e-5)
    coarse = splits.principal_components(k, pool=4)  # more images than pixels: the covariance
    blocks = x.reshape(len(x), 8, 4, 8, 4, 3).mean(axis=(2, 4)).reshape(len(x), -1)
    cov = np.linalg.eigh(np.cov(blocks, rowvar=False))[1][:, ::-1][:, :k]
    np.testing.assert_allclose(np.abs(np.sum(cov * coarse, axis=0)), 1, atol=1e-4)


def test_smoothed_loss_matches_its_definition():
    loss = custom_objects()["SmoothedSparseCrossentropy"](0.1)
    probs = np.array([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]], "float32")
    labels = np.array([0, 1])
    target = np.full((2, 3), 0.1 / 3) + 0.9 * np.eye(3)[labels]
    expected = -(target * np.log(probs)).sum(axis=1).mean()
    assert float(loss(labels, probs)) == pytest.approx(expected, rel=1e-5)


def test_resnet8_has_the_mlperf_tiny_shape():
    cfg = resolve("resnet8")
    model = build_model(cfg, np.zeros(3), np.ones(3))
    assert model.output_shape == (None, 10)
    assert 77_000 < model.count_params() < 80_000  # MLPerf Tiny: about 78k parameters
    assert sum(isinstance(layer, keras.layers.Conv2D) for layer in model.layers) == 9


@pytest.mark.parametrize(
    "key,value",
    [
        ("optimizer", "sgd"),
        ("augment", "rotate"),
        ("label_smoothing", 1.0),
        ("weight_decay", -0.1),
        ("arch", "vit"),
        ("zoom", 1.0),
        ("input_bn", "layer"),
        ("bottleneck", -1),
        ("pca", 3073),
        ("tta", "rotate"),
    ],
)
def test_frontier_settings_are_checked(key, value):
    with pytest.raises(ConfigError, match=key):
        resolve("mlp-frontier", overrides={key: value})


def test_input_bn_stats_learns_no_scale_or_offset_on_the_pixels():
    """input_bn="stats" drops only the input BN's gamma and beta (2 x 3,072 weights); it
    still standardizes each pixel with its batch statistics when training."""
    stats = build_model(resolve("bn-elu", overrides={"input_bn": "stats"}), np.zeros(3), np.ones(3))
    affine = build_model(resolve("bn-elu"), np.zeros(3), np.ones(3))
    first_bn = [
        layer for layer in stats.layers if isinstance(layer, keras.layers.BatchNormalization)
    ][1]
    assert not first_bn.trainable_weights and len(first_bn.non_trainable_weights) == 2
    counts = [sum(int(np.prod(w.shape)) for w in m.trainable_weights) for m in (stats, affine)]
    assert counts[1] - counts[0] == 2 * 32 * 32 * 3
    x = np.random.default_rng(0).normal(3, 2, size=(64, 32, 32, 3)).astype("float32")
    h = keras.layers.Flatten()(x)
    out = np.asarray(first_bn(h, training=True))
    np.testing.assert_allclose(out.mean(axis=0), 0, atol=1e-4)
    np.testing.assert_allclose(out.std(axis=0), 1, atol=1e-2)


@pytest.mark.parametrize(
    "preset,overrides",
    [
        # each setting in one of these (the preset's own: PCA 512, mixup 0.8, flips at test)
        ("mlp-frontier", dict(layers=1, units=32, optimizer="adamw", mixup=0.0, tta="none")),
        (
            "mlp-frontier",
            dict(layers=1, units=32, optimizer="lion", lr=1e-4, augment="flip", mixup=0.4),
        ),
        ("mlp-frontier", dict(layers=1, units=32, input_bn="affine", bottleneck=8)),
        ("mlp-frontier", dict(layers=1, units=32, pca=24)),
        ("resnet8", dict()),
    ],
)
def test_frontier_presets_train_save_and_reload(tmp_path, archive, preset, overrides):
    ds = data.load(archive)
    cfg = resolve(
        preset,
        overrides={**overrides, "epochs": 2, "warmup_epochs": 1, "batch_size": 64, "name": "f"},
    )
    cfg = dataclasses.replace(cfg, backend=None)  # whatever backend the tests run on
    metrics = train(cfg, ds, tmp_path / "results", verbose=0)
    assert metrics["status"] == "completed" and metrics["epochs_run"] == 2
    model = load_keras_model(RunDir.named(tmp_path / "results", "f").model)
    test = data.split(ds).test
    probs = np.asarray(model.predict(test.x, verbose=0))
    assert float((probs.argmax(1) == test.y).mean()) == pytest.approx(metrics["test"]["accuracy"])
    np.testing.assert_allclose(probs.sum(axis=1), 1, rtol=1e-5)
    if cfg.tta != "none":  # the same weights without the test-time flips, recorded beside
        plain = build_model(dataclasses.replace(cfg, tta="none"), np.zeros(3), np.ones(3))
        plain.set_weights(model.get_weights())
        probs = np.asarray(plain.predict(test.x, verbose=0))
        assert float((probs.argmax(1) == test.y).mean()) == pytest.approx(
            metrics["without_tta"]["test"]["accuracy"]
        )
        again = evaluate_run(RunDir.named(tmp_path / "results", "f"), ds)  # harness evaluate
        assert again["without_tta"]["test"] == pytest.approx(metrics["without_tta"]["test"])
    else:
        assert "without_tta" not in metrics


@pytest.mark.parametrize("tta", ["none", "flip"])
def test_augmented_model_exports_without_its_augmentation(tmp_path, archive, tta):
    """The augmentation layer is the identity at inference: the ONNX file matches Keras.
    Test-time flips are part of the inference graph: ONNX and TFLite carry them."""
    from harness.export.convert import export_run

    ds = data.load(archive)
    cfg = dataclasses.replace(
        resolve(
            "mlp-frontier",
            overrides={
                "layers": 1,
                "units": 16,
                "pca": 24,
                "bottleneck": 8,
                "epochs": 1,
                "warmup_epochs": 0,
                "batch_size": 64,
                "tta": tta,
                "name": "aug",
            },
        ),
        backend=None,
    )
    train(cfg, ds, tmp_path / "results", verbose=0)
    formats = ("onnx", "tflite") if tta == "flip" else ("onnx",)
    records = export_run(RunDir.named(tmp_path / "results", "aug"), ds, formats, ("float32",))
    assert len(records) == len(formats)
    for record in records:
        assert record["max_abs_diff"] < 1e-4 and not record["flagged"], record


@pytest.mark.parametrize("arch", ["batchnorm", "resnet8"])
def test_flip_tta_averages_each_image_with_its_mirror_image(arch):
    """tta="flip": at inference the model's output is the mean of the same weights' outputs
    for the image and for its mirror image; in training it is the plain model."""
    rng = np.random.default_rng(0)
    overrides = dict(layers=1, units=16, pca=24) if arch == "batchnorm" else {}
    preset = "mlp-frontier" if arch == "batchnorm" else "resnet8"
    stats = (np.array([125.0, 122.0, 113.0]), np.array([3900.0, 3800.0, 4400.0]))
    components = np.linalg.qr(rng.normal(size=(3072, 24)))[0] if arch == "batchnorm" else None
    plain = build_model(
        resolve(preset, overrides={**overrides, "augment": "none", "tta": "none"}),
        *stats,
        components,
    )
    tta = build_model(
        resolve(preset, overrides={**overrides, "augment": "none", "tta": "flip"}),
        *stats,
        components,
    )
    assert tta.count_params() == plain.count_params()
    tta.set_weights(plain.get_weights())
    x = rng.integers(0, 256, (6, 32, 32, 3)).astype(np.float32)
    mirrored = x[:, :, ::-1]
    assert not np.allclose(plain.predict(x, verbose=0), plain.predict(mirrored, verbose=0))
    expected = (plain.predict(x, verbose=0) + plain.predict(mirrored, verbose=0)) / 2
    np.testing.assert_allclose(tta.predict(x, verbose=0), expected, atol=1e-6)
    np.testing.assert_allclose(tta.predict(mirrored, verbose=0), expected, atol=1e-6)
    np.testing.assert_allclose(
        np.asarray(tta(x, training=True)), np.asarray(plain(x, training=True)), atol=1e-6
    )


def test_mixup_batches_mix_images_and_labels_alike():
    from harness.train.targets import mixup_batches

    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(100, 4, 4, 3), dtype=np.uint8)
    y = np.arange(100) % 10
    batches = mixup_batches(x, y, batch_size=32, alpha=0.4, seed=1)
    assert len(batches) == 4
    seen, mixed = [], []
    for i in range(len(batches)):
        images, labels = batches[i]
        assert images.dtype == np.float32 and labels.shape == (len(images), 10)
        np.testing.assert_allclose(labels.sum(axis=1), 1, rtol=1e-6)
        seen.append(len(images))
        mixed.append(((labels.max(axis=1) > 0.05) & (labels.max(axis=1) < 0.95)).any())
        for image, label in zip(images, labels):
            # the label's weights say which two training images were blended, and how much
            weights = {c: w for c, w in enumerate(label) if w > 1e-6}
            assert 1 <= len(weights) <= 2
            if len(weights) == 1:
                continue  # two images of one class: the label cannot tell the blend
            candidates = [j for j in range(100) if y[j] in weights]
            assert any(
                np.allclose(image, weights[y[j]] * x[j] + (1 - weights[y[j]]) * x[k], atol=1e-3)
                for j in candidates
                for k in candidates
            )
    assert sum(seen) == 100 and any(mixed)


def test_mixup_batches_depend_on_seed_epoch_and_index_not_on_threads():
    from harness.train.targets import mixup_batches

    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(64, 4, 4, 3), dtype=np.uint8)
    y = np.arange(64) % 10
    one, four = (mixup_batches(x, y, 16, 0.4, seed=3, workers=w) for w in (1, 4))
    assert four.workers == 4
    for i in (2, 0, 3):  # any order, as threads ask for them
        np.testing.assert_array_equal(one[i][0], four[i][0])
    first = one[0][0]
    one.on_epoch_end()
    assert not np.array_equal(one[0][0], first)  # a new epoch mixes anew
    resumed = mixup_batches(x, y, 16, 0.4, seed=3, workers=1, epoch=1)
    np.testing.assert_array_equal(resumed[0][0], one[0][0])  # as the run resumed there


def test_distillation_uses_the_teachers_probabilities(tmp_path, archive):
    ds = data.load(archive)
    results = tmp_path / "results"
    small = {"layers": 1, "units": 16, "epochs": 2, "batch_size": 64}
    train(resolve("selu", overrides={**small, "name": "teach"}), ds, results, verbose=0)
    missing = resolve("selu", overrides={**small, "name": "s0", "teacher": "nobody"})
    with pytest.raises(ConfigError, match="teacher='nobody'"):
        train(missing, ds, results, verbose=0)
    assert not RunDir.named(results, "s0").path.exists()  # nothing written for a bad teacher

    from harness.train.targets import one_hot, teacher_targets

    cfg = resolve(
        "selu", overrides={**small, "name": "student", "teacher": "teach", "teacher_weight": 0.5}
    )
    splits = data.split(ds)
    targets, record, views = teacher_targets(cfg, results, splits)
    assert views is None and targets.shape == (len(splits.train), 10)
    np.testing.assert_allclose(targets.sum(axis=1), 1, rtol=1e-5)
    assert (targets[np.arange(len(targets)), splits.train.y] >= 0.5 - 1e-6).all()
    assert 0 < targets.min() and record["run"] == "teach" and record["weight"] == 0.5
    metrics = train(cfg, ds, results, verbose=0)
    assert metrics["status"] == "completed" and metrics["teacher"]["run"] == "teach"
    # At temperature 4 the teacher's part is softer (more entropy), keeps its ranking and
    # equals the softmax of its log-probabilities / 4; the labels' part is unchanged.
    hot = resolve(
        "selu",
        overrides={
            **small,
            "name": "student-t4",
            "teacher": "teach",
            "teacher_weight": 0.5,
            "teacher_temperature": 4.0,
        },
    )
    soft, record, _ = teacher_targets(hot, results, splits)
    assert record["temperature"] == 4.0
    teacher_part, soft_part = (
        2 * targets - one_hot(splits.train.y),
        2 * soft - one_hot(splits.train.y),
    )

    def entropy(p):
        return -(p * np.log(np.maximum(p, 1e-12))).sum(axis=1)

    assert (entropy(soft_part) > entropy(teacher_part) - 1e-4).all()
    assert (soft_part.argmax(axis=1) == teacher_part.argmax(axis=1)).all()
    logits = np.log(np.maximum(teacher_part, 1e-30)) / 4
    expected = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    np.testing.assert_allclose(soft_part, expected, atol=1e-5)


def test_consistent_distillation_labels_each_view_it_shows(tmp_path, archive):
    """teacher_views: the teacher labels augmented views once; each batch shows one view
    per image with the targets of that very view; the student has no augmentation layer."""
    from harness.train.callbacks import MixupBatches
    from harness.train.fit import teacher_targets
    from harness.train.models import load_keras_model

    ds = data.load(archive)
    results = tmp_path / "results"
    small = {"layers": 1, "units": 16, "epochs": 2, "batch_size": 64}
    train(resolve("selu", overrides={**small, "name": "teach"}), ds, results, verbose=0)
    with pytest.raises(ConfigError, match="teacher_views.*needs a teacher"):
        resolve("bn-elu", overrides={**small, "name": "x", "teacher_views": 2})
    cfg = resolve(
        "bn-elu",
        overrides={
            **small,
            "name": "student",
            "teacher": "teach",
            "teacher_views": 3,
            "augment": "flip-shift",
            "mixup": 0.0,
        },
    )
    splits = data.split(ds)
    targets, record, views = teacher_targets(cfg, results, splits)
    n = len(splits.train)
    assert views.shape == (3, n, 32, 32, 3) and views.dtype == np.uint8
    assert targets.shape == (3, n, 10) and record["views"] == 3
    assert not np.array_equal(views[0], views[1])  # each view moved anew
    assert not np.array_equal(views[0], splits.train.x)
    teacher = load_keras_model(RunDir.named(results, "teach").model)
    expected = (
        0.7 * teacher.predict(views[1][:20], verbose=0) + 0.3 * np.eye(10)[splits.train.y[:20]]
    )
    np.testing.assert_allclose(targets[1, :20], expected, atol=1e-5)

    # A batch's images and targets come from the same view of the same image.
    code = np.arange(3 * 40).reshape(3, 40)  # view v of image i is the number 40 v + i
    x = np.broadcast_to(code[..., None, None, None], (3, 40, 2, 2, 1)).astype(np.uint8)
    batches = MixupBatches(x, code[..., None].astype(np.float32), 16, 0.0, seed=1, workers=1)
    assert len(batches) == 3
    seen = []
    for i in range(len(batches)):
        images, labels = batches[i]
        np.testing.assert_array_equal(images[:, 0, 0, 0], labels[:, 0])
        seen += list(labels[:, 0].astype(int) % 40)
    assert sorted(seen) == list(range(40))  # every image once per epoch
    assert len({int(v) // 40 for v in batches[0][1][:, 0]}) > 1  # views drawn per image

    metrics = train(cfg, ds, results, verbose=0)
    assert metrics["teacher"]["views"] == 3
    student = load_keras_model(RunDir.named(results, "student").model)
    assert not any(layer.name == "augment" for layer in student.layers)


def test_teacher_refresh_relabels_a_rotating_slice_of_views_each_epoch(tmp_path, archive):
    """teacher_refresh: between epochs the teacher's int8 file labels fresh augmented views
    of a rotating slice of the images, in place; the rest stay as they were."""
    from harness.export.convert import export_run
    from harness.export.runtimes import load, predict_batched
    from harness.train.callbacks import MixupBatches
    from harness.train.targets import ViewRefresh, mix_targets, one_hot, teacher_targets

    ds = data.load(archive)
    results = tmp_path / "results"
    small = {"layers": 1, "units": 16, "epochs": 2, "batch_size": 64}
    train(resolve("selu", overrides={**small, "name": "teach"}), ds, results, verbose=0)
    with pytest.raises(ConfigError, match="teacher_refresh.*needs teacher_views"):
        resolve("bn-elu", overrides={**small, "teacher": "teach", "teacher_refresh": 0.5})
    cfg = resolve(
        "bn-elu",
        overrides={
            **small,
            "name": "student",
            "teacher": "teach",
            "teacher_views": 1,
            "teacher_refresh": 0.25,
            "augment": "flip-shift",
            "mixup": 0.4,
        },
    )
    with pytest.raises(ConfigError, match="harness export teach --format tflite --quantize int8"):
        train(cfg, ds, results, verbose=0)
    assert not RunDir.named(results, "student").path.exists()

    teacher = RunDir.named(results, "teach")
    export_run(teacher, ds, ("tflite",), ("int8",))
    splits = data.split(ds)
    targets, record, views = teacher_targets(cfg, results, splits)
    assert record["labelled_by"] == "exports/model_int8.tflite" and record["refresh"] == 0.25
    int8 = load(teacher.path / "exports/model_int8.tflite")
    labels = one_hot(splits.train.y)
    np.testing.assert_allclose(
        targets[0], mix_targets(cfg, predict_batched(int8, views[0]), labels), atol=1e-5
    )

    n = len(splits.train)
    before_views, before_targets = views.copy(), targets.copy()
    refresh = ViewRefresh(cfg, results, splits, views, targets)
    refresh(1)  # epoch 1: images [k, 2k) with k = n / 4
    k = round(n / 4)
    changed = np.any(views[0] != before_views[0], axis=(1, 2, 3))
    assert changed[k : 2 * k].mean() > 0.9 and not changed[:k].any() and not changed[2 * k :].any()
    np.testing.assert_array_equal(targets[0, :k], before_targets[0, :k])
    expected = mix_targets(cfg, predict_batched(int8, views[0, k : 2 * k]), labels[k : 2 * k])
    np.testing.assert_allclose(targets[0, k : 2 * k], expected, atol=1e-5)

    # The batches call it between epochs, with the next epoch's number, never at the start.
    calls = []
    batches = MixupBatches(views, targets, 64, 0.4, 1, 1, epoch=3, refresh=calls.append)
    assert calls == []
    batches.on_epoch_end()
    batches.on_epoch_end()
    assert calls == [4, 5]

    metrics = train(cfg, ds, results, verbose=0)
    assert metrics["status"] == "completed" and metrics["teacher"]["refresh"] == 0.25
