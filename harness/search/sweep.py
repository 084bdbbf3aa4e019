"""Learning-rate sweeps: a fresh model per rate, each a normal run, one TensorBoard view.

A sweep trains a FRESH model per learning rate through :func:`harness.train.fit.train` (the
study reused one model across rates, so each rate started where the previous one ended).
Every rate is a normal run directory under ``<results>/sweeps/<name>/runs/``, so its
TensorBoard curves overlay with ``tensorboard --logdir <results>/sweeps/<name>/runs`` and
an interrupted sweep resumes rate by rate, epoch by epoch.
"""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

from harness.core.config import TrainConfig
from harness.core.records import COMPLETED, Results, RunDir, atomic_write_json
from harness.data import cifar as data_mod

DEFAULT_RATES = (1e-5, 3e-5, 1e-4, 3e-4, 1e-3, 3e-3, 1e-2)


CHANCE = 0.2  # a sweep rate whose best val accuracy never beats this (chance: 0.1) diverged


def sweep_lr(
    base: TrainConfig,
    ds: data_mod.Dataset,
    results: Path,
    name: str,
    rates=DEFAULT_RATES,
    epochs: int = 10,
    verbose: int | None = None,
) -> dict:
    """Train a fresh ``base`` model per rate for ``epochs``; write and return sweep.json."""
    from harness.train.fit import RunComplete, TrainingFailed, read_history, train

    root = Results(Path(results)).sweep(name)
    rows = []
    for rate in rates:
        cfg = replace(
            base,
            lr=float(rate),
            epochs=epochs,
            name=f"lr-{rate:g}",
            warmup_epochs=min(base.warmup_epochs, epochs - 1),
        ).validate()
        run = RunDir.named(root, cfg.name)
        try:
            train(cfg, ds, root, verbose=verbose)
        except (RunComplete, TrainingFailed):
            pass  # finished earlier, or diverged: both are recorded in metrics.json
        rows.append(_sweep_row(rate, run.read_metrics() or {}, read_history(run)))
    usable = [r for r in rows if not r["diverged"]]
    best = max(usable, key=lambda r: r["best_val_accuracy"]) if usable else None
    record = {
        "name": name,
        "base_config": base.to_dict(),
        "epochs": epochs,
        "data": ds.record,
        "rates": rows,
        "best_lr": best["lr"] if best else None,
        "tensorboard": str(root / "runs"),
    }
    atomic_write_json(root / "sweep.json", record)
    return record


def _sweep_row(rate: float, metrics: dict, history: list[dict]) -> dict:
    val_acc = [h["val_accuracy"] for h in history if math.isfinite(h.get("val_accuracy", math.nan))]
    val_loss = [h["val_loss"] for h in history if math.isfinite(h.get("val_loss", math.nan))]
    best_acc = max(val_acc) if val_acc else 0.0
    return {
        "lr": float(rate),
        "status": metrics.get("status"),
        "best_val_accuracy": best_acc,
        "best_val_loss": min(val_loss) if val_loss else None,
        "epoch_of_best": (val_acc.index(best_acc) + 1) if val_acc else None,
        "epochs_run": len(history),
        "diverged": metrics.get("status") != COMPLETED or best_acc <= CHANCE,
    }


def format_sweep(record: dict) -> str:
    lines = [f"{'lr':>8}  {'best val acc':>12}  {'best val loss':>13}  {'epoch':>5}  diverged"]
    for r in record["rates"]:
        loss = f"{r['best_val_loss']:.4f}" if r["best_val_loss"] is not None else "-"
        lines.append(
            f"{r['lr']:>8g}  {r['best_val_accuracy']:>12.4f}  {loss:>13}  "
            f"{r['epoch_of_best'] or '-':>5}  {'yes' if r['diverged'] else 'no'}"
        )
    lines.append(f"best learning rate: {record['best_lr']}")
    return "\n".join(lines)
