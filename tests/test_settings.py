"""Every training setting is declared once (harness.core.config): validation, the CLI options,
config files and the docs' table follow from that declaration, and every committed run's
config.json re-makes its network."""

import json
import re
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from harness.cli import main
from harness.core.config import SETTINGS, ConfigError, TrainConfig, resolve, settings_table

REPO = Path(__file__).resolve().parents[1]
REFERENCE = REPO / "results" / "reference"
STATS_AS_CONSTANTS = {"runs/selu", "runs/bn-elu", "tuning/study-bn-elu/best"}
# Trained runs' configs; an imported model's config.json records an import, not a recipe
# (tests/test_imports.py checks those).
COMMITTED = sorted(
    p
    for p in [*REFERENCE.glob("runs/*/config.json"), *REFERENCE.glob("tuning/*/best/config.json")]
    if json.loads(p.read_text()).get("kind") != "imported"
)


@pytest.mark.parametrize("command", ["train", "tune", "sweep-lr"])
def test_every_setting_is_an_option_of(command):
    cmd = main.commands[command]
    params = {p.name: p for p in cmd.params}
    parsed = cmd.make_context(command, ["--preset", "selu"]).params
    for name, field in SETTINGS.items():
        if name == "preset":
            continue  # --preset chooses a recipe, a setting of its own
        assert name in params, f"{command} has no --{name.replace('_', '-')}"
        assert params[name].help == field.metadata["help"]
        assert parsed[name] is None  # a flag not given keeps the preset's value


@pytest.mark.parametrize(
    "name",
    [n for n, f in SETTINGS.items() if f.metadata["low"] is not None or f.metadata["choices"]],
)
def test_declared_range_is_enforced_by_validation(name):
    meta = SETTINGS[name].metadata
    bad = "no-such-choice" if meta["choices"] else meta["low"] - 1
    with pytest.raises(ConfigError, match=f"^{name}="):
        TrainConfig(**{name: bad}).validate()


def test_cli_refuses_a_value_outside_the_declared_range(tmp_path):
    result = CliRunner().invoke(
        main, ["--results", str(tmp_path), "train", "--preset", "selu", "--shift", "16"]
    )
    assert result.exit_code == 2 and "--shift" in result.output


def test_set_and_config_files_use_the_declaration(tmp_path):
    from harness.core.config import settings_from

    assert settings_from({"max-norm": "none", "units": "64", "lr": "3e-4"}, "--set") == {
        "max_norm": None,
        "units": 64,
        "lr": 3e-4,
    }
    with pytest.raises(ConfigError, match="units='many'"):
        settings_from({"units": "many"}, "--set")


def test_docs_settings_table_is_up_to_date():
    text = (REPO / "docs" / "settings.md").read_text()
    found = re.search(
        r"<!-- settings-table:begin -->\n(.*?)\n<!-- settings-table:end -->", text, re.S
    )
    assert found, "docs/settings.md lacks the settings-table markers"
    assert found.group(1) == settings_table(), (
        "docs/settings.md's settings table is out of date: run "
        "`python -m harness.core.config docs/settings.md`"
    )


def test_saved_config_is_read_whole_whatever_todays_preset(tmp_path):
    """A run's config.json names a preset as a label: a setting the preset gained later
    (here tta and pca) must not leak into the re-made run."""
    saved = {
        k: v for k, v in resolve("mlp-frontier").to_dict().items() if k not in ("tta", "pca", "ema")
    }
    path = tmp_path / "config.json"
    path.write_text(json.dumps(saved))
    cfg = resolve(file=path)
    assert (cfg.tta, cfg.pca, cfg.preset) == ("none", 0, "mlp-frontier")
    # a hand-written file that names a preset still starts from it
    short = tmp_path / "short.yaml"
    short.write_text("preset: mlp-frontier\nepochs: 5\n")
    assert (resolve(file=short).tta, resolve(file=short).pca) == ("flip", 512)


def test_committed_configs_are_found():
    assert len(COMMITTED) >= 30


@pytest.mark.parametrize("path", COMMITTED, ids=lambda p: str(p.parent.relative_to(REFERENCE)))
def test_committed_config_rebuilds_its_network(path):
    """`harness train --config <run>/config.json` resolves to the recorded configuration
    and builds a network with the recorded parameter count."""
    from harness.train.models import build_model, count_params

    metrics = json.loads((path.parent / "metrics.json").read_text())
    cfg = resolve(file=path)
    assert cfg == TrainConfig(**metrics["config"])
    built = count_params(build_model(cfg, np.zeros(3), np.ones(3)))
    recorded = metrics["params"]
    # These three predate commit 9682c4d, which turned the input standardization's
    # per-channel mean and variance (2 x 3 numbers, the same arithmetic) from constants
    # into weights; every later run counts them.
    extra = 6 if str(path.parent.relative_to(REFERENCE)) in STATS_AS_CONSTANTS else 0
    assert built["trainable"] == recorded["trainable"]
    assert built["total"] == recorded["total"] + extra


def test_clip_norm_reaches_the_optimizer():
    """The setting added by one declaration: a flag, validated, and used by the optimizer."""
    from harness.train.fit import _optimizer

    cfg = resolve("selu", overrides={"clip_norm": 1.5})
    assert _optimizer(cfg, 10).global_clipnorm == 1.5
    assert _optimizer(resolve("selu"), 10).global_clipnorm is None
    with pytest.raises(ConfigError, match="clip_norm"):
        resolve("selu", overrides={"clip_norm": 0.0})
