"""The device benchmark of a bundle: ``python predict.py --bench --out RECORD.json``.

Standalone like predict.py (numpy and the model's runtime; never harness, TensorFlow, Keras
or JAX), shipped beside it in every linux bundle. It times the bundle's model as ``harness
bench`` times a model on the machine that made it: uint8 pixels in, the input contract and
the conversion to the model's input type inside each timed call, ``warmup`` untimed calls,
then ``calls`` timed ones (each stopping early once it has taken :data:`WARMUP_S` or
:data:`TIMED_S` seconds; ``time.perf_counter`` around each call only), p50/p90/p99 in
microseconds on ``threads`` runtime threads; throughput at batch 256 (median of 5 passes).
It writes a bench record (``"benchmark": "bench"``, the format ``harness compare`` reads):
the device's facts as the machine, one row for the bundle's model, whose test accuracy is
the manifest's (10,000 test images at export, the same file) and whose ``device_samples``
say how the shipped samples scored here.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

import numpy as np

THROUGHPUT_BATCH = 256
PASSES = 5
# A slow model (Keras' predict takes milliseconds a call) is timed for a few seconds, not
# for its full count of calls: the warm-up and the timed calls each stop once they have
# taken this long, keeping at least MIN_CALLS timed calls. Each row records its calls.
WARMUP_S, TIMED_S, MIN_CALLS = 0.5, 2.0, 20


def latency_us(call, image: np.ndarray, calls: int, warmup: int) -> dict:
    """Batch-1 latency of ``call(image)``: percentiles of ``calls`` timed calls, or of as
    many (at least :data:`MIN_CALLS`) as fit in :data:`TIMED_S` seconds; ``calls`` in the
    result is how many were timed."""
    end = time.perf_counter() + WARMUP_S
    for _ in range(warmup):
        call(image)
        if time.perf_counter() > end:
            break
    times = np.empty(calls)
    end = time.perf_counter() + TIMED_S
    for i in range(calls):
        t0 = time.perf_counter()
        call(image)
        times[i] = time.perf_counter() - t0
        if t0 > end and i + 1 >= MIN_CALLS:
            times = times[: i + 1]
            break
    p50, p90, p99 = np.percentile(times * 1e6, [50, 90, 99])
    return {"p50_us": float(p50), "p90_us": float(p90), "p99_us": float(p99), "calls": len(times)}


def throughput(call, images: np.ndarray, passes: int = PASSES) -> float:
    """Images per second through ``call(images)``, the median of ``passes`` passes."""
    call(images)
    rates = []
    for _ in range(passes):
        t0 = time.perf_counter()
        call(images)
        rates.append(len(images) / (time.perf_counter() - t0))
    return float(np.median(rates))


def _read(path: str) -> str | None:
    try:
        return Path(path).read_text(errors="replace")
    except OSError:
        return None


def cpu_model(cpuinfo: str | None = None) -> str:
    """The processor as /proc/cpuinfo names it (x86: "model name"; arm64: "Model",
    "Hardware" or the CPU part), else platform's word for it."""
    cpuinfo = _read("/proc/cpuinfo") if cpuinfo is None else cpuinfo
    fields: dict[str, str] = {}
    for line in (cpuinfo or "").splitlines():
        key, _, value = line.partition(":")
        fields.setdefault(key.strip().lower(), value.strip())
    for key in ("model name", "hardware", "cpu model", "model"):
        if fields.get(key):
            return fields[key]
    if fields.get("cpu part"):
        return f"{fields.get('cpu implementer', '?')} part {fields['cpu part']}"
    return platform.processor() or platform.machine() or "unknown"


def device_model() -> str | None:
    """The board as its device tree names it (a Raspberry Pi, a Jetson), where it has one."""
    for path in ("/proc/device-tree/model", "/sys/firmware/devicetree/base/model"):
        text = _read(path)
        if text:
            return text.strip("\x00\n ")
    return None


def os_name() -> str:
    for line in (_read("/etc/os-release") or "").splitlines():
        if line.startswith("PRETTY_NAME="):
            return line.split("=", 1)[1].strip().strip('"')
    return platform.system()


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def device_facts(runtime_package: str) -> dict:
    """The machine of the record: what harness.core.records.machine_facts records, and the
    board, OS and architecture a device adds."""
    facts = {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "platform": platform.platform(),
        "architecture": platform.machine(),
        "os": os_name(),
        "versions": {
            "python": platform.python_version(),
            "numpy": np.__version__,
            runtime_package: _version(runtime_package),
        },
    }
    board = device_model()
    if board:
        facts["device"] = board
    if hasattr(os, "sched_getaffinity") and len(os.sched_getaffinity(0)) != os.cpu_count():
        facts["cores_allowed"] = len(os.sched_getaffinity(0))
    return facts


def bench(
    manifest: dict,
    call,
    samples: tuple[np.ndarray, np.ndarray],
    recorded: np.ndarray,
    how: tuple[int, int, int],
) -> dict:
    """The bench record of one bundle on this device. ``call(pixels)`` answers uint8 pixels
    (N, 32, 32, 3) with probabilities, the contract applied inside; ``samples`` are the
    shipped images and labels, ``recorded`` their probabilities at export; ``how`` is
    (timed calls, warm-up calls, runtime threads)."""
    (x, y), (calls, warmup, threads) = samples, how
    started = time.perf_counter()
    timed = latency_us(call, x[:1], calls, warmup)
    batch = np.resize(x, (THROUGHPUT_BATCH, *x.shape[1:]))  # the samples, repeated
    ips = throughput(call, batch)
    probs = call(x)
    measured = manifest["measured"]
    source = manifest["source"]
    row = {
        "run": source["run"],
        "runtime": manifest["runtime"]["name"],
        "format": manifest["model"]["format"],
        "precision": manifest["model"]["precision"],
        "file": manifest["model"]["file"],
        "params": manifest["model"].get("params", 0),
        "size_bytes": manifest["model"]["bytes"],
        "flash_bytes": manifest["model"]["bytes"],
        "sparsity": manifest["model"].get("sparsity", 0.0),
        **{k: timed[k] for k in ("p50_us", "p90_us", "p99_us", "calls")},
        "throughput_ips": ips,
        "test": {
            "accuracy": measured["test"]["accuracy"],
            "loss": measured["test"]["loss"],
            "images": measured["test"]["images"],
            "through": "the manifest: this file on the machine that made the bundle",
        },
        "device_samples": {
            "images": len(x),
            "accuracy": float((probs.argmax(axis=1) == y).mean()),
            "max_abs_diff_vs_recorded": float(np.abs(probs - recorded).max()),
            "same_class_as_recorded": float((probs.argmax(1) == recorded.argmax(1)).mean()),
        },
    }
    return {
        "benchmark": "bench",
        "run": source["run"],
        "bundle": manifest["bundle"],
        "created": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": device_facts(manifest["runtime"]["package"]),
        "data": dict(source.get("data", {}), samples="samples.npz of the bundle"),
        "threads": {"latency": threads, "throughput": threads},
        "calls": calls,
        "warmup": warmup,
        "inputs": "uint8 pixels, the input contract and the model's input type inside each "
        "timed call",
        "seconds": round(time.perf_counter() - started, 1),
        "rows": [row],
    }


def write(record: dict, out: Path) -> None:
    """``record`` as JSON at ``out``, whole or not at all (a temporary file renamed)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(json.dumps(record, indent=1, sort_keys=True) + "\n")
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)


def summary(record: dict) -> str:
    row, machine = record["rows"][0], record["machine"]
    where = machine.get("device") or machine["cpu"]
    seen = row["device_samples"]
    return (
        f"{record['bundle']} on {where} ({machine['cores']} cores, {machine['os']}): "
        f"batch-1 p50 {row['p50_us']:.1f} us, p90 {row['p90_us']:.1f} us, p99 "
        f"{row['p99_us']:.1f} us; {row['throughput_ips']:,.0f} img/s at batch "
        f"{THROUGHPUT_BATCH}; samples {seen['accuracy']:.2%} ({seen['images']} images), "
        f"max |p - recorded| {seen['max_abs_diff_vs_recorded']:.1e}"
    )


if __name__ == "__main__":
    sys.exit("device_bench.py is run through predict.py --bench")
