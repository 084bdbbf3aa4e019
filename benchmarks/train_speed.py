"""Training speed: the study's recipe against the fast presets, in ONE run, on real CIFAR-10.

For each preset this times ``harness.train.fit.train`` (the same code path as ``harness train``)
in a fresh process, so each preset gets the Keras backend it asks for, and reports:

- seconds per epoch (median of epochs 2+; an epoch = training + validation),
- time to a test accuracy target (51% by default): training time summed over epochs until
  the first epoch whose model reaches it; the first epoch's compilation counts,
- final test accuracy (the run's best-val_loss model, as ``metrics.json`` records it),
- achieved GFLOP/s, and its share of a numpy sgemm measured in this same run.

Test accuracy after each epoch is measured by a callback that runs after the epoch's timer
has stopped, so it is not part of the times above.

FLOPs follow the usual convention: 6 x weights per training image (forward + backward),
2 x weights per validation image; for the 5 x 100 SELU net that is 94.2 + 3.5 GFLOP per
epoch.

Usage:
    python benchmarks/train_speed.py --archive cifar-10-python.tar.gz
    python benchmarks/train_speed.py --archive ... --presets selu,selu-fast --out results/bench
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

DEFAULT_PRESETS = "selu,selu-fast,bn-elu,bn-elu-fast"


def measure_sgemm(n: int = 2048, repeats: int = 10) -> float:
    """numpy float32 matmul throughput in GFLOP/s (median over ``repeats``, after warm-up)."""
    rng = np.random.default_rng(0)
    a, b = rng.random((n, n), np.float32), rng.random((n, n), np.float32)
    a @ b
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - t)
    return 2 * n**3 / float(np.median(times)) / 1e9


def machine_facts() -> dict:
    from harness.core.records import machine_facts as facts

    return {
        **facts(),
        "threads": {
            k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "XLA_FLAGS", "TF_NUM_INTRAOP_THREADS")
        },
    }


def run_one(preset: str, archive: str, overrides: dict, target: float) -> dict:
    """Train one preset in this process; return its timings and accuracies."""
    import keras

    from harness.core.config import resolve
    from harness.core.records import RunDir
    from harness.data import cifar as data
    from harness.train.evaluate import evaluate_keras
    from harness.train.fit import read_history, train

    ds = data.load(Path(archive))
    splits = data.split(ds)
    cfg = resolve(preset, overrides={**overrides, "name": f"bench-{preset}"})
    test_acc: list[float] = []

    class TestWatch(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            test_acc.append(evaluate_keras(self.model, splits.test)["accuracy"])

    with tempfile.TemporaryDirectory() as results:
        metrics = train(
            cfg, ds, Path(results), overwrite=True, verbose=0, extra_callbacks=[TestWatch()]
        )
        history = read_history(RunDir.named(Path(results), cfg.run_name))
    seconds = [row["epoch_seconds"] for row in history]
    elapsed = np.cumsum(seconds)
    reached = next((i for i, acc in enumerate(test_acc) if acc >= target), None)
    weights = metrics["params"]["trainable"]
    flops = 6 * weights * len(splits.train) + 2 * weights * len(splits.val)
    per_epoch = float(np.median(seconds[1:] or seconds))
    return {
        "preset": preset,
        "config": cfg.to_dict(),
        "backend": metrics["backend"],
        "epochs": len(seconds),
        "best_epoch": metrics["best_epoch"],
        "seconds_per_epoch": per_epoch,
        "first_epoch_s": seconds[0],
        "train_time_s": float(elapsed[-1]),
        "time_to_target_s": None if reached is None else float(elapsed[reached]),
        "epochs_to_target": None if reached is None else reached + 1,
        "final_test_accuracy": metrics["test"]["accuracy"],
        "best_test_accuracy_seen": max(test_acc),
        "test_accuracy_per_epoch": test_acc,
        "epoch_seconds": seconds,
        "gflop_per_epoch": flops / 1e9,
        "achieved_gflops": flops / 1e9 / per_epoch,
    }


def run_in_subprocess(preset: str, archive: str, overrides: dict, target: float) -> dict:
    from harness.core.config import resolve

    backend = resolve(preset, overrides=overrides).backend or os.environ.get("KERAS_BACKEND")
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    if backend:
        env["KERAS_BACKEND"] = backend
    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        cmd = [
            sys.executable,
            __file__,
            "--one",
            preset,
            "--archive",
            archive,
            "--target",
            str(target),
            "--overrides",
            json.dumps(overrides),
            "--json-out",
            out.name,
        ]
        subprocess.run(cmd, env=env, check=True)
        return json.loads(Path(out.name).read_text())


def print_table(rows: list[dict], sgemm: float, target: float) -> None:
    head = (
        f"{'preset':<14}{'backend':<11}{'batch':>6}{'s/epoch':>9}{'speed-up':>9}"
        f"{'to ' + format(target, '.0%'):>9}{'epochs':>7}{'test':>8}{'GFLOP/s':>9}{'sgemm':>7}"
    )
    print(head)
    for r in rows:
        ratio = r.get("speedup_vs_study")
        to_target = f"{r['time_to_target_s']:.1f}s" if r["time_to_target_s"] else "never"
        print(
            f"{r['preset']:<14}{r['backend']:<11}{r['config']['batch_size']:>6}"
            f"{r['seconds_per_epoch']:>9.3f}{(f'{ratio:.1f}x' if ratio else '-'):>9}"
            f"{to_target:>9}{r['epochs']:>7}{r['final_test_accuracy']:>8.2%}"
            f"{r['achieved_gflops']:>9.1f}{r['achieved_gflops'] / sgemm:>7.0%}"
        )
    print(f"numpy sgemm (2048^3, float32) in this run: {sgemm:.0f} GFLOP/s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--archive", required=True, help="cifar-10-python.tar.gz (or folder)")
    parser.add_argument("--presets", default=DEFAULT_PRESETS, help="comma-separated presets")
    parser.add_argument("--target", type=float, default=0.51, help="test accuracy target")
    parser.add_argument("--overrides", default="{}", help="JSON of TrainConfig overrides")
    parser.add_argument("--out", default="results/bench", help="folder for the JSON")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    parser.add_argument("--json-out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    overrides = json.loads(args.overrides)

    if args.one:  # child process: one preset
        result = run_one(args.one, args.archive, overrides, args.target)
        Path(args.json_out).write_text(json.dumps(result))
        return

    from harness.core.records import atomic_write_json

    sgemm_before = measure_sgemm()
    rows = []
    for preset in args.presets.split(","):
        print(f"--- {preset}", file=sys.stderr, flush=True)
        rows.append(run_in_subprocess(preset, args.archive, overrides, args.target))
    sgemm = float(np.median([sgemm_before, measure_sgemm()]))
    by_name = {r["preset"]: r for r in rows}
    for r in rows:  # each fast preset against the study preset it speeds up
        base = by_name.get(r["preset"].removesuffix("-fast"))
        r["speedup_vs_study"] = base["seconds_per_epoch"] / r["seconds_per_epoch"] if base else None
        r["sgemm_share"] = r["achieved_gflops"] / sgemm
    print_table(rows, sgemm, args.target)
    record = {
        "benchmark": "train_speed",
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": machine_facts(),
        "sgemm_gflops": sgemm,
        "target": args.target,
        "overrides": overrides,
        "results": rows,
    }
    out = Path(args.out) / "train_speed.json"
    atomic_write_json(out, record)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
