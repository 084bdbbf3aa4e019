"""What every bundle shares: its errors, its name, the folder it is built in and moved
into place from, the model file it ships (a verified export of a run, or an imported file as
it is) and the manifest, archive and checksum that finish it. Used by :mod:`harness.deploy.linux`
and :mod:`harness.deploy.mcu`.
"""

from __future__ import annotations

import shutil
import tarfile
import tempfile
from contextlib import contextmanager
from pathlib import Path

from harness.core.records import BadName, RunDir, atomic_write_bytes, atomic_write_json
from harness.core.records import check_name as _check_name
from harness.edge.predict import sha256 as sha256_file  # the selftest's own checksum


class DeployError(ValueError):
    """A bundle that cannot be made as asked; the message is one line naming why."""


class DeployRefused(DeployError):
    """A request the run cannot take (an imported file asked to be re-quantized or run by
    another runtime): bad input, exit 2."""


def check_name(name: str) -> str:
    """``name`` if it is a safe bundle name (harness.core.records.NAME, the rule for every folder
    made from a name); else DeployError."""
    try:
        return _check_name(name, "bundle name")
    except BadName as e:
        raise DeployError(str(e)) from None


@contextmanager
def staging(out: Path, name: str):
    """A folder to build bundle ``name`` in, beside ``out/<name>``. When the block ends
    without an error, it and its archive replace ``out/<name>`` and its archive; when it
    raises, nothing in ``out`` changes."""
    out.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(dir=out, prefix=f".{name}.", suffix=".tmp"))
    try:
        (stage / name).mkdir()
        yield stage / name
        if (out / name).exists():
            (out / name).replace(stage / "previous")
        (stage / name).replace(out / name)
        for suffix in (".tar.gz", ".tar.gz.sha256"):
            (stage / f"{name}{suffix}").replace(out / f"{name}{suffix}")
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def check_imported(
    run: RunDir, info: dict, target: str, runtime: str, quantization: str | None
) -> str:
    """The precision of an imported file, once the bundle asked for ships it as it is;
    DeployError otherwise (harness cannot re-quantize a file it did not train)."""
    from harness.imports.imported import ImportRefused, check_source

    try:
        check_source(run, info)
    except ImportRefused as e:
        raise DeployError(str(e)) from None
    precision = run.read_metrics()["precision"]
    wanted = {"tflite": "litert", "onnx": "onnx"}.get(info["format"])
    if wanted is None:
        raise DeployRefused(
            f"{run.name} is an imported {info['format']}: harness deploys "
            ".tflite and .onnx files as they are, and Keras models through "
            "its exports; convert it to one of those and import that"
        )
    if runtime != wanted:
        raise DeployRefused(
            f"{run.name} is an imported {info['format']} file, shipped as it is: --runtime {wanted}"
        )
    if quantization not in (None, precision):
        raise DeployRefused(
            f"{run.name} is an imported {precision} file, shipped as it is: "
            f"--quantize {precision} (or leave it out)"
        )
    if target == "mcu" and (info["format"] != "tflite" or precision != "int8"):
        raise DeployRefused(
            f"--target mcu needs an int8 .tflite; {run.name} is an imported "
            f"{info['format']} {precision} file"
        )
    return precision


def imported_export(run: RunDir, info: dict) -> tuple[dict, Path]:
    """An imported file as the export record a bundle is made from: its own test score,
    no Keras model to compare with."""
    from harness.imports.imported import source_file

    metrics = run.read_metrics()
    return (
        {
            "file": info["file"],
            "size_bytes": info["bytes"],
            "test": metrics["test"],
            "keras_test": None,
            "accuracy_drop_points": None,
            "flagged": False,
            "max_abs_diff": None,
            "imported": {k: info[k] for k in ("format", "sha256", "source")},
        },
        source_file(run, info),
    )


def export_in_scratch(
    run: RunDir, ds, scratch: Path, fmt: str, quantization: str, allow_flagged: bool
) -> tuple[dict, Path]:
    """The run's verified export (its record and file), made in a copy of the run under
    ``scratch`` (its model linked), so deploying leaves the run's own exports/ and their
    records as they were; DeployError for a flagged export unless ``allow_flagged``."""
    from harness.export.convert import export_run

    work = RunDir(scratch / run.name)
    work.path.mkdir()
    work.model.symlink_to(run.model.resolve())
    (rec,) = export_run(work, ds, (fmt,), (quantization,))
    if rec["flagged"] and not allow_flagged:
        raise DeployError(
            f"{rec['file']} lost {rec['accuracy_drop_points']:.2f} points of test "
            f"accuracy against the Keras model, more than export allows; "
            f"--allow-flagged bundles it anyway"
        )
    return rec, work.exports / rec["file"]


def _anonymous(info: tarfile.TarInfo) -> tarfile.TarInfo:
    """Archive members owned by root, not by whoever made the bundle."""
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def finish_bundle(folder: Path, manifest: dict) -> tuple[Path, str]:
    """Write ``manifest.json`` (with the sha256 of every other file in ``folder``) and then
    ``<folder>.tar.gz`` and ``<folder>.tar.gz.sha256``; returns the archive and its sha256."""
    folder = Path(folder)
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.name != "manifest.json")
    manifest = {
        **manifest,
        "files": {
            str(p.relative_to(folder)): {"sha256": sha256_file(p), "bytes": p.stat().st_size}
            for p in files
        },
    }
    atomic_write_json(folder / "manifest.json", manifest)
    archive = folder.with_name(folder.name + ".tar.gz")
    tmp = archive.with_name(f".{archive.name}.tmp")
    with tarfile.open(tmp, "w:gz") as tar:
        tar.add(folder, arcname=folder.name, filter=_anonymous)
    tmp.replace(archive)
    digest = sha256_file(archive)
    atomic_write_bytes(
        archive.with_name(archive.name + ".sha256"), f"{digest}  {archive.name}\n".encode()
    )
    return archive, digest


# How harness' own exports take their pixels, in a manifest's words.
OWN_PIXELS = (
    "raw RGB values 0-255, neither scaled nor standardized (the model standardizes them itself)"
)


def declared_contract(declared=None) -> dict:
    """A manifest's ``pixels`` and ``contract`` for a model's input: harness' own exports
    (``declared`` None) take the pixels as they are; an imported file, as it was declared
    (harness.core.contract.Contract)."""
    from harness.core.contract import Contract

    contract = declared or Contract()
    return {
        "pixels": OWN_PIXELS if declared is None else contract.words(),
        "contract": contract.to_dict(),
    }
