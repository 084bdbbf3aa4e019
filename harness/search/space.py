"""What a search may vary (SearchSpace) and the KerasTuner HyperModel that trains it.

``make_hypermodel`` subclasses KerasTuner's ``HyperModel``: ``build`` turns hyperparameters
into a TrainConfig and calls the same model builder and compile step as ``harness train``;
``fit`` adds the recipe's EarlyStopping and ReduceLROnPlateau.
"""

from __future__ import annotations

import json
import zlib
from dataclasses import dataclass, replace
from pathlib import Path

from harness.core.config import SETTINGS, ConfigError, TrainConfig, problem
from harness.data import cifar as data_mod


@dataclass
class SearchSpace:
    """What a search may vary. Defaults are the study's space (with lr on a log scale)."""

    layers: tuple[int, int] = (1, 10)  # n_hidden, inclusive
    units: tuple[int, int] = (64, 256)  # n_neurons, inclusive
    lr: tuple[float, float] = (1e-5, 1e-3)  # sampled log-uniformly
    activations: tuple[str, ...] = ()  # empty = keep the base config's
    dropout: tuple[float, float] | None = None
    l1: tuple[float, float] | None = None  # sampled log-uniformly
    batch_sizes: tuple[int, ...] = ()  # empty = keep the base config's
    pca: tuple[int, ...] = ()  # PCA widths to choose from (0 = none)
    teacher_weight: tuple[float, float] | None = None  # needs a base config with a teacher

    def validate(self) -> "SearchSpace":
        """Each end of each range, each activation and batch size must be a value its
        training setting allows (harness.core.config.SETTINGS); log-scaled ranges start above 0."""
        ranges = {
            "layers": self.layers,
            "units": self.units,
            "lr": self.lr,
            "dropout": self.dropout,
            "l1": self.l1,
            "teacher_weight": self.teacher_weight,
        }
        for key, rng in ranges.items():
            if rng is None:
                continue
            lo, hi = rng
            for value in rng:
                why = problem(SETTINGS[key], value)
                if why:
                    raise ConfigError(f"{key} range {rng}: {value!r} {why}")
            if key in ("lr", "l1") and lo <= 0:
                raise ConfigError(f"{key} range {rng}: lower end must be > 0 (log scale)")
            if (hi < lo) if SETTINGS[key].metadata["kind"] is int else (hi <= lo):
                raise ConfigError(f"{key} range {rng}: empty or inverted")
        for key, values in (
            ("activation", self.activations),
            ("batch_size", self.batch_sizes),
            ("pca", self.pca),
        ):
            for value in values:
                why = problem(SETTINGS[key], value)
                if why:
                    raise ConfigError(f"{key} {value!r} in the search space: {why}")
        return self

    def config_for(self, hp, base: TrainConfig) -> TrainConfig:
        """Register the hyperparameters on ``hp`` and return the config they describe."""

        def clamp(v, rng):
            return min(max(v, rng[0]), rng[1])

        values = dict(
            layers=hp.Int("n_hidden", *self.layers, default=clamp(base.layers, self.layers)),
            units=hp.Int("n_neurons", *self.units, default=clamp(base.units, self.units)),
            lr=hp.Float("learning_rate", *self.lr, sampling="log"),
        )
        if self.activations:
            values["activation"] = hp.Choice("activation", list(self.activations))
        if self.dropout is not None:
            values["dropout"] = hp.Float("dropout", *self.dropout)
        if self.l1 is not None:
            values["l1"] = hp.Float("l1", *self.l1, sampling="log")
        if self.batch_sizes:
            values["batch_size"] = hp.Choice("batch_size", list(self.batch_sizes))
        if self.pca:
            values["pca"] = hp.Choice("pca", list(self.pca))
        if self.teacher_weight is not None:
            values["teacher_weight"] = hp.Float("teacher_weight", *self.teacher_weight)
        return replace(base, **values)

    def widest_pca(self, base: TrainConfig) -> int:
        return max(self.pca) if self.pca else base.pca


def trial_seed(seed: int, values: dict) -> int:
    """A trial's own seed for its initial weights and dropout: the search's ``seed`` and the
    trial's hyperparameter values, so a trial draws the same in every call of a search, one
    trial at a time or side by side."""
    text = json.dumps(values, sort_keys=True, default=str)
    return (seed * 1_000_003 + zlib.crc32(text.encode())) % 2**32


def make_hypermodel(
    base: TrainConfig, space: SearchSpace, splits: data_mod.Splits, results: Path | None = None
):
    import keras_tuner as kt

    from harness.search.kerastuner import BestEpochOnce, EpochTunerCallback
    from harness.train.fit import compile_model, epoch_log, fit_inputs, fit_model, recipe_callbacks
    from harness.train.layers import weights_seeded
    from harness.train.models import build_model
    from harness.train.targets import one_hot, teacher_targets

    mean, variance = splits.norm_stats()
    widest = space.widest_pca(base)
    # The top principal directions come largest first, so a narrower PCA is a slice.
    components = splits.principal_components(widest, base.pool) if widest else None
    # The teacher answers once; each trial mixes its answers with the labels by its weight.
    answers = (
        teacher_targets(replace(base, teacher_weight=1.0), results, splits)[0]
        if base.teacher
        else None
    )
    labels = one_hot(splits.train.y)

    class StudyHyperModel(kt.HyperModel):
        """A TrainConfig per trial, built and compiled exactly as ``harness train`` does."""

        def build(self, hp):
            cfg = space.config_for(hp, base)
            with weights_seeded(trial_seed(base.seed, hp.values)):
                model = build_model(
                    cfg, mean, variance, components[:, : cfg.pca] if cfg.pca else None
                )
            compile_model(model, cfg, len(splits.train))
            return model

        def fit(self, hp, model, x, y, validation_data, callbacks=(), epochs=None, **kwargs):
            cfg = space.config_for(hp, base)
            # Ours first, so epoch_seconds is in the logs KerasTuner records.
            ours = [c for c in (epoch_log(), *recipe_callbacks(cfg)) if c is not None]
            # Async dispatch kept; the best epoch's weights written once, at the end.
            theirs = [BestEpochOnce.replacing(EpochTunerCallback.replacing(c)) for c in callbacks]
            kwargs.pop("shuffle", None)
            targets = (
                None
                if answers is None
                else cfg.teacher_weight * answers + (1 - cfg.teacher_weight) * labels
            )
            return fit_model(
                model,
                cfg,
                fit_inputs(cfg, x, y, validation_data, targets=targets),
                epochs=epochs or cfg.epochs,
                callbacks=[*ours, *theirs],
                **kwargs,
            )

    return StudyHyperModel()
