"""Which device a process trains on: chosen before the backend starts, checked, recorded.

``--device auto|cpu|gpu`` (env HARNESS_DEVICE) and ``--gpu N`` (env HARNESS_GPU) act in two
steps, because JAX and TensorFlow read their settings once, when they initialize:

1. :func:`prepare`, before any backend is imported, sets the environment: ``cpu`` hides the
   GPUs (CUDA_VISIBLE_DEVICES='', JAX_PLATFORMS=cpu); otherwise processes share GPUs sanely
   (JAX allocates on demand instead of taking 75% of each GPU; TensorFlow grows its memory),
   and a process given ``--gpu N``, or a tuning worker with an index (KERASTUNER_TUNER_ID
   ``tuner3``: GPU 3 modulo the GPUs visible), sees that one GPU only.
2. :func:`select`, once the backend is known, lists the GPUs the backend sees, refuses
   ``gpu`` when there is none (one line, before any training), prints the device for
   ``auto``, and returns the :class:`Device` that metrics.json and trial records store.

The listing is a function (:func:`list_gpus`, or ``list_gpus=`` in tests), so tests can
simulate any host.
"""

from __future__ import annotations

import functools
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, MutableMapping
from dataclasses import asdict, dataclass
from pathlib import Path

from harness.core.records import cpu_name

DEVICES = ("auto", "cpu", "gpu")
DEVICE_ENV, GPU_ENV = "HARNESS_DEVICE", "HARNESS_GPU"
# A worker id ending in its index, KerasTuner's convention (tuner0, tuner1, ...): "worker-3fa0"
# from --tuner-id auto has none (its hex tail is not an index).
WORKER_INDEX = re.compile(r"^[A-Za-z]+[-_]?(\d+)$")


class DeviceError(Exception):
    """The asked device cannot be had; the message says why in one line."""


@dataclass(frozen=True)
class Device:
    """What a run trained on, as metrics.json and tuning trial records store it."""

    backend: str  # "jax", "tensorflow"
    kind: str  # "gpu" or "cpu"
    name: str  # the GPU's model ("NVIDIA H200"), or the CPU's
    count: int  # devices of that kind the backend sees (1 for the CPU)

    @property
    def record(self) -> dict:
        return asdict(self)

    @property
    def label(self) -> str:
        """``jax gpu: 2x NVIDIA H200``, ``tensorflow cpu: Intel Xeon ...``."""
        count = f"{self.count}x " if self.count > 1 else ""
        return f"{self.backend} {self.kind}: {count}{self.name}"


def label_of(record: dict | None) -> str | None:
    """A stored device record as :attr:`Device.label`; None for a record without one."""
    if not isinstance(record, dict) or not {"backend", "kind", "name", "count"} <= record.keys():
        return None
    return Device(**{k: record[k] for k in ("backend", "kind", "name", "count")}).label


# --------------------------------------------------------------------------- before the backend


def visible_gpu_ids(environ: MutableMapping[str, str] | None = None) -> list[str]:
    """The GPUs this process may use, found without starting a backend: the entries of
    CUDA_VISIBLE_DEVICES when set, else those ``nvidia-smi -L`` lists (in a container: the
    GPUs given to it), else the NVIDIA driver's entries in /proc; [] without NVIDIA GPUs."""
    environ = os.environ if environ is None else environ
    if "CUDA_VISIBLE_DEVICES" in environ:
        return [v.strip() for v in environ["CUDA_VISIBLE_DEVICES"].split(",") if v.strip()]
    if shutil.which("nvidia-smi"):
        try:
            out = subprocess.run(
                ["nvidia-smi", "-L"], capture_output=True, text=True, timeout=20
            ).stdout
            listed = [line for line in out.splitlines() if line.startswith("GPU ")]
            return [str(i) for i in range(len(listed))]
        except (OSError, subprocess.SubprocessError):
            pass
    gpus = Path("/proc/driver/nvidia/gpus")
    return [str(i) for i in range(len(list(gpus.iterdir())))] if gpus.is_dir() else []


def worker_index(tuner_id: str | None) -> int | None:
    """The index of a KerasTuner worker id (``tuner3`` -> 3); None for the chief, no id, or
    an id without one."""
    match = WORKER_INDEX.match(tuner_id or "")
    return int(match.group(1)) if match and tuner_id != "chief" else None


def prepare(
    device: str = "auto",
    gpu: int | None = None,
    tuner_id: str | None = None,
    environ: MutableMapping[str, str] | None = None,
    gpu_ids: Callable[[MutableMapping[str, str]], list[str]] = visible_gpu_ids,
) -> str | None:
    """Set the environment for ``device`` before JAX or TensorFlow starts; returns a note
    for the user (the GPU a process was pinned to, or why it was not), or None.

    ``gpu`` pins this process to that GPU (an index among the visible ones) and makes a GPU
    required; otherwise a tuning worker with an index takes GPU index modulo the visible GPUs.
    The choice lands in HARNESS_DEVICE, which :func:`select` reads."""
    environ = os.environ if environ is None else environ
    if device not in DEVICES:
        raise DeviceError(f"device {device!r}: must be one of {', '.join(DEVICES)}")
    if device == "cpu":
        if gpu is not None:
            raise DeviceError(f"--gpu {gpu} and --device cpu contradict each other")
        environ["CUDA_VISIBLE_DEVICES"] = ""  # TensorFlow's and CUDA's
        environ["JAX_PLATFORMS"] = "cpu"
        environ[DEVICE_ENV] = "cpu"
        return None
    # Several processes on one GPU: allocate on demand (the user's own choice wins).
    environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    environ.setdefault("TF_FORCE_GPU_ALLOW_GROWTH", "true")
    environ[DEVICE_ENV] = device
    index = gpu if gpu is not None else worker_index(tuner_id)
    if index is None:
        if tuner_id not in (None, "chief") and len(gpu_ids(environ)) > 1:
            return (
                f"worker {tuner_id} has no index: it sees every GPU (give --gpu N, or a "
                "tuner id such as tuner1, for one GPU per worker)"
            )
        return None
    if "CUDA_VISIBLE_DEVICES" not in environ:  # numbered as nvidia-smi numbers them
        environ.setdefault("CUDA_DEVICE_ORDER", "PCI_BUS_ID")
    ids = gpu_ids(environ)
    if gpu is not None:
        environ[DEVICE_ENV] = "gpu"  # a pinned process must get its GPU, never the CPU
        if ids and gpu >= len(ids):
            raise DeviceError(f"--gpu {gpu}: only {len(ids)} GPU(s) visible (0-{len(ids) - 1})")
        chosen = ids[gpu] if ids else str(gpu)
        environ["CUDA_VISIBLE_DEVICES"] = chosen
        return f"pinned to GPU {chosen} (--gpu {gpu})"
    if not ids:
        return None
    chosen = ids[index % len(ids)]
    environ["CUDA_VISIBLE_DEVICES"] = chosen
    return f"worker {tuner_id}: GPU {chosen} ({index} modulo {len(ids)} visible GPUs)"


# --------------------------------------------------------------------------- once the backend runs


def list_gpus(backend: str) -> list[str]:
    """Names of the GPUs ``backend`` sees (JAX: jax.devices; TensorFlow: its physical
    devices, each set to grow its memory before the runtime starts)."""
    if backend == "jax":
        import jax

        try:
            return [d.device_kind for d in jax.devices("gpu")]
        except RuntimeError:  # no GPU backend: no CUDA plugin, or no GPU
            return []
    if backend == "tensorflow":
        import tensorflow as tf

        gpus = tf.config.list_physical_devices("GPU")
        for g in gpus:
            try:
                tf.config.experimental.set_memory_growth(g, True)
            except RuntimeError:  # already initialized; TF_FORCE_GPU_ALLOW_GROWTH applies
                pass
        return [
            tf.config.experimental.get_device_details(g).get("device_name", g.name) for g in gpus
        ]
    if backend == "torch":
        import torch

        return [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    raise DeviceError(f"backend {backend!r}: cannot list its devices")


def _no_gpu_hint(backend: str) -> str:
    if os.environ.get("CUDA_VISIBLE_DEVICES") == "":
        return "CUDA_VISIBLE_DEVICES is empty"
    if backend == "jax":
        from importlib import metadata

        try:
            metadata.version("jax-cuda12-plugin")
        except metadata.PackageNotFoundError:
            return "JAX has no CUDA plugin: pip install 'harness[cuda]'"
    return "no NVIDIA driver or GPU visible to this process"


def _hide_gpus_from_tensorflow() -> None:
    """Under JAX, TensorFlow only writes TensorBoard logs: keep it off the GPUs, where it
    would otherwise reserve memory beside JAX."""
    import importlib.util

    if importlib.util.find_spec("tensorflow") is None:
        return
    import tensorflow as tf

    try:
        tf.config.set_visible_devices([], "GPU")
    except RuntimeError:  # TensorFlow already started; it grows its memory on demand
        pass


_SELECTED: dict[str, Device] = {}  # per backend: a process lists its devices once


def select(
    backend: str,
    requested: str | None = None,
    gpus: Callable[[str], list[str]] | None = None,
    out=None,
) -> Device:
    """The device ``backend`` trains on in this process; DeviceError when ``requested``
    (default: HARNESS_DEVICE, else auto) cannot be met. ``auto`` prints the choice, once.

    ``gpus`` lists the backend's GPUs (default :func:`list_gpus`; tests pass their own).
    ``gpu`` with no GPU visible is refused; so is ``cpu`` where the backend started before
    :func:`prepare` could hide the GPUs (a library caller's process)."""
    requested = requested or os.environ.get(DEVICE_ENV) or "auto"
    if requested not in DEVICES:
        raise DeviceError(f"{DEVICE_ENV}={requested!r}: must be one of {', '.join(DEVICES)}")
    device = _SELECTED.get(backend) if gpus is None else None
    if device is None:
        names = (gpus or list_gpus)(backend)
        device = (
            Device(backend, "gpu", names[0], len(names))
            if names
            else Device(backend, "cpu", cpu_name(), 1)
        )
        if gpus is None:
            _SELECTED[backend] = device
            if device.kind == "gpu" and backend == "jax":
                _hide_gpus_from_tensorflow()
        if requested == "auto":
            print(f"device: {device.label}", file=out or sys.stderr)
    if requested == "gpu" and device.kind != "gpu":
        raise DeviceError(f"--device gpu: {backend} sees no GPU ({_no_gpu_hint(backend)})")
    if requested == "cpu" and device.kind != "cpu":
        raise DeviceError(
            f"--device cpu: {backend} started before the GPUs could be hidden "
            f"and sees {device.count}; set CUDA_VISIBLE_DEVICES='' instead"
        )
    return device


# --------------------------------------------------------------------------- the CLI option


def device_option(command):
    """``--device`` and ``--gpu`` for a Click command: the environment is prepared before
    the command runs (so before it imports a backend), and a DeviceError, raised then or
    when training starts, ends the command with its one line (exit 1)."""
    import click

    @click.option(
        "--device",
        type=click.Choice(DEVICES),
        default="auto",
        show_default=True,
        envvar=DEVICE_ENV,
        help="auto: a GPU if the backend sees one (printed at "
        "start); cpu: hide the GPUs; gpu: stop at once if there is none. "
        f"Env: {DEVICE_ENV}.",
    )
    @click.option(
        "--gpu",
        type=click.IntRange(min=0),
        envvar=GPU_ENV,
        help="Use only this GPU (its index among the visible ones). Default for "
        "a tuning worker with an index (tuner3): that index modulo the GPUs. "
        f"Env: {GPU_ENV}.",
    )
    @functools.wraps(command)
    def with_device(*args, device, gpu, **kwargs):
        try:
            note = prepare(device, gpu, kwargs.get("tuner_id"))
            if note:
                click.echo(f"note: {note}", err=True)
            return command(*args, **kwargs)
        except DeviceError as e:
            raise click.ClickException(str(e)) from None

    return with_device
