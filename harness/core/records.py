"""The run directory and its records: the one place that knows the on-disk layout.

Every stage (train, evaluate, and later tune, prune, export, bench, compare) reads and
writes runs through this module. Every file is written atomically: a temporary file in the
same folder, flushed, then renamed over the target, so a killed process never leaves a half
written record behind.

Layout of ``<results>/`` (``Results``)::

    runs/<name>/        a run (RunDir, below)
    bench/<run>.json    bench records (harness.export.bench; a device's, from predict.py --bench)
    deploy/<bundle>/    device bundles, each with its .tar.gz and .sha256
    tuning/<name>/      KerasTuner searches (harness.search.tune)
    sweeps/<name>/      learning-rate sweeps (harness.search.sweep)
    report/             compare's report

Layout of ``<results>/runs/<name>/``::

    config.json     the resolved TrainConfig (preset, then file, then flags)
    metrics.json    status, train/val/test accuracy and loss of the best model, timings,
                    parameter counts, data sha256, library versions (format: harness.core.schemas)
    model.keras     the best model (lowest val_loss), raw 0-255 pixels in, probabilities out
    history.csv     one row per epoch (Keras CSVLogger) plus epoch_seconds
    logs/           TensorBoard event files
    backup/         BackupAndRestore state while a run is unfinished (deleted when it ends)
    exports/        exported model files and exports.json (harness.export.convert)
    source/         an imported model's file, byte for byte (harness import)
"""

from __future__ import annotations

import csv
import fcntl
import io
import json
import os
import platform
import re
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

# The statuses and schema version are part of the record formats; imported from here too.
from harness.core.schemas import (  # noqa: F401
    COMPLETED,
    FAILED,
    METRICS_SCHEMA_VERSION,
    RUNNING,
    RecordError,
    check_record,
)

# The kind of run `harness import` writes (a model harness did not train): its config.json
# records the import, not a recipe.
IMPORTED = "imported"

# A name that becomes one folder: a run, a sweep, a search, a bundle. Never a path, a hidden
# file or something a shell reads as an option; every command checks its --name here, and
# RunDir.named checks again before a run directory is made.
NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,99}")
NAME_RULE = "1 to 100 letters, digits, '-', '_' or '.', starting with a letter, digit or '_'"


class BadName(ValueError):
    """A name that cannot be a folder of its own; the message states the rule."""


def check_name(name: str, what: str = "name") -> str:
    """``name`` if it keeps the rule (NAME); else BadName, saying what the name was for."""
    if not isinstance(name, str) or not NAME.fullmatch(name):
        raise BadName(f"{name!r}: a {what} is {NAME_RULE}")
    return name


def _read_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _read_umask()


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see either the old file or the new one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the usual permissions
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, allow_nan=False) + "\n")


def write_record(kind: str, path: Path, record: dict) -> None:
    """``record`` as JSON at ``path``, atomically, once it keeps its format (``kind``: run,
    tuning, bench or frontier; see harness.core.schemas). A record that breaks it is not
    written: RecordError names every problem."""
    try:
        check_record(kind, record)
    except RecordError as e:
        raise RecordError(f"{path}: not written, not a valid {kind} record: {e}") from None
    atomic_write_json(path, record)


def atomic_write_csv(path: Path, rows: list[list]) -> None:
    """Rows (the first one a header) as a CSV file, written atomically."""
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerows(rows)
    atomic_write_text(path, out.getvalue())


def read_json(path: Path) -> Any:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def library_versions() -> dict[str, str]:
    """Versions of the libraries that shape a result, read without importing them."""
    names = [
        "numpy",
        "keras",
        "tensorflow",
        "jax",
        "tf-keras",
        "keras-tuner",
        "tensorflow-model-optimization",
        "onnx",
        "tf2onnx",
        "onnxruntime",
        "ai-edge-litert",
    ]
    versions = {"python": platform.python_version()}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def cpu_name() -> str:
    """The processor's model name (Linux: /proc/cpuinfo), else what platform says."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "cpu"


def machine_facts() -> dict:
    """CPU model, cores, platform and library versions, for benchmark records."""
    facts = {
        "cpu": cpu_name(),
        "cores": os.cpu_count(),
        "platform": platform.platform(),
        "versions": library_versions(),
    }
    if hasattr(os, "sched_getaffinity") and len(os.sched_getaffinity(0)) != os.cpu_count():
        facts["cores_allowed"] = len(os.sched_getaffinity(0))  # pinned, e.g. by taskset
    return facts


@dataclass(frozen=True)
class RunDir:
    """Paths of one run. Creating the object touches nothing on disk."""

    path: Path

    @classmethod
    def named(cls, results: Path, name: str) -> "RunDir":
        """``<results>/runs/<name>``; BadName unless ``name`` keeps the rule (NAME)."""
        return cls(Path(results) / "runs" / check_name(name, "run name"))

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def config(self) -> Path:
        return self.path / "config.json"

    @property
    def metrics(self) -> Path:
        return self.path / "metrics.json"

    @property
    def model(self) -> Path:
        return self.path / "model.keras"

    @property
    def history(self) -> Path:
        return self.path / "history.csv"

    @property
    def logs(self) -> Path:
        return self.path / "logs"

    @property
    def backup(self) -> Path:
        return self.path / "backup"

    @property
    def evaluation(self) -> Path:
        return self.path / "evaluation.json"

    @property
    def exports(self) -> Path:
        return self.path / "exports"

    @property
    def source(self) -> Path:
        return self.path / "source"

    def exists(self) -> bool:
        return self.config.exists()

    def write_config(self, config: dict) -> None:
        atomic_write_text(self.config, json.dumps(config, indent=2, sort_keys=True) + "\n")

    def read_config(self) -> dict:
        return read_json(self.config)

    def read_metrics(self) -> dict | None:
        return read_json(self.metrics) if self.metrics.exists() else None

    def write_metrics(self, metrics: dict) -> None:
        write_record("run", self.metrics, {"schema": METRICS_SCHEMA_VERSION, **metrics})

    def read_import(self) -> dict | None:
        """An imported model's config.json (harness.imports: ``"kind": "imported"``), or
        None for a run harness trained (or no config at all)."""
        if not self.config.exists():
            return None
        config = self.read_config()
        return config if isinstance(config, dict) and config.get("kind") == IMPORTED else None


@dataclass(frozen=True)
class Results:
    """The results folder's layout (above); creating the object touches nothing on disk."""

    path: Path

    def run(self, name: str) -> RunDir:
        return RunDir.named(self.path, name)

    def bench(self, run: str) -> Path:
        return self.path / "bench" / f"{check_name(run, 'run name')}.json"

    @property
    def deploy(self) -> Path:
        return self.path / "deploy"

    def tuning(self, name: str) -> Path:
        return self.path / "tuning" / check_name(name, "search name")

    def sweep(self, name: str) -> Path:
        return self.path / "sweeps" / check_name(name, "sweep name")

    @property
    def report(self) -> Path:
        return self.path / "report"


class RunBusy(RuntimeError):
    """Another process is writing this run; the message is one line."""


@contextmanager
def run_lock(run: RunDir):
    """Hold ``run``'s writer lock while inside: a second process that asks for it gets
    RunBusy at once, before it touches the folder. The lock is a file beside the run
    (``runs/.<name>.lock``, so replacing the run's folder keeps it) locked with
    fcntl.flock, which the kernel drops when its holder dies: no stale lock to clear. It
    holds the holder's pid, for the message."""
    path = run.path.with_name(f".{run.name}.lock")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
        os.close(fd)
        raise RunBusy(
            f"run {run.path} is being written by another process (pid {holder}); "
            "wait for it to end, or choose another --name"
        ) from None
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)


def format_run(path: Path, m: dict) -> str:
    """What ``harness train`` and ``evaluate`` print of a run record (metrics.json)."""
    lines = [
        f"run {path}: {m['status']}, "
        f"{m['epochs_run']} epochs (best {m['best_epoch']}), {m['wall_time_s']:.1f} s, "
        f"{m['seconds_per_epoch']} s/epoch"
    ]
    for split_name in ("train", "val", "test"):
        if split_name in m:
            lines.append(
                f"  {split_name:<5} accuracy {m[split_name]['accuracy']:.4f}  "
                f"loss {m[split_name]['loss']:.4f}"
            )
    return "\n".join(lines)
