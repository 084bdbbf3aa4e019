"""Tiny CIFAR-10 archives in the exact official format, for tests and smoke runs.

The official batches are Python-2 pickles: strings are BINSTRING opcodes, so keys load as
bytes with ``encoding="bytes"`` and as str with ``encoding="latin1"``, and the image array
is rebuilt through ``numpy.core.multiarray._reconstruct``. Python 3's pickler cannot write
that, so the opcodes are written here by hand, mirroring the official files opcode for
opcode (checked against the real archive with ``pickletools``).
"""

from __future__ import annotations

import io
import itertools
import struct
import tarfile
from pathlib import Path

import numpy as np

from harness.data.cifar import LABEL_NAMES, META, TEST_BATCH, TRAIN_BATCHES


def _str(b: bytes) -> bytes:
    if len(b) < 256:
        return b"U" + bytes([len(b)]) + b  # SHORT_BINSTRING
    return b"T" + struct.pack("<i", len(b)) + b  # BINSTRING


def _int(i: int) -> bytes:
    if 0 <= i < 256:
        return b"K" + bytes([i])  # BININT1
    if 0 <= i < 65536:
        return b"M" + struct.pack("<H", i)  # BININT2
    return b"J" + struct.pack("<i", i)  # BININT


def _list(items: list[bytes]) -> bytes:
    return b"]" + (b"(" + b"".join(items) + b"e" if items else b"")


def _uint8_array(a: np.ndarray) -> bytes:
    dtype = (
        b"cnumpy\ndtype\n"
        + _str(b"u1")
        + b"\x89\x88\x87R"
        + b"("
        + _int(3)
        + _str(b"|")
        + b"NNN"
        + _int(-1)
        + _int(-1)
        + _int(0)
        + b"tb"
    )
    shape = b"".join(_int(d) for d in a.shape) + {1: b"\x85", 2: b"\x86"}[a.ndim]
    return (
        b"cnumpy.core.multiarray\n_reconstruct\n"
        + b"cnumpy\nndarray\n"
        + _int(0)
        + b"\x85"
        + _str(b"b")
        + b"\x87R"
        + b"("
        + _int(1)
        + shape
        + dtype
        + b"\x89"
        + _str(a.tobytes())
        + b"tb"
    )


def py2_pickle(entries: list[tuple[bytes, bytes]]) -> bytes:
    """A protocol-2 dict pickle from already-encoded (key, value) pairs."""
    body = b"".join(_str(k) + v for k, v in entries)
    return b"\x80\x02}(" + body + b"u."


def batch_pickle(
    images: np.ndarray, labels: np.ndarray, label: str, names: list[str] | None = None
) -> bytes:
    """One batch: images uint8 (N, 32, 32, 3) stored as (N, 3072) channel-major rows."""
    rows = np.ascontiguousarray(images.transpose(0, 3, 1, 2).reshape(len(images), -1))
    return rows_pickle(rows, labels, label, names)


def rows_pickle(rows: np.ndarray, labels, label: str, names: list[str] | None = None) -> bytes:
    """A batch pickle of raw uint8 rows, whatever their shape (tests use odd ones); the
    images' file names ``names`` (default img_00000.png, ...)."""
    names = names or [f"img_{i:05d}.png" for i in range(len(rows))]
    names = [_str(n.encode()) for n in names]
    return py2_pickle(
        [
            (b"batch_label", _str(label.encode())),
            (b"labels", _list([_int(int(v)) for v in labels])),
            (b"data", _uint8_array(rows)),
            (b"filenames", _list(names)),
        ]
    )


def meta_pickle(per_batch: int) -> bytes:
    return py2_pickle(
        [
            (b"num_cases_per_batch", _int(per_batch)),
            (b"label_names", _list([_str(n.encode()) for n in LABEL_NAMES])),
            (b"num_vis", _int(3072)),
        ]
    )


# The corners of the cube [40, 215]^3 and the centres of its top and bottom faces: ten
# colours at least 124 apart; the closest two of ten random ones lie 30 to 55 apart.
SPREAD_COLOURS = np.array(
    [*itertools.product((40.0, 215.0), repeat=3), (127.5, 127.5, 40.0), (127.5, 127.5, 215.0)]
)


def make_batches(
    per_batch: int = 100, seed: int = 0, *, noise: float = 40.0, spread: bool = False
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Random but learnable images: each class has its own mean colour, plus noise.

    ``noise`` is the standard deviation of the per-pixel noise (0-255 scale). By default the
    ten class colours are random, and the closest two lie 30 to 55 apart (seeds 0 to 5),
    about the noise on one pixel: a 2 x 32 BatchNorm-ELU net trained for 3 to 6 epochs
    scores 0.76 to 0.87 on the test split (100 per batch; chance is 0.10), often merging
    the closest classes. ``spread=True`` puts the colours at :data:`SPREAD_COLOURS` (in a
    seeded order); with ``noise=20`` the same net trained for 6 epochs (batch 32) scores
    0.90 to 1.00, and confidently enough that int8 quantization keeps its answers, which
    tests of whole workflows need. The defaults draw exactly what they always have.
    """
    rng = np.random.default_rng(seed)
    if spread:
        centres = rng.permutation(SPREAD_COLOURS).reshape(10, 1, 1, 3)
    else:
        centres = rng.uniform(40, 215, size=(10, 1, 1, 3))
    out = {}
    for name in (*TRAIN_BATCHES, TEST_BATCH):
        y = np.arange(per_batch) % 10
        rng.shuffle(y)
        x = centres[y] + rng.normal(0, noise, size=(per_batch, 32, 32, 3))
        out[name] = (np.clip(x, 0, 255).astype(np.uint8), y.astype(np.int64))
    return out


def write_archive(
    path: Path, per_batch: int = 100, seed: int = 0, batches: dict | None = None
) -> Path:
    """Write cifar-10-python.tar.gz-style archive with ``per_batch`` images per batch;
    ``batches`` maps a batch's name to (images, labels) or (images, labels, file names)."""
    batches = batches or make_batches(per_batch, seed)
    files = {
        name: batch_pickle(*value, name)
        if len(value) == 2
        else batch_pickle(value[0], value[1], name, value[2])
        for name, value in batches.items()
    }
    files[META] = meta_pickle(per_batch)
    path = Path(path)
    with tarfile.open(path, "w:gz") as tar:
        for name, blob in files.items():
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))
    return path
