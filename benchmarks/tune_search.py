"""The study's KerasTuner search, timed: wall time and peak memory of `harness tune`.

The study ran Bayesian optimization (alpha 1e-4, beta 2.6, seed 42) over its BN + ELU
space (n_hidden 1-10, n_neurons 64-256, learning rate 1e-5..1e-3) for 10 trials of up to
10 epochs: 13 min 48 s on its machine, best val accuracy 51.98%, test 51.1%.

This runs the same search through the command line (a child process, so its peak resident
memory is measured on its own), then reads the search's outputs and writes
``<out>/tune_search.json``. The per-trial ``rss_mb`` column shows whether memory grows
from trial to trial. With several ``--search NAME=PRESET [flags]``, the searches run one
after the other in the same call (the study's recipe beside the fast one, say), and the
record gives each one's seconds per trial and its search time relative to the first.

Usage:
    python benchmarks/tune_search.py --archive cifar-10-python.tar.gz \
        --results results/reference --name study-bn-elu
    python benchmarks/tune_search.py --archive cifar-10-python.tar.gz --out results/bench/both \
        --search "study-bn-elu=bn-elu" --search "study-bn-elu-fast=bn-elu-fast" \
        --search "study-bn-elu-fast-stats=bn-elu-fast --input-bn stats"
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path


def run_search(args, name: str, preset: str, flags: list[str]) -> dict:
    """One search as a child process; its record (command, times, memory, summary)."""
    command = [
        sys.executable,
        "-m",
        "harness.cli",
        "--archive",
        args.archive,
        "--results",
        args.results,
        "tune",
        "--preset",
        preset,
        "--tuner",
        "bayesian",
        "--max-trials",
        str(args.max_trials),
        "--epochs",
        str(args.epochs),
        "--name",
        name,
        *flags,
    ]
    t0 = time.perf_counter()
    child = subprocess.Popen(command)
    _, status, usage = os.wait4(child.pid, 0)
    wall = time.perf_counter() - t0
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"search {name} failed (exit {os.waitstatus_to_exitcode(status)})")
    root = Path(args.results) / "tuning" / name
    summary = json.loads((root / "summary.json").read_text())
    trials = json.loads((root / "trials.json").read_text())
    seconds = [t["trial_seconds"] for t in trials if t.get("trial_seconds") is not None]
    return {
        "name": name,
        "command": " ".join(["harness", *command[3:]]),
        "wall_time_s": round(wall, 1),
        "peak_rss_mb": round(usage.ru_maxrss / 1024, 1),
        "rss_mb_after_each_trial": [t["rss_mb"] for t in trials if t.get("rss_mb") is not None],
        "seconds_per_trial": round(sum(seconds) / len(seconds), 1) if seconds else None,
        "summary": summary,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--archive", required=True)
    parser.add_argument("--results", default="results/reference")
    parser.add_argument("--name", default="study-bn-elu")
    parser.add_argument("--preset", default="bn-elu")
    parser.add_argument(
        "--search",
        action="append",
        default=[],
        metavar="NAME=PRESET [FLAGS]",
        help="a search to run (repeatable; default: --name=--preset)",
    )
    parser.add_argument("--max-trials", type=int, default=10)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--out", default="results/bench")
    args = parser.parse_args()

    from harness.core.records import atomic_write_json, machine_facts

    searches = []
    for spec in args.search or [f"{args.name}={args.preset}"]:
        name, _, rest = spec.partition("=")
        preset, *flags = shlex.split(rest)
        searches.append(run_search(args, name, preset, flags))
        done = searches[-1]
        print(
            f"{name}: {done['summary']['search_seconds']:.0f} s of search, "
            f"{done['seconds_per_trial']} s per trial, wall {done['wall_time_s'] / 60:.1f} "
            f"min, peak memory {done['peak_rss_mb']:.0f} MB; best val accuracy "
            f"{done['summary']['best_val_accuracy']:.4f} (study: 0.5198), test "
            f"{done['summary']['best_test_accuracy']:.4f} (study: 0.511)"
        )
    first = searches[0]["summary"]["search_seconds"]
    for done in searches:
        done["search_seconds_vs_first"] = round(done["summary"]["search_seconds"] / first, 3)
    record = {
        "benchmark": "tune_search",
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": machine_facts(),
        "max_trials": args.max_trials,
        "epochs": args.epochs,
        "searches": searches,
    }
    out = Path(args.out) / "tune_search.json"
    atomic_write_json(out, record)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
