"""Deployment bundles: what a user copies to an edge device and trusts there.

``harness deploy RUN --target linux|mcu`` exports a run through the verified export path
(:mod:`harness.export.convert`) and writes ``<results>/deploy/<bundle>/`` plus
``<results>/deploy/<bundle>.tar.gz`` and its ``.sha256``:

- linux (any Linux, arm64 or x86-64): the model file, ``manifest.json``, a standalone
  ``predict.py`` (numpy, pillow and one runtime; no harness, TensorFlow, Keras or JAX),
  ``requirements.txt``, sample test images for ``predict.py --selftest`` and a README;
- mcu (Cortex-M class, TensorFlow Lite Micro): see :mod:`harness.deploy.mcu`.

Every figure in a manifest is measured while the bundle is made: test accuracy through the
exported file's runtime (the export's verification, made in a scratch copy of the run, so
the run's own exports/ stay as they are), batch-1 latency on this machine, and
the probabilities of the shipped samples, which ``predict.py --selftest`` checks on the
device. A bundle is built in a hidden folder beside its place, self-tested there, and only
then moved into place, so a failed deploy leaves the previous bundle as it was.
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path

import numpy as np

from harness.core.precisions import PRECISIONS
from harness.core.records import RunDir, atomic_write_bytes, atomic_write_text, read_json
from harness.deploy.bundle import (
    DeployError,
    DeployRefused,
    check_imported,
    check_name,
    declared_contract,
    export_in_scratch,
    finish_bundle,
    imported_export,
    staging,
)
from harness.export.runtimes import pixel_rule

TARGETS = ("linux", "mcu", "ethos-u55", "ethos-u65")
# Targets of a TensorFlow Lite Micro bundle (int8): a Cortex-M alone, or with an Ethos-U NPU
# (the bundle then also holds the file Vela compiled for it).
MICRO = ("mcu", "ethos-u55", "ethos-u65")
# --runtime: the file format it runs and the package that runs it on the device.
RUNTIMES = {
    "litert": {"format": "tflite", "package": "ai-edge-litert"},
    "onnx": {"format": "onnx", "package": "onnxruntime"},
}
# The selftest's tolerance per precision (harness.core.precisions, with the reason of each):
# the largest |p - recorded| allowed for any class probability of a shipped sample on another
# machine (another CPU, OS or runtime build). The quantized ones hold the largest difference
# found on the full test set between x86 and emulated Cortex-A72/A76 with room to spare
# (docs/deploy.md, its arm64 records).
TOLERANCES = {name: p.selftest_tolerance for name, p in PRECISIONS.items()}
TOLERANCE_RULE = (
    "every class probability of every sample within the tolerance of the one "
    "recorded; the predicted class may differ from the recorded one only where "
    "the recorded probabilities of the two classes are within the tolerance"
)
SAMPLES_PER_CLASS = 10  # test images shipped for the selftest: 100 for CIFAR-10, ~300 KB
DEVICE_FILES = Path(__file__).parents[1] / "edge"
# The standalone scripts a linux bundle ships (numpy and the runtime only): predict.py, and
# the device benchmark it runs with --bench.
DEVICE_SCRIPTS = ("predict.py", "device_bench.py")


def check_options(
    target: str,
    runtime: str,
    quantization: str | None,
    flash_kb: int | None = None,
    ram_kb: int | None = None,
) -> str:
    """The precision to bundle (``quantization``, or the target's default); DeployError for
    a combination that cannot be made."""
    if target not in TARGETS or runtime not in RUNTIMES:
        raise DeployRefused(f"unknown target {target!r} or runtime {runtime!r}")
    if quantization is not None and quantization not in TOLERANCES:
        raise DeployRefused(f"unknown precision {quantization!r}")
    if target in MICRO:
        if runtime != "litert" or quantization not in (None, "int8"):
            raise DeployRefused(
                f"--target {target} runs TensorFlow Lite Micro: --runtime litert --quantize "
                "int8 only"
            )
        return "int8"
    if flash_kb is not None or ram_kb is not None:
        raise DeployRefused("--flash-kb and --ram-kb are budgets for a microcontroller only")
    if runtime == "onnx" and quantization not in (None, "float32"):
        raise DeployRefused(
            "ONNX exports are float32 only: --quantize float32, or --runtime "
            "litert for the other precisions"
        )
    return quantization or "float32"


def default_name(run: str, target: str, runtime: str, quantization: str) -> str:
    return f"{run}-{target}-{runtime}-{quantization}"


def deploy_run(
    run: RunDir,
    ds,
    out: Path,
    target: str = "linux",
    runtime: str = "litert",
    quantization: str | None = None,
    name: str | None = None,
    flash_kb: int | None = None,
    ram_kb: int | None = None,
    calls: int = 2000,
    warmup: int = 200,
    allow_flagged: bool = False,
    boards: tuple[str, ...] = (),
    npu_macs: int | None = None,
) -> dict:
    """Write the bundle ``out/<name>/``, ``out/<name>.tar.gz`` and its ``.sha256``. A
    microcontroller bundle also gets estimates for ``boards`` (harness.deploy.boards) and,
    for an Ethos-U target, the file Vela compiles with ``npu_macs`` (harness.deploy.npu).

    Returns ``{"folder", "archive", "sha256", "manifest"}``. DeployError (or ExportError)
    when the bundle cannot be made; ``out`` is then left as it was."""

    info = run.read_import()
    if info is not None and not run.model.exists():  # an imported .tflite or .onnx
        quantization = check_imported(run, info, target, runtime, quantization)
    quantization = check_options(target, runtime, quantization, flash_kb, ram_kb)
    name = check_name(name or default_name(run.name, target, runtime, quantization))
    header = {
        "bundle": name,
        "target": target,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "harness_version": metadata.version("harness"),
        "source": {"run": run.name, "config": run.read_config(), "data": ds.record},
    }
    with staging(Path(out), name) as folder:
        if target in MICRO:
            manifest = {**header, **write_mcu(run, ds, folder, flash_kb, ram_kb, allow_flagged)}
            manifest["target"] = target  # mcu, or the NPU beside it
            manifest.update(micro_estimates(folder, manifest, target, boards, npu_macs))
        else:
            manifest = {
                **header,
                **write_linux_bundle(
                    run, ds, folder, runtime, quantization, calls, warmup, allow_flagged
                ),
            }
            atomic_write_text(folder / "README.md", render_readme(manifest))
        _, digest = finish_bundle(folder, manifest)
        if target == "linux":
            run_selftest(folder)  # as the device will: a bundle that fails it is not kept
    folder = Path(out) / name
    return {
        "folder": folder,
        "archive": folder.with_name(f"{name}.tar.gz"),
        "sha256": digest,
        "manifest": read_json(folder / "manifest.json"),
    }


def write_linux_bundle(
    run: RunDir,
    ds,
    folder: Path,
    runtime: str,
    quantization: str,
    calls: int,
    warmup: int,
    allow_flagged: bool,
) -> dict:
    """The model, samples.npz, predict.py and requirements.txt in ``folder``; returns the
    manifest's body (deploy_run adds the README, finish_bundle the files' sha256). An
    imported file goes in as it is, with its declared contract."""
    from harness.core.contract import Contract, ContractModel
    from harness.core.records import machine_facts
    from harness.data import cifar as data_mod
    from harness.export import runtimes
    from harness.export.bench import latency_us

    fmt, package = RUNTIMES[runtime]["format"], RUNTIMES[runtime]["package"]
    info = run.read_import()
    if info is not None and not run.model.exists():
        rec, exported = imported_export(run, info)
        shutil.copyfile(exported, folder / rec["file"])
        declared = Contract.from_dict(info["contract"])
    else:
        with tempfile.TemporaryDirectory(dir=folder.parent) as scratch:
            rec, exported = export_in_scratch(
                run, ds, Path(scratch), fmt, quantization, allow_flagged
            )
            shutil.copyfile(exported, folder / rec["file"])
        declared = None  # harness' exports take the pixels as they are
    runtime_model = runtimes.load(folder / rec["file"], threads=1)
    contract = input_contract(runtime_model, declared)  # before any call resizes the input
    model = ContractModel(runtime_model, declared or Contract(), float_pixels=fmt == "onnx")
    test = data_mod.split(ds).test
    load = os.getloadavg()  # other work on the machine shows in the percentiles
    latency = latency_us(model.predict, test.x[:1], calls, warmup)  # uint8 pixels, as bench
    selftest = write_samples(folder / "samples.npz", model, test, quantization)
    for script in DEVICE_SCRIPTS:
        shutil.copyfile(DEVICE_FILES / script, folder / script)
    metrics = run.read_metrics() or {}
    pins = {p: metadata.version(p) for p in ("numpy", "pillow", package)}
    atomic_write_text(folder / "requirements.txt", "".join(f"{p}=={v}\n" for p, v in pins.items()))
    return {
        "model": {
            "file": rec["file"],
            "format": fmt,
            "precision": quantization,
            "bytes": rec["size_bytes"],
            "params": metrics.get("params", {}).get("total", 0),
            "sparsity": metrics.get("sparsity", 0.0),
        },
        "input": contract,
        "output": {
            "shape": [-1, len(ds.label_names)],
            "dtype": "float32",
            "values": "class probabilities (softmax), in the order of classes",
        },
        "classes": list(ds.label_names),
        "runtime": {"name": model.name, "package": package, "version": pins[package]},
        "requirements": pins,
        "measured": {
            "machine": machine_facts(),
            "test": {
                **rec["test"],
                "images": len(test),
                "through": f"{rec['file']} in {model.name} "
                + (
                    "(measured when it was imported)"
                    if "imported" in rec
                    else "(the export's verification)"
                ),
            },
            "keras_test": rec["keras_test"],
            "accuracy_drop_points": rec["accuracy_drop_points"],
            "flagged": rec["flagged"],
            "max_abs_diff_vs_keras": rec["max_abs_diff"],
            **({"imported": rec["imported"]} if "imported" in rec else {}),
            "latency_batch1": {
                **latency,
                "warmup": warmup,
                "threads": 1,
                "load_average_1_5_15_min": [round(v, 2) for v in load],
                "input": "uint8 pixels, converted to the model's input type inside each timed call",
            },
        },
        "selftest": selftest,
    }


def input_contract(model, declared=None) -> dict:
    """What the model file takes, read off the file through its runtime, and the contract
    (harness.core.contract) that turns 0-255 RGB pixels into it: harness' own exports take
    them as they are; an imported file, as it was declared."""
    words = declared_contract(declared)
    if model.name == "litert":
        dtype = np.dtype(model.input["dtype"]).name
        shape = [int(d) for d in model.input["shape_signature"]]
        scale, zero = model.input["quantization"]
        extra = (
            {
                "quantization": {
                    "scale": float(scale),
                    "zero_point": int(zero),
                    "rule": pixel_rule(dtype, scale, zero),
                }
            }
            if dtype != "float32"
            else {}
        )
    else:
        spec = model.session.get_inputs()[0]
        dtype = {"tensor(float)": "float32", "tensor(uint8)": "uint8"}[spec.type]
        shape = [d if isinstance(d, int) else -1 for d in spec.shape]
        extra = {}
    return {
        "pixels": words["pixels"],
        "layout": "HWC, batch first: (batch, height 32, width 32, channels R G B)"
        if words["contract"]["layout"] == "nhwc"
        else "CHW, batch first: (batch, channels, height 32, width 32)",
        "contract": words["contract"],
        "shape": shape,
        "dtype": dtype,
        **extra,
        "batch": "the first dimension; -1 means any size (predict.py sends up to 256 "
        "images a call; the latency is for 1)",
        "resize": "predict.py resizes images that are not 32 x 32 (bilinear), with a "
        "note on stderr",
    }


def pick_samples(y: np.ndarray, per_class: int = SAMPLES_PER_CLASS, seed: int = 0) -> np.ndarray:
    """Test-set indices, ``per_class`` of each class (fewer if there are fewer), sorted."""
    rng = np.random.default_rng(seed)
    picks = [
        rng.choice(where, size=min(per_class, len(where)), replace=False)
        for where in (np.flatnonzero(y == c) for c in np.unique(y))
    ]
    return np.sort(np.concatenate(picks))


def write_samples(path: Path, model, test, quantization: str) -> dict:
    """The selftest's images, labels and the probabilities ``model`` gives them here, as
    ``path`` (.npz); returns the manifest's ``selftest`` entry."""
    from harness.export.runtimes import predict_batched

    index = pick_samples(test.y)
    x, y = test.x[index], test.y[index]
    probs = predict_batched(model, x).astype(np.float32)  # in one call, as predict.py does
    buffer = io.BytesIO()
    np.savez_compressed(buffer, x=x, y=y.astype(np.int64), probs=probs, index=index)
    atomic_write_bytes(path, buffer.getvalue())
    return {
        "file": path.name,
        "images": int(len(x)),
        "keys": {
            "x": "uint8 (N, 32, 32, 3) test images",
            "y": "their classes",
            "probs": "float32 (N, classes) recorded here",
            "index": "their test-set index",
        },
        "accuracy": float(np.mean(probs.argmax(1) == y)),
        "tolerance": TOLERANCES[quantization],
        "tolerances": TOLERANCES,
        "rule": TOLERANCE_RULE,
        "command": "python predict.py --selftest",
    }


def run_selftest(folder: Path) -> None:
    """The bundle's own ``predict.py --selftest``, here, in a fresh isolated interpreter."""
    done = subprocess.run(
        [sys.executable, "-I", str(folder / "predict.py"), "--selftest"],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        lines = (done.stderr or done.stdout).strip().splitlines() or ["no output"]
        raise DeployError(f"the new bundle fails its own selftest: {lines[-1]}")


README = """\
# {bundle}

A CIFAR-10 image classifier for Linux (x86-64 or arm64), made by `harness deploy` from the run
`{run}`: {file} ({format}, {precision}), run by {package} {version}.

Measured where it was made ({cpu}, {created}): test accuracy {accuracy:.2%} on {images:,} test
images through {runtime}; one image answered in {p50:.1f} us (p50; p90 {p90:.1f} us, p99
{p99:.1f} us; one thread). Every figure is in `manifest.json`, with the run's whole config.

## Install

```bash
python3 -m venv .venv && . .venv/bin/activate && pip install -r requirements.txt
```

Only numpy, pillow and {package}, pinned to the versions it was made with (Python
{python}); no TensorFlow, Keras or JAX.

## Run

```bash
python predict.py cat.png photos/ --top 3     # a table: image, classes, probabilities
python predict.py cat.png --json              # one JSON line per image
python predict.py --npz images.npz --dump-probs probs.npy   # x: uint8 (N, 32, 32, 3)
```

Folders give every PNG/JPEG in them, by name. With `--npz`, a key `y` (classes) prints the
accuracy. Exit status: 0 ok, 1 selftest failed or runtime error, 2 bad usage or input.

## Input contract

{pixels}; {layout}: shape {shape}, {dtype} (-1: any batch size). `predict.py`
converts any image to RGB and resizes one that is not 32 x 32 (bilinear), with a note on
stderr: the model has only seen 32 x 32 images; it applies the contract above
(`manifest.json`, `input.contract`). Output: {classes} probabilities (float32), in this
order:

{class_names}

## Selftest

```bash
python predict.py --selftest
```

Checks every file against its sha256 in `manifest.json`, then runs the {samples} test images in
`{sample_file}` and compares the answers with the probabilities recorded when the bundle was
made. It passes when

- every class probability of every sample is within {tolerance:g} ({precision}) of the
  recorded one, and
- every predicted class is the recorded one, except where the recorded probabilities of
  the two classes are within {tolerance:g} of each other (a near tie).

Other CPUs round differently (summation order, SIMD kernels, quantized arithmetic), so the
answers agree within the tolerance, not always to the last bit; `manifest.json` gives the
tolerance of every precision (`selftest.tolerances`).

## Latency on this device

```bash
python predict.py --bench --out bench.json     # [--calls 2000 --warmup 200 --threads 1]
```

Times one-image calls as harness timed them where the bundle was made (uint8 pixels in,
the contract inside each call): p50/p90/p99, images per second at batch 256, the shipped
samples' answers against the recorded ones, and this device's facts (CPU, board, cores,
OS, Python, runtime). `bench.json` is a bench record: copy it back, and `harness compare
bench.json ...` puts this device on its own Pareto front.
"""


def render_readme(manifest: dict) -> str:
    """The bundle's README.md, every figure from ``manifest``."""
    measured, selftest = manifest["measured"], manifest["selftest"]
    latency = measured["latency_batch1"]
    return README.format(
        bundle=manifest["bundle"],
        run=manifest["source"]["run"],
        file=manifest["model"]["file"],
        format=manifest["model"]["format"],
        precision=manifest["model"]["precision"],
        package=manifest["runtime"]["package"],
        version=manifest["runtime"]["version"],
        runtime=manifest["runtime"]["name"],
        cpu=measured["machine"]["cpu"],
        created=manifest["created"][:10],
        accuracy=measured["test"]["accuracy"],
        images=measured["test"]["images"],
        p50=latency["p50_us"],
        p90=latency["p90_us"],
        p99=latency["p99_us"],
        python=measured["machine"]["versions"]["python"],
        shape=manifest["input"]["shape"],
        dtype=manifest["input"]["dtype"],
        pixels=manifest["input"]["pixels"][0].upper() + manifest["input"]["pixels"][1:],
        layout=manifest["input"]["layout"],
        classes=len(manifest["classes"]),
        class_names=", ".join(manifest["classes"]),
        samples=selftest["images"],
        sample_file=selftest["file"],
        tolerance=selftest["tolerance"],
    )


def write_mcu(
    run: RunDir, ds, folder: Path, flash_kb: int | None, ram_kb: int | None, allow_flagged: bool
) -> dict:
    """The TFLite Micro bundle, by :func:`harness.deploy.mcu.write_mcu_bundle`; its manifest (to
    which deploy_run adds the bundle's name and date, and finish_bundle the files again)."""
    try:
        from harness.deploy.mcu import write_mcu_bundle
    except ModuleNotFoundError as e:
        if e.name != "harness.deploy.mcu":
            raise
        raise DeployError(
            "--target mcu needs harness.deploy.mcu, which this installation lacks"
        ) from None
    budget = {k: v for k, v in (("flash_kb", flash_kb), ("ram_kb", ram_kb)) if v is not None}
    return write_mcu_bundle(run, ds, folder, allow_flagged=allow_flagged, **budget)


def micro_estimates(
    folder: Path, manifest: dict, target: str, boards: tuple[str, ...], npu_macs: int | None
) -> dict:
    """A microcontroller bundle's estimates (never measurements): each board's fit, latency
    and energy, and for an Ethos-U target Vela's figures and its compiled file in ``folder``."""
    from harness.deploy import boards as boards_mod

    model = folder / manifest["model"]["file"]
    extra: dict = {}
    if boards:
        costs = boards_mod.operator_costs(model)
        flash, arena = manifest["footprint"]["flash_bytes"], manifest["footprint"]["arena_bytes"]
        extra["estimates"] = [
            boards_mod.estimate(costs, boards_mod.board_named(b), flash, arena) for b in boards
        ]
    if target != "mcu":
        from harness.deploy import npu

        extra["npu"] = npu.compile_for_npu(
            model, folder / f"{model.stem}_vela.tflite", target, npu_macs
        )
    return extra


def format_summary(result: dict) -> str:
    """What ``harness deploy`` prints: where the bundle is and what was measured."""
    manifest = result["manifest"]
    size = sum(f["bytes"] for f in manifest["files"].values())
    lines = [
        f"bundle   {result['folder']}/  ({len(manifest['files'])} files and the "
        f"manifest, {size / 1024:.1f} KiB)",
        f"archive  {result['archive']}  sha256 {result['sha256']}",
    ]
    if "measured" in manifest:  # linux
        test, latency = manifest["measured"]["test"], manifest["measured"]["latency_batch1"]
        lines += [
            f"measured test accuracy {test['accuracy']:.4f} ({manifest['runtime']['name']} "
            f"{manifest['model']['precision']}), batch-1 p50 {latency['p50_us']:.1f} us, "
            f"p90 {latency['p90_us']:.1f} us, p99 {latency['p99_us']:.1f} us",
            "selftest passed here; on the device: pip install -r requirements.txt && "
            "python predict.py --selftest",
        ]
    if manifest.get("estimates") or manifest.get("npu"):
        from harness.deploy.boards import format_estimate
        from harness.deploy.npu import format_npu

        lines += [f"estimate {format_estimate(e)}" for e in manifest.get("estimates", [])]
        lines += [f"estimate {format_npu(manifest['npu'])}"] if "npu" in manifest else []
    return "\n".join(lines)
