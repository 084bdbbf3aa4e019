"""The commands on a model file: import, export, bench, deploy, predict."""

from __future__ import annotations

import json
from pathlib import Path

import click
import numpy as np

from harness.cli.app import Context, Refused, _name_option, _run_dir, main
from harness.core.precisions import NAMES as PRECISION_NAMES
from harness.core.records import Results, RunDir
from harness.data import cifar as data_mod
from harness.edge.predict import MAX_PIXELS


@main.command("import")
@click.argument("model", type=click.Path(exists=True, path_type=Path))
@click.option(
    "--name",
    required=True,
    callback=_name_option("run name"),
    help="The run's name: results/runs/<name>/.",
)
@click.option(
    "--layout",
    type=click.Choice(["nhwc", "nchw"]),
    help="How the model lays out an image [default: what its input shape says, else nhwc].",
)
@click.option(
    "--channels",
    type=click.Choice(["rgb", "bgr"]),
    help="Channel order the model was trained on [default: rgb].",
)
@click.option(
    "--input",
    "input_scale",
    type=click.Choice(["raw", "unit"]),
    help="raw: float 0-255; unit: pixels / 255 [default: raw; an integer-input "
    ".tflite: what its quantization says].",
)
@click.option("--mean", metavar="R,G,B", help="Subtract per channel, after --input scaling.")
@click.option("--std", metavar="R,G,B", help="Divide per channel, after --mean.")
@click.option(
    "--output",
    type=click.Choice(["probs", "logits"]),
    help="What the model answers [default: read off its outputs on a few images].",
)
@click.option(
    "--source",
    metavar="TEXT",
    help="Where the file comes from (a URL, a paper, its licence): recorded with it.",
)
@click.option("--overwrite", is_flag=True, help="Replace a run of this name.")
@click.pass_obj
def import_model(
    obj: Context,
    model: Path,
    name,
    layout,
    channels,
    input_scale,
    mean,
    std,
    output,
    source,
    overwrite,
):
    """Import a CIFAR-10 model harness did not train (.tflite, .onnx, .keras, .h5 or a
    SavedModel folder) as the run results/runs/<name>/.

    The file is checked before anything runs it, copied byte for byte, and scored on the
    validation and test images through its own runtime under its input contract; a
    contract that leaves it near chance is refused, naming the common one that scores
    best. evaluate, bench, export, predict, deploy and compare then take the run.
    """
    from harness.core.contract import parse_three
    from harness.imports.imported import format_import
    from harness.imports.imported import import_model as run_import

    mean, std = parse_three(mean, "mean"), parse_three(std, "std")
    m = run_import(
        model,
        obj.dataset(),
        obj.results,
        name,
        layout,
        channels,
        input_scale,
        mean,
        std,
        output,
        source,
        overwrite,
    )
    path = RunDir.named(obj.results, name).path
    config = RunDir(path).read_config()
    click.echo(format_import(path, m, config))


@main.command()
@click.argument("run", type=click.Path(path_type=Path))
@click.option(
    "--format",
    "formats",
    type=click.Choice(["onnx", "tflite", "saved_model", "all"]),
    multiple=True,
    default=["all"],
    show_default=True,
    help="Export format(s).",
)
@click.option(
    "--quantize",
    "quantizations",
    multiple=True,
    default=["all"],
    show_default=True,
    type=click.Choice([*PRECISION_NAMES, "all"]),
    help="TFLite precision(s).",
)
@click.pass_obj
def export(obj: Context, run: Path, formats, quantizations):
    """Export a run's model and verify each file through its own runtime."""
    from harness.export import convert as export_mod

    run_dir = _run_dir(obj, run)
    info = run_dir.read_import()
    if info is not None and not run_dir.model.exists():
        raise Refused(
            f"{run}: an imported {info['format']}; harness exports Keras and .h5 "
            "imports (a .tflite or .onnx is an export already: bench, predict and "
            "deploy use it as it is)"
        )
    formats = export_mod.FORMATS if "all" in formats else formats
    quantizations = export_mod.QUANTIZATIONS if "all" in quantizations else quantizations
    records = export_mod.export_run(run_dir, obj.dataset(), formats, quantizations)
    click.echo(f"{'file':<24}{'runtime':<13}{'KiB':>8}{'max diff':>11}{'test acc':>10}{'drop':>8}")
    for r in records:
        click.echo(
            f"{r['file']:<24}{r['runtime']:<13}{r['size_bytes'] / 1024:>8.1f}"
            f"{r['max_abs_diff']:>11.2e}{r['test']['accuracy']:>10.4f}"
            f"{r['accuracy_drop_points']:>7.2f}{'  FLAGGED' if r['flagged'] else ''}"
        )
    if any(r["flagged"] for r in records):
        raise click.ClickException("an export lost more accuracy than allowed (see FLAGGED)")


@main.command()
@click.argument("run", type=click.Path(path_type=Path))
@click.option(
    "--target",
    type=click.Choice(["linux", "mcu", "ethos-u55", "ethos-u65"]),
    required=True,
    help="linux: the model, a manifest and a standalone predict.py for any Linux "
    "(x86-64, arm64); mcu: a TensorFlow Lite Micro bundle (int8); ethos-u55, "
    "ethos-u65: the same and the file Vela compiles for that NPU, with its figures.",
)
@click.option(
    "--runtime",
    type=click.Choice(["litert", "onnx"]),
    default="litert",
    show_default=True,
    help="Runtime on the device: LiteRT (.tflite) or onnxruntime (.onnx, float32 only).",
)
@click.option(
    "--quantize",
    "quantization",
    type=click.Choice(PRECISION_NAMES),
    help="Precision of the model file [default: float32 for linux, int8 for mcu].",
)
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    help="Folder for the bundle and its .tar.gz [default: <results>/deploy].",
)
@click.option(
    "--name",
    callback=_name_option("bundle name"),
    help="Bundle name: letters, "
    "digits, - _ . (first a letter, digit or _) "
    "[default: <run>-<target>-<runtime>-<precision>].",
)
@click.option("--flash-kb", type=click.IntRange(min=1), help="mcu: flash budget in KiB.")
@click.option("--ram-kb", type=click.IntRange(min=1), help="mcu: RAM budget in KiB.")
@click.option(
    "--board",
    "boards",
    multiple=True,
    help="mcu, ethos-*: estimate fit, latency and energy on this board (repeatable; "
    "harness boards lists them).",
)
@click.option(
    "--npu-macs",
    type=click.Choice(["32", "64", "128", "256", "512"]),
    help="ethos-*: the NPU's MACs per cycle [default: 128 for U55, 512 for U65].",
)
@click.option(
    "--calls",
    type=click.IntRange(min=10),
    default=2000,
    show_default=True,
    help="linux: timed batch-1 calls for the manifest's latency (after warm-up).",
)
@click.option(
    "--warmup",
    type=click.IntRange(min=0),
    default=200,
    show_default=True,
    help="linux: untimed calls first.",
)
@click.option(
    "--allow-flagged",
    is_flag=True,
    help="Bundle an export that lost more test accuracy than export allows (refused otherwise).",
)
@click.pass_obj
def deploy(
    obj: Context,
    run: Path,
    target,
    runtime,
    quantization,
    out,
    name,
    flash_kb,
    ram_kb,
    boards,
    npu_macs,
    calls,
    warmup,
    allow_flagged,
):
    """Export a run and write a bundle for a device: a folder, its .tar.gz and sha256.

    The linux bundle needs only numpy, pillow and the runtime, and checks itself on the
    device with `python predict.py --selftest`; re-running the command replaces it.
    """
    from harness.deploy import boards as boards_mod
    from harness.deploy import linux as deploy_mod
    from harness.deploy import npu

    deploy_mod.check_options(target, runtime, quantization, flash_kb, ram_kb)
    for board in boards:
        boards_mod.board_named(board)  # an unknown board is refused before any work
    if (boards or npu_macs) and target not in deploy_mod.MICRO:
        raise click.UsageError("--board and --npu-macs are for --target mcu, ethos-u55, ethos-u65")
    if npu_macs and target == "mcu":
        raise click.UsageError("--npu-macs is for --target ethos-u55 or ethos-u65")
    if target != "mcu" and target in deploy_mod.MICRO:
        npu.accelerator(target, int(npu_macs) if npu_macs else None)
    run_dir = _run_dir(obj, run)
    result = deploy_mod.deploy_run(
        run_dir,
        obj.dataset(),
        out or Results(obj.results).deploy,
        target,
        runtime,
        quantization,
        name,
        flash_kb,
        ram_kb,
        calls,
        warmup,
        allow_flagged,
        tuple(boards),
        int(npu_macs) if npu_macs else None,
    )
    click.echo(deploy_mod.format_summary(result))


@main.command()
@click.argument("runs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option(
    "--export",
    "export_kind",
    type=click.Choice(["onnx", "tflite", "all"]),
    default="onnx",
    show_default=True,
    help="Which exports to make and time.",
)
@click.option(
    "--calls",
    type=click.IntRange(min=10),
    default=2000,
    show_default=True,
    help="Timed batch-1 calls per runtime (after warm-up).",
)
@click.option(
    "--warmup",
    type=click.IntRange(min=0),
    default=200,
    show_default=True,
    help="Untimed calls first.",
)
@click.option(
    "--mode",
    "modes",
    type=click.Choice(["accuracy", "performance"]),
    multiple=True,
    help="Also MLPerf Tiny's modes: accuracy (its 200-image list, by file name, one "
    "image a call, no warm-up), performance (median throughput of 5 windows, "
    "latency = 1 / median). Repeatable.",
)
@click.option(
    "--window-s",
    type=click.FloatRange(min=0, min_open=True),
    default=10.0,
    show_default=True,
    help="--mode performance: least seconds per window.",
)
@click.option(
    "--on",
    "device",
    metavar="ssh://[USER@]HOST[:PORT]",
    help="Time each bundle (or each run's litert int8 bundle, made if missing) on this "
    "device instead: set up there in its own venv, selftest, predict.py --bench; the "
    "record comes back to results/bench/<bundle>-on-<host>.json.",
)
@click.option(
    "--identity",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="--on: ssh key.",
)
@click.option(
    "--ssh-config",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="--on: an ssh client configuration in place of ~/.ssh/config (ssh -F).",
)
@click.option("--python", default="python3", show_default=True, help="--on: the device's Python.")
@click.option(
    "--threads", type=click.IntRange(min=1), default=1, show_default=True, help="--on: threads."
)
@click.pass_obj
def bench(
    obj: Context,
    runs,
    export_kind,
    calls,
    warmup,
    modes,
    window_s,
    device,
    identity,
    ssh_config,
    python,
    threads,
):
    """Accuracy against batch-1 latency for each run, as Keras and as its exports; an
    imported .tflite or .onnx as it is; with --on, a bundle on your own device.

    Writes results/bench/<run>.json with machine facts and prints a table.
    """
    from harness.export.bench import bench_run, format_rows, write_bench
    from harness.imports.committed import bench_exports
    from harness.imports.imported import bench_import

    if device is not None:
        ssh = _device_ssh(device, identity, ssh_config)
        _bench_on_device(obj, runs, ssh, python, calls, warmup, threads)
        return
    run_dirs = [_run_dir(obj, run, exports_ok=True) for run in runs]
    ds = obj.dataset()
    for run_dir in run_dirs:
        how = {
            "calls": calls,
            "warmup": warmup,
            "modes": tuple(dict.fromkeys(modes)),
            "window_s": window_s,
        }
        if run_dir.read_import() is not None and not run_dir.model.exists():
            record = bench_import(run_dir, ds, **how)  # a .tflite or .onnx, as it is
        elif not run_dir.model.exists():
            record = bench_exports(run_dir, ds, **how)  # a clone's committed exports
        else:
            record = bench_run(run_dir, ds, export_kind, **how)
        written = write_bench(record, obj.results)
        click.echo(f"{run_dir.name}  ->  {written}")
        click.echo(format_rows(record["rows"]))


def _device_ssh(url: str, identity: Path | None, config: Path | None):
    from harness.deploy import device as device_mod

    return device_mod.Ssh(device_mod.Target.parse(url), identity, config)


def _bench_on_device(obj: Context, items, ssh, python, calls, warmup, threads):
    from harness.deploy import device as device_mod
    from harness.deploy import linux as deploy_mod

    for item in items:
        folder = Path(item)
        if not (folder / "manifest.json").is_file():  # a run: its bundle, made if missing
            run_dir = _run_dir(obj, folder)
            folder = Results(obj.results).deploy / deploy_mod.default_name(
                run_dir.name, "linux", "litert", "int8"
            )
            if not (folder / "manifest.json").is_file():
                result = deploy_mod.deploy_run(
                    run_dir, obj.dataset(), folder.parent, "linux", "litert", "int8"
                )
                click.echo(deploy_mod.format_summary(result))
        path, record = device_mod.bench_on(ssh, folder, obj.results, python, calls, warmup, threads)
        click.echo(device_mod.format_result(record, path))


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


def _image_files(ctx, param, paths: tuple[Path, ...]) -> list[Path]:
    """The files given, and in place of each folder the PNG/JPEG files in it, sorted."""
    files = []
    for path in paths:
        if not path.is_dir():
            files.append(path)
            continue
        inside = sorted(
            p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
        )
        if not inside:
            raise click.BadParameter(f"{path}: a folder without PNG or JPEG images")
        files += inside
    return files


@main.command()
@click.argument("model", type=click.Path(exists=True, path_type=Path))
@click.argument(
    "images",
    nargs=-1,
    required=True,
    callback=_image_files,
    type=click.Path(exists=True, path_type=Path),
)
@click.option(
    "--top",
    type=click.IntRange(1, 10),
    default=1,
    show_default=True,
    help="Classes to print per image.",
)
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help="One JSON line per image: its top classes, or the error that kept it from being read.",
)
@click.option(
    "--max-pixels",
    type=click.IntRange(min=1),
    default=MAX_PIXELS,
    show_default=True,
    help="Refuse an image of more pixels, read off its header before it is decoded.",
)
def predict(model: Path, images, top: int, as_json: bool, max_pixels: int):
    """Classify images with an exported .onnx or .tflite model, or an imported run's file
    under its input contract (no TensorFlow needed).

    IMAGES are files or folders (every PNG/JPEG in a folder, by name; not its subfolders).
    Any image is converted to RGB and resized to 32 x 32 first. An unreadable one is named
    on stderr and the others are classified; the exit status is then 1.
    """
    from harness.core.contract import Contract, ContractModel
    from harness.edge.predict import read_images
    from harness.export import runtimes

    if model.is_dir():
        runtime = _imported_predictor(model)
    else:
        runtime = ContractModel(
            runtimes.load(model), Contract(), float_pixels=model.suffix == ".onnx"
        )
    pixels, names, errors = read_images(images, max_pixels)
    probs = dict(zip(names, (runtime.predict(pixels[i : i + 1])[0] for i in range(len(pixels)))))
    for path in map(str, images):
        if path in errors:
            if as_json:
                click.echo(json.dumps({"image": path, "error": errors[path]}))
            continue
        best = [int(c) for c in np.argsort(probs[path])[::-1][:top]]
        if as_json:
            click.echo(
                json.dumps(
                    {
                        "image": path,
                        "top": [
                            {
                                "class": data_mod.LABEL_NAMES[c],
                                "index": c,
                                "probability": round(float(probs[path][c]), 6),
                            }
                            for c in best
                        ],
                    }
                )
            )
        else:
            click.echo(
                f"{path}: "
                + ", ".join(f"{data_mod.LABEL_NAMES[c]} {probs[path][c]:.3f}" for c in best)
            )
    if errors:
        raise click.ClickException(
            f"{len(errors)} of {len(images)} images could not be read "
            f"(named above); the other {len(names)} are classified"
        )


def _imported_predictor(folder: Path):
    """An imported run's .tflite or .onnx behind its contract, for predict."""
    from harness.imports.foreign import FILE_RUNTIMES
    from harness.imports.imported import check_source, open_run, read_import

    run = RunDir(folder)
    info = read_import(run)
    if info is None:
        raise Refused(f"{folder}: give a .tflite or .onnx file, or an imported run's folder")
    if info["format"] not in FILE_RUNTIMES:
        raise Refused(
            f"{folder}: an imported {info['format']} model; predict runs .tflite and "
            f".onnx files (harness export {folder} makes them)"
        )
    check_source(run, info)
    return open_run(run, info)
