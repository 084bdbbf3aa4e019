"""Accuracy frontier under a wall-time budget: the best a preset reaches in N minutes.

The question of the study, "how far can a network without convolutions go on CIFAR-10?",
needs a budget to be answerable: any MLP gets better with more epochs. This benchmark gives
a preset a wall-time budget and spends it in two steps, both through ``harness.train.fit.train``
(the code path of ``harness train``):

1. calibration: a short run of the same configuration (4 epochs by default, thrown away)
   measures what an epoch costs (its timed part, the backup, the best-model save, of which
   a long run pays only a share: see calibrate), the first epoch's extra cost
   (compilation) and the final evaluation's cost;
2. the real run, with as many epochs as fit the budget, so its warm-up + cosine schedule
   ends exactly when the budget does.

The budget counts the whole ``train()`` call of the real run (compilation, every epoch and
the final evaluation); the calibration's time is reported beside it, not hidden. The run
directory lands in ``<results>/runs/<name>/`` like any other run, and a JSON record in
``<out>/frontier-<name>.json``.

Usage (the records of docs/frontier.md come from commands like these):
    python benchmarks/frontier.py --archive cifar-10-python.tar.gz --preset mlp-frontier \\
        --budget-min 30 --results results/reference
    python benchmarks/frontier.py --archive ... --preset resnet8 --budget-min 15 ...
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--archive", help="CIFAR-10 archive (default: $HARNESS_ARCHIVE or the cache)")
    p.add_argument("--preset", default="mlp-frontier")
    p.add_argument(
        "--budget-min", type=float, default=30.0, help="wall-time budget of the real run, minutes"
    )
    p.add_argument("--calibration-epochs", type=int, default=4)
    p.add_argument("--name", help="run name (default: the preset)")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a TrainConfig field, e.g. --set units=2048 (repeatable)",
    )
    p.add_argument("--results", default="results", help="results root for the run directory")
    p.add_argument("--out", default="results/bench", help="folder for the JSON record")
    return p.parse_args(argv)


def overrides_from(pairs: list[str]) -> dict:
    from harness.core.config import ConfigError, settings_from

    raw = {}
    for pair in pairs:
        key, _, value = pair.partition("=")
        if not value:
            sys.exit(f"--set {pair!r}: expected KEY=VALUE with KEY a TrainConfig field")
        raw[key] = value
    try:
        return settings_from(raw, "--set")
    except ConfigError as e:
        sys.exit(str(e))


# Share of a long run's epochs that write a new best model: every calibration epoch that
# improves does, later epochs rarely (count the improving epochs in a reference run's
# history.csv, e.g. results/reference/runs/mlp-frontier-pca512/). The plan charges that
# share of the save.
SAVING_SHARE = 0.3


def timed_train(cfg, ds, results: Path, extra_callbacks=()) -> tuple[dict, float]:
    from harness.train.fit import train

    t0 = time.perf_counter()
    metrics = train(cfg, ds, results, overwrite=True, verbose=0, extra_callbacks=extra_callbacks)
    return metrics, time.perf_counter() - t0


def calibrate(cfg, ds, epochs: int, results: Path) -> dict:
    """Seconds per epoch, the first epoch's extra cost and the after-fit cost of ``cfg``.
    A distillation teacher is read from ``results`` (linked into the throw-away folder).

    An epoch's cost is planned as its timed part (the median over epochs 2+), the backup
    between epochs (mean over epochs 2+), the callbacks' own cost (the median over epochs
    2+ that did not improve) and SAVING_SHARE of a save (what improving epochs cost more).
    When every epoch improved, the save cannot be told apart and each epoch is charged one
    in full: some of the budget is left unused rather than overrun. Charging every epoch a
    save left the H200 runs using a quarter of their budget: calibrate such fast nets with
    more epochs (--calibration-epochs 10)."""
    from harness.core.records import RunDir
    from harness.train.callbacks import Stopwatch
    from harness.train.fit import read_history

    short = dataclasses.replace(
        cfg,
        epochs=epochs,
        warmup_epochs=min(cfg.warmup_epochs, 1),
        name=f"{cfg.run_name}-calibration",
    )
    watch = Stopwatch()  # the callbacks' own cost per epoch, and the backup's
    with tempfile.TemporaryDirectory() as tmp:
        if cfg.teacher:
            link = RunDir.named(Path(tmp), cfg.teacher).path
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(RunDir.named(results, cfg.teacher).path.resolve())
        metrics, total = timed_train(short, ds, Path(tmp), extra_callbacks=[watch])
        history = read_history(RunDir.named(tmp, short.name))
    seconds = [row["epoch_seconds"] for row in history]
    # the epochs on which the monitored value improved, as the best-model checkpoint saw it
    sign = -1 if cfg.monitor == "val_loss" else 1
    values = [sign * row[cfg.monitor] for row in history]
    improved = [v > max(values[:i], default=-math.inf) for i, v in enumerate(values)]
    timed = statistics.median(seconds[1:])
    improving = [gap for gap, up in zip(watch.gaps[1:], improved[1:]) if up]
    plain = [gap for gap, up in zip(watch.gaps[1:], improved[1:]) if not up]
    callbacks = statistics.median(plain or improving)
    saving = max(statistics.median(improving) - callbacks, 0.0) if plain and improving else 0.0
    backup = statistics.fmean(watch.after[1:] or watch.after or [0.0])  # the first always writes
    per_epoch = timed + callbacks + SAVING_SHARE * saving + backup
    # whatever the epochs at full cost do not explain: compilation, mostly
    first_extra = metrics["wall_time_s"] - epochs * (timed + callbacks + saving + backup)
    return {
        "epochs": epochs,
        "epoch_seconds": seconds,
        "timed_epoch_s": timed,
        "callbacks_s": callbacks,
        "improving_epochs": len(improving),
        "saving_s": saving,
        "backup_s": backup,
        "saving_share": SAVING_SHARE,
        "seconds_per_epoch": per_epoch,
        "first_epoch_extra_s": max(first_extra, 0.0),
        "after_fit_s": max(total - metrics["wall_time_s"], 0.0),
        "total_s": total,
    }


def accelerator() -> str:
    """The device Keras trained on, e.g. 'NVIDIA H200' or 'cpu' (harness.core.hardware's choice,
    listed once per process)."""
    import keras

    from harness.core.hardware import select

    device = select(keras.backend.backend())
    return device.name if device.kind == "gpu" else "cpu"


def main(argv=None) -> int:
    args = parse_args(argv)
    from harness.core.presets import PRESETS

    backend = PRESETS.get(args.preset, {}).get("backend")
    if backend:
        os.environ.setdefault("KERAS_BACKEND", backend)
    from harness.core.config import resolve
    from harness.core.records import machine_facts, write_record
    from harness.data import cifar as data

    ds = data.load(Path(args.archive) if args.archive else None)
    cfg = resolve(args.preset, overrides={**overrides_from(args.set), "name": args.name})
    budget = args.budget_min * 60
    print(f"calibrating {cfg.run_name} ({args.calibration_epochs} epochs) ...", flush=True)
    cal = calibrate(cfg, ds, args.calibration_epochs, Path(args.results))
    # 3% of the budget is kept as a margin for epoch-to-epoch noise.
    spare = budget * 0.97 - cal["first_epoch_extra_s"] - cal["after_fit_s"]
    epochs = max(math.floor(spare / cal["seconds_per_epoch"]), 1)
    cfg = dataclasses.replace(
        cfg, epochs=epochs, warmup_epochs=min(cfg.warmup_epochs, epochs - 1)
    ).validate()
    print(
        f"{cal['seconds_per_epoch']:.2f} s/epoch -> {epochs} epochs in {args.budget_min:g} min",
        flush=True,
    )
    metrics, total = timed_train(cfg, ds, Path(args.results))
    record = {
        "benchmark": "frontier",
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "preset": args.preset,
        "run": cfg.run_name,
        "config": cfg.to_dict(),
        "budget_s": budget,
        "calibration": cal,
        "train_call_s": round(total, 2),
        "within_budget": total <= budget,
        "budget_used": round(total / budget, 3),
        "epochs": epochs,
        "fit_seconds_per_epoch": round(metrics["wall_time_s"] / epochs, 3),
        "seconds_per_epoch": metrics["seconds_per_epoch"],
        "best_epoch": metrics["best_epoch"],
        "params": metrics["params"],
        "backend": metrics["backend"],
        "accuracy": {k: metrics[k]["accuracy"] for k in ("train", "val", "test")},
        **(
            {"accuracy_without_tta": {k: v["accuracy"] for k, v in metrics["without_tta"].items()}}
            if "without_tta" in metrics
            else {}
        ),
        "data": metrics["data"],
        "machine": {**machine_facts(), "accelerator": accelerator()},
    }
    out = Path(args.out) / f"frontier-{cfg.run_name}.json"
    write_record("frontier", out, record)
    print(
        f"{cfg.run_name}: test {record['accuracy']['test']:.2%} (val "
        f"{record['accuracy']['val']:.2%}), {epochs} epochs, train() {total / 60:.1f} min "
        f"of a {args.budget_min:g} min budget (+{cal['total_s']:.0f} s calibration) -> {out}"
    )
    print(json.dumps(record["accuracy"]))
    if "accuracy_without_tta" in record:
        print("without test-time augmentation:", json.dumps(record["accuracy_without_tta"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
