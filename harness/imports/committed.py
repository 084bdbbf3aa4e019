"""A run committed with its exports but not its Keras model (a clone of the reference
records): each file checked against the sha256 its export record names, then benchmarked
as it is."""

from __future__ import annotations

import json
import os
from pathlib import Path

from harness.core.records import RunDir
from harness.edge.predict import sha256
from harness.imports import foreign
from harness.imports.imported import ImportRefused


def committed_exports(run: RunDir) -> list[Path]:
    """A run's .tflite exports that have their export record (``<file>.json``) beside them:
    what a clone holds of a run whose model.keras is not committed."""
    if not run.exports.is_dir():
        return []
    return sorted(p for p in run.exports.glob("*.tflite") if p.with_name(p.name + ".json").exists())


class ExportMismatch(ValueError):
    """A committed export whose bytes are not those its record names; one line (exit 1)."""


def bench_exports(
    run: RunDir,
    ds,
    calls: int = 2000,
    warmup: int = 200,
    modes: tuple[str, ...] = (),
    window_s: float | None = None,
) -> dict:
    """The bench record of a run's committed exports, without its Keras model: each file's
    sha256 checked against its export record first, then timed as it is and scored again
    on the test images through its runtime (an export takes uint8 pixels)."""
    from harness.data import cifar as data_mod
    from harness.export import bench, runtimes
    from harness.train.evaluate import score

    splits = data_mod.split(ds)
    metrics = run.read_metrics() or {}
    pixels, pixel_batch = splits.test.x[:1], splits.test.x[: bench.THROUGHPUT_BATCH]
    rows = []
    for path in committed_exports(run):
        record = json.loads(path.with_name(path.name + ".json").read_text())
        if sha256(path) != record.get("sha256"):
            raise ExportMismatch(
                f"{path}: its sha256 is not the {record.get('sha256')} its record names "
                "(changed or damaged since it was exported)"
            )
        single = runtimes.load(path, threads=1)
        multi = runtimes.load(path, threads=os.cpu_count() or 1)
        facts = foreign.tflite_facts(path.read_bytes())
        row = {
            "run": run.name,
            "params": facts["params"],
            "sparsity": facts["sparsity"],
            **({"macs": facts["macs"]} if facts["macs"] else {}),
            "format": "tflite",
            "precision": record["quantization"],
            "runtime": single.name,
            "file": path.name,
            "size_bytes": path.stat().st_size,
            "sha256": record["sha256"],
            **bench.latency_us(single.predict, pixels, calls, warmup),
            "throughput_ips": bench.throughput(multi.predict, pixel_batch),
            "test": score(runtimes.predict_batched(single, splits.test.x), splits.test.y),
            **bench.file_footprint(path, "tflite", record["quantization"]),
        }
        rows.append((row, single.predict, pixels))
    if not rows:
        raise ImportRefused(f"{run.path}: no model.keras and no committed exports to bench")
    out = bench.bench_record(
        run.name, ds, rows, calls, warmup, modes, window_s or bench.mlperf.WINDOW_S
    )
    out["inputs"]["committed"] = (
        f"the run's committed exports, checked against their records' sha256 "
        f"(trained test accuracy {metrics.get('test', {}).get('accuracy')})"
    )
    return out
