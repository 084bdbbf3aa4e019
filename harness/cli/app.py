"""The ``harness`` command line: thin Click commands over the library modules.

Heavy libraries (Keras, TensorFlow) are imported inside the commands that need them, so
``harness --help`` and ``harness data info`` answer at once.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.abc
import importlib.util
import logging
import os
import subprocess
import sys
from pathlib import Path

import click

from harness.core.config import ConfigError
from harness.core.records import NAME, BadName, RunDir, check_name
from harness.data import cifar as data_mod


class Context:
    def __init__(self, archive: Path | None, home: Path | None, results: Path):
        self.archive, self.home, self.results = archive, home, results

    def dataset(self) -> data_mod.Dataset:
        return data_mod.load(self.archive, self.home)


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
_ABSL_LINE = (
    rb"[IWE]\d{4} \d\d:\d\d:\d+\.\d+ +\d+ [\w.-]+:\d+\] "  # absl: I0000 00:00:...
    rb"|\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+: [IWE] \S+:\d+\] "  # TF's older own
    rb"|WARNING: All log messages before absl::InitializeLog\(\) is called"
)
_SIEVE = (
    f"import re, sys\nnoise = re.compile({_ABSL_LINE!r})\n"
    "for line in sys.stdin.buffer:\n"
    "    if not noise.match(line):\n"
    "        sys.stderr.buffer.write(line)\n"
    "        sys.stderr.buffer.flush()\n"
)


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
        isinstance(finder, _QuietTensorFlow) for finder in sys.meta_path
    ):
        sys.meta_path.insert(0, _QuietTensorFlow())


# --------------------------------------------------------------------------- exits

# The library's errors and what each means for the exit status, declared once: 2 for input
# a command refuses before it changes anything, 1 for work that failed. Named rather than
# imported, so that `harness --help` loads no stage; subclasses follow their base.
EXITS = {
    "harness.core.config.ConfigError": (2, ""),
    "harness.core.records.BadName": (2, ""),
    "harness.core.records.RunBusy": (2, ""),
    "harness.core.contract.ContractError": (2, ""),
    "harness.imports.foreign.ForeignFileError": (2, ""),
    "harness.imports.imported.ImportRefused": (2, ""),
    "harness.deploy.bundle.DeployRefused": (2, ""),
    "harness.export.mlperf.MlperfError": (2, ""),
    "harness.export.runtimes.ModelFileError": (2, ""),
    "harness.deploy.device.BadTarget": (2, ""),
    "harness.deploy.boards.BoardError": (2, ""),
    "harness.deploy.npu.NpuChoice": (2, ""),
    "harness.deploy.npu.NpuError": (1, ""),
    "harness.data.cifar.DataError": (1, ""),
    "harness.deploy.device.DeviceError": (1, ""),
    "harness.deploy.bundle.DeployError": (1, ""),
    "harness.export.convert.ExportError": (1, ""),
    "harness.core.schemas.RecordError": (1, ""),
    "harness.imports.committed.ExportMismatch": (1, ""),
    "harness.train.fit.TrainingFailed": (1, "training failed: "),
    "harness.report.compare.NoRecords": (1, ""),
    "harness.report.doc_tables.DocsError": (1, ""),
    "builtins.ConnectionError": (1, ""),
}


def exit_for(error: BaseException) -> tuple[int, str] | None:
    """(exit status, prefix) for a library error, or None for anything else (a bug: shown
    with its traceback)."""
    for cls in type(error).__mro__:
        found = EXITS.get(f"{cls.__module__}.{cls.__qualname__}")
        if found:
            return found
    return None


def as_click(error: Exception) -> click.ClickException | None:
    """``error`` as the one-line click error EXITS gives it (a click error as it is), or None
    when it is not one of the library's."""
    if isinstance(error, click.ClickException):
        return error
    found = exit_for(error)
    if found is None:
        return None
    code, prefix = found
    return (Refused if code == 2 else Failed)(f"{prefix}{error}")


class Failed(click.ClickException):
    """Work that failed: one line, exit status 1."""


class Harness(click.Group):
    """The command group: every library error a command lets through becomes its one line
    and exit status (EXITS)."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.Abort):
            raise
        except Exception as e:
            error = as_click(e)
            if error is None:
                raise
            raise error from None


@click.group(cls=Harness, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--archive",
    type=click.Path(path_type=Path),
    envvar="HARNESS_ARCHIVE",
    help="Local cifar-10-python.tar.gz (or extracted folder) to use instead of "
    "downloading; for machines without internet. Env: HARNESS_ARCHIVE.",
)
@click.option(
    "--home",
    type=click.Path(file_okay=False, path_type=Path),
    envvar="HARNESS_HOME",
    help="Cache folder for the dataset. Env: HARNESS_HOME. Default: ~/.cache/harness.",
)
@click.option(
    "--results",
    type=click.Path(file_okay=False, path_type=Path),
    envvar="HARNESS_RESULTS",
    default=Path("results"),
    show_default=True,
    help="Folder for run directories (runs/<name>/). Env: HARNESS_RESULTS.",
)
@click.option(
    "--verbose",
    is_flag=True,
    envvar="HARNESS_VERBOSE",
    help="Show TensorFlow's C++ log as TF_CPP_MIN_LOG_LEVEL sets it (TensorFlow's "
    "default: everything). Without it harness hides that log's start-up "
    "lines (oneDNN, CUDA probing) and all but fatal errors. "
    "Env: HARNESS_VERBOSE=1.",
)
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


# --------------------------------------------------------------------------- option groups


def option_group(name: str, build, *options):
    """A decorator that adds ``options`` to a command and hands it one argument, ``name``:
    what ``build`` makes of those options' values (keyword arguments named after them), so
    a command takes a library object (a SearchSpace, a Budget) rather than its parts."""
    names = [o(lambda: None).__click_params__[0].name for o in options]

    def decorate(command):
        @functools.wraps(command)
        def wrapper(*args, **kwargs):
            kwargs[name] = build(**{n: kwargs.pop(n) for n in names})
            return command(*args, **kwargs)

        for option in reversed(options):
            wrapper = option(wrapper)
        return wrapper

    return decorate


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


class Refused(click.ClickException):
    """Bad input refused with one line and exit status 2 (a usage error, without the
    usage text: the line says what to change)."""

    exit_code = 2


def _run_dir(obj: Context, run: Path, imported_ok: bool = True, exports_ok: bool = False) -> RunDir:
    """A run given as a path, or as a name under results/runs/: a finished run (its
    model.keras and config.json) or, where ``imported_ok``, an imported one (harness
    import). Whatever it lacks is named in one line (exit 2) before anything is read."""
    named = not run.exists() and NAME.fullmatch(str(run))
    run_dir = RunDir.named(obj.results, str(run)) if named else RunDir(run)
    try:
        problem, info = check_run_dir(run_dir, exports_ok)
    except (OSError, ValueError) as e:
        raise Refused(f"{run}: {e}") from None
    if problem:
        raise Refused(f"{run}: {problem}")
    if info is not None and not imported_ok:
        raise Refused(
            f"{run}: an imported model ({info['file']}); this command works on runs harness trained"
        )
    return run_dir


def check_run_dir(run: RunDir, exports_ok: bool = False) -> tuple[str | None, dict | None]:
    """(what the run folder lacks for a command to read it, or None; its import record
    for an imported run). Checks the folder, config.json (a recipe this harness reads, or
    an import record), metrics.json (its format) and the model, in that order."""
    from harness.core.config import from_dict
    from harness.core.schemas import RecordError, check_run
    from harness.imports.imported import KIND
    from harness.report.collect import read_record

    if not run.path.is_dir():
        return f"no run here (no folder {run.path})", None
    if not run.config.exists():
        what = "model.keras but no" if run.model.exists() else "no"
        return (
            f"not a finished run: {what} config.json (the run's recipe); harness writes "
            "both, so this folder is damaged or not harness'"
        ), None
    try:
        config = read_record(run.config)
    except RecordError as e:
        return f"config.json is {e}", None
    info = config if config.get("kind") == KIND else None
    if info is None:
        try:
            from_dict(config)
        except (ConfigError, TypeError) as e:
            return (
                f"config.json is not a recipe this harness reads ({e}): written by a "
                f"newer harness, or edited"
            ), None
    if run.metrics.exists():
        try:
            check_run(read_record(run.metrics))
        except RecordError as e:
            return f"metrics.json breaks the run record's format: {e}", None
    if info is not None:
        source = run.path / "source" / str(info.get("file"))
        return (
            None if source.exists() else f"the imported file source/{info.get('file')} is missing"
        ), info
    if not run.model.exists():
        from harness.imports.committed import committed_exports

        if exports_ok and committed_exports(run):
            return None, None  # bench times a clone's committed exports as they are
        return "no finished run here (no model.keras)", None
    return None, None


def _select_backend(backend: str | None) -> None:
    """Point Keras at ``backend`` before it is imported (it reads KERAS_BACKEND once)."""
    if backend is None or "keras" in sys.modules:
        return  # train() reports a mismatch with the backend already loaded
    import importlib.util

    if importlib.util.find_spec(backend) is None:
        raise click.ClickException(f"backend {backend!r} is not installed (pip install {backend})")
    os.environ["KERAS_BACKEND"] = backend
