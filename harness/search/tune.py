"""KerasTuner searches, resumable, on one machine or distributed (sweeps: harness.search.sweep;
the space and the HyperModel: harness.search.space).

A search subclasses KerasTuner's ``HyperModel``: ``build`` turns hyperparameters into a
TrainConfig and calls the same model builder and compile step as ``harness train``;
``fit`` adds the recipe's EarlyStopping and ReduceLROnPlateau. KerasTuner owns the loop,
its state (so a re-run resumes without redoing finished trials) and, through
KERASTUNER_TUNER_ID / KERASTUNER_ORACLE_IP / KERASTUNER_ORACLE_PORT, the distribution over
a chief and workers.

Layout of ``<results>/tuning/<name>/``::

    keras_tuner/               KerasTuner's own state (oracle, trials, checkpoints)
    trial_meta/<id>.json       who ran each trial, its seconds and memory (one writer each)
    trials.csv, trials.json    the trial table: hyperparameters, score, epochs, seconds
    best_hyperparameters.json
    best/                      the best trial's model as a normal run directory
"""

from __future__ import annotations

import gc
import os
import resource
import socket
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from harness.core.config import ConfigError, TrainConfig
from harness.core.hardware import label_of
from harness.core.records import (
    COMPLETED,
    Results,
    RunDir,
    atomic_write_csv,
    atomic_write_json,
    read_json,
    write_record,
)
from harness.data import cifar as data_mod
from harness.search.space import SearchSpace, make_hypermodel

TUNERS = ("bayesian", "hyperband", "random")
OBJECTIVE = "val_accuracy"  # what every search maximizes


# --------------------------------------------------------------------------- search


def _tuner_class(
    kind: str,
    judge=None,
    config: TrainConfig | None = None,
    space: SearchSpace | None = None,
    stop_behind: bool = False,
):
    import keras_tuner as kt

    base = {
        "bayesian": kt.BayesianOptimization,
        "hyperband": kt.Hyperband,
        "random": kt.RandomSearch,
    }[kind]

    def run_trial(self, trial, *args, **kwargs):
        """Records who ran the trial and on which device, its per-epoch history (KerasTuner
        keeps only the best epoch), its wall time and the process's memory after it; with
        ``stop_behind``, stops it where it falls behind the finished trials' median
        (:mod:`harness.search.stopping`) and records the epoch."""
        import keras

        from harness.core.hardware import select
        from harness.search.stopping import STOPPED_AT, MedianStop

        t0 = time.perf_counter()
        meta_dir = Path(self.project_dir).parent / "trial_meta"
        stopper = MedianStop(meta_dir, OBJECTIVE) if stop_behind else None
        if stopper is not None:
            kwargs["callbacks"] = [*kwargs.get("callbacks", []), stopper]
        result = base.run_trial(self, trial, *args, **kwargs)
        runs = result if isinstance(result, list) else [result]
        history = next((r.history for r in runs if hasattr(r, "history")), {})
        costs = (
            {}
            if judge is None
            else {
                "costs": judge.costs(space.config_for(trial.hyperparameters.copy(), config)),
                "turned_down": getattr(self.oracle, "turned_down", {}).get(trial.trial_id),
            }
        )
        meta = {
            "trial_id": trial.trial_id,
            "tuner_id": self.tuner_id,
            **costs,
            "device": select(keras.backend.backend()).record,
            "seconds": round(time.perf_counter() - t0, 3),
            "rss_mb": _rss_mb(),
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "history": {k: [float(v) for v in vals] for k, vals in history.items()},
            STOPPED_AT: None if stopper is None else stopper.stopped_at,
        }
        atomic_write_json(meta_dir / f"{trial.trial_id}.json", meta)
        return result

    return type(f"Harness{base.__name__}", (base,), {"run_trial": run_trial})


def _rss_mb() -> float:
    """Current resident memory of this process (not the peak)."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
        return round(pages * os.sysconf("SC_PAGE_SIZE") / 2**20, 1)
    except (OSError, ValueError, IndexError):
        return float("nan")


def make_tuner(
    kind: str,
    hypermodel,
    directory: Path,
    max_trials: int,
    epochs: int,
    seed: int = 42,
    judge=None,
    base: TrainConfig | None = None,
    space: SearchSpace | None = None,
    stop_behind: bool = False,
):
    """A KerasTuner tuner over ``directory`` (reloaded, never overwritten: that is resume)."""
    if kind not in TUNERS:
        raise ConfigError(f"tuner={kind!r}: must be one of {', '.join(TUNERS)}")
    if stop_behind and kind == "hyperband":
        raise ConfigError("hyperband stops trials by its own brackets: leave out --stop-behind")
    common = dict(
        objective=OBJECTIVE,
        directory=str(directory),
        project_name="keras_tuner",
        overwrite=False,
        seed=seed,
    )
    from harness.search.kerastuner import write_state_whole

    write_state_whole()
    cls = _tuner_class(kind, judge, base, space, stop_behind)
    if kind == "bayesian":  # the study's settings
        return cls(hypermodel, max_trials=max_trials, alpha=1e-4, beta=2.6, **common)
    if kind == "hyperband":
        return cls(hypermodel, max_epochs=epochs, factor=3, **common)
    return cls(hypermodel, max_trials=max_trials, **common)


def wait_for_chief(ip: str, port: int, timeout: float) -> None:
    """A worker's first step: reach the chief's oracle, or fail naming the address."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection((ip, port), timeout=2).close()
            return
        except OSError as e:
            if time.monotonic() >= deadline:
                raise ConnectionError(
                    f"cannot reach the chief at {ip}:{port} after {timeout:g} s ({e})"
                ) from None
            time.sleep(0.5)


def search_dir(results: Path, name: str) -> Path:
    """``<results>/tuning/<name>/``: where a search keeps everything but its trial runs."""
    return Results(Path(results)).tuning(name)


def tune(
    base: TrainConfig,
    ds: data_mod.Dataset,
    results: Path,
    name: str,
    space: SearchSpace,
    kind: str = "bayesian",
    max_trials: int = 10,
    worker_timeout: float = 600.0,
    verbose: int = 1,
    budget=None,
    bench_top: int = 3,
    archive: Path | None = None,
    home: Path | None = None,
    stop_behind: bool = False,
    parallel: int = 1,
) -> dict | None:
    """Run (or resume, or join) a search; on the chief or alone, write every output.

    With ``stop_behind``, a trial that falls behind the finished trials' median stops
    (:mod:`harness.search.stopping`). With ``parallel`` > 1, that many trials train at once
    in this process (:func:`harness.search.kerastuner.search_side_by_side`; JAX only).

    With a ``budget`` (:class:`harness.search.budget.Budget`), only networks predicted to fit it
    train, and afterwards the ``bench_top`` best trials become runs under
    ``<results>/runs/<name>-t<trial>/``, are benchmarked (``harness bench``, reading the
    data from ``archive``/``home`` as this process did) and judged on what was measured.

    Returns the summary on the process that writes outputs, None on a worker.
    """
    import keras

    from harness.core.hardware import select
    from harness.search.kerastuner import (
        constrain,
        mend_retries,
        propose_from_every_initial_point,
        search_side_by_side,
        watch_workers,
    )
    from harness.train.fit import check_backend

    check_backend(base)
    select(keras.backend.backend())  # a missing GPU stops the search before it starts
    space.validate()
    role = os.environ.get("KERASTUNER_TUNER_ID")
    check_parallel(parallel, role, keras.backend.backend())
    root = search_dir(results, name)
    splits = data_mod.split(ds)
    if base.teacher_views:
        raise ConfigError(
            "tune distills from a teacher's answers on the clean images only: "
            "leave teacher_views at 0 (train with --teacher-views instead)"
        )
    if space.teacher_weight is not None and not base.teacher:
        raise ConfigError("a teacher-weight range needs a teacher: add --teacher RUN")
    judge = _judge(budget, base, space, root) if budget and role in (None, "chief") else None
    tuner = make_tuner(
        kind,
        make_hypermodel(base, space, splits, results),
        root,
        max_trials,
        base.epochs,
        base.seed,
        judge,
        base,
        space,
        stop_behind,
    )
    if role in (None, "chief"):
        mend_retries(tuner.oracle)
    if judge is not None:
        oracle = tuner.oracle

        def misses(values):
            hp = oracle.hyperparameters.copy()
            hp.values.update(values)
            return judge.misses(space.config_for(hp, base))

        constrain(oracle, misses)
    if role == "chief" or parallel > 1:
        propose_from_every_initial_point(tuner.oracle)
    if role == "chief":
        watch_workers(tuner.oracle, worker_timeout)
    atomic_write_json(
        root / "search.json",
        {
            "name": name,
            "tuner": kind,
            "max_trials": max_trials,
            "stop_behind": stop_behind,
            "parallel": parallel,
            "space": space.__dict__,
            "base_config": base.to_dict(),
            "data": ds.record,
        },
    )
    # KerasTuner collects garbage before every trial: with the objects that outlive the
    # search (modules, data, tuner) frozen out of the collector's reach, that is cheap.
    gc.collect()
    gc.freeze()
    t0 = time.perf_counter()
    fit_args = (splits.train.x, splits.train.y)
    fit_kwargs = {"validation_data": (splits.val.x, splits.val.y), "verbose": verbose}
    try:
        if parallel > 1:
            search_side_by_side(tuner, parallel, *fit_args, **fit_kwargs)
        else:
            tuner.search(*fit_args, **fit_kwargs)
    finally:
        gc.unfreeze()
    if role not in (None, "chief"):
        return None  # a worker: the chief writes the outputs
    summary = write_outputs(tuner, root, base, space, ds, splits, time.perf_counter() - t0)
    if judge is None:
        return summary
    return judge_search(
        tuner,
        root,
        base,
        space,
        ds,
        splits,
        summary,
        judge,
        bench_top,
        Path(results),
        archive,
        home,
    )


def check_parallel(parallel: int, role: str | None, backend: str | None = None) -> None:
    """Trials side by side: a whole number, in a search of its own, on JAX (whose
    programs release the interpreter while they run; TensorFlow's Keras was not made to
    train two models from two threads). ``backend`` None: not checked yet."""
    if parallel < 1:
        raise ConfigError(f"parallel={parallel}: must be 1 or more")
    if parallel == 1:
        return
    if role is not None:
        raise ConfigError(
            "--parallel trains trials side by side in one process; a chief and its workers "
            "spread them over processes already: use one or the other"
        )
    if backend not in (None, "jax"):
        raise ConfigError(
            f"--parallel needs the JAX backend (this search runs on {backend}): "
            "set KERAS_BACKEND=jax or --backend jax"
        )


def calibrate_search(
    base: TrainConfig, results: Path, name: str, space: SearchSpace, budget
) -> dict:
    """Only the probes of a budgeted search: ``budget_calibration.json`` written (or
    reused) under ``<results>/tuning/<name>/``, for a search that will train where
    TensorFlow is missing. Returns the calibration."""
    space.validate()
    if not budget.needs_probes:
        raise ConfigError(
            "only a latency or flash budget has probes to measure "
            "(--max-latency-us, --max-flash-kb)"
        )
    root = search_dir(results, name)
    return _judge(budget, base, space, root).calibration


def _judge(budget, base: TrainConfig, space: SearchSpace, root: Path):
    """The search's judge: probes measured (or reloaded) when flash or latency is bounded;
    a budget that even the space's smallest network misses stops here."""
    from harness.search.budget import BudgetError, Judge, calibrate, probe_configs

    budget.validate()
    root.mkdir(parents=True, exist_ok=True)
    calibration = (
        calibrate(budget, base, space, root / "budget_calibration.json")
        if budget.needs_probes
        else None
    )
    judge = Judge(budget, calibration)
    smallest = probe_configs(base, space)[0]
    if judge.misses(smallest):
        raise BudgetError(
            f"even the smallest network of the search space ({smallest.layers} "
            f"x {smallest.units}, PCA {smallest.pca}) misses the budget: "
            f"{'; '.join(judge.misses(smallest))}"
        )
    return judge


def judge_search(
    tuner,
    root: Path,
    base: TrainConfig,
    space: SearchSpace,
    ds: data_mod.Dataset,
    splits: data_mod.Splits,
    summary: dict,
    judge,
    bench_top: int,
    results: Path,
    archive,
    home,
) -> dict:
    """The ``bench_top`` best trials as runs, benchmarked and judged; the summary gains
    ``budget`` (see :func:`harness.search.budget.judge_benched`)."""
    from harness.search import budget as budget_mod

    candidates = []
    for trial in tuner.oracle.get_best_trials(bench_top):
        cfg = space.config_for(trial.hyperparameters.copy(), base)
        run = RunDir.named(results, f"{root.name}-t{trial.trial_id}")
        _write_trial_run(tuner, trial, run, replace(cfg, name=run.name), root, ds, splits, run.name)
        candidates.append(
            {
                "run": run.name,
                "trial_id": trial.trial_id,
                "val_accuracy": float(trial.score),
                "hyperparameters": trial.hyperparameters.values,
                "predicted": judge.costs(cfg),
            }
        )
    part = budget_mod.judge_measured(
        judge.budget,
        candidates,
        results,
        lambda runs: budget_mod.bench_in_subprocess(runs, judge.budget, archive, home, results),
        splits.val,
    )
    part["calibration"] = "budget_calibration.json" if judge.calibration is not None else None
    part["proposals_turned_down"] = sum(tuner.oracle.turned_down.values())
    summary = {**summary, "budget": part}
    write_record("tuning", root / "summary.json", summary)
    return summary


def _trial_rows(tuner, root: Path) -> list[dict]:
    from harness.search.stopping import STOPPED_AT

    rows = []
    for trial in tuner.oracle.trials.values():
        meta = _trial_meta(root, trial.trial_id)
        history = meta.get("history", {})
        rows.append(
            {
                "trial_id": trial.trial_id,
                "status": str(trial.status),
                "score": None if trial.score is None else float(trial.score),
                **{f"hp_{k}": v for k, v in trial.hyperparameters.values.items()},
                "epochs": len(history.get("loss", [])),
                STOPPED_AT: meta.get(STOPPED_AT),
                "train_seconds": round(sum(history.get("epoch_seconds", [])), 3),
                "worker": meta.get("tuner_id"),
                "trial_seconds": meta.get("seconds"),
                "rss_mb": meta.get("rss_mb"),
                "device": label_of(meta.get("device")),
                **meta.get("costs", {}),
            }
        )
    return sorted(rows, key=lambda r: r["trial_id"])


def write_outputs(
    tuner,
    root: Path,
    base: TrainConfig,
    space: SearchSpace,
    ds: data_mod.Dataset,
    splits: data_mod.Splits,
    search_seconds: float,
) -> dict:
    """Trial table, best hyperparameters, and the best model as a run directory.

    ``search_seconds`` adds to those of the summary already there: a finished search run
    again (to judge it where TensorFlow is, say) keeps the time its trials took."""
    from harness.search.stopping import STOPPED_AT

    before = root / "summary.json"
    if before.exists():
        search_seconds += read_json(before).get("search_seconds", 0.0)
    rows = _trial_rows(tuner, root)
    atomic_write_json(root / "trials.json", rows)
    keys = list(dict.fromkeys(k for r in rows for k in r))
    atomic_write_csv(root / "trials.csv", [keys, *([r.get(k, "") for k in keys] for r in rows)])

    best_trial = tuner.oracle.get_best_trials(1)[0]
    best_hp = best_trial.hyperparameters
    cfg = replace(space.config_for(best_hp.copy(), base), name="best")
    run = RunDir(root / "best")
    evaluated = _write_trial_run(tuner, best_trial, run, cfg, root, ds, splits, f"{root.name}/best")
    summary = {
        "name": root.name,
        "trials": len(rows),
        "completed": sum(r["status"] == "COMPLETED" for r in rows),
        "stopped_behind": sum(r[STOPPED_AT] is not None for r in rows),
        "search_seconds": round(search_seconds, 1),
        "best_trial": best_trial.trial_id,
        "best_val_accuracy": float(best_trial.score),
        "best_test_accuracy": evaluated["test"]["accuracy"],
        "best_hyperparameters": best_hp.values,
        "best_run": run.path.name,
    }  # relative to this summary's folder
    atomic_write_json(
        root / "best_hyperparameters.json",
        {
            "trial_id": best_trial.trial_id,
            "score": float(best_trial.score),
            "values": best_hp.values,
            "config": cfg.to_dict(),
        },
    )
    write_record("tuning", root / "summary.json", summary)
    return summary


def _write_trial_run(
    tuner,
    trial,
    run: RunDir,
    cfg: TrainConfig,
    root: Path,
    ds: data_mod.Dataset,
    splits: data_mod.Splits,
    label: str,
) -> dict:
    """A trial's model as a normal run directory at ``run`` (config, model, history,
    metrics evaluated on every split, named ``label``); returns the evaluation."""
    from harness.train.evaluate import evaluate_splits
    from harness.train.fit import run_record, save_model

    model = tuner.load_model(trial)
    run.path.mkdir(parents=True, exist_ok=True)
    run.write_config(cfg.to_dict())
    save_model(model, run.model)
    meta = _trial_meta(root, trial.trial_id)
    history = meta.get("history", {})
    _write_trial_history(history, run)
    evaluated = evaluate_splits(model, splits)
    # The device: where the trial trained (its worker's record; none from before issue 21).
    metrics = run_record(
        label,
        cfg,
        model,
        ds,
        meta.get("device"),
        status=COMPLETED,
        epochs_run=len(history.get("loss", [])),
        best_epoch=int(np.argmax(history.get("val_accuracy", [0])) + 1),
        wall_time_s=round(sum(history.get("epoch_seconds", [])), 3),
        tuning={"name": root.name, "trial_id": trial.trial_id, "score": float(trial.score)},
        **evaluated,
    )
    run.write_metrics(metrics)
    return evaluated


def _trial_meta(root: Path, trial_id: str) -> dict:
    path = root / "trial_meta" / f"{trial_id}.json"
    return read_json(path) if path.exists() else {}


def _write_trial_history(history: dict[str, list[float]], run: RunDir) -> None:
    """The trial's epochs as history.csv, the same columns ``harness train`` writes."""
    names = sorted(history)
    epochs = max((len(v) for v in history.values()), default=0)
    atomic_write_csv(
        run.history,
        [
            ["epoch", *names],
            *(
                [e, *(history[n][e] if e < len(history[n]) else "" for n in names)]
                for e in range(epochs)
            ),
        ],
    )


def format_trials(rows: list[dict]) -> str:
    from harness.search.stopping import STOPPED_AT

    hp_keys = [k for k in dict.fromkeys(k for r in rows for k in r) if k.startswith("hp_")]
    head = f"{'trial':>5} {'status':<10}{'score':>7}" + "".join(f"{k[3:]:>16}" for k in hp_keys)
    lines = [head + f"{'epochs':>7}{'seconds':>9}  worker"]
    for r in rows:
        score = f"{r['score']:.4f}" if r["score"] is not None else "-"
        hps = "".join(f"{_fmt(r.get(k)):>16}" for k in hp_keys)
        epochs = f"{r['epochs']}{'*' if r.get(STOPPED_AT) else ''}"
        lines.append(
            f"{r['trial_id']:>5} {r['status']:<10}{score:>7}{hps}{epochs:>7}"
            f"{r['train_seconds']:>9.1f}  {r['worker'] or '-'}"
        )
    if any(r.get(STOPPED_AT) for r in rows):
        lines.append("* stopped behind the finished trials' median (--stop-behind)")
    return "\n".join(lines)


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.3g}"
    return "-" if v is None else str(v)
