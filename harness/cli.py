"""The ``harness`` command line: thin Click commands over the library modules.

Heavy libraries (Keras, TensorFlow) are imported inside the commands that need them, so
``harness --help`` and ``harness data info`` answer at once.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path

import click

# TensorFlow's C++ start-up chatter (oneDNN, CUDA probing) buries the output; errors still show.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from harness import data as data_mod
from harness.config import ACTIVATIONS, ARCHITECTURES, PRESETS, ConfigError, resolve
from harness.records import RunDir


class Context:
    def __init__(self, archive: Path | None, home: Path | None, results: Path):
        self.archive, self.home, self.results = archive, home, results

    def dataset(self) -> data_mod.Dataset:
        try:
            return data_mod.load(self.archive, self.home)
        except data_mod.DataError as e:
            raise click.ClickException(str(e)) from None


class _Warnings(logging.Handler):
    def emit(self, record):
        click.secho(f"warning: {record.getMessage()}", err=True, fg="yellow")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--archive", type=click.Path(path_type=Path), envvar="HARNESS_ARCHIVE",
              help="Local cifar-10-python.tar.gz (or extracted folder) to use instead of "
                   "downloading; for machines without internet. Env: HARNESS_ARCHIVE.")
@click.option("--home", type=click.Path(file_okay=False, path_type=Path), envvar="HARNESS_HOME",
              help="Cache folder for the dataset. Env: HARNESS_HOME. "
                   "Default: ~/.cache/harness.")
@click.option("--results", type=click.Path(file_okay=False, path_type=Path),
              envvar="HARNESS_RESULTS", default=Path("results"), show_default=True,
              help="Folder for run directories (runs/<name>/). Env: HARNESS_RESULTS.")
@click.pass_context
def main(ctx, archive, home, results):
    """How far can a network with no convolutions go on CIFAR-10, and how fast can it answer?"""
    logger = logging.getLogger("harness")
    if not logger.handlers:
        logger.addHandler(_Warnings())
        logger.propagate = False
    ctx.obj = Context(archive, home, results)


# --------------------------------------------------------------------------- data

@main.group()
def data():
    """Download, import and inspect CIFAR-10."""


@data.command("download")
@click.pass_obj
def data_download(obj: Context):
    """Download the official archive into the cache, verify its sha256, and cache it."""
    try:
        path = data_mod.download(obj.home)
        ds = data_mod.import_data(path, obj.home)
    except data_mod.DataError as e:
        raise click.ClickException(str(e)) from None
    click.echo(f"cached {len(ds.x_train)} + {len(ds.x_test)} images from {path} "
               f"(sha256 {ds.sha256})")


@data.command("import")
@click.argument("path", type=click.Path(exists=True, path_type=Path))
@click.pass_obj
def data_import(obj: Context, path: Path):
    """Import a local archive or extracted cifar-10-batches-py folder into the cache."""
    try:
        ds = data_mod.import_data(path, obj.home)
    except data_mod.DataError as e:
        raise click.ClickException(str(e)) from None
    click.echo(f"imported {len(ds.x_train)} + {len(ds.x_test)} images from {path} "
               f"(sha256 {ds.sha256}, verified by {ds.verified}) into "
               f"{data_mod.cache_path(obj.home)}")


@data.command("info")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.pass_obj
def data_info(obj: Context, as_json: bool):
    """Where the data is, its sha256, and images per class per split."""
    ds = obj.dataset()
    counts = data_mod.class_counts(ds)
    info = {"cache": str(data_mod.cache_path(obj.home)), **ds.record, "per_class": counts}
    if as_json:
        click.echo(json.dumps(info, indent=2))
        return
    click.echo(f"cache     {info['cache']}\nsource    {ds.source}\n"
               f"sha256    {ds.sha256} (verified by {ds.verified})")
    click.echo(f"{'class':<12}" + "".join(f"{s:>8}" for s in counts))
    for c in ds.label_names:
        click.echo(f"{c:<12}" + "".join(f"{counts[s][c]:>8}" for s in counts))
    click.echo(f"{'total':<12}" + "".join(f"{sum(counts[s].values()):>8}" for s in counts))


# --------------------------------------------------------------------------- train

def _train_options(f):
    options = [
        click.option("--preset", type=click.Choice(sorted(PRESETS)),
                     help="Start from the study's recipe: selu or bn-elu."),
        click.option("--config", "config_file", type=click.Path(exists=True, dir_okay=False,
                     path_type=Path), help="YAML or JSON file of settings; flags override it."),
        click.option("--arch", type=click.Choice(ARCHITECTURES),
                     help="plain Dense stack, or BatchNorm around each Dense."),
        click.option("--activation", type=click.Choice(ACTIVATIONS),
                     help="Hidden activation; the initializer follows from it."),
        click.option("--layers", type=click.IntRange(min=1), help="Hidden layers."),
        click.option("--units", type=click.IntRange(min=1), help="Units per hidden layer."),
        click.option("--dropout", type=click.FloatRange(0, 1, max_open=True),
                     help="Dropout rate (AlphaDropout with selu)."),
        click.option("--l1", type=click.FloatRange(min=0), help="L1 kernel penalty."),
        click.option("--l2", type=click.FloatRange(min=0), help="L2 kernel penalty."),
        click.option("--max-norm", type=click.FloatRange(min=0, min_open=True),
                     help="Max-norm constraint on hidden kernels."),
        click.option("--lr", type=click.FloatRange(min=0, min_open=True),
                     help="Initial learning rate (Nadam)."),
        click.option("--batch-size", type=click.IntRange(min=1), help="Images per step."),
        click.option("--epochs", type=click.IntRange(min=1), help="Most epochs to run."),
        click.option("--seed", type=int, help="Random seed."),
        click.option("--name", help="Run name: results/runs/<name>/ (default: the preset)."),
    ]
    for option in reversed(options):
        f = option(f)
    return f


@main.command()
@_train_options
@click.option("--overwrite", is_flag=True, help="Delete an existing run of this name first.")
@click.pass_obj
def train(obj: Context, preset, config_file, overwrite, **flags):
    """Train a network and write results/runs/<name>/.

    Re-running the same command after an interruption resumes the run.
    """
    if preset is None and config_file is None:
        raise click.UsageError("give --preset (selu or bn-elu) or --config FILE")
    try:
        cfg = resolve(preset, config_file, flags)
    except ConfigError as e:
        raise click.BadParameter(str(e)) from None
    _select_backend(cfg.backend)
    from harness.train import RunComplete, TrainingFailed, train as train_run

    ds = obj.dataset()
    try:
        metrics = train_run(cfg, ds, obj.results, overwrite=overwrite)
    except RunComplete as e:
        click.echo(str(e))
        return
    except ConfigError as e:
        raise click.UsageError(str(e)) from None
    except TrainingFailed as e:
        raise click.ClickException(f"training failed: {e}") from None
    click.echo(_summary(obj.results, cfg.run_name, metrics))


def _select_backend(backend: str | None) -> None:
    """Point Keras at ``backend`` before it is imported (it reads KERAS_BACKEND once)."""
    if backend is None or "keras" in sys.modules:
        return  # train() reports a mismatch with the backend already loaded
    import importlib.util

    if importlib.util.find_spec(backend) is None:
        raise click.ClickException(f"backend {backend!r} is not installed "
                                   f"(pip install {backend})")
    os.environ["KERAS_BACKEND"] = backend


def _summary(results: Path, name: str, m: dict) -> str:
    lines = [f"run {RunDir.named(results, name).path}: {m['status']}, "
             f"{m['epochs_run']} epochs (best {m['best_epoch']}), {m['wall_time_s']:.1f} s, "
             f"{m['seconds_per_epoch']} s/epoch"]
    for split_name in ("train", "val", "test"):
        if split_name in m:
            lines.append(f"  {split_name:<5} accuracy {m[split_name]['accuracy']:.4f}  "
                         f"loss {m[split_name]['loss']:.4f}")
    return "\n".join(lines)


@main.command()
@click.argument("run", type=click.Path(path_type=Path))
@click.pass_obj
def evaluate(obj: Context, run: Path):
    """Re-evaluate a saved run (a name under results/runs/ or a path) on val and test."""
    run_dir = RunDir(run) if run.exists() else RunDir.named(obj.results, str(run))
    if not run_dir.model.exists():
        raise click.BadParameter(f"{run}: no finished run here (no model.keras)", param_hint="RUN")
    from harness.train import evaluate_run

    result = evaluate_run(run_dir, obj.dataset())
    for split_name in ("val", "test"):
        click.echo(f"{split_name:<5} accuracy {result[split_name]['accuracy']:.4f}  "
                   f"loss {result[split_name]['loss']:.4f}")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
