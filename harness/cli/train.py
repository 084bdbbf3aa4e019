"""The training commands: train, sweep-lr, tune, evaluate, sparsify, prune, prune-units."""

from __future__ import annotations

import json
import os
import sys
from dataclasses import astuple, dataclass
from pathlib import Path

import click

from harness.cli.app import (
    Context,
    _derived_name,
    _name_option,
    _run_dir,
    _select_backend,
    as_click,
    main,
    option_group,
)
from harness.core.config import SETTINGS, resolve
from harness.core.hardware import device_option
from harness.core.precisions import EXPORTS as BUDGET_EXPORTS
from harness.core.presets import PRESETS
from harness.core.records import RunDir, format_run

# --------------------------------------------------------------------------- train


def _setting_option(name: str, f) -> click.Option:
    """The Click option of one TrainConfig setting, from its declaration (harness.core.config).
    Its default is None: an option not given keeps the preset's or the file's value."""
    meta = f.metadata
    bounds = dict(
        min=meta["low"], max=meta["high"], min_open=meta["low_open"], max_open=meta["high_open"]
    )
    ranged = meta["low"] is not None or meta["high"] is not None
    if meta["choices"]:
        kind = click.Choice(meta["choices"])
    elif meta["kind"] is int:
        kind = click.IntRange(**bounds) if ranged else int
    elif meta["kind"] is float:
        kind = click.FloatRange(**bounds) if ranged else float
    else:
        kind = str
    names = {"name": "name", "teacher": "run name"}  # a folder made, a run read
    callback = _name_option(names[name]) if name in names else None
    return click.option(
        f"--{name.replace('_', '-')}", name, type=kind, help=meta["help"], callback=callback
    )


def _train_options(f):
    """--preset, --config and one option per training setting (harness.core.config.SETTINGS)."""
    options = [
        click.option(
            "--preset",
            type=click.Choice(sorted(PRESETS)),
            help="Start from a recipe: the study's selu or bn-elu, their -fast "
            "versions, mlp-frontier(-gpu), or the resnet8 CNN reference.",
        ),
        click.option(
            "--config",
            "config_file",
            type=click.Path(exists=True, dir_okay=False, path_type=Path),
            help="YAML or JSON file of settings; flags override it. "
            "A run's config.json re-makes that run (its preset is only a label).",
        ),
        *(_setting_option(name, field) for name, field in SETTINGS.items() if name != "preset"),
    ]
    for option in reversed(options):
        f = option(f)
    return f


@main.command()
@_train_options
@device_option
@click.option("--overwrite", is_flag=True, help="Delete an existing run of this name first.")
@click.pass_obj
def train(obj: Context, preset, config_file, overwrite, **flags):
    """Train a network and write results/runs/<name>/.

    Re-running the same command after an interruption resumes the run.
    """
    cfg = _base_config(preset, config_file, flags)
    from harness.train.fit import RunComplete
    from harness.train.fit import train as train_run

    ds = obj.dataset()
    try:
        metrics = train_run(cfg, ds, obj.results, overwrite=overwrite)
    except RunComplete as e:
        click.echo(str(e))
        return
    click.echo(format_run(RunDir.named(obj.results, cfg.run_name).path, metrics))


def _base_config(preset, config_file, flags, default_epochs=None):
    """Preset, then file, then flags; for sweeps and searches epochs default to 10."""
    if preset is None and config_file is None:
        raise click.UsageError("give --preset or --config FILE")
    if default_epochs and flags.get("epochs") is None:
        flags = {**flags, "epochs": default_epochs}
    cfg = resolve(preset, config_file, flags)
    _select_backend(cfg.backend)
    return cfg


def _floats(text: str, count: int | None = 2, kind=float):
    """'1e-5,1e-3' -> (1e-05, 0.001); a click callback raises BadParameter (exit 2)."""
    try:
        values = tuple(kind(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise click.BadParameter(f"{text!r}: expected comma-separated numbers") from None
    if count and len(values) != count:
        raise click.BadParameter(f"{text!r}: expected {count} values (low,high)")
    return values


def _range(kind=float):
    return lambda ctx, param, value: None if value is None else _floats(value, 2, kind)


@main.command("sweep-lr")
@_train_options
@device_option
@click.option(
    "--rates",
    default=",".join(f"{r:g}" for r in (1e-5, 3e-5, 1e-4, 3e-4, 1e-3, 3e-3, 1e-2)),
    show_default=True,
    callback=lambda c, p, v: _floats(v, None),
    help="Comma-separated learning rates; each trains a fresh model.",
)
@click.pass_obj
def sweep_lr(obj: Context, preset, config_file, rates, **flags):
    """Train a fresh model per learning rate (default 10 epochs each); name the best.

    Writes results/sweeps/<name>/sweep.json; TensorBoard: --logdir results/sweeps/<name>/runs.
    """
    if not rates or any(r <= 0 for r in rates):
        raise click.BadParameter("rates must be positive numbers", param_hint="--rates")
    name = flags.pop("name") or f"{preset or 'sweep'}-lr"
    cfg = _base_config(preset, config_file, flags, default_epochs=10)
    from harness.search.sweep import format_sweep
    from harness.search.sweep import sweep_lr as run_sweep

    record = run_sweep(cfg, obj.dataset(), obj.results, name, rates, cfg.epochs)
    click.echo(format_sweep(record))


def _search_space(
    layers_range,
    units_range,
    lr_range,
    activations,
    dropout_range,
    l1_range,
    batch_sizes,
    pca_choices,
    teacher_weight_range,
):
    from harness.search.space import SearchSpace

    return SearchSpace(
        layers=layers_range,
        units=units_range,
        lr=lr_range,
        activations=tuple(a.strip() for a in activations.split(",")) if activations else (),
        dropout=dropout_range,
        l1=l1_range,
        batch_sizes=_floats(batch_sizes, None, int) if batch_sizes else (),
        pca=_floats(pca_choices, None, int) if pca_choices else (),
        teacher_weight=teacher_weight_range,
    ).validate()


def _budget(max_latency_us, max_flash_kb, max_macs, budget_export, bench_top):
    from harness.search.budget import Budget

    return Budget(max_latency_us, max_flash_kb, max_macs, budget_export).validate(), bench_top


def _distributed(tuner_id, oracle_ip, oracle_port, connect_timeout, worker_timeout):
    given = [tuner_id, oracle_ip, oracle_port]
    if any(v is not None for v in given) and None in given:
        raise click.UsageError(
            "distributed tuning needs --tuner-id, --oracle-ip and "
            "--oracle-port (or their KERASTUNER_* variables) together"
        )
    return Distributed(tuner_id, oracle_ip, oracle_port, connect_timeout, worker_timeout)


@dataclass(frozen=True)
class Distributed:
    """Where a tuning process stands in a chief + workers search (all None: alone)."""

    tuner_id: str | None
    oracle_ip: str | None
    oracle_port: int | None
    connect_timeout: float
    worker_timeout: float


space_options = option_group(
    "space",
    _search_space,
    click.option(
        "--layers-range",
        default="1,10",
        show_default=True,
        callback=_range(int),
        help="n_hidden low,high.",
    ),
    click.option(
        "--units-range",
        default="64,256",
        show_default=True,
        callback=_range(int),
        help="n_neurons low,high.",
    ),
    click.option(
        "--lr-range",
        default="1e-5,1e-3",
        show_default=True,
        callback=_range(),
        help="learning rate low,high (log scale).",
    ),
    click.option("--activations", help="Also search these activations (comma-separated)."),
    click.option("--dropout-range", callback=_range(), help="Also search dropout low,high."),
    click.option("--l1-range", callback=_range(), help="Also search an L1 penalty low,high (log)."),
    click.option("--batch-sizes", help="Also search these batch sizes (comma-separated)."),
    click.option("--pca-choices", help="Also search these PCA widths (comma-separated; 0 = none)."),
    click.option(
        "--teacher-weight-range",
        callback=_range(),
        help="Also search the teacher's weight low,high (with --teacher).",
    ),
)
budget_options = option_group(
    "budget",
    _budget,
    click.option(
        "--max-latency-us",
        type=click.FloatRange(min=0, min_open=True),
        help="Budget: batch-1 p50 latency of the --budget-export file, one thread.",
    ),
    click.option(
        "--max-flash-kb",
        type=click.FloatRange(min=0, min_open=True),
        help="Budget: size of the --budget-export file, KiB.",
    ),
    click.option(
        "--max-macs", type=click.IntRange(min=1), help="Budget: multiply-accumulates per image."
    ),
    click.option(
        "--budget-export",
        default=BUDGET_EXPORTS[0],
        show_default=True,
        type=click.Choice(BUDGET_EXPORTS),
        help="The export a budget is judged on (LiteRT or onnxruntime).",
    ),
    click.option(
        "--bench-top",
        type=click.IntRange(min=1),
        default=3,
        show_default=True,
        help="Budget: export, benchmark and judge this many of the best trials.",
    ),
)
distributed_options = option_group(
    "distributed",
    _distributed,
    click.option(
        "--tuner-id",
        envvar="KERASTUNER_TUNER_ID",
        help="Distributed: 'chief', a worker id such as tuner0, or 'auto' for a fresh worker id.",
    ),
    click.option("--oracle-ip", envvar="KERASTUNER_ORACLE_IP", help="Distributed: chief address."),
    click.option(
        "--oracle-port",
        type=click.IntRange(1, 65535),
        envvar="KERASTUNER_ORACLE_PORT",
        help="Distributed: chief port.",
    ),
    click.option(
        "--connect-timeout",
        type=click.FloatRange(min=0),
        default=60,
        show_default=True,
        help="Worker: seconds to wait for the chief before giving up.",
    ),
    click.option(
        "--worker-timeout",
        type=click.FloatRange(min=1),
        default=600,
        show_default=True,
        help="Chief: seconds without word from a worker before its trial is re-run elsewhere.",
    ),
)


@main.command()
@_train_options
@device_option
@click.option(
    "--tuner",
    "kind",
    type=click.Choice(["bayesian", "hyperband", "random"]),
    default="bayesian",
    show_default=True,
    help="KerasTuner search algorithm.",
)
@click.option(
    "--max-trials",
    type=click.IntRange(min=1),
    default=10,
    show_default=True,
    help="Trials to run (bayesian, random).",
)
@click.option(
    "--stop-behind",
    is_flag=True,
    help="Stop a trial whose best validation accuracy is below the finished trials' median "
    "at the same epoch (from its third epoch, once three trials have finished).",
)
@click.option(
    "--parallel",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Trials trained at once in this process (JAX; the cores are shared).",
)
@space_options
@budget_options
@click.option(
    "--calibrate-only",
    is_flag=True,
    help="Budget: measure the probes (budget_calibration.json) and stop, for a "
    "search that will train where TensorFlow is not installed.",
)
@distributed_options
@click.pass_obj
def tune(
    obj: Context,
    preset,
    config_file,
    kind,
    max_trials,
    stop_behind,
    parallel,
    space,
    budget,
    calibrate_only,
    distributed,
    **flags,
):
    """Search hyperparameters with KerasTuner (the study's Bayesian search by default).

    Re-running the same command resumes the search. Writes results/tuning/<name>/ and the
    best model as a run directory in results/tuning/<name>/best/. With a device budget
    (--max-latency-us, --max-flash-kb, --max-macs), only networks that fit it train, and
    the best trials are exported, benchmarked and judged as results/runs/<name>-t<trial>/.
    """
    name = flags.pop("name") or f"{preset or 'search'}-{kind}"
    budget, bench_top = budget
    tuner_id, oracle_ip, oracle_port = astuple(distributed)[:3]
    cfg = _base_config(preset, config_file, flags, default_epochs=10)
    if calibrate_only:
        from harness.search import tune as tune_mod
        from harness.search.budget import format_calibration

        calibration = tune_mod.calibrate_search(cfg, obj.results, name, space, budget)
        where = tune_mod.search_dir(obj.results, name) / "budget_calibration.json"
        click.echo(f"probes measured: {where}; {format_calibration(calibration)}")
        return
    if tuner_id == "auto":  # scaled workers share one command line: each needs its own id
        import uuid

        tuner_id = f"worker-{uuid.uuid4().hex[:8]}"
    if tuner_id is not None:
        os.environ.update(
            KERASTUNER_TUNER_ID=tuner_id,
            KERASTUNER_ORACLE_IP=oracle_ip,
            KERASTUNER_ORACLE_PORT=str(oracle_port),
        )
    from harness.search import tune as tune_mod

    tune_mod.check_parallel(parallel, tuner_id)
    if tuner_id not in (None, "chief"):
        tune_mod.wait_for_chief(oracle_ip, oracle_port, distributed.connect_timeout)
    try:
        _tune_and_report(
            obj,
            cfg,
            name,
            space,
            kind=kind,
            max_trials=max_trials,
            stop_behind=stop_behind,
            parallel=parallel,
            worker_timeout=distributed.worker_timeout,
            budget=budget,
            bench_top=bench_top,
        )
    except Exception as e:
        error = as_click(e)
        if tuner_id != "chief" or error is None:
            raise
        error.show()  # KerasTuner's gRPC server would keep a failed chief alive: leave now
        _exit_now(error.exit_code)
    if tuner_id == "chief":  # likewise once the search is done: nothing is left to do
        _exit_now(0)


def _exit_now(code: int) -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _tune_and_report(obj: Context, cfg, name, space, **search) -> None:
    """``harness tune``'s search (``search``: :func:`harness.search.tune.tune`'s settings)
    and its printed tables."""
    from harness.search import tune as tune_mod
    from harness.search.budget import format_budget

    summary = tune_mod.tune(
        cfg,
        obj.dataset(),
        obj.results,
        name,
        space,
        **search,
        verbose=1 if sys.stdout.isatty() else 2,
        archive=obj.archive,
        home=obj.home,
    )
    if summary is not None:
        root = tune_mod.search_dir(obj.results, name)
        click.echo(tune_mod.format_trials(json.loads((root / "trials.json").read_text())))
        click.echo(
            f"best trial {summary['best_trial']}: val accuracy "
            f"{summary['best_val_accuracy']:.4f}, test accuracy "
            f"{summary['best_test_accuracy']:.4f}; {summary['best_hyperparameters']}"
        )
        click.echo(
            f"search took {summary['search_seconds']:.0f} s; best model: "
            f"{root / summary['best_run']}"
        )
        if "budget" in summary:
            click.echo(format_budget(summary["budget"]))


@main.command()
@click.argument("run", type=click.Path(path_type=Path))
@click.option("--threshold", type=click.FloatRange(min=0), help="Zero |w| <= this.")
@click.option(
    "--target-sparsity",
    type=click.FloatRange(0, 1, max_open=True),
    help="Zero the smallest weights up to this fraction (all Dense kernels).",
)
@click.option(
    "--name", callback=_name_option("run name"), help="New run name (default <run>-sparse)."
)
@click.pass_obj
def sparsify(obj: Context, run: Path, threshold, target_sparsity, name):
    """Zero the small weights of a run (best after training with --l1); a new run."""
    if (threshold is None) == (target_sparsity is None):
        raise click.UsageError("give exactly one of --threshold or --target-sparsity")
    from harness.train.sparsity import sparsify as run_sparsify

    parent = _run_dir(obj, run, imported_ok=False)
    name = name or _derived_name(f"{parent.name}-sparse")
    m = run_sparsify(parent, obj.dataset(), obj.results, name, threshold, target_sparsity)
    for layer in m["sparsity_per_layer"]:
        click.echo(f"{layer['layer']:<20}{str(layer['shape']):<14}{layer['sparsity']:>8.1%}")
    click.echo(
        f"sparsity {m['sparsity']:.1%}, test accuracy {m['test']['accuracy']:.4f} "
        f"-> {RunDir.named(obj.results, m['run']).path}"
    )


@main.command()
@click.argument("run", type=click.Path(path_type=Path))
@click.option(
    "--sparsity",
    type=click.FloatRange(0, 1, min_open=True, max_open=True),
    default=0.8,
    show_default=True,
    help="Target fraction of zero Dense weights.",
)
@click.option(
    "--epochs",
    type=click.IntRange(min=1),
    default=5,
    show_default=True,
    help="Fine-tuning epochs (the polynomial schedule reaches the target at 80%).",
)
@click.option(
    "--name",
    callback=_name_option("run name"),
    help="New run name (default <run>-pruned<percent>).",
)
@click.pass_obj
def prune(obj: Context, run: Path, sparsity, epochs, name):
    """Magnitude pruning with tensorflow-model-optimization, fine-tuned; a new run."""
    from harness.train.sparsity import prune_magnitude

    parent = _run_dir(obj, run, imported_ok=False)
    name = name or _derived_name(f"{parent.name}-pruned{round(sparsity * 100)}")
    m = prune_magnitude(
        parent,
        obj.dataset(),
        obj.results,
        name,
        sparsity,
        epochs,
        verbose=1 if sys.stdout.isatty() else 2,
    )
    click.echo(
        f"sparsity {m['sparsity']:.1%}, test accuracy {m['test']['accuracy']:.4f} "
        f"-> {RunDir.named(obj.results, m['run']).path}"
    )


@main.command("prune-units")
@click.argument("run", type=click.Path(path_type=Path))
@click.option(
    "--keep",
    type=click.FloatRange(0, 1, min_open=True),
    default=0.5,
    show_default=True,
    help="Fraction of hidden units kept in every layer.",
)
@click.option(
    "--epochs", type=click.IntRange(min=1), default=5, show_default=True, help="Fine-tuning epochs."
)
@click.option(
    "--lr-scale",
    type=click.FloatRange(0, min_open=True),
    default=1.0,
    show_default=True,
    help="Fine-tuning rate as a multiple of the parent's.",
)
@click.option(
    "--teacher",
    callback=_name_option("run name"),
    help="Distill from this finished run while fine-tuning (the parent run is a good choice).",
)
@click.option(
    "--name", callback=_name_option("run name"), help="New run name (default <run>-units<N>)."
)
@click.pass_obj
def prune_units(obj: Context, run: Path, keep, epochs, lr_scale, teacher, name):
    """Structured pruning: drop the weakest hidden units, rebuild narrower layers, fine-tune."""
    from harness.core.config import from_dict
    from harness.train.sparsity import prune_units as run_prune

    parent = _run_dir(obj, run, imported_ok=False)
    cfg = from_dict(parent.read_config())
    _select_backend(cfg.backend)
    m = run_prune(
        parent, obj.dataset(), obj.results, name, keep, epochs, lr_scale=lr_scale, teacher=teacher
    )
    click.echo(format_run(RunDir.named(obj.results, m["run"]).path, m))


@main.command()
@click.argument("run", type=click.Path(path_type=Path))
@click.pass_obj
def evaluate(obj: Context, run: Path):
    """Re-evaluate a saved run (a name under results/runs/ or a path) on val and test."""
    run_dir = _run_dir(obj, run)
    info = run_dir.read_import()
    if info is not None:
        from harness.imports.imported import check_source, evaluate_import

        check_source(run_dir, info)
        result = evaluate_import(run_dir, obj.dataset(), info)
    else:
        from harness.train.fit import evaluate_run

        result = evaluate_run(run_dir, obj.dataset())
    for split_name in ("val", "test"):
        click.echo(
            f"{split_name:<5} accuracy {result[split_name]['accuracy']:.4f}  "
            f"loss {result[split_name]['loss']:.4f}"
        )
    for split_name, part in result.get("without_tta", {}).items():
        click.echo(
            f"{split_name:<5} accuracy {part['accuracy']:.4f}  "
            f"loss {part['loss']:.4f}  (without test-time augmentation)"
        )
