"""The study's KerasTuner search, timed: wall time and peak memory of `harness tune`.

The study ran Bayesian optimization (alpha 1e-4, beta 2.6, seed 42) over its BN + ELU
space (n_hidden 1-10, n_neurons 64-256, learning rate 1e-5..1e-3) for 10 trials of up to
10 epochs: 13 min 48 s on its machine, best val accuracy 51.98%, test 51.1%.

This runs the same search through the command line (a child process, so its peak resident
memory is measured on its own), then reads the search's outputs and writes
``results/bench/tune_search.json``. The per-trial ``rss_mb`` column shows whether memory
grows from trial to trial.

Usage:
    python benchmarks/tune_search.py --archive cifar-10-python.tar.gz \
        --results results/reference --name study-bn-elu
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--archive", required=True)
    parser.add_argument("--results", default="results/reference")
    parser.add_argument("--name", default="study-bn-elu")
    parser.add_argument("--preset", default="bn-elu")
    parser.add_argument("--max-trials", type=int, default=10)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--out", default="results/bench")
    args = parser.parse_args()

    command = [sys.executable, "-m", "harness.cli", "--archive", args.archive,
               "--results", args.results, "tune", "--preset", args.preset,
               "--tuner", "bayesian", "--max-trials", str(args.max_trials),
               "--epochs", str(args.epochs), "--name", args.name]
    t0 = time.perf_counter()
    subprocess.run(command, check=True)
    wall = time.perf_counter() - t0
    peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024

    root = Path(args.results) / "tuning" / args.name
    summary = json.loads((root / "summary.json").read_text())
    trials = json.loads((root / "trials.json").read_text())
    rss = [t["rss_mb"] for t in trials if t.get("rss_mb") is not None]
    record = {"benchmark": "tune_search", "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
              "command": " ".join(["harness", *command[3:]]), "wall_time_s": round(wall, 1),
              "peak_rss_mb": round(peak_mb, 1), "rss_mb_after_each_trial": rss,
              "summary": summary}
    from harness.records import atomic_write_json, library_versions

    record["versions"] = library_versions()
    out = Path(args.out) / "tune_search.json"
    atomic_write_json(out, record)
    print(f"wall time {wall / 60:.1f} min, peak memory {peak_mb:.0f} MB, "
          f"memory after each trial (MB): {rss}")
    print(f"best val accuracy {summary['best_val_accuracy']:.4f} (study: 0.5198), "
          f"test accuracy {summary['best_test_accuracy']:.4f} (study: 0.511)")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
