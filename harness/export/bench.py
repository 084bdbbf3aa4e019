"""Accuracy against latency: every exported model through every runtime, MLPerf-Tiny style.

For a run (and its exports) this measures, per runtime:

- batch-1 latency: ``warmup`` calls, then ``calls`` timed calls (``time.perf_counter``
  around each call only; a slow model's are cut short after a few seconds, see
  :func:`harness.edge.device_bench.latency_us`), p50/p90/p99 in microseconds, one
  intra-op thread;
- throughput at batch 256 with all cores, images per second (median of 5 passes);
- file size, parameters, sparsity of the learned Dense kernels
  (:func:`harness.train.sparsity.kernel_sparsity`), and test accuracy through that runtime,
  scored by :func:`harness.train.evaluate.score`;
- the footprint on a microcontroller (:mod:`harness.export.footprint`): ``macs``, the
  multiply-accumulates of one image through the Keras model (the same on every row of a
  run); ``flash_bytes``, the model file's bytes (what a device stores: the same figure as
  ``size_bytes``, on every row); ``arena_bytes``, the tensor arena TensorFlow Lite Micro
  measures for the file, on full-integer int8 TFLite rows only (TFLM runs int8 only here;
  None on the other rows). Where TFLM is not installed or cannot run the int8 file,
  ``arena_bytes`` is None and ``arena_note`` says why.

Keras runs in-process twice: ``model.predict`` (what most code calls) and the direct call
``model(x)``; predict is slow per call, so it gets a tenth of the calls.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np

from harness.core.records import Results, RunDir, machine_facts, write_record
from harness.data import cifar as data_mod

# The one timer, shared with the device benchmark a bundle ships (standalone there).
from harness.edge.device_bench import latency_us, throughput  # noqa: F401 (bench's API)
from harness.edge.predict import sha256
from harness.export import mlperf
from harness.export.footprint import TflmError, macs_per_image, tflm_footprint
from harness.train.evaluate import score
from harness.train.models import load_keras_model
from harness.train.sparsity import kernel_sparsity

THROUGHPUT_BATCH = 256


def file_footprint(path: Path, fmt: str, precision: str) -> dict:
    """``flash_bytes`` (the file's bytes) and ``arena_bytes`` of one model file: TFLM's
    tensor arena for a full-integer int8 TFLite file, else None. Where TFLM is not
    installed or cannot run the int8 file, ``arena_note`` says why (arena_bytes None)."""
    fields = {"flash_bytes": path.stat().st_size, "arena_bytes": None}
    if (fmt, precision) == ("tflite", "int8"):
        try:
            fields["arena_bytes"] = tflm_footprint(path.read_bytes())["arena_bytes"]
        except (ImportError, TflmError) as e:  # ImportError: tflite-micro is not installed
            fields["arena_note"] = str(e)
    return fields


def bench_run(
    run: RunDir,
    ds: data_mod.Dataset,
    export: str = "onnx",
    calls: int = 2000,
    warmup: int = 200,
    modes: tuple[str, ...] = (),
    window_s: float = mlperf.WINDOW_S,
    keras: bool = True,
) -> dict:
    """Benchmark a run's Keras model (unless not ``keras``) and its exports (``export``:
    onnx, tflite or all). ``modes`` adds MLPerf Tiny's accuracy and/or performance figures
    to every row (:mod:`harness.export.mlperf`). An imported .tflite or .onnx is
    benchmarked as it is by :func:`harness.imports.imported.bench_import`."""
    record = bench_record(
        run.name,
        ds,
        model_rows(run, ds, export, calls, warmup, keras),
        calls,
        warmup,
        modes,
        window_s,
    )
    info = run.read_import()  # a Keras import: harness' form of it and its exports
    if info is not None:
        note_import(record, info)
    return record


def bench_record(
    name: str,
    ds: data_mod.Dataset,
    timed: list[tuple[dict, object, np.ndarray]],
    calls: int,
    warmup: int,
    modes: tuple[str, ...] = (),
    window_s: float = mlperf.WINDOW_S,
) -> dict:
    """The bench record of run ``name`` from its timed rows (each row with the function and
    image it was timed with), MLPerf Tiny's figures added where ``modes`` asks."""
    add_modes(timed, ds, modes, window_s)
    record = {
        "benchmark": "bench",
        "run": name,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": machine_facts(),
        "data": ds.record,
        "inputs": {
            "keras": "float32 pixels",
            "exports": "uint8 pixels, converted to the model's input type inside each timed call",
        },
        "threads": {
            "latency": 1,
            "throughput": os.cpu_count(),
            "keras": "TensorFlow/JAX defaults (all cores)",
        },
        "footprint": FOOTPRINT_WORDS,
        "calls": calls,
        "warmup": warmup,
        "rows": [row for row, _, _ in timed],
    }
    if modes:
        record["modes"] = list(modes)
    return record


def note_import(record: dict, info: dict) -> None:
    """What a bench record of an imported model says of the file and its contract."""
    record["imported"] = {k: info[k] for k in ("format", "file", "sha256", "source", "contract")}
    record["inputs"]["imported"] = (
        "uint8 pixels, put through the declared contract inside "
        "each timed call: " + info["contract_words"]
    )


FOOTPRINT_WORDS = {
    "macs": "multiply-accumulates per image: the Dense and convolution layers "
    "of the Keras model (an imported file: of its own graph)",
    "flash": "the model file's bytes",
    "arena": "TensorFlow Lite Micro's tensor arena, measured on x86-64 (an "
    "upper bound for a 32-bit MCU), int8 TFLite files only",
}


def model_rows(
    run: RunDir, ds: data_mod.Dataset, export: str, calls: int, warmup: int, keras: bool = True
) -> list[tuple[dict, object, np.ndarray]]:
    """Rows of a run's Keras model (predict and direct call; unless not ``keras``) and of
    its exports, each with the function and the one image it was timed with."""
    from harness.export import convert as export_mod
    from harness.export import runtimes

    splits = data_mod.split(ds)
    model = load_keras_model(run.model)
    formats = {"onnx": ("onnx",), "tflite": ("tflite",), "all": ("onnx", "tflite")}[export]
    records = export_mod.export_run(run, ds, formats)
    # Exported models get what a camera or an image file gives an edge device: uint8 pixels.
    # Each runtime's timed call includes converting them to its model's input type.
    pixels, pixel_batch = splits.test.x[:1], splits.test.x[:THROUGHPUT_BATCH]
    image, batch = pixels.astype(np.float32), pixel_batch.astype(np.float32)
    params = int(sum(np.prod(w.shape) for w in model.weights))
    sparsity, _ = kernel_sparsity(model)  # learned Dense kernels only (see there)
    common = {
        "run": run.name,
        "params": params,
        "sparsity": sparsity,
        "macs": macs_per_image(model),
    }

    def direct(x):
        return np.asarray(model(x, training=False))

    rows = []
    keras_size = run.model.stat().st_size
    timed_keras = (
        ("keras-predict", lambda x: model.predict(x, verbose=0), max(calls // 10, 50)),
        ("keras-call", direct, calls),
    )
    for runtime, predict, n in timed_keras if keras else ():
        rows.append(
            (
                {
                    **common,
                    "format": "keras",
                    "precision": "float32",
                    "runtime": runtime,
                    "file": run.model.name,
                    "size_bytes": keras_size,
                    **latency_us(predict, image, n, min(warmup, n)),
                    "throughput_ips": throughput(predict, batch),
                    "test": score(
                        runtimes.predict_batched(
                            direct, splits.test.x.astype(np.float32), THROUGHPUT_BATCH
                        ),
                        splits.test.y,
                    ),
                    **file_footprint(run.model, "keras", "float32"),
                },
                predict,
                image,
            )
        )
    for rec in records:
        path = run.exports / rec["file"]
        single = runtimes.load(path, threads=1)
        multi = runtimes.load(path, threads=os.cpu_count() or 1)
        rows.append(
            (
                {
                    **common,
                    "format": rec["format"],
                    "precision": rec["quantization"],
                    "runtime": rec["runtime"],
                    "file": rec["file"],
                    "size_bytes": rec["size_bytes"],
                    "sha256": sha256(path),
                    **latency_us(single.predict, pixels, calls, warmup),
                    "throughput_ips": throughput(multi.predict, pixel_batch),
                    "test": rec["test"],
                    "flagged": rec["flagged"],
                    **file_footprint(path, rec["format"], rec["quantization"]),
                },
                single.predict,
                pixels,
            )
        )
    return rows


def add_modes(
    timed: list[tuple[dict, object, np.ndarray]],
    ds: data_mod.Dataset,
    modes: tuple[str, ...],
    window_s: float,
) -> None:
    """MLPerf Tiny's figures (``mlperf.accuracy``, ``mlperf.performance``) on each row,
    through the same predict function and input the row was timed with."""
    images = mlperf.accuracy_images(ds) if "accuracy" in modes else None
    for row, predict, image in timed:
        figures = {}
        if images is not None:
            x = images[0] if image.dtype == np.uint8 else images[0].astype(np.float32)
            figures["accuracy"] = mlperf.accuracy_mode(predict, x, images[1])
        if "performance" in modes:
            figures["performance"] = mlperf.performance_mode(predict, image, window_s)
        if figures:
            row["mlperf"] = figures


def write_bench(record: dict, results: Path) -> Path:
    path = Results(Path(results)).bench(record["run"])
    write_record("bench", path, record)
    return path


def format_rows(rows: list[dict]) -> str:
    """The table bench prints; MLPerf Tiny's figures in two more columns when measured."""
    width = max(22, *(len(r["file"]) + 2 for r in rows))
    accuracy = any("accuracy" in r.get("mlperf", {}) for r in rows)
    performance = any("performance" in r.get("mlperf", {}) for r in rows)
    lines = [
        f"{'runtime':<14}{'file':<{width}}{'KiB':>8}{'p50 us':>10}{'p90 us':>10}"
        f"{'p99 us':>10}{'img/s @256':>12}{'test acc':>10}"
        + (f"{'MLPerf acc':>12}" if accuracy else "")
        + (f"{'MLPerf us':>11}" if performance else "")
    ]
    for r in rows:
        figures = r.get("mlperf", {})
        extra = (f"{figures['accuracy']['accuracy']:>12.4f}" if accuracy else "") + (
            f"{figures['performance']['latency_us']:>11.1f}" if performance else ""
        )
        lines.append(
            f"{r['runtime']:<14}{r['file']:<{width}}{r['size_bytes'] / 1024:>8.1f}"
            f"{r['p50_us']:>10.1f}{r['p90_us']:>10.1f}{r['p99_us']:>10.1f}"
            f"{r['throughput_ips']:>12.0f}{r['test']['accuracy']:>10.4f}{extra}"
        )
    return "\n".join(lines)


def main() -> None:
    """``python -m harness.export.bench`` with a JSON request on stdin, ``{"runs": [paths],
    "export": "onnx|tflite|all", "results": path, "archive": path|null, "home": path|null,
    "keras": bool (default true)}``: benchmarks each run and writes its record, as
    ``harness bench`` does. The budget search judges its candidates through this, in a
    process whose Keras runs on TensorFlow."""
    import json
    import sys

    request = json.loads(sys.stdin.read())
    where = {k: Path(request[k]) if request.get(k) else None for k in ("archive", "home")}
    ds = data_mod.load(where["archive"], where["home"])
    for run in request["runs"]:
        record = bench_run(
            RunDir(Path(run)), ds, request["export"], keras=request.get("keras", True)
        )
        write_bench(record, Path(request["results"]))


if __name__ == "__main__":
    main()
