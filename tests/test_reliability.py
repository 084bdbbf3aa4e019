"""Bad input never costs a batch: every row of docs/reliability.md's table has its test here
or names one elsewhere (test_every_row_of_the_reliability_table_names_a_test checks that).

Images (truncated, not an image, zero bytes, a decompression bomb, 16-bit, CMYK, an animated
GIF renamed .png) through `harness predict` and a bundle's standalone predict.py; run
folders missing their pieces; two trainings of one run at once; runtime chatter.
"""

from __future__ import annotations

import json
import re
import shutil
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from harness.cli import main
from harness.data.cifar import LABEL_NAMES

REPO = Path(__file__).resolve().parents[1]
MLPERF_INT8 = REPO / "models" / "mlperf-tiny-ic" / "pretrainedResnet_quant.tflite"
PREDICT = REPO / "harness" / "edge" / "predict.py"
GOOD = ("good-1.png", "good-2.png", "good-3.png", "grey16.png", "cmyk.jpg", "animated.png")
BAD = {
    "truncated.png": "damaged or truncated",
    "notes.png": "not an image",
    "empty.png": "not an image",
    "bomb.png": "over the limit of",
}


# --------------------------------------------------------------------------- images


def _png_header_only(path: Path, width: int, height: int) -> Path:
    """A valid PNG signature and IHDR declaring ``width`` x ``height`` 8-bit grey, with a
    few bytes of image data: 388 KB-style bombs are refused from the header alone."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data))
            + kind
            + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + chunk(b"IEND", b"")
    )
    return path


@pytest.fixture
def images(tmp_path) -> Path:
    """A folder of six readable images and four bad ones."""
    from PIL import Image

    folder = tmp_path / "images"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name in GOOD[:3]:
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(folder / name)
    Image.fromarray(np.full((32, 32), 40000, np.uint16)).save(folder / "grey16.png")
    Image.new("CMYK", (32, 32), (0, 255, 0, 0)).save(folder / "cmyk.jpg")
    frames = [Image.new("RGB", (32, 32), c) for c in ((255, 0, 0), (0, 0, 255))]
    frames[0].save(folder / "animated.gif", save_all=True, append_images=frames[1:])
    (folder / "animated.gif").rename(folder / "animated.png")  # a GIF named .png
    whole = (folder / "good-1.png").read_bytes()
    (folder / "truncated.png").write_bytes(whole[: len(whole) // 2])
    (folder / "notes.png").write_text("not an image at all")
    (folder / "empty.png").write_bytes(b"")
    _png_header_only(folder / "bomb.png", 20_000, 20_000)
    return folder


def test_image_modes_become_rgb_as_they_should(images):
    from harness.edge.predict import read_image

    grey16 = read_image(images / "grey16.png")
    assert grey16.dtype == np.uint8 and 150 <= grey16.mean() <= 160  # 40000 / 65535 x 255
    assert read_image(images / "animated.png")[0, 0].tolist() == [255, 0, 0]  # first frame
    cmyk = read_image(images / "cmyk.jpg")
    assert cmyk.shape == (32, 32, 3) and cmyk[..., 1].mean() < cmyk[..., 0].mean()  # magenta


def test_a_bomb_is_refused_from_its_header_before_decoding(images, monkeypatch):
    from PIL import ImageFile

    from harness.edge.predict import ImageError, read_image

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded")

    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decoding)
    with pytest.raises(ImageError, match="20000x20000 is 400,000,000 pixels, over the limit"):
        read_image(images / "bomb.png")
    with pytest.raises(ImageError, match="over the limit of 100"):
        read_image(images / "bomb.png", max_pixels=100)


def _check_batch(stdout: str, stderr: str, returncode: int, images: Path) -> None:
    """Every good image answered on stdout, every bad one named once on stderr, exit 1."""
    assert returncode == 1, stderr
    for name in GOOD:
        assert name in stdout
    for name, why in BAD.items():
        named = [line for line in stderr.splitlines() if line.startswith(str(images / name))]
        assert len(named) == 1 and why in named[0], stderr
        assert name not in stdout
    assert "Traceback" not in stderr and "INFO:" not in stderr + stdout


def test_harness_predict_classifies_the_good_and_names_the_bad(images):
    result = subprocess.run(
        [sys.executable, "-m", "harness.cli", "predict", str(MLPERF_INT8), str(images)],
        capture_output=True,
        text=True,
        cwd=images.parent,
    )
    _check_batch(result.stdout, result.stderr, result.returncode, images)
    assert "6 are classified" in result.stderr


def test_harness_predict_json_has_an_error_object_per_bad_file(images):
    result = CliRunner().invoke(main, ["predict", str(MLPERF_INT8), str(images), "--json"])
    lines = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert result.exit_code == 1
    by_image = {Path(line["image"]).name: line for line in lines}
    assert set(by_image) == {*GOOD, *BAD}
    for name, why in BAD.items():
        assert why in by_image[name]["error"]
    for name in GOOD:
        assert by_image[name]["top"][0]["class"] in LABEL_NAMES


@pytest.fixture
def bundle(tmp_path) -> Path:
    """A minimal linux bundle: the committed int8 model, a manifest, predict.py."""
    folder = tmp_path / "bundle"
    folder.mkdir()
    shutil.copyfile(MLPERF_INT8, folder / MLPERF_INT8.name)
    shutil.copyfile(PREDICT, folder / "predict.py")
    (folder / "manifest.json").write_text(
        json.dumps(
            {
                "model": {"file": MLPERF_INT8.name},
                "classes": list(LABEL_NAMES),
                "input": {},
                "runtime": {"name": "litert", "package": "ai-edge-litert", "version": "any"},
            }
        )
    )
    return folder


def test_the_bundles_predict_classifies_the_good_and_names_the_bad(bundle, images):
    done = subprocess.run(
        [sys.executable, "-I", str(bundle / "predict.py"), str(images)],
        capture_output=True,
        text=True,
    )
    stderr = "\n".join(
        line for line in done.stderr.splitlines() if not line.startswith("note: ai-edge-litert")
    )
    _check_batch(done.stdout, stderr, done.returncode, images)
    with_json = subprocess.run(
        [sys.executable, "-I", str(bundle / "predict.py"), str(images), "--json"],
        capture_output=True,
        text=True,
    )
    errors = [json.loads(line) for line in with_json.stdout.splitlines() if '"error"' in line]
    assert {Path(e["image"]).name for e in errors} == set(BAD)
    dumped = bundle.parent / "p.npy"
    subprocess.run(
        [
            sys.executable,
            "-I",
            str(bundle / "predict.py"),
            str(images),
            "--dump-probs",
            str(dumped),
        ],
        capture_output=True,
        text=True,
    )
    probs = np.load(dumped)
    assert probs.shape == (len(GOOD) + len(BAD), 10)
    assert np.isnan(probs).all(axis=1).sum() == len(BAD)  # the bad ones' rows, in order


def test_a_model_file_that_is_not_one_gets_one_line(tmp_path, images):
    for name, data in (
        ("png.tflite", (images / "good-1.png").read_bytes()),
        ("empty.onnx", b""),
        ("garbage.onnx", b"garbage"),
    ):
        (tmp_path / name).write_bytes(data)
        result = CliRunner().invoke(
            main, ["predict", str(tmp_path / name), str(images / "good-1.png")]
        )
        assert result.exit_code == 2 and "Traceback" not in result.output
        assert len(result.output.strip().splitlines()) == 1, result.output


# --------------------------------------------------------------------------- run folders


def _config() -> dict:
    from harness.core.config import resolve

    return resolve("selu", None, {}).to_dict()


@pytest.mark.parametrize(
    "case,message",
    [
        ("no folder", "no run here"),
        ("model only", "model.keras but no config.json"),
        ("config only", "no model.keras"),
        ("malformed config", "config.json is not valid JSON"),
        ("newer config", "written by a newer harness"),
        ("bad metrics", "metrics.json breaks the run record's format"),
        ("import without its file", "the imported file source/m.tflite is missing"),
    ],
)
@pytest.mark.parametrize("command", ["evaluate", "export", "deploy", "bench"])
def test_a_run_folder_missing_a_piece_is_named_in_one_line(tmp_path, case, message, command):
    run = tmp_path / "runs" / "r"
    if case != "no folder":
        run.mkdir(parents=True)
    if case in ("model only", "newer config", "bad metrics"):
        (run / "model.keras").write_bytes(b"never read")
    if case in ("config only", "bad metrics"):
        (run / "config.json").write_text(json.dumps(_config()))
    if case == "malformed config":
        (run / "config.json").write_text("{not json")
    if case == "newer config":
        (run / "config.json").write_text(json.dumps({**_config(), "warp_drive": 9}))
    if case == "bad metrics":
        (run / "metrics.json").write_text(json.dumps({"schema": 1, "run": "r"}))
    if case == "import without its file":
        (run / "config.json").write_text(json.dumps({"kind": "imported", "file": "m.tflite"}))
    extra = ["--target", "linux"] if command == "deploy" else []
    result = CliRunner().invoke(main, ["--results", str(tmp_path), command, str(run), *extra])
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and "Traceback" not in result.output


# --------------------------------------------------------------------------- concurrency

HOLD = """
import sys, time
from pathlib import Path
from harness.core.records import RunDir, run_lock
with run_lock(RunDir.named(Path(sys.argv[1]), "same")):
    print("held", flush=True)
    time.sleep(60)
"""


def test_two_trainings_of_one_run_one_proceeds_the_other_is_refused(tmp_path, archive):
    """Another process holds run 'same' (as a training does); a second `train --name same`
    is refused in one line and touches nothing; once the holder dies, training proceeds and
    history.csv has its header once."""
    results = tmp_path / "results"
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(results)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        args = [
            "--archive",
            str(archive),
            "--results",
            str(results),
            "train",
            "--preset",
            "bn-elu",
            "--layers",
            "1",
            "--units",
            "8",
            "--epochs",
            "2",
            "--batch-size",
            "64",
            "--name",
            "same",
        ]
        refused = CliRunner().invoke(main, args)
        assert refused.exit_code == 2, refused.output
        assert f"pid {holder.pid}" in refused.output and "another process" in refused.output
        assert not (results / "runs" / "same").exists()
    finally:
        holder.kill()
        holder.wait()
    done = CliRunner().invoke(main, args)
    assert done.exit_code == 0, done.output
    history = (results / "runs" / "same" / "history.csv").read_text().splitlines()
    assert history[0].startswith("epoch") and len(history) == 3
    assert not any(line.startswith("epoch") for line in history[1:])


# --------------------------------------------------------------------------- the table


def test_every_row_of_the_reliability_table_names_a_test():
    page = (REPO / "docs" / "reliability.md").read_text()
    table = page.split("<!-- reliability-table -->")[1]
    named = re.findall(r"`(tests/test_\w+\.py)::(test_\w+)`", table)
    assert len(named) >= 20
    for path, test in named:
        assert re.search(rf"^def {test}\(", (REPO / path).read_text(), re.M), (path, test)


def test_the_tflite_converter_prints_nothing(tmp_path, capfd):
    """The converter's C++ settings line ("fully_quantize: 0, ...") stays off the terminal."""
    import keras

    from harness.export.convert import export_saved_model, tflite_bytes

    model = keras.Sequential(
        [
            keras.Input((32, 32, 3)),
            keras.layers.Flatten(),
            keras.layers.Dense(10, activation="softmax"),
        ]
    )
    saved = export_saved_model(model, tmp_path / "saved_model")
    capfd.readouterr()
    pixels = np.random.default_rng(0).integers(0, 256, (16, 32, 32, 3), dtype=np.uint8)
    assert tflite_bytes(saved, "int8", pixels)[4:8] == b"TFL3"
    out, err = capfd.readouterr()
    assert "fully_quantize" not in out + err and "INFO:" not in out + err
