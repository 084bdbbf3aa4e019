"""The ``harness`` command line: thin Click commands over the library modules.

Heavy libraries (Keras, TensorFlow) are imported inside the commands that need them, so
``harness --help`` and ``harness data info`` answer at once.
"""

from __future__ import annotations

import contextlib
import importlib.abc
import importlib.util
import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import click
import numpy as np

from harness.report import compare as compare_mod
from harness.data import cifar as data_mod
from harness.core.config import PRESETS, SETTINGS, ConfigError, resolve
from harness.edge.predict import MAX_PIXELS
from harness.core.hardware import device_option
from harness.core.records import NAME, BadName, RunBusy, RunDir, check_name


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


# TensorFlow (2.19 and later) logs its start-up from C++ through absl: oneDNN notes, CUDA
# probing ("Could not find cuda drivers", "failed call to cuInit" where there is no GPU),
# partly before it reads TF_CPP_MIN_LOG_LEVEL (tensorflow/tensorflow#100442). So unless
# --verbose, the level is set to 3 (fatal only) and the first `import tensorflow` runs with
# stderr (fd 2) fed through a filter that drops absl's I, W and E lines and passes the rest.
# The filter is a process, not a thread, so a crash during the import still shows its last
# words. GPUs are left alone: JAX and TensorFlow see the same devices as without it.
_ABSL_LINE = (rb"[IWE]\d{4} \d\d:\d\d:\d+\.\d+ +\d+ [\w.-]+:\d+\] "  # absl: I0000 00:00:...
              rb"|\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+: [IWE] \S+:\d+\] "  # TF's older own
              rb"|WARNING: All log messages before absl::InitializeLog\(\) is called")
_SIEVE = (f"import re, sys\nnoise = re.compile({_ABSL_LINE!r})\n"
          "for line in sys.stdin.buffer:\n"
          "    if not noise.match(line):\n"
          "        sys.stderr.buffer.write(line)\n"
          "        sys.stderr.buffer.flush()\n")


@contextlib.contextmanager
def _sieved_stderr():
    """While inside, everything written to fd 2 (C++ and Python) goes through _SIEVE."""
    sys.stderr.flush()
    sieve = subprocess.Popen([sys.executable, "-I", "-S", "-c", _SIEVE], stdin=subprocess.PIPE)
    real = os.dup(2)
    os.dup2(sieve.stdin.fileno(), 2)
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(real, 2)
        os.close(real)
        sieve.stdin.close()
        try:
            sieve.wait(timeout=10)
        except subprocess.TimeoutExpired:  # something the import started holds the pipe open
            sieve.kill()


class _QuietTensorFlow(importlib.abc.MetaPathFinder):
    """Finds `tensorflow` as usual, once, and has it load inside _sieved_stderr."""

    def find_spec(self, name, path=None, target=None):
        if name != "tensorflow":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.loader is not None and sys.executable:
            load = spec.loader.exec_module

            def exec_module(module):
                with _sieved_stderr():
                    load(module)

            spec.loader.exec_module = exec_module  # the module keeps its real __loader__
        return spec


def _quiet_tensorflow() -> None:
    """TensorFlow's C++ log: fatal errors only, and no start-up lines (see _ABSL_LINE)."""
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
    if "tensorflow" not in sys.modules and not any(
            isinstance(finder, _QuietTensorFlow) for finder in sys.meta_path):
        sys.meta_path.insert(0, _QuietTensorFlow())


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
@click.option("--verbose", is_flag=True, envvar="HARNESS_VERBOSE",
              help="Show TensorFlow's C++ log as TF_CPP_MIN_LOG_LEVEL sets it (TensorFlow's "
                   "default: everything). Without it harness hides that log's start-up "
                   "lines (oneDNN, CUDA probing) and all but fatal errors. "
                   "Env: HARNESS_VERBOSE=1.")
@click.pass_context
def main(ctx, archive, home, results, verbose):
    """How far can a network with no convolutions go on CIFAR-10, and how fast can it answer?"""
    if not verbose:
        _quiet_tensorflow()
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


# --------------------------------------------------------------------------- names

def _name_option(what: str):
    """A --name callback: the one rule for names that become folders (harness.core.records.NAME);
    a bad name stops the command with exit 2 before it reads or writes anything."""
    def check(ctx, param, value: str | None) -> str | None:
        try:
            return None if value is None else check_name(value, what)
        except BadName as e:
            raise click.BadParameter(str(e)) from None
    return check


def _derived_name(name: str) -> str:
    """A default name made from a run's folder name, which may break the rule: exit 2."""
    try:
        return check_name(name, "run name")
    except BadName as e:
        raise click.BadParameter(f"{e}; give one with --name", param_hint="--name") from None


# --------------------------------------------------------------------------- train

def _setting_option(name: str, f) -> click.Option:
    """The Click option of one TrainConfig setting, from its declaration (harness.core.config).
    Its default is None: an option not given keeps the preset's or the file's value."""
    meta = f.metadata
    bounds = dict(min=meta["low"], max=meta["high"], min_open=meta["low_open"],
                  max_open=meta["high_open"])
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
    return click.option(f"--{name.replace('_', '-')}", name, type=kind, help=meta["help"],
                        callback=callback)


def _train_options(f):
    """--preset, --config and one option per training setting (harness.core.config.SETTINGS)."""
    options = [
        click.option("--preset", type=click.Choice(sorted(PRESETS)),
                     help="Start from a recipe: the study's selu or bn-elu, their -fast "
                          "versions, mlp-frontier(-gpu), or the resnet8 CNN reference."),
        click.option("--config", "config_file", type=click.Path(exists=True, dir_okay=False,
                     path_type=Path), help="YAML or JSON file of settings; flags override it. "
                     "A run's config.json re-makes that run (its preset is only a label)."),
        *(_setting_option(name, field) for name, field in SETTINGS.items()
          if name != "preset"),
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
    from harness.train.fit import RunComplete, TrainingFailed, train as train_run

    ds = obj.dataset()
    try:
        metrics = train_run(cfg, ds, obj.results, overwrite=overwrite)
    except RunComplete as e:
        click.echo(str(e))
        return
    except RunBusy as e:
        raise Refused(str(e)) from None
    except ConfigError as e:
        raise click.UsageError(str(e)) from None
    except TrainingFailed as e:
        raise click.ClickException(f"training failed: {e}") from None
    click.echo(_summary(obj.results, cfg.run_name, metrics))


def _base_config(preset, config_file, flags, default_epochs=None):
    """Preset, then file, then flags; for sweeps and searches epochs default to 10."""
    if preset is None and config_file is None:
        raise click.UsageError("give --preset or --config FILE")
    if default_epochs and flags.get("epochs") is None:
        flags = {**flags, "epochs": default_epochs}
    try:
        cfg = resolve(preset, config_file, flags)
    except ConfigError as e:
        raise click.BadParameter(str(e)) from None
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
@click.option("--rates", default=",".join(f"{r:g}" for r in (1e-5, 3e-5, 1e-4, 3e-4, 1e-3,
                                                                 3e-3, 1e-2)),
              show_default=True, callback=lambda c, p, v: _floats(v, None),
              help="Comma-separated learning rates; each trains a fresh model.")
@click.pass_obj
def sweep_lr(obj: Context, preset, config_file, rates, **flags):
    """Train a fresh model per learning rate (default 10 epochs each); name the best.

    Writes results/sweeps/<name>/sweep.json; TensorBoard: --logdir results/sweeps/<name>/runs.
    """
    if not rates or any(r <= 0 for r in rates):
        raise click.BadParameter("rates must be positive numbers", param_hint="--rates")
    name = flags.pop("name") or f"{preset or 'sweep'}-lr"
    cfg = _base_config(preset, config_file, flags, default_epochs=10)
    from harness.search.tune import format_sweep, sweep_lr as run_sweep

    record = run_sweep(cfg, obj.dataset(), obj.results, name, rates, cfg.epochs)
    click.echo(format_sweep(record))


@main.command()
@_train_options
@device_option
@click.option("--tuner", "kind", type=click.Choice(["bayesian", "hyperband", "random"]),
              default="bayesian", show_default=True, help="KerasTuner search algorithm.")
@click.option("--max-trials", type=click.IntRange(min=1), default=10, show_default=True,
              help="Trials to run (bayesian, random).")
@click.option("--layers-range", default="1,10", show_default=True, callback=_range(int),
              help="n_hidden low,high.")
@click.option("--units-range", default="64,256", show_default=True, callback=_range(int),
              help="n_neurons low,high.")
@click.option("--lr-range", default="1e-5,1e-3", show_default=True, callback=_range(),
              help="learning rate low,high (log scale).")
@click.option("--activations", help="Also search these activations (comma-separated).")
@click.option("--dropout-range", callback=_range(), help="Also search dropout low,high.")
@click.option("--l1-range", callback=_range(), help="Also search an L1 penalty low,high (log).")
@click.option("--batch-sizes", help="Also search these batch sizes (comma-separated).")
@click.option("--pca-choices", help="Also search these PCA widths (comma-separated; 0 = none).")
@click.option("--teacher-weight-range", callback=_range(),
              help="Also search the teacher's weight low,high (with --teacher).")
@click.option("--max-latency-us", type=click.FloatRange(min=0, min_open=True),
              help="Budget: batch-1 p50 latency of the --budget-export file, one thread.")
@click.option("--max-flash-kb", type=click.FloatRange(min=0, min_open=True),
              help="Budget: size of the --budget-export file, KiB.")
@click.option("--max-macs", type=click.IntRange(min=1),
              help="Budget: multiply-accumulates per image.")
@click.option("--budget-export", default="tflite-int8", show_default=True,
              type=click.Choice(["tflite-int8", "tflite-dynamic", "tflite-float16",
                                 "tflite-float32", "onnx-float32"]),
              help="The export a budget is judged on (LiteRT or onnxruntime).")
@click.option("--bench-top", type=click.IntRange(min=1), default=3, show_default=True,
              help="Budget: export, benchmark and judge this many of the best trials.")
@click.option("--calibrate-only", is_flag=True,
              help="Budget: measure the probes (budget_calibration.json) and stop, for a "
                   "search that will train where TensorFlow is not installed.")
@click.option("--tuner-id", envvar="KERASTUNER_TUNER_ID",
              help="Distributed: 'chief', a worker id such as tuner0, or 'auto' for a "
                   "fresh worker id.")
@click.option("--oracle-ip", envvar="KERASTUNER_ORACLE_IP", help="Distributed: chief address.")
@click.option("--oracle-port", type=click.IntRange(1, 65535), envvar="KERASTUNER_ORACLE_PORT",
              help="Distributed: chief port.")
@click.option("--connect-timeout", type=click.FloatRange(min=0), default=60, show_default=True,
              help="Worker: seconds to wait for the chief before giving up.")
@click.option("--worker-timeout", type=click.FloatRange(min=1), default=600, show_default=True,
              help="Chief: seconds without word from a worker before its trial is re-run "
                   "elsewhere.")
@click.pass_obj
def tune(obj: Context, preset, config_file, kind, max_trials, layers_range, units_range,
         lr_range, activations, dropout_range, l1_range, batch_sizes, pca_choices,
         teacher_weight_range, max_latency_us, max_flash_kb, max_macs, budget_export,
         bench_top, calibrate_only, tuner_id, oracle_ip, oracle_port, connect_timeout,
         worker_timeout, **flags):
    """Search hyperparameters with KerasTuner (the study's Bayesian search by default).

    Re-running the same command resumes the search. Writes results/tuning/<name>/ and the
    best model as a run directory in results/tuning/<name>/best/. With a device budget
    (--max-latency-us, --max-flash-kb, --max-macs), only networks that fit it train, and
    the best trials are exported, benchmarked and judged as results/runs/<name>-t<trial>/.
    """
    from harness.search.budget import Budget
    from harness.search.tune import SearchSpace

    name = flags.pop("name") or f"{preset or 'search'}-{kind}"
    distributed = [tuner_id, oracle_ip, oracle_port]
    if any(v is not None for v in distributed) and None in distributed:
        raise click.UsageError("distributed tuning needs --tuner-id, --oracle-ip and "
                               "--oracle-port (or their KERASTUNER_* variables) together")
    try:
        space = SearchSpace(
            layers=layers_range, units=units_range, lr=lr_range,
            activations=tuple(a.strip() for a in activations.split(",")) if activations else (),
            dropout=dropout_range, l1=l1_range,
            batch_sizes=_floats(batch_sizes, None, int) if batch_sizes else (),
            pca=_floats(pca_choices, None, int) if pca_choices else (),
            teacher_weight=teacher_weight_range).validate()
        budget = Budget(max_latency_us, max_flash_kb, max_macs, budget_export).validate()
    except ConfigError as e:
        raise click.BadParameter(str(e)) from None
    cfg = _base_config(preset, config_file, flags, default_epochs=10)
    if calibrate_only:
        from harness.search import tune as tune_mod

        try:
            line = tune_mod.calibrate_search(cfg, obj.results, name, space, budget)["model"]
        except ConfigError as e:
            raise click.ClickException(str(e)) from None
        lat, where = line["latency_us"], tune_mod.search_dir(obj.results, name)
        click.echo(f"probes measured: {where / 'budget_calibration.json'}; latency "
                   f"{lat['intercept']:.2f} us {_signed(lat['per_mac'] * 1e3, 3)} us per "
                   f"thousand MACs {_signed(lat['per_layer'], 2)} us per Dense layer")
        return
    if tuner_id == "auto":  # scaled workers share one command line: each needs its own id
        import uuid

        tuner_id = f"worker-{uuid.uuid4().hex[:8]}"
    if tuner_id is not None:
        os.environ.update(KERASTUNER_TUNER_ID=tuner_id, KERASTUNER_ORACLE_IP=oracle_ip,
                          KERASTUNER_ORACLE_PORT=str(oracle_port))
    from harness.search import tune as tune_mod

    if tuner_id not in (None, "chief"):
        try:
            tune_mod.wait_for_chief(oracle_ip, oracle_port, connect_timeout)
        except ConnectionError as e:
            raise click.ClickException(str(e)) from None
    try:
        _tune_and_report(obj, cfg, name, space, kind, max_trials, worker_timeout, budget,
                         bench_top)
    except click.ClickException as e:
        if tuner_id != "chief":
            raise
        e.show()  # KerasTuner's gRPC server would keep a failed chief alive: leave now
        _exit_now(e.exit_code)
    if tuner_id == "chief":  # likewise once the search is done: nothing is left to do
        _exit_now(0)


def _signed(value: float, digits: int) -> str:
    """'+ 0.013' or '- 0.16': a term of a sum, written as one would by hand."""
    return f"{'-' if value < 0 else '+'} {abs(value):.{digits}f}"


def _exit_now(code: int) -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _tune_and_report(obj: Context, cfg, name, space, kind, max_trials, worker_timeout, budget,
                     bench_top) -> None:
    from harness.search import tune as tune_mod
    from harness.search.budget import format_budget

    ds = obj.dataset()
    try:
        summary = tune_mod.tune(cfg, ds, obj.results, name, space, kind, max_trials,
                                worker_timeout=worker_timeout,
                                verbose=1 if sys.stdout.isatty() else 2, budget=budget,
                                bench_top=bench_top, archive=obj.archive, home=obj.home)
    except ConfigError as e:  # a teacher that is not there, a budget nothing meets
        raise click.ClickException(str(e)) from None
    if summary is not None:
        root = tune_mod.search_dir(obj.results, name)
        click.echo(tune_mod.format_trials(json.loads((root / "trials.json").read_text())))
        click.echo(f"best trial {summary['best_trial']}: val accuracy "
                   f"{summary['best_val_accuracy']:.4f}, test accuracy "
                   f"{summary['best_test_accuracy']:.4f}; {summary['best_hyperparameters']}")
        click.echo(f"search took {summary['search_seconds']:.0f} s; best model: "
                   f"{root / summary['best_run']}")
        if "budget" in summary:
            click.echo(format_budget(summary["budget"]))


class Refused(click.ClickException):
    """Bad input refused with one line and exit status 2 (a usage error, without the
    usage text: the line says what to change)."""

    exit_code = 2


def _run_dir(obj: Context, run: Path, imported_ok: bool = True) -> RunDir:
    """A run given as a path, or as a name under results/runs/: a finished run (its
    model.keras and config.json) or, where ``imported_ok``, an imported one (harness
    import). Whatever it lacks is named in one line (exit 2) before anything is read."""
    named = not run.exists() and NAME.fullmatch(str(run))
    run_dir = RunDir.named(obj.results, str(run)) if named else RunDir(run)
    try:
        problem, info = check_run_dir(run_dir)
    except (OSError, ValueError) as e:
        raise Refused(f"{run}: {e}") from None
    if problem:
        raise Refused(f"{run}: {problem}")
    if info is not None and not imported_ok:
        raise Refused(f"{run}: an imported model ({info['file']}); this command works on "
                      "runs harness trained")
    return run_dir


def check_run_dir(run: RunDir) -> tuple[str | None, dict | None]:
    """(what the run folder lacks for a command to read it, or None; its import record
    for an imported run). Checks the folder, config.json (a recipe this harness reads, or
    an import record), metrics.json (its format) and the model, in that order."""
    from harness.report.collect import read_record
    from harness.core.config import from_dict
    from harness.imports.imported import KIND
    from harness.core.schemas import RecordError, check_run

    if not run.path.is_dir():
        return f"no run here (no folder {run.path})", None
    if not run.config.exists():
        what = "model.keras but no" if run.model.exists() else "no"
        return (f"not a finished run: {what} config.json (the run's recipe); harness writes "
                "both, so this folder is damaged or not harness'"), None
    try:
        config = read_record(run.config)
    except RecordError as e:
        return f"config.json is {e}", None
    info = config if config.get("kind") == KIND else None
    if info is None:
        try:
            from_dict(config)
        except (ConfigError, TypeError) as e:
            return (f"config.json is not a recipe this harness reads ({e}): written by a "
                    f"newer harness, or edited"), None
    if run.metrics.exists():
        try:
            check_run(read_record(run.metrics))
        except RecordError as e:
            return f"metrics.json breaks the run record's format: {e}", None
    if info is not None:
        source = run.path / "source" / str(info.get("file"))
        return (None if source.exists() else
                f"the imported file source/{info.get('file')} is missing"), info
    if not run.model.exists():
        return "no finished run here (no model.keras)", None
    return None, None


def _import_info(run_dir: RunDir) -> dict | None:
    from harness.imports.imported import read_import

    return read_import(run_dir)


@main.command("import")
@click.argument("model", type=click.Path(exists=True, path_type=Path))
@click.option("--name", required=True, callback=_name_option("run name"),
              help="The run's name: results/runs/<name>/.")
@click.option("--layout", type=click.Choice(["nhwc", "nchw"]),
              help="How the model lays out an image [default: what its input shape says, "
                   "else nhwc].")
@click.option("--channels", type=click.Choice(["rgb", "bgr"]), help="Channel order the "
              "model was trained on [default: rgb].")
@click.option("--input", "input_scale", type=click.Choice(["raw", "unit"]),
              help="raw: float 0-255; unit: pixels / 255 [default: raw; an integer-input "
                   ".tflite: what its quantization says].")
@click.option("--mean", metavar="R,G,B", help="Subtract per channel, after --input scaling.")
@click.option("--std", metavar="R,G,B", help="Divide per channel, after --mean.")
@click.option("--output", type=click.Choice(["probs", "logits"]), help="What the model "
              "answers [default: read off its outputs on a few images].")
@click.option("--source", metavar="TEXT", help="Where the file comes from (a URL, a paper, "
              "its licence): recorded with it.")
@click.option("--overwrite", is_flag=True, help="Replace a run of this name.")
@click.pass_obj
def import_model(obj: Context, model: Path, name, layout, channels, input_scale, mean, std,
                 output, source, overwrite):
    """Import a CIFAR-10 model harness did not train (.tflite, .onnx, .keras, .h5 or a
    SavedModel folder) as the run results/runs/<name>/.

    The file is checked before anything runs it, copied byte for byte, and scored on the
    validation and test images through its own runtime under its input contract; a
    contract that leaves it near chance is refused, naming the common one that scores
    best. evaluate, bench, export, predict, deploy and compare then take the run.
    """
    from harness.core.contract import ContractError, parse_three
    from harness.imports.foreign import ForeignFileError
    from harness.imports.imported import ImportRefused
    from harness.imports.imported import import_model as run_import

    try:
        mean, std = parse_three(mean, "mean"), parse_three(std, "std")
        m = run_import(model, obj.dataset(), obj.results, name, layout, channels, input_scale,
                       mean, std, output, source, overwrite)
    except (ContractError, ForeignFileError, ImportRefused) as e:
        raise Refused(str(e)) from None
    info, path = m["import"], RunDir.named(obj.results, name).path
    click.echo(f"imported {name}: {info['file']} ({info['format']} {m['precision']}, "
               f"{info['bytes']:,} bytes, sha256 {info['sha256'][:16]}...)")
    config = json.loads((path / "config.json").read_text())
    click.echo(f"  contract  {config['contract_words']} ({config['contract_from']})")
    if "layout_note" in config:
        click.echo(f"  layout    {config['layout_note']}")
    for split_name in ("val", "test"):
        click.echo(f"  {split_name:<5}     accuracy {m[split_name]['accuracy']:.4f}  "
                   f"loss {m[split_name]['loss']:.4f}  (through {info['runtime']})")
    macs = f", {m['macs']:,} MACs" if m.get("macs") else ""
    click.echo(f"  {m['params']['total']:,} parameters{macs}, {m['op_count']} ops -> {path}")


@main.command()
@click.argument("run", type=click.Path(path_type=Path))
@click.option("--format", "formats", type=click.Choice(["onnx", "tflite", "saved_model", "all"]),
              multiple=True, default=["all"], show_default=True, help="Export format(s).")
@click.option("--quantize", "quantizations", multiple=True, default=["all"], show_default=True,
              type=click.Choice(["float32", "float16", "dynamic", "int8", "all"]),
              help="TFLite precision(s).")
@click.pass_obj
def export(obj: Context, run: Path, formats, quantizations):
    """Export a run's model and verify each file through its own runtime."""
    from harness.export import convert as export_mod

    run_dir = _run_dir(obj, run)
    info = _import_info(run_dir)
    if info is not None and not run_dir.model.exists():
        raise Refused(f"{run}: an imported {info['format']}; harness exports Keras and .h5 "
                      "imports (a .tflite or .onnx is an export already: bench, predict and "
                      "deploy use it as it is)")
    formats = export_mod.FORMATS if "all" in formats else formats
    quantizations = export_mod.QUANTIZATIONS if "all" in quantizations else quantizations
    try:
        records = export_mod.export_run(run_dir, obj.dataset(), formats, quantizations)
    except export_mod.ExportError as e:
        raise click.ClickException(str(e)) from None
    click.echo(f"{'file':<24}{'runtime':<13}{'KiB':>8}{'max diff':>11}{'test acc':>10}"
               f"{'drop':>8}")
    for r in records:
        click.echo(f"{r['file']:<24}{r['runtime']:<13}{r['size_bytes'] / 1024:>8.1f}"
                   f"{r['max_abs_diff']:>11.2e}{r['test']['accuracy']:>10.4f}"
                   f"{r['accuracy_drop_points']:>7.2f}{'  FLAGGED' if r['flagged'] else ''}")
    if any(r["flagged"] for r in records):
        raise click.ClickException("an export lost more accuracy than allowed (see FLAGGED)")


@main.command()
@click.argument("run", type=click.Path(path_type=Path))
@click.option("--target", type=click.Choice(["linux", "mcu"]), required=True,
              help="linux: the model, a manifest and a standalone predict.py for any Linux "
                   "(x86-64, arm64); mcu: a TensorFlow Lite Micro bundle (int8).")
@click.option("--runtime", type=click.Choice(["litert", "onnx"]), default="litert",
              show_default=True, help="Runtime on the device: LiteRT (.tflite) or "
              "onnxruntime (.onnx, float32 only).")
@click.option("--quantize", "quantization",
              type=click.Choice(["float32", "float16", "dynamic", "int8"]),
              help="Precision of the model file [default: float32 for linux, int8 for mcu].")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path),
              help="Folder for the bundle and its .tar.gz [default: <results>/deploy].")
@click.option("--name", callback=_name_option("bundle name"), help="Bundle name: letters, "
              "digits, - _ . (first a letter, digit or _) "
              "[default: <run>-<target>-<runtime>-<precision>].")
@click.option("--flash-kb", type=click.IntRange(min=1), help="mcu: flash budget in KiB.")
@click.option("--ram-kb", type=click.IntRange(min=1), help="mcu: RAM budget in KiB.")
@click.option("--calls", type=click.IntRange(min=10), default=2000, show_default=True,
              help="linux: timed batch-1 calls for the manifest's latency (after warm-up).")
@click.option("--warmup", type=click.IntRange(min=0), default=200, show_default=True,
              help="linux: untimed calls first.")
@click.option("--allow-flagged", is_flag=True, help="Bundle an export that lost more test "
              "accuracy than export allows (refused otherwise).")
@click.pass_obj
def deploy(obj: Context, run: Path, target, runtime, quantization, out, name, flash_kb, ram_kb,
           calls, warmup, allow_flagged):
    """Export a run and write a bundle for a device: a folder, its .tar.gz and sha256.

    The linux bundle needs only numpy, pillow and the runtime, and checks itself on the
    device with `python predict.py --selftest`; re-running the command replaces it.
    """
    from harness.deploy import linux as deploy_mod
    from harness.deploy.bundle import DeployError, DeployRefused
    from harness.export.convert import ExportError

    try:
        deploy_mod.check_options(target, runtime, quantization, flash_kb, ram_kb)
    except DeployError as e:
        raise click.UsageError(str(e)) from None
    run_dir = _run_dir(obj, run)
    try:
        result = deploy_mod.deploy_run(run_dir, obj.dataset(), out or obj.results / "deploy",
                                       target, runtime, quantization, name, flash_kb, ram_kb,
                                       calls, warmup, allow_flagged)
    except DeployRefused as e:
        raise Refused(str(e)) from None
    except (DeployError, ExportError) as e:
        raise click.ClickException(str(e)) from None
    click.echo(deploy_mod.format_summary(result))


@main.command()
@click.argument("runs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--export", "export_kind", type=click.Choice(["onnx", "tflite", "all"]),
              default="onnx", show_default=True, help="Which exports to make and time.")
@click.option("--calls", type=click.IntRange(min=10), default=2000, show_default=True,
              help="Timed batch-1 calls per runtime (after warm-up).")
@click.option("--warmup", type=click.IntRange(min=0), default=200, show_default=True,
              help="Untimed calls first.")
@click.option("--mode", "modes", type=click.Choice(["accuracy", "performance"]), multiple=True,
              help="Also MLPerf Tiny's modes: accuracy (its 200-image list, by file name, one "
                   "image a call, no warm-up), performance (median throughput of 5 windows, "
                   "latency = 1 / median). Repeatable.")
@click.option("--window-s", type=click.FloatRange(min=0, min_open=True), default=10.0,
              show_default=True, help="--mode performance: least seconds per window.")
@click.pass_obj
def bench(obj: Context, runs, export_kind, calls, warmup, modes, window_s):
    """Accuracy against batch-1 latency for each run, as Keras and as its exports; an
    imported .tflite or .onnx as it is.

    Writes results/bench/<run>.json with machine facts and prints a table.
    """
    from harness.export.bench import bench_run, format_rows, write_bench
    from harness.imports.imported import bench_import
    from harness.export.convert import ExportError
    from harness.imports.imported import ImportRefused
    from harness.export.mlperf import MlperfError
    from harness.core.schemas import RecordError

    run_dirs = [_run_dir(obj, run) for run in runs]
    ds = obj.dataset()
    for run_dir in run_dirs:
        try:
            how = {"calls": calls, "warmup": warmup, "modes": tuple(dict.fromkeys(modes)),
                   "window_s": window_s}
            if run_dir.read_import() is not None and not run_dir.model.exists():
                record = bench_import(run_dir, ds, **how)  # a .tflite or .onnx, as it is
            else:
                record = bench_run(run_dir, ds, export_kind, **how)
            written = write_bench(record, obj.results)
        except (ImportRefused, MlperfError) as e:
            raise Refused(str(e)) from None
        except (ExportError, RecordError) as e:  # a record that breaks its format: not written
            raise click.ClickException(str(e)) from None
        click.echo(f"{run_dir.name}  ->  {written}")
        click.echo(format_rows(record["rows"]))


def _column_keys(ctx, param, value: str | None) -> tuple[str, ...]:
    try:
        return compare_mod.parse_columns(value) if value is not None else ()
    except ValueError as e:
        raise click.BadParameter(str(e)) from None


@main.command()
@click.argument("paths", nargs=-1, required=True,
                type=click.Path(exists=True, path_type=Path))
@click.option("--out", type=click.Path(file_okay=False, path_type=Path),
              help="Folder for report.md, results.csv and the pictures "
                   "[default: <results>/report].")
@click.option("--columns", metavar="KEY,...", callback=_column_keys,
              help="Columns to print, in this order (the keys --sort takes) [default for "
                   "table: model, runtime, precision, accuracy, p50, size, then as many "
                   "more as the terminal's width allows; other formats: all].")
@click.option("--format", "fmt", type=click.Choice(compare_mod.FORMATS), default="table",
              show_default=True, help="How to print the table.")
@click.option("--sort", "sort_key", type=click.Choice(compare_mod.SORT_KEYS), default="accuracy",
              show_default=True,
              help="Column to sort by (accuracy and throughput high to low, others low to "
                   "high).")
@click.pass_obj
def compare(obj: Context, paths, out, columns, fmt, sort_key):
    """Every run, tuning and bench record under PATHS in one table, with pictures.

    Files that break the record schema are named and skipped. Writes report.md,
    results.csv, accuracy_vs_latency.png, accuracy_vs_flash.png and training_curves.png
    to --out.
    """
    records = compare_mod.collect_records(paths)
    for path, reason in records.skipped:
        click.secho(f"skipped {path}: {reason}", err=True, fg="yellow")
    for note in records.notes:
        click.echo(f"note: {note}", err=True)
    try:
        report = compare_mod.report(records, out or obj.results / "report", sort_key, paths)
    except compare_mod.NoRecords as e:
        raise click.ClickException(str(e)) from None
    text, left_out = compare_mod.printed_table(report.rows, fmt, columns,
                                               shutil.get_terminal_size().columns)
    click.echo(text)
    for line in compare_mod.versus_summary(report.versus):
        click.echo(line, err=True)
    if left_out:
        click.echo(f"left out to fit the terminal: {', '.join(left_out)} (--columns chooses; "
                   "results.csv has every column)", err=True)
    click.echo("wrote " + ", ".join(str(p) for p in report.files), err=True)


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


def _image_files(ctx, param, paths: tuple[Path, ...]) -> list[Path]:
    """The files given, and in place of each folder the PNG/JPEG files in it, sorted."""
    files = []
    for path in paths:
        if not path.is_dir():
            files.append(path)
            continue
        inside = sorted(p for p in path.iterdir()
                        if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        if not inside:
            raise click.BadParameter(f"{path}: a folder without PNG or JPEG images")
        files += inside
    return files


@main.command()
@click.argument("model", type=click.Path(exists=True, path_type=Path))
@click.argument("images", nargs=-1, required=True, callback=_image_files,
                type=click.Path(exists=True, path_type=Path))
@click.option("--top", type=click.IntRange(1, 10), default=1, show_default=True,
              help="Classes to print per image.")
@click.option("--json", "as_json", is_flag=True, help="One JSON line per image: its top "
              "classes, or the error that kept it from being read.")
@click.option("--max-pixels", type=click.IntRange(min=1), default=MAX_PIXELS,
              show_default=True, help="Refuse an image of more pixels, read off its header "
              "before it is decoded.")
def predict(model: Path, images, top: int, as_json: bool, max_pixels: int):
    """Classify images with an exported .onnx or .tflite model, or an imported run's file
    under its input contract (no TensorFlow needed).

    IMAGES are files or folders (every PNG/JPEG in a folder, by name; not its subfolders).
    Any image is converted to RGB and resized to 32 x 32 first. An unreadable one is named
    on stderr and the others are classified; the exit status is then 1.
    """
    from harness.export import runtimes
    from harness.core.contract import Contract, ContractModel
    from harness.edge.predict import read_images

    try:
        if model.is_dir():
            runtime = _imported_predictor(model)
        else:
            runtime = ContractModel(runtimes.load(model), Contract(),
                                    float_pixels=model.suffix == ".onnx")
    except runtimes.ModelFileError as e:
        raise Refused(str(e)) from None
    pixels, names, errors = read_images(images, max_pixels)
    probs = dict(zip(names, (runtime.predict(pixels[i:i + 1])[0] for i in range(len(pixels)))))
    for path in map(str, images):
        if path in errors:
            if as_json:
                click.echo(json.dumps({"image": path, "error": errors[path]}))
            continue
        best = [int(c) for c in np.argsort(probs[path])[::-1][:top]]
        if as_json:
            click.echo(json.dumps({"image": path, "top": [
                {"class": data_mod.LABEL_NAMES[c], "index": c,
                 "probability": round(float(probs[path][c]), 6)} for c in best]}))
        else:
            click.echo(f"{path}: " + ", ".join(f"{data_mod.LABEL_NAMES[c]} "
                                               f"{probs[path][c]:.3f}" for c in best))
    if errors:
        raise click.ClickException(f"{len(errors)} of {len(images)} images could not be read "
                                   f"(named above); the other {len(names)} are classified")


def _imported_predictor(folder: Path):
    """An imported run's .tflite or .onnx behind its contract, for predict."""
    from harness.imports.foreign import FILE_RUNTIMES
    from harness.imports.imported import ImportRefused, check_source, open_run, read_import

    run = RunDir(folder)
    info = read_import(run)
    if info is None:
        raise Refused(f"{folder}: give a .tflite or .onnx file, or an imported run's folder")
    if info["format"] not in FILE_RUNTIMES:
        raise Refused(f"{folder}: an imported {info['format']} model; predict runs .tflite and "
                      f".onnx files (harness export {folder} makes them)")
    try:
        check_source(run, info)
    except ImportRefused as e:
        raise Refused(str(e)) from None
    return open_run(run, info)


@main.command()
@click.argument("run", type=click.Path(path_type=Path))
@click.option("--threshold", type=click.FloatRange(min=0), help="Zero |w| <= this.")
@click.option("--target-sparsity", type=click.FloatRange(0, 1, max_open=True),
              help="Zero the smallest weights up to this fraction (all Dense kernels).")
@click.option("--name", callback=_name_option("run name"),
              help="New run name (default <run>-sparse).")
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
    click.echo(f"sparsity {m['sparsity']:.1%}, test accuracy {m['test']['accuracy']:.4f} "
               f"-> {RunDir.named(obj.results, m['run']).path}")


@main.command()
@click.argument("run", type=click.Path(path_type=Path))
@click.option("--sparsity", type=click.FloatRange(0, 1, min_open=True, max_open=True),
              default=0.8, show_default=True, help="Target fraction of zero Dense weights.")
@click.option("--epochs", type=click.IntRange(min=1), default=5, show_default=True,
              help="Fine-tuning epochs (the polynomial schedule reaches the target at 80%).")
@click.option("--name", callback=_name_option("run name"),
              help="New run name (default <run>-pruned<percent>).")
@click.pass_obj
def prune(obj: Context, run: Path, sparsity, epochs, name):
    """Magnitude pruning with tensorflow-model-optimization, fine-tuned; a new run."""
    from harness.train.sparsity import prune_magnitude

    parent = _run_dir(obj, run, imported_ok=False)
    name = name or _derived_name(f"{parent.name}-pruned{round(sparsity * 100)}")
    m = prune_magnitude(parent, obj.dataset(), obj.results, name, sparsity, epochs,
                        verbose=1 if sys.stdout.isatty() else 2)
    click.echo(f"sparsity {m['sparsity']:.1%}, test accuracy {m['test']['accuracy']:.4f} "
               f"-> {RunDir.named(obj.results, m['run']).path}")


@main.command("prune-units")
@click.argument("run", type=click.Path(path_type=Path))
@click.option("--keep", type=click.FloatRange(0, 1, min_open=True), default=0.5,
              show_default=True, help="Fraction of hidden units kept in every layer.")
@click.option("--epochs", type=click.IntRange(min=1), default=5, show_default=True,
              help="Fine-tuning epochs.")
@click.option("--lr-scale", type=click.FloatRange(0, min_open=True), default=1.0,
              show_default=True, help="Fine-tuning rate as a multiple of the parent's.")
@click.option("--teacher", callback=_name_option("run name"), help="Distill from this "
              "finished run while fine-tuning (the parent run is a good choice).")
@click.option("--name", callback=_name_option("run name"),
              help="New run name (default <run>-units<N>).")
@click.pass_obj
def prune_units(obj: Context, run: Path, keep, epochs, lr_scale, teacher, name):
    """Structured pruning: drop the weakest hidden units, rebuild narrower layers, fine-tune."""
    from harness.core.config import from_dict
    from harness.train.sparsity import prune_units as run_prune

    parent = _run_dir(obj, run, imported_ok=False)
    cfg = from_dict(parent.read_config())
    _select_backend(cfg.backend)
    try:
        m = run_prune(parent, obj.dataset(), obj.results, name, keep, epochs, lr_scale=lr_scale,
                      teacher=teacher)
    except (BadName, ConfigError) as e:  # the default name <run>-units<N>, or the teacher's
        raise click.UsageError(str(e)) from None
    click.echo(_summary(obj.results, m["run"], m))


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
    run_dir = _run_dir(obj, run)
    info = _import_info(run_dir)
    if info is not None:
        from harness.imports.imported import ImportRefused, check_source, evaluate_import

        try:
            check_source(run_dir, info)
            result = evaluate_import(run_dir, obj.dataset(), info)
        except ImportRefused as e:
            raise Refused(str(e)) from None
    else:
        from harness.train.fit import evaluate_run

        result = evaluate_run(run_dir, obj.dataset())
    for split_name in ("val", "test"):
        click.echo(f"{split_name:<5} accuracy {result[split_name]['accuracy']:.4f}  "
                   f"loss {result[split_name]['loss']:.4f}")
    for split_name, part in result.get("without_tta", {}).items():
        click.echo(f"{split_name:<5} accuracy {part['accuracy']:.4f}  "
                   f"loss {part['loss']:.4f}  (without test-time augmentation)")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
