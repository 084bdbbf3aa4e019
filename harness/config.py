"""Training configuration: one typed object, resolved once (preset, then file, then flags).

The presets ``selu`` and ``bn-elu`` are the study's two networks with its exact recipe
(Nadam, batch 32, up to 100 epochs, EarlyStopping(6) on val_loss, ReduceLROnPlateau(0.5, 3)).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

ARCHITECTURES = ("plain", "batchnorm")
SCHEDULES = ("plateau", "cosine")
MONITORS = ("val_loss", "val_accuracy")
BACKENDS = ("tensorflow", "jax")
ACTIVATIONS = ("selu", "elu", "relu", "leaky-relu", "gelu")


class ConfigError(ValueError):
    """A configuration value or file is invalid; the message names the key."""


@dataclass
class TrainConfig:
    # --- architecture
    arch: str = "plain"          # "plain": Dense stack; "batchnorm": BN before and after each Dense
    activation: str = "selu"     # one of ACTIVATIONS; the initializer follows from it
    layers: int = 5              # hidden Dense layers
    units: int = 100             # units per hidden layer
    dropout: float = 0.0         # AlphaDropout for selu, Dropout otherwise; 0 = none
    l1: float = 0.0              # L1 kernel penalty per hidden layer
    l2: float = 0.0              # L2 kernel penalty per hidden layer
    max_norm: float | None = None  # max-norm kernel constraint on hidden layers; None = none
    # --- optimisation
    optimizer: str = "nadam"
    lr: float = 1e-4             # initial learning rate
    batch_size: int = 32         # images per step
    epochs: int = 100            # upper bound; EarlyStopping usually ends sooner
    monitor: str = "val_loss"    # what picks the best epoch (checkpoint, early stopping,
                                 # plateau): "val_loss" (the study) or "val_accuracy"
    patience: int = 6            # EarlyStopping patience, epochs without improvement
    lr_factor: float = 0.5       # ReduceLROnPlateau factor
    lr_patience: int = 3         # ReduceLROnPlateau patience, epochs
    schedule: str = "plateau"    # "plateau": ReduceLROnPlateau (the study); "cosine": linear
                                 # warm-up to lr, then cosine decay to 0 over all epochs
    warmup_epochs: float = 0.0   # cosine only: epochs of linear warm-up from lr/10
    seed: int = 42
    # --- execution (speed only; the arithmetic is the same)
    backend: str | None = None   # Keras backend; None = $KERAS_BACKEND (default tensorflow)
    steps_per_execution: int = 1  # training steps per compiled call
    # --- bookkeeping
    preset: str | None = None
    name: str | None = None      # run name; defaults to the preset

    def validate(self) -> "TrainConfig":
        checks = [
            ("arch", self.arch in ARCHITECTURES, f"must be one of {', '.join(ARCHITECTURES)}"),
            ("activation", self.activation in ACTIVATIONS,
             f"must be one of {', '.join(ACTIVATIONS)}"),
            ("layers", isinstance(self.layers, int) and self.layers >= 1, "must be an integer >= 1"),
            ("units", isinstance(self.units, int) and self.units >= 1, "must be an integer >= 1"),
            ("dropout", 0.0 <= self.dropout < 1.0, "must be in [0, 1)"),
            ("l1", self.l1 >= 0, "must be >= 0"),
            ("l2", self.l2 >= 0, "must be >= 0"),
            ("max_norm", self.max_norm is None or self.max_norm > 0, "must be > 0 or null"),
            ("optimizer", self.optimizer == "nadam", "only 'nadam' is supported"),
            ("lr", self.lr > 0, "must be > 0"),
            ("batch_size", isinstance(self.batch_size, int) and self.batch_size >= 1,
             "must be an integer >= 1"),
            ("epochs", isinstance(self.epochs, int) and self.epochs >= 1, "must be an integer >= 1"),
            ("patience", isinstance(self.patience, int) and self.patience >= 1, "must be >= 1"),
            ("lr_factor", 0 < self.lr_factor < 1, "must be in (0, 1)"),
            ("lr_patience", isinstance(self.lr_patience, int) and self.lr_patience >= 1,
             "must be >= 1"),
            ("monitor", self.monitor in MONITORS, f"must be one of {', '.join(MONITORS)}"),
            ("schedule", self.schedule in SCHEDULES, f"must be one of {', '.join(SCHEDULES)}"),
            ("warmup_epochs", 0 <= self.warmup_epochs < self.epochs, "must be in [0, epochs)"),
            ("backend", self.backend is None or self.backend in BACKENDS,
             f"must be one of {', '.join(BACKENDS)} or null"),
            ("steps_per_execution", isinstance(self.steps_per_execution, int)
             and self.steps_per_execution >= 1, "must be an integer >= 1"),
            ("name", self.name is None or _safe_name(self.name),
             "must be a plain name (letters, digits, '.', '_', '-')"),
        ]
        for key, ok, why in checks:
            if not ok:
                raise ConfigError(f"{key}={getattr(self, key)!r}: {why}")
        return self

    @property
    def run_name(self) -> str:
        return self.name or self.preset or "run"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _safe_name(name: str) -> bool:
    return bool(name) and name not in (".", "..") and all(c.isalnum() or c in "._-" for c in name)


PRESETS: dict[str, dict[str, Any]] = {
    # The study's self-normalizing net: 5 x 100 Dense + SELU, LeCun-normal, Nadam 1e-4.
    "selu": dict(arch="plain", activation="selu", lr=1e-4),
    # The study's second net: BN + 5 x [Dense(he_normal, max_norm 1) + BN + ELU], Nadam 1e-3.
    "bn-elu": dict(arch="batchnorm", activation="elu", max_norm=1.0, lr=1e-3),
    # The same networks trained at the machine's limit (benchmarks/train_speed.py): large
    # batches with warm-up + cosine decay, compiled multi-step execution on the JAX backend.
    "selu-fast": dict(arch="plain", activation="selu", lr=5e-3, batch_size=1024, epochs=12,
                      schedule="cosine", warmup_epochs=1, monitor="val_accuracy",
                      patience=12, backend="jax",
                      steps_per_execution=4),
    "bn-elu-fast": dict(arch="batchnorm", activation="elu", max_norm=1.0, lr=1e-2,
                        batch_size=1024, epochs=15, schedule="cosine", warmup_epochs=1,
                        monitor="val_accuracy", patience=15, backend="jax",
                        steps_per_execution=4),
}


def _coerce(key: str, value: Any) -> Any:
    """Types for values read from a YAML/JSON file (YAML reads 1e-4 as a string)."""
    kinds = {f.name: f.type for f in fields(TrainConfig)}
    kind = kinds[key]
    try:
        if value is None:
            return None
        if "float" in kind:
            return float(value)
        if kind == "int":
            if isinstance(value, bool) or float(value) != int(float(value)):
                raise ValueError
            return int(float(value))
        return str(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{key}={value!r}: expected {kind}") from None


def read_config_file(path: Path) -> dict[str, Any]:
    """A YAML or JSON mapping of TrainConfig fields (dashes or underscores in keys)."""
    import yaml

    try:
        text = Path(path).read_text(encoding="utf-8")
        raw = json.loads(text) if str(path).endswith(".json") else yaml.safe_load(text)
    except (OSError, ValueError, yaml.YAMLError) as e:
        raise ConfigError(f"{path}: cannot read config ({e})") from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of settings, found {type(raw).__name__}")
    known = {f.name for f in fields(TrainConfig)}
    out = {}
    for key, value in raw.items():
        k = str(key).replace("-", "_")
        if k not in known:
            raise ConfigError(f"{path}: unknown setting {key!r}")
        out[k] = _coerce(k, value)
    return out


def resolve(preset: str | None = None, file: Path | None = None,
            overrides: dict[str, Any] | None = None) -> TrainConfig:
    """Preset, then config file, then flags (``None`` values in overrides are ignored)."""
    values: dict[str, Any] = {}
    from_file = read_config_file(file) if file else {}
    preset = preset or from_file.pop("preset", None)
    if preset is not None:
        if preset not in PRESETS:
            raise ConfigError(f"preset={preset!r}: must be one of {', '.join(PRESETS)}")
        values.update(PRESETS[preset], preset=preset)
    from_file.pop("preset", None)
    values.update(from_file)
    values.update({k: v for k, v in (overrides or {}).items() if v is not None})
    return TrainConfig(**values).validate()


def from_dict(d: dict[str, Any]) -> TrainConfig:
    """A TrainConfig from a saved config.json (unknown keys are an error)."""
    known = {f.name for f in fields(TrainConfig)}
    unknown = set(d) - known
    if unknown:
        raise ConfigError(f"unknown settings {sorted(unknown)}")
    return TrainConfig(**d)

