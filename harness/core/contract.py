"""The input contract: how a model takes CIFAR-10's 0-255 RGB pixels, and what it answers.

harness' own models take the pixels as they are (raw, RGB, NHWC) and answer probabilities.
A model from elsewhere may want pixels / 255, standardized channels, BGR or NCHW, and may
answer logits: ``harness import`` records that as its contract, and every command that
runs the model applies it (the arithmetic is declared once, in the bundle's standalone
``predict.py``: :func:`harness.edge.predict.apply_contract`, so a device applies exactly
what harness measured). Imports neither TensorFlow nor Keras.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from harness.edge.predict import PLAIN, SCALES, apply_contract, output_probs, takes_pixels

LAYOUTS = ("nhwc", "nchw")
CHANNELS = ("rgb", "bgr")
INPUTS = tuple(SCALES)  # raw: 0-255 floats; unit: pixels / 255
OUTPUTS = ("probs", "logits")
# CIFAR-10's training-set channel statistics on the 0-1 scale, as torchvision examples and
# most PyTorch CIFAR code standardize with them: one of the common contracts tried when an
# import scores near chance.
CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)


class ContractError(ValueError):
    """A contract that cannot be applied; the message is one line."""


@dataclass(frozen=True)
class Contract:
    """How 0-255 RGB pixels (N, 32, 32, 3) become the model's input: scaled (``input``),
    then standardized per channel (``mean``, ``std``, in R, G, B order, after scaling), then
    reordered (``channels``) and laid out (``layout``); ``output``: probabilities or logits
    (a softmax makes them probabilities)."""

    layout: str = "nhwc"
    channels: str = "rgb"
    input: str = "raw"
    mean: tuple[float, float, float] | None = None
    std: tuple[float, float, float] | None = None
    output: str = "probs"

    def __post_init__(self):
        for value, allowed, what in (
            (self.layout, LAYOUTS, "layout"),
            (self.channels, CHANNELS, "channels"),
            (self.input, INPUTS, "input"),
            (self.output, OUTPUTS, "output"),
        ):
            if value not in allowed:
                raise ContractError(f"{what} {value!r}: expected one of {', '.join(allowed)}")
        for name in ("mean", "std"):
            value = getattr(self, name)
            if value is None:
                continue
            if len(value) != 3 or not all(np.isfinite(v) for v in value):
                raise ContractError(f"{name} {value!r}: expected three numbers R,G,B")
            object.__setattr__(self, name, tuple(float(v) for v in value))
        if self.std is not None and min(self.std) <= 0:
            raise ContractError(f"std {self.std}: every channel's must be positive")

    @classmethod
    def from_dict(cls, d: dict | None) -> Contract:
        d = {**PLAIN, **(d or {})}
        return cls(
            d["layout"],
            d["channels"],
            d["input"],
            tuple(d["mean"]) if d["mean"] is not None else None,
            tuple(d["std"]) if d["std"] is not None else None,
            d["output"],
        )

    def to_dict(self) -> dict:
        d = asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}

    @property
    def takes_pixels(self) -> bool:
        return takes_pixels(self.to_dict())

    def words(self) -> str:
        """The contract as a sentence, for manifests and messages."""
        if self.takes_pixels:
            pixels = "raw RGB values 0-255 as they are, neither scaled nor standardized"
        else:
            steps = ["RGB values 0-255" if self.input == "raw" else "RGB values / 255 (0-1)"]
            if self.mean is not None or self.std is not None:
                mean = self.mean or (0.0, 0.0, 0.0)
                std = self.std or (1.0, 1.0, 1.0)
                steps.append(
                    f"minus mean {_three(mean)}, divided by std {_three(std)} (per channel, R G B)"
                )
            if self.channels == "bgr":
                steps.append("channels reordered B G R")
            steps.append(
                "laid out NCHW (batch, channels, height, width)"
                if self.layout == "nchw"
                else "laid out NHWC"
            )
            pixels = ", ".join(steps)
        out = (
            "logits (a softmax gives the probabilities)"
            if self.output == "logits"
            else "class probabilities"
        )
        return f"{pixels}; answers {out}"

    def short(self) -> str:
        """``raw rgb nhwc``, ``unit bgr nchw mean/std logits``: for tables and messages."""
        parts = [self.input, self.channels, self.layout]
        if self.mean is not None or self.std is not None:
            parts.append("mean/std")
        if self.output == "logits":
            parts.append("logits")
        return " ".join(parts)

    def apply(self, pixels: np.ndarray) -> np.ndarray:
        return apply_contract(pixels, self.to_dict())

    def probs(self, out: np.ndarray) -> np.ndarray:
        return output_probs(out, self.to_dict())


def _three(v) -> str:
    return ",".join(f"{x:g}" for x in v)


def parse_three(text: str | None, what: str) -> tuple[float, float, float] | None:
    """'0.49,0.48,0.45' -> (0.49, 0.48, 0.45); ContractError for anything else."""
    if text is None:
        return None
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        raise ContractError(f"--{what} {text!r}: expected three numbers R,G,B") from None
    if len(values) != 3:
        raise ContractError(f"--{what} {text!r}: expected three numbers R,G,B")
    return values


class ContractModel:
    """A runtime (anything with ``predict``: harness.export.runtimes, a Keras call) behind a
    contract: ``predict(uint8 pixels (N, 32, 32, 3))`` gives probabilities (N, classes).
    Pixels a model takes as they are go to the runtime as they are (uint8; LiteRT's fast
    path), as they do for harness' own exports."""

    def __init__(
        self, runtime, contract: Contract, name: str | None = None, float_pixels: bool = False
    ):
        self.runtime, self.contract = runtime, contract
        self.name = name or getattr(runtime, "name", "model")
        self._predict = getattr(runtime, "predict", runtime)
        self._d = contract.to_dict()
        self._float = float_pixels  # a runtime that wants float32 even for plain pixels

    def with_contract(self, contract: Contract) -> ContractModel:
        """The same runtime behind another contract."""
        return ContractModel(self.runtime, contract, self.name, self._float)

    def raw(self, pixels: np.ndarray) -> np.ndarray:
        """The model's own output (probabilities or logits) for uint8 pixels."""
        x = apply_contract(pixels, self._d)
        if self._float and x.dtype != np.float32:
            x = x.astype(np.float32)
        return np.asarray(self._predict(x))

    def predict(self, pixels: np.ndarray) -> np.ndarray:
        return output_probs(self.raw(pixels), self._d)
