#!/usr/bin/env python3
"""Classify 32 x 32 RGB images with the model of this bundle (made by ``harness deploy``).

Standalone: it needs numpy, pillow and the model's one runtime (ai-edge-litert for a
.tflite model, onnxruntime for an .onnx one), as pinned in requirements.txt; never harness,
TensorFlow, Keras or JAX. It reads manifest.json beside it for the model file, the class
names and the selftest's tolerance.

    python predict.py cat.png photos/ --top 3        # a table; --json for JSON lines
    python predict.py --selftest                     # the shipped samples, as recorded?
    python predict.py --npz test.npz --dump-probs probs.npy   # key x: uint8 (N, 32, 32, 3)
    python predict.py --bench --out bench.json      # latency on this device (device_bench.py)

Exit status: 0 ok, 1 selftest failed or the runtime failed, 2 bad usage or input.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import tempfile
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
SIZE = (32, 32)  # width, height: the model's input (CIFAR-10)
BATCH = 256  # images per runtime call
MAX_PIXELS = 4096 * 4096  # larger images are refused from their header (--max-pixels)
TOP_KEYS = ("class", "index", "probability")  # --json: each of an image's top classes
BYTES = {("|u1", 1.0, 0): "raw", ("|i1", 1.0, -128): "shifted"}  # inputs of pixels as bytes


# --------------------------------------------------------------------------- the contract
# How 0-255 RGB pixels (N, 32, 32, 3) become the model's input, and what its output is:
# declared once, here, for the bundle's predict.py and for harness (which imports these).
# harness' own models take the pixels as they are (PLAIN); an imported model declares its
# own (harness import --layout --channels --input --mean --std --output).
PLAIN = dict(layout="nhwc", channels="rgb", input="raw", mean=None, std=None, output="probs")
SCALES = {"raw": 1.0, "unit": 1.0 / 255.0}  # input: raw 0-255 floats, or pixels / 255


def takes_pixels(contract: dict | None) -> bool:
    """Whether the model takes the pixels as they are (raw, RGB, NHWC, not standardized)."""
    return contract is None or all(
        contract.get(k) == PLAIN[k] for k in ("layout", "channels", "input", "mean", "std")
    )


def apply_contract(pixels: np.ndarray, contract: dict | None) -> np.ndarray:
    """The model's input for uint8 RGB pixels (N, 32, 32, 3): scaled (input), standardized
    per channel (mean, std: after scaling, in R, G, B order), channels reordered, laid out
    (nchw: (N, 3, 32, 32)); the pixels themselves, untouched, where it takes them so."""
    if takes_pixels(contract):
        return pixels
    x = np.asarray(pixels, np.float32) * np.float32(SCALES[contract["input"]])
    if contract.get("mean") is not None:
        x = x - np.asarray(contract["mean"], np.float32)
    if contract.get("std") is not None:
        x = x / np.asarray(contract["std"], np.float32)
    if contract["channels"] == "bgr":
        x = x[..., ::-1]
    if contract["layout"] == "nchw":
        x = x.transpose(0, 3, 1, 2)
    return np.ascontiguousarray(x, np.float32)


def output_probs(out: np.ndarray, contract: dict | None) -> np.ndarray:
    """Class probabilities from the model's output: a softmax of logits, else as it is."""
    if contract is None or contract.get("output", "probs") == "probs":
        return out
    z = np.asarray(out, np.float32)
    z = np.exp(z - z.max(axis=1, keepdims=True))
    return z / z.sum(axis=1, keepdims=True)


class UsageError(Exception):
    """Bad arguments or input: exit 2."""


class Failure(Exception):
    """The selftest failed or the runtime did: exit 1."""


# --------------------------------------------------------------------------- the model


class LiteRT:
    """ai_edge_litert's Interpreter; integer inputs and outputs are (de)quantized here."""

    package = "ai-edge-litert"

    def __init__(self, path: Path, threads: int):
        from ai_edge_litert.interpreter import Interpreter

        self.interpreter = Interpreter(model_path=str(path), num_threads=threads)
        with without_info_lines():
            self.interpreter.allocate_tensors()
        self.describe()

    def describe(self) -> None:  # what each call needs, looked up once
        self.input = self.interpreter.get_input_details()[0]
        self.output = self.interpreter.get_output_details()[0]
        self.dtype, self.batch = np.dtype(self.input["dtype"]), self.input["shape"][0]
        self.index, self.out_index = self.input["index"], self.output["index"]
        scale, zero = self.quant = self.input["quantization"]
        self.form = BYTES.get((self.dtype.str, scale, zero))
        out_scale, out_zero = self.output["quantization"]
        integer = np.dtype(self.output["dtype"]).kind in "iu"
        self.dequant = (out_zero, out_scale) if integer else None

    def run(self, pixels: np.ndarray) -> np.ndarray:
        if len(pixels) != self.batch:
            shape = [len(pixels), *self.input["shape"][1:]]  # NHWC or NCHW, as the file takes
            self.interpreter.resize_tensor_input(self.index, shape)
            self.interpreter.allocate_tensors()
            self.describe()
        if self.form and pixels.dtype == np.uint8:  # as harness: the bytes, or less 128
            x = pixels if self.form == "raw" else (pixels - np.uint8(128)).view(np.int8)
        else:  # int8 models: q = round(pixel / scale) + zero point
            (scale, zero), x = self.quant, pixels.astype(np.float32)
            info = np.iinfo(self.dtype) if self.dtype.kind in "iu" else None
            x = np.clip(np.round(x / scale + zero), info.min, info.max) if info else x
        self.interpreter.set_tensor(self.index, x.astype(self.dtype, copy=False))
        self.interpreter.invoke()
        out = self.interpreter.get_tensor(self.out_index)
        if self.dequant:
            out = (out.astype(np.float32) - self.dequant[0]) * self.dequant[1]
        return out.astype(np.float32, copy=False)


@contextmanager
def without_info_lines(drop: tuple[str, ...] = ("INFO: ",)):
    """Drop the lines starting with ``drop`` that C++ writes to fd 2 inside the block (LiteRT's
    "INFO: Created TensorFlow Lite XNNPACK delegate", say); pass on every other line."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as caught:
        os.dup2(caught.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            caught.seek(0)
            for line in caught.read().decode(errors="replace").splitlines():
                if not line.startswith(drop):
                    print(line, file=sys.stderr)


class Onnx:
    package = "onnxruntime"

    def __init__(self, path: Path, threads: int):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.name = self.session.get_inputs()[0].name
        self.dtype = np.dtype(np.float32)

    def run(self, pixels: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.name: pixels.astype(np.float32)})[0]


def open_model(bundle: Path, manifest: dict, threads: int):
    """The bundle's model through its runtime; a missing runtime is a one-line Failure."""
    path = bundle / manifest["model"]["file"]
    kind = {".tflite": LiteRT, ".onnx": Onnx}.get(path.suffix)
    if kind is None:
        raise Failure(f"{path.name}: not a .tflite or .onnx model")
    try:
        model = kind(path, threads)
    except ImportError as e:
        raise Failure(
            f"{kind.package} is not installed ({e}); pip install -r {bundle / 'requirements.txt'}"
        ) from None
    except Exception as e:  # the runtimes' own error types (onnxruntime's Fail, ...): one line
        raise Failure(f"{path.name}: the runtime cannot load it: {one_line(e)}") from None
    note_version(manifest)
    return model


def predict(model, pixels: np.ndarray, contract: dict | None = None) -> np.ndarray:
    """Probabilities (N, classes) for uint8 pixels (N, 32, 32, 3), BATCH images a call,
    through the manifest's input contract (harness' own models: the pixels as they are)."""
    try:
        return np.concatenate(
            [
                output_probs(model.run(apply_contract(pixels[i : i + BATCH], contract)), contract)
                for i in range(0, len(pixels), BATCH)
            ]
        )
    except Exception as e:
        raise Failure(f"the runtime failed: {one_line(e)}") from None


# --------------------------------------------------------------------------- inputs


class ImageError(ValueError):
    """One image that cannot be classified; the message says why (the caller names it)."""


def read_image(path: Path, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """An image file as RGB uint8 (32, 32, 3); other sizes are resized, with a note.
    ImageError when it is not an image, is damaged, or has more than ``max_pixels`` pixels
    (refused from its header, before it is decoded: a small file can declare a huge
    image). 16-bit greys are scaled to 8 bits; an animated image gives its first frame."""
    from PIL import Image, UnidentifiedImageError

    Image.MAX_IMAGE_PIXELS = None  # the limit is max_pixels, checked below, in one message
    try:
        with Image.open(path) as img:
            width, height = img.size
            if width * height > max_pixels:
                raise ImageError(
                    f"{width}x{height} is {width * height:,} pixels, over the "
                    f"limit of {max_pixels:,} (--max-pixels)"
                )
            rgb = to_rgb(img)
    except ImageError:
        raise
    except UnidentifiedImageError:
        raise ImageError("not an image (Pillow cannot identify it)") from None
    except (OSError, ValueError, SyntaxError, EOFError) as e:  # truncated or damaged data
        raise ImageError(f"damaged or truncated ({one_line(e)})") from None
    if rgb.size != SIZE:
        print(
            f"note: {path} is {rgb.size[0]}x{rgb.size[1]}; resized to 32x32 (bilinear): the "
            f"model only sees 32x32 images, so expect lower accuracy",
            file=sys.stderr,
        )
        rgb = rgb.resize(SIZE, Image.Resampling.BILINEAR)
    return np.asarray(rgb, np.uint8)


def to_rgb(img):
    """8-bit RGB of any image mode Pillow opens (its first frame): 16- and 32-bit greys scaled
    to 8 bits (Pillow's would clip them to white), the rest by Pillow (alpha dropped)."""
    from PIL import Image

    if img.mode.startswith("I;16") or img.mode in ("I", "F"):
        values = np.asarray(img, np.float64)
        top = 65535.0 if img.mode.startswith("I;16") else max(float(values.max()), 1.0)
        img = Image.fromarray(np.clip(values / top * 255 + 0.5, 0, 255).astype(np.uint8), "L")
    return img.convert("RGB")


def read_images(files: list[Path], max_pixels: int = MAX_PIXELS):
    """(pixels (N, 32, 32, 3) of the readable files, their names, {name: why} of the
    others), each unreadable one named on stderr as it is met."""
    pixels, names, errors = [], [], {}
    for f in files:
        try:
            pixels.append(read_image(f, max_pixels))
            names.append(str(f))
        except ImageError as e:
            errors[str(f)] = str(e)
            print(f"{f}: {e}", file=sys.stderr)
    x = np.stack(pixels) if pixels else np.zeros((0, *SIZE, 3), np.uint8)
    return x, names, errors


def image_files(paths: list[str]) -> list[Path]:
    """The files given and, in place of each folder, its PNG/JPEG files by name."""
    files = []
    for path in map(Path, paths):
        if path.is_dir():
            inside = sorted(
                p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
            )
            if not inside:
                raise UsageError(f"{path}: a folder without PNG or JPEG images")
            files += inside
        elif path.is_file():
            files.append(path)
        else:
            raise UsageError(f"{path}: no such file or folder")
    return files


def read_npz(path: Path) -> tuple[np.ndarray, np.ndarray | None]:
    """Key x: uint8 images (N, 32, 32, 3); key y (optional): their class indices (N,)."""
    try:
        with np.load(path) as data:
            x = data["x"] if "x" in data.files else None
            y = data["y"] if "y" in data.files else None
    except (OSError, ValueError) as e:
        raise UsageError(f"{path}: not a readable .npz file ({one_line(e)})") from None
    if x is None or x.dtype != np.uint8 or x.ndim != 4 or x.shape[1:] != (*SIZE, 3):
        got = "no key x" if x is None else f"x {x.dtype} {x.shape}"
        raise UsageError(f"{path}: expected key x of uint8 images (N, 32, 32, 3), got {got}")
    if y is not None and y.shape != (len(x),):
        raise UsageError(f"{path}: key y has shape {y.shape}, expected ({len(x)},)")
    return x, y


# --------------------------------------------------------------------------- selftest


def check_files(bundle: Path, manifest: dict) -> None:
    """Every file the manifest lists is here with its recorded sha256."""
    for name, facts in manifest["files"].items():
        path = bundle / name
        if not path.is_file():
            raise Failure(f"{name}: listed in manifest.json but missing")
        if sha256(path) != facts["sha256"]:
            raise Failure(f"{name}: sha256 differs from manifest.json (damaged or changed)")


def compare(
    probs: np.ndarray, recorded: np.ndarray, tolerance: float, classes: list[str]
) -> str | None:
    """Why ``probs`` break the recorded ones, or None. A class may differ from the recorded
    one only where the recorded probabilities of the two classes are within ``tolerance``
    (a near tie); every probability must be within ``tolerance`` of the recorded one."""
    got, want = probs.argmax(1), recorded.argmax(1)
    for i in np.flatnonzero(got != want):
        margin = recorded[i, want[i]] - recorded[i, got[i]]
        if margin > tolerance:
            return (
                f"sample {i}: class {classes[got[i]]}, recorded {classes[want[i]]} with a "
                f"margin of {margin:.2e} over it (> tolerance {tolerance:g})"
            )
    diff = np.abs(probs - recorded)
    i, c = np.unravel_index(diff.argmax(), diff.shape)
    if diff[i, c] > tolerance:
        return (
            f"sample {i}: probability of {classes[c]} {probs[i, c]:.6f}, recorded "
            f"{recorded[i, c]:.6f}: off by {diff[i, c]:.2e} (> tolerance {tolerance:g})"
        )
    return None


def selftest(bundle: Path, manifest: dict, model) -> str:
    """Run the shipped samples and check them against the probabilities recorded at export."""
    check_files(bundle, manifest)
    test, classes = manifest["selftest"], manifest["classes"]
    if model.dtype != np.dtype(manifest["input"]["dtype"]):
        raise Failure(
            f"the model takes {model.dtype}, manifest.json says {manifest['input']['dtype']}"
        )
    with np.load(bundle / test["file"]) as data:
        x, y, recorded = data["x"], data["y"], data["probs"]
    probs = predict(model, x, manifest["input"].get("contract"))
    if probs.shape != recorded.shape:
        raise Failure(f"the model answers {probs.shape}, recorded {recorded.shape}")
    problem = compare(probs, recorded, test["tolerance"], classes)
    if problem:
        raise Failure(f"selftest failed: {problem}")
    flips = int((probs.argmax(1) != recorded.argmax(1)).sum())
    return (
        f"selftest ok: {len(x)} samples, {manifest['model']['precision']} "
        f"{manifest['runtime']['name']}: max |p - recorded| "
        f"{np.abs(probs - recorded).max():.2e} <= {test['tolerance']:g}, "
        f"{flips} class changes in near ties; accuracy {np.mean(probs.argmax(1) == y):.4f} "
        f"(recorded {test['accuracy']:.4f})"
    )


def bench_here(args: argparse.Namespace, manifest: dict) -> str:
    """--bench: device_bench.py (beside this file) times the model; its record goes to --out."""
    import importlib.util

    if not (HERE / "device_bench.py").is_file():
        raise Failure("no device_bench.py beside predict.py: make the bundle again")
    spec = importlib.util.spec_from_file_location("device_bench", HERE / "device_bench.py")
    device_bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(device_bench)
    check_files(HERE, manifest)
    model, contract = open_model(HERE, manifest, args.threads), manifest["input"].get("contract")
    with np.load(HERE / manifest["selftest"]["file"]) as data:
        samples, recorded = (data["x"], data["y"]), data["probs"]
    record = device_bench.bench(
        manifest,
        lambda pixels: output_probs(model.run(apply_contract(pixels, contract)), contract),
        samples,
        recorded,
        (args.calls, args.warmup, args.threads),
    )
    device_bench.write(record, Path(args.out))
    return f"{device_bench.summary(record)}\nrecord: {args.out}"


# --------------------------------------------------------------------------- output


def print_rows(
    names: list[str],
    probs: np.ndarray,
    classes: list[str],
    top: int,
    as_json: bool,
    errors: dict[str, str] | None = None,
    order: list[str] | None = None,
) -> None:
    """A table (or JSON lines) of the top classes of each image, in ``order`` (the input's,
    unreadable ones included: as JSON each gets ``{"image", "error"}``; the table leaves
    them to the lines already on stderr)."""
    errors = errors or {}
    best = dict(zip(names, np.argsort(-probs, axis=1, kind="stable")[:, :top]))
    rows = dict(zip(names, probs))
    width = max(len("image"), *(len(n) for n in names)) if names else len("image")
    if not as_json and names:
        print(f"{'image':<{width}}" + "".join(f"  {'class':<11}{'prob':>6}" for _ in range(top)))
    for name in order or names:
        if name in errors:
            if as_json:
                print(json.dumps({"image": name, "error": errors[name]}))
            continue
        p, ranks = rows[name], best[name]
        if as_json:
            top_k = [
                dict(zip(TOP_KEYS, (classes[c], int(c), round(float(p[c]), 6)))) for c in ranks
            ]
            print(json.dumps({"image": name, "top": top_k}))
        else:
            print(f"{name:<{width}}" + "".join(f"  {classes[c]:<11}{p[c]:>6.3f}" for c in ranks))


def print_summary(
    probs: np.ndarray, y: np.ndarray | None, dumped: str | None, as_json: bool
) -> None:
    summary = {"images": len(probs)}
    if dumped:
        summary["probabilities"] = dumped
    if y is not None:
        summary["accuracy"] = round(float(np.mean(probs.argmax(1) == y)), 6)
    if as_json:
        print(json.dumps(summary))
        return
    if dumped:
        print(f"wrote {dumped}: {probs.shape[0]} x {probs.shape[1]} probabilities (float32)")
    if y is not None:
        print(f"accuracy {summary['accuracy']:.4f} on {len(probs)} images")


# --------------------------------------------------------------------------- main


class Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2
        raise UsageError(f"{message} (see --help)")


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = Parser(
        prog="predict.py", description="Classify images with this bundle's model (see README.md)."
    )
    parser.add_argument(
        "images",
        nargs="*",
        help="PNG/JPEG files or folders (every PNG/JPEG in a folder, by name; not its subfolders).",
    )
    parser.add_argument(
        "--npz",
        help="Images from a .npz instead: key x uint8 (N, 32, 32, 3); "
        "with key y (class indices) the accuracy is printed.",
    )
    parser.add_argument(
        "--top", type=int, default=1, help="Classes to print per image (default 1)."
    )
    parser.add_argument("--json", action="store_true", help="JSON lines instead of a table.")
    parser.add_argument(
        "--dump-probs",
        metavar="OUT.npy",
        help="Write every probability "
        "(N, classes) float32, in input order (NaN rows: unreadable images), "
        "and print a summary only.",
    )
    parser.add_argument(
        "--selftest",
        action="store_true",
        help="Check the shipped samples against the probabilities recorded at export.",
    )
    parser.add_argument("--threads", type=int, default=1, help="Runtime threads (default 1).")
    parser.add_argument("--bench", action="store_true", help="Time the model on this device.")
    parser.add_argument("--calls", type=int, default=2000, help="--bench: timed calls.")
    parser.add_argument("--warmup", type=int, default=200, help="--bench: untimed calls first.")
    parser.add_argument("--out", default="device-bench.json", help="--bench: the record.")
    parser.add_argument(
        "--max-pixels",
        type=int,
        default=MAX_PIXELS,
        help=f"Refuse an image of more pixels, from its header (default {MAX_PIXELS:,}).",
    )
    args = parser.parse_args(argv)
    alone = [flag for flag in ("selftest", "bench") if getattr(args, flag)]
    if len(alone) > 1 or (alone and (args.images or args.npz or args.dump_probs)):
        raise UsageError(f"--{alone[0]} takes no images, --npz, --dump-probs or --{alone[-1]}")
    if not alone and bool(args.images) == bool(args.npz):
        raise UsageError("give image files/folders, or --npz FILE, --selftest or --bench")
    if args.calls < 1 or args.warmup < 0:
        raise UsageError("--calls must be at least 1 and --warmup at least 0")
    if args.threads < 1:
        raise UsageError(f"--threads {args.threads}: must be at least 1")
    if args.max_pixels < 1:
        raise UsageError(f"--max-pixels {args.max_pixels}: must be at least 1")
    return args


def run(argv: list[str] | None = None) -> None:
    args = parse(argv)
    manifest = read_manifest(HERE)
    classes = manifest["classes"]
    if not 1 <= args.top <= len(classes):
        raise UsageError(f"--top {args.top}: must be 1 to {len(classes)}")
    if args.selftest:
        print(selftest(HERE, manifest, open_model(HERE, manifest, args.threads)))
        return
    if args.bench:
        print(bench_here(args, manifest))
        return
    if args.npz:
        x, y = read_npz(Path(args.npz))
        names = [f"{args.npz}[{i}]" for i in range(len(x))]
        errors, order = {}, names
    else:
        files = image_files(args.images)
        x, names, errors = read_images(files, args.max_pixels)
        y, order = None, [str(f) for f in files]
    probs = (
        predict(open_model(HERE, manifest, args.threads), x, manifest["input"].get("contract"))
        if len(x)
        else np.zeros((0, len(classes)))
    )
    if args.dump_probs:
        full = np.full((len(order), len(classes)), np.nan, np.float32)  # NaN: unreadable
        full[[order.index(n) for n in names]] = probs
        np.save(args.dump_probs, full)
    else:
        print_rows(names, probs, classes, args.top, args.json, errors, order)
    if args.dump_probs or y is not None:
        print_summary(probs, y, args.dump_probs, args.json)
    if errors:
        raise Failure(
            f"{len(errors)} of {len(order)} images could not be read (named above); "
            f"the other {len(order) - len(errors)} are classified"
        )


def read_manifest(bundle: Path) -> dict:
    try:
        return json.loads((bundle / "manifest.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise Failure(f"{bundle / 'manifest.json'}: unreadable ({one_line(e)})") from None


def note_version(manifest: dict) -> None:
    recorded = manifest["runtime"]
    try:
        here = metadata.version(recorded["package"])
    except metadata.PackageNotFoundError:
        return
    if here != recorded["version"]:
        print(
            f"note: {recorded['package']} {here} here, {recorded['version']} when the bundle "
            f"was made",
            file=sys.stderr,
        )


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def one_line(error: BaseException) -> str:
    return " ".join(str(error).split()) or type(error).__name__


def main(argv: list[str] | None = None) -> int:
    try:
        run(argv)
    except UsageError as e:
        print(f"predict.py: error: {e}", file=sys.stderr)
        return 2
    except Failure as e:
        print(f"predict.py: {e}", file=sys.stderr)
        return 1
    except BrokenPipeError:  # | head
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
