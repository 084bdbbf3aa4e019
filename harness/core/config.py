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

from harness.core.presets import PRESETS
from harness.core.records import NAME

ARCHITECTURES = ("plain", "batchnorm", "resnet8")
DENSE = ("plain", "batchnorm")  # the fully connected architectures
PRODUCTS = ("float32", "bfloat16")  # what training's Dense products may compute in
ACTIVATIONS = ("selu", "elu", "relu", "leaky-relu", "gelu")


class ConfigError(ValueError):
    """A configuration value or file is invalid; the message names the key."""


def setting(
    default: Any,
    help: str,
    *,
    kind: type,
    choices: tuple[str, ...] = (),
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
    optional: bool = False,
    applies: tuple[str, ...] = (),
    check: tuple | None = None,
) -> Any:
    """One training setting, declared once: a TrainConfig field whose metadata says its
    type, its choices or range, whether None is allowed (``optional``), the architectures
    it applies to (empty: all) and its help text. Validation, the Click options of train,
    tune and sweep-lr, config files, ``--set`` and the docs' table all read it from here.

    ``check`` is (predicate(value, config), reason) for what a range cannot say. A new
    setting's default must be the behaviour from before it existed, so that saved run
    configurations that lack it still mean what they meant."""
    meta = dict(
        kind=kind,
        help=help,
        choices=choices,
        low=low,
        high=high,
        low_open=low_open,
        high_open=high_open,
        optional=optional,
        applies=applies,
        check=check,
    )
    return dataclasses.field(default=default, metadata=meta)


def _plain_name(value: str, cfg) -> bool:
    return _safe_name(value)


@dataclass
class TrainConfig:
    # --- architecture
    arch: str = setting(
        "plain",
        "plain: a Dense stack; batchnorm: BatchNorm around each Dense; resnet8: the "
        "CNN reference (MLPerf Tiny's ResNet-8).",
        kind=str,
        choices=ARCHITECTURES,
    )
    activation: str = setting(
        "selu",
        "Hidden activation; the initializer follows from it.",
        kind=str,
        choices=ACTIVATIONS,
        applies=DENSE,
    )
    input_bn: str = setting(
        "affine",
        "The BatchNorm on the flattened pixels: learned scale and offset (affine, "
        "the study's) or batch statistics only (stats: the next Dense already weights each "
        "input, and training skips that layer's input gradient); raw-stats: stats, and "
        "where nothing comes between the pixels and it (pca 0, pool 1, augment none) "
        "without the per-channel standardization before it, which changes nothing batch "
        "statistics compute and costs a pass over the inputs.",
        kind=str,
        choices=("affine", "stats", "raw-stats"),
        applies=("batchnorm",),
    )
    bottleneck: int = setting(
        0,
        "First a linear Dense of this many units, a learned low-rank projection of the "
        "pixels (0 = none).",
        kind=int,
        low=0,
        applies=DENSE,
    )
    pool: int = setting(
        1,
        "First average each N x N block of pixels (2: the 32 x 32 image becomes 16 x 16, "
        "768 inputs): a fixed low-pass downsampling that makes the first Dense N x N times "
        "cheaper (1 = none).",
        kind=int,
        low=1,
        high=32,
        applies=DENSE,
        check=(lambda v, cfg: 32 % v == 0, "must divide 32"),
    )
    pca: int = setting(
        0,
        "First project the flattened pixels onto the training images' top N principal "
        "components, a fixed layer (0 = none).",
        kind=int,
        low=0,
        high=3072,
        applies=DENSE,
        check=(
            lambda v, cfg: (
                not (isinstance(cfg.pool, int) and cfg.pool >= 1) or v <= 3072 // cfg.pool**2
            ),
            "must not exceed the inputs (3072 / pool ** 2)",
        ),
    )
    layers: int = setting(5, "Hidden Dense layers.", kind=int, low=1, applies=DENSE)
    units: int = setting(100, "Units per hidden layer.", kind=int, low=1, applies=DENSE)
    dropout: float = setting(
        0.0,
        "Dropout rate after each hidden layer (AlphaDropout with selu; 0 = none).",
        kind=float,
        low=0,
        high=1,
        high_open=True,
        applies=DENSE,
    )
    l1: float = setting(
        0.0, "L1 kernel penalty per hidden layer.", kind=float, low=0, applies=DENSE
    )
    l2: float = setting(0.0, "L2 kernel penalty per hidden (or conv) layer.", kind=float, low=0)
    max_norm: float | None = setting(
        None,
        "Max-norm constraint on hidden kernels (none = off).",
        kind=float,
        low=0,
        low_open=True,
        optional=True,
        applies=DENSE,
    )
    augment: str = setting(
        "none",
        "Training-time augmentation: random horizontal flips (flip), also "
        "translations by up to --shift pixels (flip-shift).",
        kind=str,
        choices=("none", "flip", "flip-shift"),
    )
    shift: int = setting(
        4,
        "Pixels of the random translations of flip-shift.",
        kind=int,
        low=0,
        high=16,
        high_open=True,
    )
    zoom: float = setting(
        0.0,
        "With flip-shift: also scale by a random factor in [1-Z, 1+Z] (0 = off).",
        kind=float,
        low=0,
        high=1,
        high_open=True,
    )
    tta: str = setting(
        "none",
        "Test-time augmentation inside the model: flip averages the image's and "
        "its mirror image's probabilities (inference only; exports include it).",
        kind=str,
        choices=("none", "flip"),
    )
    mixup: float = setting(
        0.0,
        "Mixup alpha: blend pairs of images and their labels (0 = off).",
        kind=float,
        low=0,
        high=10,
    )
    teacher: str | None = setting(
        None,
        "Distill from this finished run (same results folder): its probabilities on "
        "the training images become targets.",
        kind=str,
        optional=True,
        check=(_plain_name, "must be a run name"),
    )
    teacher_weight: float = setting(
        0.7,
        "Weight of the teacher's probabilities in the targets (the rest: the labels).",
        kind=float,
        low=0,
        high=1,
    )
    teacher_views: int = setting(
        0,
        "Consistent distillation: the teacher labels this many augmented views of each "
        "training image once, before the first epoch; each epoch the student sees one of "
        "them per image with the teacher's probabilities for that very view (0 = the "
        "teacher labels the clean images, the model augments on its own).",
        kind=int,
        low=0,
        high=64,
        check=(
            lambda v, cfg: not v or (cfg.teacher and cfg.augment != "none"),
            "needs a teacher and an augmentation",
        ),
    )
    teacher_refresh: float = setting(
        0.0,
        "With teacher_views: at each epoch's start the teacher labels fresh augmented "
        "views of this fraction of the training images, in place of their oldest, so "
        "the student never sees the same few views for long (function matching, Beyer "
        "et al. 2022). The teacher answers through its int8 export "
        "(exports/model_int8.tflite), several times faster than its Keras model on a "
        "CPU (0 = the views stay as labelled before the first epoch).",
        kind=float,
        low=0,
        high=1,
        check=(lambda v, cfg: not v or cfg.teacher_views, "needs teacher_views"),
    )
    teacher_temperature: float = setting(
        1.0,
        "Soften the teacher's probabilities before they become targets: the softmax of "
        "its logits / T, so a small student also learns how the teacher ranks the wrong "
        "classes (Hinton et al. 2015; 1 = as they are).",
        kind=float,
        low=1,
        high=20,
    )
    # --- optimisation
    optimizer: str = setting("nadam", "Optimizer.", kind=str, choices=("nadam", "adamw", "lion"))
    weight_decay: float = setting(
        0.0,
        "Decoupled weight decay (not on biases or normalization).",
        kind=float,
        low=0,
        high=1,
        high_open=True,
    )
    ema: float = setting(
        0.0,
        "Validate, checkpoint and save an exponential moving average of the weights "
        "with this momentum (0 = off).",
        kind=float,
        low=0,
        high=1,
        high_open=True,
    )
    label_smoothing: float = setting(
        0.0,
        "Cross-entropy against (1 - s) one-hot + s / 10.",
        kind=float,
        low=0,
        high=1,
        high_open=True,
    )
    clip_norm: float | None = setting(
        None,
        "Scale each step's gradients down to this global norm at most (none = off).",
        kind=float,
        low=0,
        low_open=True,
        optional=True,
    )
    lr: float = setting(1e-4, "Initial learning rate.", kind=float, low=0, low_open=True)
    batch_size: int = setting(32, "Images per step.", kind=int, low=1)
    epochs: int = setting(
        100, "Most epochs to run (early stopping may end sooner).", kind=int, low=1
    )
    monitor: str = setting(
        "val_loss",
        "What picks the best epoch (checkpoint, early stopping, plateau).",
        kind=str,
        choices=("val_loss", "val_accuracy"),
    )
    patience: int = setting(6, "EarlyStopping: epochs without improvement.", kind=int, low=1)
    lr_factor: float = setting(
        0.5, "ReduceLROnPlateau factor.", kind=float, low=0, high=1, low_open=True, high_open=True
    )
    lr_patience: int = setting(3, "ReduceLROnPlateau patience, epochs.", kind=int, low=1)
    schedule: str = setting(
        "plateau",
        "plateau: ReduceLROnPlateau (the study's); cosine: linear warm-up to "
        "--lr, then cosine decay to 0 over all epochs.",
        kind=str,
        choices=("plateau", "cosine"),
    )
    warmup_epochs: float = setting(
        0.0,
        "Cosine only: epochs of linear warm-up from lr/10.",
        kind=float,
        low=0,
        check=(lambda v, cfg: v < cfg.epochs, "must be below epochs"),
    )
    seed: int = setting(42, "Random seed.", kind=int)
    products: str = setting(
        "float32",
        "The hidden Dense layers' matrix products while training on JAX on a CPU: float32, "
        "or bfloat16 (operands rounded to bfloat16, sums in float32, on the CPU's bfloat16 "
        "units where it has them). Weights, activations and evaluation stay float32.",
        kind=str,
        choices=PRODUCTS,
        applies=DENSE,
    )
    # --- execution (speed only; the arithmetic is the same)
    backend: str | None = setting(
        None,
        "Keras backend (none: $KERAS_BACKEND, default tensorflow).",
        kind=str,
        choices=("tensorflow", "jax"),
        optional=True,
    )
    steps_per_execution: int = setting(1, "Training steps per compiled call.", kind=int, low=1)
    loop: str = setting(
        "keras",
        "How epochs run: keras (model.fit) or compiled (JAX: each epoch one compiled "
        "program over the training images kept on the device, validation included; used "
        "where labels are integers and the batch size divides both splits, else keras).",
        kind=str,
        choices=("keras", "compiled"),
    )
    # --- bookkeeping
    preset: str | None = setting(
        None, "The recipe this configuration started from.", kind=str, optional=True
    )
    name: str | None = setting(
        None,
        "Run name: results/runs/<name>/ (default: the preset).",
        kind=str,
        optional=True,
        check=(_plain_name, "must be a plain name (letters, digits, '.', '_', '-')"),
    )

    def validate(self) -> "TrainConfig":
        for f in fields(self):
            why = problem(f, getattr(self, f.name), self)
            if why:
                raise ConfigError(f"{f.name}={getattr(self, f.name)!r}: {why}")
        return self

    @property
    def run_name(self) -> str:
        return self.name or self.preset or "run"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


SETTINGS = {f.name: f for f in fields(TrainConfig)}


def describe_range(meta: dict) -> str:
    """'one of a, b', 'an integer >= 1', 'a number in [0, 1)', ... (for errors and docs)."""
    if meta["choices"]:
        return "one of " + ", ".join(meta["choices"])
    noun = "an integer" if meta["kind"] is int else "a number" if meta["kind"] is float else ""
    low, high = meta["low"], meta["high"]
    if low is not None and high is not None:
        return (
            f"{noun} in {'(' if meta['low_open'] else '['}{low:g}, {high:g}"
            f"{')' if meta['high_open'] else ']'}"
        )
    if low is not None:
        return f"{noun} {'>' if meta['low_open'] else '>='} {low:g}"
    return noun or "text"


def problem(f: dataclasses.Field, value: Any, cfg: TrainConfig | None = None) -> str | None:
    """Why ``value`` is not allowed for setting ``f``, or None."""
    meta = f.metadata
    if value is None:
        return None if meta["optional"] else f"must be {describe_range(meta)}"
    if meta["kind"] is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif meta["kind"] is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    else:
        ok = isinstance(value, str)
    if ok and meta["choices"]:
        ok = value in meta["choices"]
    if ok and meta["low"] is not None:
        ok = value > meta["low"] if meta["low_open"] else value >= meta["low"]
    if ok and meta["high"] is not None:
        ok = value < meta["high"] if meta["high_open"] else value <= meta["high"]
    optional = " or null" if meta["optional"] else ""
    if not ok:
        return f"must be {describe_range(meta)}{optional}"
    if meta["check"] is not None and cfg is not None and not meta["check"][0](value, cfg):
        return meta["check"][1]
    return None


def settings_table() -> str:
    """The Markdown table of every training setting, for docs/settings.md."""
    lines = [
        "| flag (config key) | default | allowed | applies to | what it does |",
        "| --- | --- | --- | --- | --- |",
    ]
    for name, f in SETTINGS.items():
        meta = f.metadata
        allowed = describe_range(meta) + (", or none" if meta["optional"] else "")
        default = (
            "none"
            if f.default is None
            else f"{f.default:g}"
            if isinstance(f.default, float)
            else str(f.default)
        )
        lines.append(
            f"| `--{name.replace('_', '-')}` (`{name}`) | {default} | {allowed} | "
            f"{', '.join(meta['applies']) or 'all'} | "
            f"{meta['help'].replace('|', '/')} |"
        )
    return "\n".join(lines)


def _safe_name(name: str) -> bool:
    """Whether ``name`` can be a folder of its own: the one rule, harness.core.records.NAME."""
    return isinstance(name, str) and NAME.fullmatch(name) is not None


def _coerce(key: str, value: Any) -> Any:
    """Types for values read from a YAML/JSON file or ``--set`` (YAML reads 1e-4 as a
    string); "none"/"null" is None for the settings that allow it."""
    meta = SETTINGS[key].metadata
    kind = meta["kind"]
    try:
        if value is None or (meta["optional"] and str(value).lower() in ("none", "null")):
            return None
        if kind is float:
            return float(value)
        if kind is int:
            if isinstance(value, bool) or float(value) != int(float(value)):
                raise ValueError
            return int(float(value))
        return str(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{key}={value!r}: expected {kind.__name__}") from None


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
    return settings_from(raw, str(path))


def settings_from(raw: dict, where: str) -> dict[str, Any]:
    """TrainConfig fields from a mapping of untyped values (a file's, or ``--set`` pairs'):
    dashes or underscores in keys; an unknown key or a badly typed value is a ConfigError."""
    out = {}
    for key, value in raw.items():
        k = str(key).replace("-", "_")
        if k not in SETTINGS:
            raise ConfigError(f"{where}: unknown setting {key!r}")
        out[k] = _coerce(k, value)
    return out


def resolve(
    preset: str | None = None, file: Path | None = None, overrides: dict[str, Any] | None = None
) -> TrainConfig:
    """Preset, then config file, then flags (``None`` values in overrides are ignored)."""
    values: dict[str, Any] = {}
    from_file = read_config_file(file) if file else {}
    if is_saved_config(from_file):
        values["preset"] = from_file.get("preset")  # a label: the file holds the whole recipe
    else:
        preset = preset or from_file.get("preset")
    if preset is not None:
        if preset not in PRESETS:
            raise ConfigError(f"preset={preset!r}: must be one of {', '.join(PRESETS)}")
        values.update(PRESETS[preset], preset=preset)
    from_file.pop("preset", None)
    values.update(from_file)
    values.update({k: v for k, v in (overrides or {}).items() if v is not None})
    return TrainConfig(**values).validate()


# The settings every run's config.json has held since the first one. A file holding them
# all is a saved run configuration: `--config` re-makes that run whatever today's presets
# are. Settings added since take their defaults, which keep the behaviour from before
# they existed.
SAVED_CONFIG_KEYS = frozenset(
    {
        "arch",
        "activation",
        "layers",
        "units",
        "dropout",
        "l1",
        "l2",
        "max_norm",
        "optimizer",
        "lr",
        "batch_size",
        "epochs",
        "patience",
        "lr_factor",
        "lr_patience",
        "seed",
        "preset",
        "name",
    }
)


def is_saved_config(settings: dict[str, Any]) -> bool:
    """True for a run's saved config.json (read as a whole: its preset is only a label)."""
    return SAVED_CONFIG_KEYS <= set(settings)


def from_dict(d: dict[str, Any]) -> TrainConfig:
    """A TrainConfig from a saved config.json (unknown keys are an error)."""
    unknown = set(d) - set(SETTINGS)
    if unknown:
        raise ConfigError(f"unknown settings {sorted(unknown)}")
    return TrainConfig(**d)


def update_docs(path: Path) -> None:
    """Rewrite the settings table between its markers in ``path`` (docs/settings.md)."""
    text = Path(path).read_text(encoding="utf-8")
    begin, end = "<!-- settings-table:begin -->", "<!-- settings-table:end -->"
    if begin not in text or end not in text:
        raise ConfigError(f"{path}: no {begin} ... {end} markers")
    head, rest = text.split(begin, 1)
    Path(path).write_text(
        f"{head}{begin}\n{settings_table()}\n{end}{rest.split(end, 1)[1]}", encoding="utf-8"
    )


if __name__ == "__main__":  # python -m harness.core.config docs/settings.md
    import sys

    update_docs(Path(sys.argv[1]))
