"""What an int8 file's input type costs at batch 1: int8 pixels against uint8 pixels.

`harness export` writes full-integer int8 TFLite files that take int8 pixels (q = pixel -
128: scale 1, zero point -128). Until 2026-11-30 they took the raw uint8 bytes, so their
graph began with a QUANTIZE op from uint8 to int8, which LiteRT's XNNPACK delegate does not
take: it ran in LiteRT's own kernel, outside the delegated graph, at every call. The runtime
(`harness.export.runtimes.LiteRTRuntime`) now subtracts 128 from the pixels itself, inside the
timed call.

For each run this makes both files from the same SavedModel and the same calibration
images, checks that they give the same answers on the test set, and times both in one
process, alternating rounds (batch 1, one thread, the harness's `latency_us`, uint8 pixels
in): the ratio of their p50s is the comparable figure, since the machine's speed drifts
between calls. Writes ``<out>/int8_input.json``.

Usage:
    python benchmarks/int8_input.py --archive cifar-10-python.tar.gz \\
        --results results/reference --out results/bench/int8-input fr-edge-r2 budget-25us-t1
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import tempfile
from pathlib import Path

import numpy as np

INPUTS = ("uint8", "int8")


def compare_run(run, ds, rounds: int, calls: int, warmup: int) -> dict:
    """Both int8 files of ``run``: their ops, sizes, test answers and batch-1 p50s."""
    from harness.data import cifar as data_mod
    from harness.export import convert as export_mod
    from harness.export import runtimes
    from harness.export.bench import latency_us
    from harness.train.evaluate import score
    from harness.train.models import load_keras_model

    splits = data_mod.split(ds)
    model = export_mod.exportable(load_keras_model(run.model))
    out = {"run": run.name}
    with tempfile.TemporaryDirectory(prefix="harness-int8-input.") as tmp:
        saved = export_mod.export_saved_model(model, Path(tmp) / "saved_model")
        loaded = {}
        for pixels in INPUTS:
            path = Path(tmp) / f"model_int8_{pixels}.tflite"
            path.write_bytes(
                export_mod.tflite_bytes(
                    saved, "int8", export_mod.representative_images(splits), int8_input=pixels
                )
            )
            rt = runtimes.load(path, threads=1)
            probs = runtimes.predict_batched(rt, splits.test.x)
            loaded[pixels] = rt
            out[pixels] = {
                "bytes": path.stat().st_size,
                "input": {
                    "dtype": np.dtype(rt.input["dtype"]).name,
                    "scale": float(rt.input["quantization"][0]),
                    "zero_point": int(rt.input["quantization"][1]),
                },
                "ops": [op["op_name"] for op in rt.interpreter._get_ops_details()],
                "test": score(probs, splits.test.y),
                "argmax": probs.argmax(1),
                "p50_us_rounds": [],
            }
        image = splits.test.x[:1]
        for _ in range(rounds):
            for pixels in INPUTS:
                timed = latency_us(loaded[pixels].predict, image, calls, warmup)
                out[pixels]["p50_us_rounds"].append(round(timed["p50_us"], 3))
    for pixels in INPUTS:
        out[pixels]["p50_us"] = float(np.median(out[pixels]["p50_us_rounds"]))
    a, b = out["uint8"].pop("argmax"), out["int8"].pop("argmax")
    out["same_answers"] = float(np.mean(a == b))
    out["int8_over_uint8"] = round(out["int8"]["p50_us"] / out["uint8"]["p50_us"], 3)
    out["saved_us"] = round(out["uint8"]["p50_us"] - out["int8"]["p50_us"], 3)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", help="run names under RESULTS/runs/")
    parser.add_argument("--archive", required=True, help="the CIFAR-10 archive (offline path)")
    parser.add_argument("--results", default="results", help="the results folder of the runs")
    parser.add_argument("--out", default="results/bench/int8-input")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--warmup", type=int, default=200)
    args = parser.parse_args()

    os.environ.setdefault("KERAS_BACKEND", "tensorflow")  # the converters need TensorFlow
    from harness.core.records import RunDir, atomic_write_json, machine_facts
    from harness.data import cifar as data_mod

    ds = data_mod.load(Path(args.archive))
    results = Path(args.results)
    runs = []
    for name in args.runs:
        run = RunDir.named(results, name)
        if not run.model.exists():
            sys.exit(f"{name}: no finished run at {run.path}")
        rec = compare_run(run, ds, args.rounds, args.calls, args.warmup)
        print(
            f"{name:<24} uint8 {rec['uint8']['p50_us']:6.2f} us  int8 "
            f"{rec['int8']['p50_us']:6.2f} us  ratio {rec['int8_over_uint8']:.3f}  "
            f"test {rec['uint8']['test']['accuracy']:.4f} / {rec['int8']['test']['accuracy']:.4f}"
            f"  same answers {rec['same_answers']:.4f}",
            flush=True,
        )
        runs.append(rec)
    record = {
        "benchmark": "int8_input",
        "command": shlex.join(["python", *sys.argv]),
        "machine": machine_facts(),
        "data": ds.record,
        "rounds": args.rounds,
        "calls": args.calls,
        "warmup": args.warmup,
        "batch": 1,
        "threads": 1,
        "runs": runs,
    }
    out = Path(args.out) / "int8_input.json"
    atomic_write_json(out, record)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
