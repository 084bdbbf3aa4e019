import pytest

from harness.core.config import ConfigError, TrainConfig, resolve
from harness.core.presets import PRESETS


def test_presets_are_the_studys_recipe():
    selu, bn = resolve("selu"), resolve("bn-elu")
    for cfg in (selu, bn):
        assert (cfg.optimizer, cfg.batch_size, cfg.epochs, cfg.patience) == ("nadam", 32, 100, 6)
        assert (cfg.lr_factor, cfg.lr_patience, cfg.layers, cfg.units) == (0.5, 3, 5, 100)
    assert (selu.arch, selu.activation, selu.lr, selu.max_norm) == ("plain", "selu", 1e-4, None)
    assert (bn.arch, bn.activation, bn.lr, bn.max_norm) == ("batchnorm", "elu", 1e-3, 1.0)
    assert {"selu", "bn-elu", "selu-fast", "bn-elu-fast"} <= set(PRESETS)


def test_file_then_flags(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("preset: bn-elu\nunits: 64\nbatch-size: 128\nlr: 3e-4\n")
    cfg = resolve(file=f, overrides={"units": 32, "layers": None})
    got = (cfg.preset, cfg.units, cfg.batch_size, cfg.lr, cfg.layers)
    assert got == ("bn-elu", 32, 128, 3e-4, 5)
    j = tmp_path / "c.json"
    j.write_text('{"arch": "plain", "activation": "relu", "epochs": 3}')
    cfg = resolve(file=j)
    assert (cfg.activation, cfg.epochs, cfg.preset) == ("relu", 3, None)


@pytest.mark.parametrize(
    "text,match",
    [
        ("unitz: 3\n", "unknown setting"),
        ("units: many\n", "units='many'"),
        ("layers: 0\n", "layers=0"),
        ("- a\n- b\n", "expected a mapping"),
        ("activation: tanh\n", "activation='tanh'"),
    ],
)
def test_bad_config_files_name_the_key(tmp_path, text, match):
    f = tmp_path / "c.yaml"
    f.write_text(text)
    with pytest.raises(ConfigError, match=match):
        resolve("selu", file=f)


def test_unsafe_run_name_is_refused():
    with pytest.raises(ConfigError, match="name"):
        TrainConfig(name="../x").validate()


@pytest.mark.parametrize(
    "key,value",
    [
        ("schedule", "step"),
        ("warmup_epochs", 100),
        ("backend", "torch"),
        ("steps_per_execution", 0),
    ],
)
def test_execution_settings_are_checked(key, value):
    with pytest.raises(ConfigError, match=key):
        resolve("selu", overrides={key: value})


@pytest.mark.parametrize(
    "overrides,match",
    [
        ({"pool": 3}, "pool=3.*divide 32"),
        ({"pool": 0}, "pool=0"),
        ({"pool": 4, "pca": 200}, "pca=200.*3072 / pool"),
    ],
)
def test_input_pooling_is_checked(overrides, match):
    with pytest.raises(ConfigError, match=match):
        resolve("bn-elu-fast", overrides=overrides)
    assert resolve("bn-elu-fast", overrides={"pool": 4, "pca": 192}).pool == 4


def test_the_search_recipe_splits_the_data_into_whole_batches():
    """bn-elu-fast trains each trial of a search: no smaller last batch to compile again."""
    cfg = resolve("bn-elu-fast")
    assert 45_000 % cfg.batch_size == 0 and 5_000 % cfg.batch_size == 0
