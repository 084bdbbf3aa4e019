"""Device budgets for a search: what a network costs on a device, judged before it trains.

A :class:`Budget` bounds three costs of a network as one export (default: LiteRT int8,
batch 1, one thread): ``macs`` (multiply-accumulates per image), flash (the exported file's
bytes) and latency (the p50 of timed batch-1 calls). A search with a budget judges every
candidate network BEFORE it trains (:class:`Judge`), and draws another where it would not
fit, so no trial is spent on a network the device cannot hold:

- MACs are counted on the built Keras model (:func:`harness.export.footprint.macs_per_image`);
  they are exact.
- Flash and latency come from probes: at the start of the search, untrained networks from
  the corners of the search space are exported as the budget's format and timed through
  its runtime on this machine (:func:`measure`, in a TensorFlow subprocess: the exporters
  need TensorFlow, the search may run on JAX). Flash is estimated as the network's weight
  bytes at the export's precision plus the largest overhead a probe's file had; latency
  by a least-squares line ``p50 = a + b x MACs + c x Dense layers`` through the probes.
  Both are estimates, and the record says so and keeps the probes.

After the search, the best trials are exported and benchmarked (``harness bench``, in a
TensorFlow subprocess) and judged again on what was measured: that is the answer a
budgeted search gives (:func:`judge_benched`).
"""

from __future__ import annotations

import importlib.util
import itertools
import json
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass, fields, replace
from pathlib import Path

import numpy as np

from harness.core.config import ConfigError, TrainConfig, from_dict
from harness.core.precisions import EXPORTS, PRECISIONS
from harness.core.records import Results, RunDir, atomic_write_json, read_json

BYTES_PER_WEIGHT = {name: p.bytes_per_weight for name, p in PRECISIONS.items()}
PROBE_CALLS, PROBE_WARMUP = 500, 50
KIB = 1024


class BudgetError(ConfigError):
    """No network of the search space can meet the budget, or the probes failed."""


@dataclass(frozen=True)
class Budget:
    """Upper bounds on one export of a network; None = unbounded."""

    max_latency_us: float | None = None
    max_flash_kb: float | None = None  # KiB: 1024 bytes
    max_macs: int | None = None
    export: str = "tflite-int8"  # <format>-<precision>, one of EXPORTS

    def __bool__(self) -> bool:
        return any(v is not None for v in (self.max_latency_us, self.max_flash_kb, self.max_macs))

    @property
    def format(self) -> str:
        return self.export.split("-")[0]

    @property
    def precision(self) -> str:
        return self.export.split("-")[1]

    @property
    def needs_probes(self) -> bool:
        return self.max_latency_us is not None or self.max_flash_kb is not None

    def validate(self) -> "Budget":
        if self.export not in EXPORTS:
            raise ConfigError(f"budget export {self.export!r}: must be one of {', '.join(EXPORTS)}")
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name != "export" and value is not None and not value > 0:
                raise ConfigError(f"--{f.name.replace('_', '-')} {value!r}: must be > 0")
        return self

    def misses(
        self, macs: float | None, flash_bytes: float | None, latency_us: float | None
    ) -> list[str]:
        """What a network with these costs breaks of the budget (empty: it fits)."""
        out = []
        if self.max_macs is not None and macs is not None and macs > self.max_macs:
            out.append(f"{macs:,.0f} MACs > {self.max_macs:,}")
        if (
            self.max_flash_kb is not None
            and flash_bytes is not None
            and flash_bytes > self.max_flash_kb * KIB
        ):
            out.append(f"{flash_bytes / KIB:.1f} KiB > {self.max_flash_kb:g} KiB")
        if (
            self.max_latency_us is not None
            and latency_us is not None
            and latency_us > self.max_latency_us
        ):
            out.append(f"{latency_us:.2f} us > {self.max_latency_us:g} us")
        return out

    def describe(self) -> str:
        parts = [
            f"<= {self.max_latency_us:g} us" if self.max_latency_us else "",
            f"<= {self.max_flash_kb:g} KiB" if self.max_flash_kb else "",
            f"<= {self.max_macs:,} MACs" if self.max_macs else "",
        ]
        runtime = "LiteRT" if self.format == "tflite" else "onnxruntime"
        return (
            ", ".join(p for p in parts if p)
            + f" as {runtime} {self.precision} (batch 1, one thread)"
        )

    def to_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}


# --------------------------------------------------------------------------- costs


def _kernel_layers() -> tuple[type, ...]:
    """The layer classes that become one kernel call in an exported graph."""
    import keras

    return keras.layers.Dense, keras.layers.Conv2D, keras.layers.DepthwiseConv2D


def weight_bytes(model, precision: str) -> int:
    """Bytes of the Dense and convolution weights of ``model`` in an export of ``precision``:
    kernels at BYTES_PER_WEIGHT, biases at 4 bytes (int32 in int8 files; float32 in
    dynamic-range and float32 files) or 2 (float16). BatchNormalization is folded into the
    layers around it by the exporters, so its parameters are not counted."""
    from harness.export.footprint import KERNELS

    bias = 2 if precision == "float16" else 4
    total = 0
    for layer in _leaf_layers(model):
        if isinstance(layer, _kernel_layers()):
            for w in layer.weights:
                n = int(np.prod(w.shape))
                total += n * (BYTES_PER_WEIGHT[precision] if w.name in KERNELS else bias)
    return total


def dense_layers(model) -> int:
    """Dense and convolution layers: each is one kernel call in the exported graph."""
    return sum(isinstance(layer, _kernel_layers()) for layer in _leaf_layers(model))


def _leaf_layers(model):
    import keras

    for layer in model.layers:
        if isinstance(layer, keras.Model):
            yield from _leaf_layers(layer)
        else:
            yield layer


def _stand_in_stats():
    """Standardization statistics for networks that are only measured, never trained."""
    return np.full(3, 127.5, np.float32), np.full(3, 64.0**2, np.float32)


def architecture(cfg: TrainConfig) -> dict:
    """The fields that decide a network's shape (and so its costs), for caching."""
    keys = ("arch", "layers", "units", "pool", "pca", "bottleneck", "tta", "activation", "input_bn")
    return {k: getattr(cfg, k) for k in keys}


# --------------------------------------------------------------------------- probes


def probe_configs(base: TrainConfig, space) -> list[TrainConfig]:
    """Untrained networks at the corners of the space: fewest/most layers, narrowest/widest
    units, smallest/largest PCA width (when searched); duplicates dropped."""
    pcas = sorted({min(space.pca), max(space.pca)}) if space.pca else [base.pca]
    out, seen = [], set()
    for layers, units, pca in itertools.product(
        sorted(set(space.layers)), sorted(set(space.units)), pcas
    ):
        cfg = replace(base, layers=layers, units=units, pca=pca, teacher=None)
        key = json.dumps(architecture(cfg), sort_keys=True)
        if key not in seen:
            seen.add(key)
            out.append(cfg)
    return out


def measure(
    cfg: TrainConfig, export: str, calls: int = PROBE_CALLS, warmup: int = PROBE_WARMUP
) -> dict:
    """Export an untrained ``cfg`` network as ``export`` and time it at batch 1, one thread.

    Runs where Keras runs on TensorFlow (see :func:`measure_in_subprocess`). The weights
    are the initializer's; what an export costs depends on the shapes, not the values."""
    from harness.export import convert as export_mod
    from harness.export import runtimes
    from harness.export.bench import latency_us
    from harness.export.footprint import macs_per_image
    from harness.train.models import build_model

    fmt, precision = export.split("-")
    model = build_model(cfg, *_stand_in_stats())
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (1, 32, 32, 3)).astype(np.uint8)
    with tempfile.TemporaryDirectory(prefix="harness-probe.") as tmp:
        lean = export_mod.exportable(model)
        if fmt == "onnx":
            path = export_mod.export_onnx(lean, Path(tmp) / "model.onnx")
        else:
            saved = export_mod.export_saved_model(lean, Path(tmp) / "saved_model")
            representative = rng.integers(0, 256, (64, 32, 32, 3)).astype(np.uint8)
            path = Path(tmp) / "model.tflite"
            path.write_bytes(export_mod.tflite_bytes(saved, precision, representative))
        timed = latency_us(runtimes.load(path, threads=1).predict, pixels, calls, warmup)
        flash = path.stat().st_size
    return {
        "architecture": architecture(cfg),
        "macs": macs_per_image(model),
        "layers": dense_layers(model),
        "weight_bytes": weight_bytes(model, precision),
        "flash_bytes": flash,
        "p50_us": round(timed["p50_us"], 3),
        "calls": calls,
    }


def _on_tensorflow(args: list[str], doing: str, stdin: str | None = None) -> str:
    """``python -m ARGS`` in a fresh process whose Keras runs on TensorFlow (the exporters
    need it) on the CPU (timing is on the CPU, as on the device); its stdout, or
    BudgetError naming what it was ``doing`` and its last word."""
    if importlib.util.find_spec("tensorflow") is None:
        raise BudgetError(
            f"{doing} needs TensorFlow, which this Python lacks (a training host "
            "may run JAX alone): trained trials are kept, so run the same "
            "command where TensorFlow is installed to finish the search"
        )
    env = {
        **os.environ,
        "KERAS_BACKEND": "tensorflow",
        "TF_CPP_MIN_LOG_LEVEL": "3",
        "CUDA_VISIBLE_DEVICES": "-1",
    }
    done = subprocess.run(
        [sys.executable, "-m", *args], input=stdin, capture_output=True, text=True, env=env
    )
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["(no message)"])[-1]
        raise BudgetError(f"{doing} failed: {last}")
    return done.stdout


def measure_in_subprocess(configs: list[TrainConfig], export: str) -> list[dict]:
    """:func:`measure` for each config, in a fresh Python whose Keras runs on TensorFlow."""
    request = json.dumps({"export": export, "configs": [c.to_dict() for c in configs]})
    out = _on_tensorflow(["harness.search.budget"], "measuring the probe networks", request)
    return json.loads(out.strip().splitlines()[-1])


def fit(probes: list[dict]) -> dict:
    """The cost model from measured probes: latency by least squares on [1, MACs, layers];
    flash overhead = the largest (file bytes - weight bytes) of any probe."""
    x = np.array([[1.0, p["macs"], p["layers"]] for p in probes])
    y = np.array([p["p50_us"] for p in probes])
    coef = np.linalg.lstsq(x, y, rcond=None)[0]
    predicted = x @ coef
    overhead = max(p["flash_bytes"] - p["weight_bytes"] for p in probes)
    return {
        "latency_us": {
            "intercept": float(coef[0]),
            "per_mac": float(coef[1]),
            "per_layer": float(coef[2]),
            "max_abs_error_us": float(np.abs(predicted - y).max()),
        },
        "flash_overhead_bytes": int(overhead),
    }


def calibrate(budget: Budget, base: TrainConfig, space, path: Path) -> dict:
    """The probes and cost model of this search, measured once and kept at ``path`` (a
    resumed search reuses them; a different budget export or space measures again)."""
    configs = probe_configs(base, space)
    wanted = {"export": budget.export, "architectures": [architecture(c) for c in configs]}
    if path.exists():
        saved = read_json(path)
        if {k: saved.get(k) for k in wanted} == wanted:
            return saved
    probes = measure_in_subprocess(configs, budget.export)
    record = {
        **wanted,
        "method": (
            f"{len(probes)} untrained networks from the corners of the search space, exported "
            f"as {budget.export} and timed at batch 1 on one thread ({PROBE_CALLS} calls after "
            f"{PROBE_WARMUP}) at the start of the search; latency: least squares on MACs and "
            "Dense layers; flash: weight bytes + the largest probe overhead"
        ),
        "probes": probes,
        "model": fit(probes),
    }
    atomic_write_json(path, record)
    return record


class Judge:
    """A candidate's costs predicted from its config, and whether they fit the budget."""

    def __init__(self, budget: Budget, calibration: dict | None = None):
        self.budget, self.calibration = budget, calibration
        self._cache: dict[str, dict] = {}

    def costs(self, cfg: TrainConfig) -> dict:
        key = json.dumps(architecture(cfg), sort_keys=True)
        if key not in self._cache:
            from harness.export.footprint import macs_per_image
            from harness.train.models import build_model

            model = build_model(cfg, *_stand_in_stats())
            costs = {"macs": macs_per_image(model)}
            if self.calibration is not None:
                m = self.calibration["model"]
                lat = m["latency_us"]
                costs["flash_bytes_est"] = (
                    weight_bytes(model, self.budget.precision) + m["flash_overhead_bytes"]
                )
                costs["latency_us_est"] = round(
                    lat["intercept"]
                    + lat["per_mac"] * costs["macs"]
                    + lat["per_layer"] * dense_layers(model),
                    3,
                )
            self._cache[key] = costs
        return self._cache[key]

    def misses(self, cfg: TrainConfig) -> list[str]:
        c = self.costs(cfg)
        return self.budget.misses(c["macs"], c.get("flash_bytes_est"), c.get("latency_us_est"))


# --------------------------------------------------------------------------- after the search


def bench_in_subprocess(
    runs: list[Path], budget: Budget, archive: Path | None, home: Path | None, results: Path
) -> None:
    """What ``harness bench RUNS --export <format>`` does, in a fresh process on TensorFlow
    (the exporters need it: ``python -m harness.export.bench``), without the Keras rows
    (nothing judges them); its records are read back by :func:`judge_benched`."""
    request = {
        "runs": [str(r) for r in runs],
        "export": budget.format,
        "keras": False,
        "results": str(results),
        "archive": str(archive) if archive else None,
        "home": str(home) if home else None,
    }
    _on_tensorflow(
        ["harness.export.bench"], "benchmarking the search's best networks", json.dumps(request)
    )


def judge_measured(budget: Budget, candidates: list[dict], results: Path, bench, val=None) -> dict:
    """:func:`judge_benched` after ``bench(runs)`` has benchmarked the candidates' runs; a
    candidate that misses the latency limit alone, by at most :data:`RETIME_MARGIN`, is
    benchmarked once more and judged on that measurement (its first p50 is kept as
    ``measured.first_p50_us``): a timer disturbed for a moment should not turn down a
    network, while one that is slow misses twice."""
    bench([RunDir.named(results, c["run"]).path for c in candidates])
    first = {}
    for cand in candidates:
        row = _judged_row(budget, results, cand["run"])
        if _near_miss(budget, row):
            first[cand["run"]] = round(row["p50_us"], 3)
    if first:
        bench([RunDir.named(results, run).path for run in first])
    return judge_benched(budget, candidates, results, val, first)


def _judged_row(budget: Budget, results: Path, run: str) -> dict:
    """The row of ``run``'s bench record for the budget's export."""
    record = read_json(Results(Path(results)).bench(run))
    return next(
        r
        for r in record["rows"]
        if (r["format"], r["precision"]) == (budget.format, budget.precision)
    )


RETIME_MARGIN = 1.25  # a first p50 up to 25% over the limit is measured again


def _near_miss(budget: Budget, m: dict) -> bool:
    """A bench row over the latency limit by at most RETIME_MARGIN, and within every other
    limit."""
    if budget.max_latency_us is None or m["p50_us"] <= budget.max_latency_us:
        return False
    return m["p50_us"] <= budget.max_latency_us * RETIME_MARGIN and not budget.misses(
        m["macs"], m["flash_bytes"], None
    )


def judge_benched(
    budget: Budget,
    candidates: list[dict],
    results: Path,
    val=None,
    first_p50: dict[str, float] | None = None,
) -> dict:
    """The budget part of a search summary, from the bench records of ``candidates``
    (dicts with run, trial_id, val_accuracy and the predicted costs), in their order;
    ``first_p50`` holds the first p50 of the runs that were timed twice.

    With ``val`` (a :class:`harness.data.cifar.Split`), each candidate's judged file also answers
    the validation images, and the best is the fitting candidate whose file scores best on
    them (ties: the order given): the file is what deploys, and its quantization costs
    each network a different share of its accuracy. Without, the first that fits."""
    from harness.export.runtimes import load, predict_batched
    from harness.train.evaluate import score

    rows, first_p50 = [], first_p50 or {}
    for cand in candidates:
        row = _judged_row(budget, results, cand["run"])
        misses = budget.misses(row["macs"], row["flash_bytes"], row["p50_us"])
        measured = {
            "test_accuracy": row["test"]["accuracy"],
            "p50_us": round(row["p50_us"], 3),
            "flash_bytes": row["flash_bytes"],
            "macs": row["macs"],
            "arena_bytes": row.get("arena_bytes"),
            "file": row["file"],
            "bench": f"bench/{cand['run']}.json",
        }
        if val is not None:
            path = RunDir.named(results, cand["run"]).exports / row["file"]
            measured["val_accuracy"] = score(predict_batched(load(path), val.x), val.y)["accuracy"]
        if cand["run"] in first_p50:
            measured["first_p50_us"] = first_p50[cand["run"]]
        rows.append({**cand, "measured": measured, "fits": not misses, "misses": misses})
    fitting = [r for r in rows if r["fits"]]
    if val is not None:
        fitting.sort(key=lambda r: -r["measured"]["val_accuracy"])  # stable: ties keep order
    return {
        "limits": budget.to_dict(),
        "described": budget.describe(),
        "candidates": rows,
        "ranked_by": (
            "the judged file's validation accuracy"
            if val is not None
            else "the trained model's validation accuracy"
        ),
        "best": fitting[0]["run"] if fitting else None,
    }


def format_budget(part: dict) -> str:
    lines = [
        f"budget: {part['described']}",
        f"{'run':<28}{'val acc':>8}{'file val':>9}{'test acc':>9}{'p50 us':>8}{'KiB':>8}"
        f"{'MACs':>11}{'est. us':>8}  fits",
    ]
    for r in part["candidates"]:
        m = r["measured"]
        est = r.get("predicted", {}).get("latency_us_est")
        file_val = "-" if m.get("val_accuracy") is None else f"{m['val_accuracy']:.4f}"
        again = (
            ""
            if m.get("first_p50_us") is None
            else f" (timed again: the first p50 was {m['first_p50_us']:.2f} us)"
        )
        lines.append(
            f"{r['run']:<28}{r['val_accuracy']:>8.4f}{file_val:>9}"
            f"{m['test_accuracy']:>9.4f}"
            f"{m['p50_us']:>8.2f}{m['flash_bytes'] / KIB:>8.1f}{m['macs']:>11,}"
            f"{'-' if est is None else f'{est:.2f}':>8}  "
            f"{'yes' if r['fits'] else 'no: ' + '; '.join(r['misses'])}{again}"
        )
    best = part["best"]
    lines.append(
        f"best within the budget, by {part.get('ranked_by', 'validation accuracy')}: {best}"
        if best
        else "no benchmarked network met the budget as measured"
    )
    return "\n".join(lines)


def format_calibration(calibration: dict) -> str:
    """The probes' latency line, as one would write it by hand."""
    lat = calibration["model"]["latency_us"]

    def signed(value: float, digits: int) -> str:  # '+ 0.013', '- 0.16'
        return f"{'-' if value < 0 else '+'} {abs(value):.{digits}f}"

    return (
        f"latency {lat['intercept']:.2f} us {signed(lat['per_mac'] * 1e3, 3)} us per "
        f"thousand MACs {signed(lat['per_layer'], 2)} us per Dense layer"
    )


def _main() -> None:
    """Subprocess entry: a JSON request on stdin, one JSON line of measurements on stdout."""
    request = json.load(sys.stdin)
    out = [measure(from_dict(c), request["export"]) for c in request["configs"]]
    print(json.dumps(out))


if __name__ == "__main__":
    _main()
