"""Models harness did not train: imported as runs of their own, on the same chart as its own.

``harness import MODEL --name NAME`` checks the file (:mod:`harness.imports.foreign`: nothing of it
runs before that), settles its input contract (:mod:`harness.core.contract`), scores it through
its own runtime and writes ``<results>/runs/NAME/``::

    source/<file>   the file, byte for byte (its sha256 is in config.json and metrics.json);
                    an ONNX model's external data beside it, a SavedModel's whole folder
    config.json     {"kind": "imported", format, file, sha256, bytes, contract, source}
    metrics.json    a run record of kind "imported": val and test accuracy through the file's
                    own runtime, params, MACs and ops where the file tells them
    model.keras     .keras and .h5 imports only: harness' Keras form of the model, the
                    contract in front (ContractLayer) and a softmax behind where it answers
                    logits, so export, bench and deploy make harness' own exports of it

A contract that leaves the model near chance is refused, naming the common contract that
scores best (:func:`suggest_contract`). The folder is written beside its place and renamed
into it, so an import that fails leaves nothing.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import time
from importlib import metadata
from pathlib import Path

import numpy as np

from harness.core.contract import CIFAR_MEAN, CIFAR_STD, Contract, ContractModel
from harness.core.records import COMPLETED, IMPORTED, NAME, RunDir, atomic_write_json
from harness.edge.predict import sha256
from harness.imports import foreign

KIND = IMPORTED
CHANCE_LIMIT = 0.2  # val accuracy below this (chance: 0.1) means a wrong contract
PROBE_IMAGES = 300  # validation images each common contract is tried on
OUTPUT_PROBE = 64  # images whose outputs tell probabilities from logits


class ImportRefused(ValueError):
    """An import that cannot be made as asked; the message is one line (exit 2)."""


def read_import(run: RunDir) -> dict | None:
    """An imported run's config.json, or None for a run harness trained."""
    return run.read_import()


def source_file(run: RunDir, info: dict) -> Path:
    return run.path / "source" / info["file"]


def sha256_of(path: Path) -> str:
    """Of a file (the bundles' own checksum, so a manifest's equals it); of a folder (a
    SavedModel), of its files' names and checksums in sorted order."""
    if path.is_file():
        return sha256(path)
    digest = hashlib.sha256()
    for p in sorted(q for q in path.rglob("*") if q.is_file()):
        digest.update(f"{p.relative_to(path)}\0{sha256(p)}\n".encode())
    return digest.hexdigest()


# --------------------------------------------------------------------------- opening


def open_model(
    path: Path, fmt: str, contract: Contract, threads: int = 1, loaded=None
) -> ContractModel:
    """The file through its own runtime, behind its contract: uint8 pixels in,
    probabilities out. ``loaded``: the Keras model or SavedModel function already loaded
    from ``path`` (an import loads it once)."""
    if fmt in foreign.FILE_RUNTIMES:
        from harness.export import runtimes

        runtime = runtimes.load(path, threads)
        return ContractModel(runtime, contract, float_pixels=fmt == "onnx")
    if fmt in ("keras", "h5"):
        model = loaded if loaded is not None else foreign.load_keras(path, fmt)
        return ContractModel(
            lambda x: np.asarray(model(x, training=False)),
            contract,
            name="keras-call",
            float_pixels=True,
        )
    call = loaded if loaded is not None else foreign.load_saved_model(path)
    return ContractModel(call, contract, name="tensorflow", float_pixels=True)


def open_run(run: RunDir, info: dict | None = None, threads: int = 1) -> ContractModel:
    info = info or read_import(run)
    return open_model(
        source_file(run, info), info["format"], Contract.from_dict(info["contract"]), threads
    )


def input_shape(fmt: str, probed: dict | None, model) -> list[int]:
    if probed is not None:
        return probed["input"]["shape"]
    shape = getattr(model, "input_shape", None)
    return [-1 if d is None else int(d) for d in shape] if shape else []


def settle_layout(shape: list[int], layout: str | None, name: str) -> tuple[str, str | None]:
    """The layout the file's input shape decides (and a note saying so), or the one given
    where the shape leaves it open; ImportRefused for a shape that is not 32 x 32 x 3."""
    dims = tuple(shape[1:])
    by_shape = {(32, 32, 3): "nhwc", (3, 32, 32): "nchw"}.get(dims)
    if by_shape is None and len(dims) == 3 and -1 not in dims:
        raise ImportRefused(
            f"{name}: takes input of shape {shape}; harness imports CIFAR-10 "
            "classifiers of 32 x 32 x 3 images (NHWC or NCHW)"
        )
    if by_shape and layout and layout != by_shape:
        raise ImportRefused(
            f"{name}: --layout {layout}, but its input shape {shape} is {by_shape.upper()}"
        )
    if by_shape and not layout:
        return by_shape, f"the file's input shape {shape} decides the layout: {by_shape}"
    return layout or "nhwc", None


def quantized_contract(probed: dict | None) -> dict | None:
    """What an integer-input file's own quantization says of its pixels: the float value of
    q is (q - zero) x scale, and q = pixel (uint8) or pixel - 128 (int8), so the model sees
    raw pixels less (zero - offset), divided by 1 / scale. None for a float input."""
    if probed is None or probed["input"]["dtype"] not in ("int8", "uint8"):
        return None
    q = probed["input"]["quantization"]
    offset = -128 if probed["input"]["dtype"] == "int8" else 0
    shift, scale = q["zero_point"] - offset, q["scale"]
    if shift == 0 and abs(scale - 1) < 1e-3:
        return {"input": "raw"}
    if shift == 0 and abs(scale * 255 - 1) < 1e-3:
        return {"input": "unit"}
    return {"input": "raw", "mean": [float(shift)] * 3, "std": [1 / scale] * 3}


def detect_output(model: ContractModel, pixels: np.ndarray) -> str:
    """probs when the outputs on ``pixels`` are probability rows (non-negative, summing to
    1 within 0.02: quantized outputs are coarse), else logits."""
    rows = model.raw(pixels).astype(np.float64)
    is_probs = rows.min() >= -1e-3 and np.abs(rows.sum(axis=1) - 1).max() <= 0.02
    return "probs" if is_probs else "logits"


# --------------------------------------------------------------------------- contracts


def common_contracts(layout: str, output: str) -> dict[str, Contract]:
    """The contracts CIFAR-10 models are most often trained with, by the flags that give
    them (the layout stays what the file's shape decided)."""
    out = {}
    for channels in ("rgb", "bgr"):
        for words, extra in (
            ("--input raw", {}),
            ("--input unit", {"input": "unit"}),
            (
                "--input unit --mean/--std (CIFAR-10's)",
                {"input": "unit", "mean": CIFAR_MEAN, "std": CIFAR_STD},
            ),
        ):
            flags = words + (" --channels bgr" if channels == "bgr" else "")
            out[flags] = Contract(
                layout=layout, channels=channels, output=output, **{"input": "raw", **extra}
            )
    return out


def accuracy(model: ContractModel, x: np.ndarray, y: np.ndarray) -> float:
    from harness.export.runtimes import predict_batched
    from harness.train.evaluate import score

    return score(predict_batched(model, x), y)["accuracy"]


def suggest_contract(model: ContractModel, x: np.ndarray, y: np.ndarray) -> tuple[str, float]:
    """The common contract (its flags) under which ``model`` scores best on ``x``."""
    scores = {}
    for flags, contract in common_contracts(model.contract.layout, model.contract.output).items():
        scores[flags] = accuracy(model.with_contract(contract), x, y)
    best = max(scores, key=scores.get)
    return best, scores[best]


# --------------------------------------------------------------------------- import


def import_model(
    path: Path,
    ds,
    results: Path,
    name: str,
    layout: str | None = None,
    channels: str | None = None,
    input_scale: str | None = None,
    mean=None,
    std=None,
    output: str | None = None,
    source: str | None = None,
    overwrite: bool = False,
) -> dict:
    """Check, score and write ``path`` as the imported run ``<results>/runs/<name>/``;
    returns its metrics. ImportRefused (or foreign.ForeignFileError) with one line when the
    file or its contract is refused; nothing is written then."""
    from harness.data import cifar as data_mod

    path = Path(path)
    run = RunDir.named(results, name)
    if run.path.exists() and not overwrite:
        raise ImportRefused(f"{run.path} exists: choose another --name, or --overwrite")
    fmt, probed = foreign.check_file(path)
    keras_model = foreign.load_keras(path, fmt) if fmt in ("keras", "h5") else None
    saved = foreign.load_saved_model(path) if fmt == "saved_model" else None
    shape = input_shape(fmt, probed, keras_model or saved)
    layout, layout_note = settle_layout(shape, layout, path.name)
    declared = {
        k: v
        for k, v in (("channels", channels), ("input", input_scale), ("mean", mean), ("std", std))
        if v is not None
    }
    from_file = quantized_contract(probed)
    sources = [f"declared ({', '.join(sorted(declared))})"] if declared else []
    if from_file is not None and not {"input", "mean", "std"} & declared.keys():
        declared = {**declared, **from_file}
        sources.append("input from the file's input quantization")
    contract = Contract(
        layout=layout, output=output or "probs", **{"channels": "rgb", "input": "raw", **declared}
    )
    model = open_model(path, fmt, contract, loaded=keras_model or saved)
    splits = data_mod.split(ds)
    if output is None:
        detected = detect_output(model, splits.val.x[:OUTPUT_PROBE])
        contract = Contract.from_dict({**contract.to_dict(), "output": detected})
        model = model.with_contract(contract)
        sources.append(f"output read off its answers to {OUTPUT_PROBE} images")
    else:
        sources.append("output declared")
    contract_from = "; ".join(
        sources if declared or from_file else ["the defaults (raw, RGB)", *sources]
    )
    probe_x, probe_y = splits.val.x[:PROBE_IMAGES], splits.val.y[:PROBE_IMAGES]
    score_probe = accuracy(model, probe_x, probe_y)
    if score_probe < CHANCE_LIMIT:
        flags, best = suggest_contract(model, probe_x, probe_y)
        raise ImportRefused(
            f"{path.name}: {score_probe:.1%} on {len(probe_y)} validation images under the "
            f"contract {contract.short()}, near chance: a wrong input contract? Of the common "
            f"ones, {flags} scores best ({best:.1%})"
        )
    return write_import(
        path,
        fmt,
        probed,
        keras_model,
        model,
        contract,
        contract_from,
        layout_note,
        ds,
        run,
        source,
        overwrite,
    )


def write_import(
    path: Path,
    fmt: str,
    probed,
    keras_model,
    model: ContractModel,
    contract: Contract,
    contract_from: str,
    layout_note: str | None,
    ds,
    run: RunDir,
    source: str | None,
    overwrite: bool,
) -> dict:
    """The run folder, built in a hidden folder beside its place and renamed into it."""
    from harness.data import cifar as data_mod
    from harness.export.runtimes import predict_batched
    from harness.train.evaluate import score

    splits = data_mod.split(ds)
    run.path.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(dir=run.path.parent, prefix=f".{run.name}.", suffix=".tmp"))
    try:
        work = RunDir(stage / run.name)
        file_name = path.name if NAME.fullmatch(path.name) else f"model{path.suffix.lower()}"
        target = work.path / "source" / file_name
        target.parent.mkdir(parents=True)
        if fmt == "saved_model":
            shutil.copytree(path, target, symlinks=False)
        else:
            shutil.copyfile(path, target)
            for extra in foreign.check_onnx(path) if fmt == "onnx" else ():
                (target.parent / extra).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(path.parent / extra, target.parent / extra)
        digest = sha256_of(target)
        if digest != sha256_of(path):
            raise ImportRefused(f"{path.name}: changed while it was being imported")
        started = time.perf_counter()
        val = score(predict_batched(model, splits.val.x), splits.val.y)
        test = score(predict_batched(model, splits.test.x), splits.test.y)
        seconds = time.perf_counter() - started
        facts = _facts(target, fmt, keras_model)
        if keras_model is not None:
            write_keras_form(keras_model, contract, work.model, model, splits.val.x[:64])
        info = {
            "kind": KIND,
            "name": run.name,
            "format": fmt,
            "file": file_name,
            "sha256": digest,
            "bytes": _size(target),
            "source": source or path.name,
            "contract": contract.to_dict(),
            "contract_from": contract_from,
            "contract_words": contract.words(),
            "runtime": model.name,
            "input": probed["input"]
            if probed
            else {"shape": input_shape(fmt, None, keras_model), "dtype": "float32"},
        }
        if layout_note:
            info["layout_note"] = layout_note
        work.write_config(info)
        metrics = {
            "run": run.name,
            "status": COMPLETED,
            "kind": KIND,
            "variant": KIND,
            "import": {
                k: info[k]
                for k in ("format", "file", "sha256", "bytes", "source", "contract", "runtime")
            },
            "params": {"total": facts["params"]},
            "sparsity": facts["sparsity"],
            "macs": facts["macs"],
            "precision": facts["precision"],
            "ops": facts["ops"],
            "op_count": facts["op_count"],
            "val": val,
            "test": test,
            "eval_seconds": round(seconds, 3),
            "data": ds.record,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "harness_version": metadata.version("harness"),
        }
        work.write_metrics(metrics)
        if run.path.exists() and overwrite:
            run.path.replace(stage / "previous")
        work.path.replace(run.path)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return run.read_metrics()


def _size(path: Path) -> int:
    return (
        path.stat().st_size
        if path.is_file()
        else sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    )


def _facts(target: Path, fmt: str, keras_model) -> dict:
    if fmt == "tflite":
        return foreign.tflite_facts(target.read_bytes())
    if fmt == "onnx":
        return foreign.onnx_facts(target)
    if keras_model is not None:
        return foreign.keras_facts(keras_model)
    return {
        "precision": "float32",
        "params": 0,
        "macs": None,
        "sparsity": 0.0,
        "ops": [],
        "op_count": 0,
    }


def write_keras_form(
    model, contract: Contract, path: Path, reference: ContractModel, probe: np.ndarray
) -> None:
    """harness' Keras form of an imported Keras model (the contract as a ContractLayer in
    front, a softmax behind logits) as ``path``, once it answers ``probe`` as the imported
    model does under the contract."""
    import keras

    from harness.train.fit import save_model
    from harness.train.layers import ContractLayer

    if contract.takes_pixels and contract.output == "probs":
        wrapped = model
    else:
        pixels = keras.Input((32, 32, 3), name="pixels")
        h = ContractLayer(contract.to_dict(), name="contract")(pixels)
        h = model(h)
        if contract.output == "logits":
            h = keras.layers.Softmax(name="probabilities")(h)
        wrapped = keras.Model(pixels, h, name=f"{model.name}_contract")
    got = np.asarray(wrapped(probe.astype(np.float32), training=False))
    want = reference.predict(probe)
    if np.abs(got - want).max() > 1e-4:
        raise ImportRefused(
            f"harness' Keras form of the model differs from it by {np.abs(got - want).max():.2e}"
        )
    save_model(wrapped, path)


# --------------------------------------------------------------------------- bench


def bench_import(
    run: RunDir,
    ds,
    calls: int = 2000,
    warmup: int = 200,
    modes: tuple[str, ...] = (),
    window_s: float | None = None,
) -> dict:
    """The bench record of an imported .tflite or .onnx file, timed as it is (Keras
    imports go through :func:`harness.export.bench.bench_run`, harness' form and exports)."""
    from harness.export import bench

    info = read_import(run)
    record = bench.bench_record(
        run.name,
        ds,
        [imported_row(run, info, ds, calls, warmup)],
        calls,
        warmup,
        modes,
        window_s or bench.mlperf.WINDOW_S,
    )
    bench.note_import(record, info)
    return record


def imported_row(
    run: RunDir, info: dict, ds, calls: int, warmup: int
) -> tuple[dict, object, np.ndarray]:
    """The row of an imported .tflite or .onnx file, timed as it is: uint8 pixels through
    its contract inside each call, its test accuracy measured again through its runtime;
    with the function and image it was timed with."""
    from harness.data import cifar as data_mod
    from harness.export.bench import THROUGHPUT_BATCH, file_footprint, latency_us, throughput
    from harness.export.runtimes import predict_batched
    from harness.train.evaluate import score

    path = check_source(run, info)
    metrics = run.read_metrics()
    splits = data_mod.split(ds)
    pixels, pixel_batch = splits.test.x[:1], splits.test.x[:THROUGHPUT_BATCH]
    single = open_run(run, info, threads=1)
    multi = open_run(run, info, threads=os.cpu_count() or 1)
    macs = {"macs": metrics["macs"]} if metrics.get("macs") is not None else {}
    return (
        {
            "run": run.name,
            "params": metrics["params"]["total"],
            "sparsity": metrics.get("sparsity", 0.0),
            **macs,
            "format": info["format"],
            "precision": metrics["precision"],
            "runtime": single.name,
            "file": info["file"],
            "size_bytes": info["bytes"],
            "imported": True,
            **latency_us(single.predict, pixels, calls, warmup),
            "throughput_ips": throughput(multi.predict, pixel_batch),
            "test": score(predict_batched(single, splits.test.x), splits.test.y),
            **(
                file_footprint(path, info["format"], metrics["precision"])
                if path.is_file()
                else {"flash_bytes": info["bytes"], "arena_bytes": None}
            ),
        },  # a SavedModel
        single.predict,
        pixels,
    )


# --------------------------------------------------------------------------- evaluate


def evaluate_import(run: RunDir, ds, info: dict | None = None) -> dict:
    """Val and test accuracy of an imported run through the file's own runtime, under its
    contract; writes evaluation.json as a trained run's evaluate does."""
    from harness.data import cifar as data_mod
    from harness.export.runtimes import predict_batched
    from harness.train.evaluate import score

    info = info or read_import(run)
    model = open_run(run, info)
    splits = data_mod.split(ds)
    result = {
        "run": run.name,
        "data": ds.record,
        "evaluated_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "through": f"{info['file']} in {model.name}",
        "val": score(predict_batched(model, splits.val.x), splits.val.y),
        "test": score(predict_batched(model, splits.test.x), splits.test.y),
    }
    atomic_write_json(run.evaluation, result)
    return result


def check_source(run: RunDir, info: dict) -> Path:
    """The imported file, once its sha256 is the one recorded; ImportRefused otherwise."""
    path = source_file(run, info)
    if not path.exists():
        raise ImportRefused(f"{run.path}: the imported file source/{info['file']} is missing")
    if sha256_of(path) != info["sha256"]:
        raise ImportRefused(f"{path}: sha256 differs from config.json (changed since import)")
    return path


def format_import(path: Path, m: dict, config: dict) -> str:
    """What ``harness import`` prints: the file, its contract and what it scored."""
    info = m["import"]
    lines = [
        f"imported {m['run']}: {info['file']} ({info['format']} {m['precision']}, "
        f"{info['bytes']:,} bytes, sha256 {info['sha256'][:16]}...)",
        f"  contract  {config['contract_words']} ({config['contract_from']})",
    ]
    if "layout_note" in config:
        lines.append(f"  layout    {config['layout_note']}")
    for split_name in ("val", "test"):
        lines.append(
            f"  {split_name:<5}     accuracy {m[split_name]['accuracy']:.4f}  "
            f"loss {m[split_name]['loss']:.4f}  (through {info['runtime']})"
        )
    macs = f", {m['macs']:,} MACs" if m.get("macs") else ""
    lines.append(f"  {m['params']['total']:,} parameters{macs}, {m['op_count']} ops -> {path}")
    return "\n".join(lines)
