"""CIFAR-10: download, import, validate, cache and split.

The official "python version" archive holds six Python-2 pickles of 10,000 images each.
Pickles can run arbitrary code, so they are read with a restricted unpickler that admits
only what those batches hold (numpy array reconstruction, dtype, dict, list, bytes/str,
int); tar members are read in memory, never extracted, and refused when unsafe.

A validated dataset is cached once as ``$HARNESS_HOME/cifar10.npz`` (plain arrays, no
pickle), together with the sha256 of the archive it came from, so later commands load it
in a fraction of a second and every run can record which data it saw. Processes that start
together on an empty cache (tuning workers, compose replicas sharing a volume) take turns
through a lock: one downloads and imports, the others wait and then read its cache.

Splits follow the study: validation = the first 10% of the training images (5,000 of
50,000), train = the rest (45,000), test = the test batch (10,000).
"""

from __future__ import annotations

import fcntl
import hashlib
import io
import logging
import os
import pickle
import sys
import tarfile
import tempfile
import urllib.error
import urllib.request
import zlib
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from harness.core.records import _UMASK, atomic_write_bytes

log = logging.getLogger("harness")

OFFICIAL_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
OFFICIAL_SHA256 = "6d958be074577803d12ecdefd02955f39262c83c16fe9348329d7fe0b5c001ce"
# A mirror of the archive (or, in tests, a local server), and its sha256; read at each call.
URL_ENV, SHA256_ENV = "HARNESS_CIFAR_URL", "HARNESS_CIFAR_SHA256"
ARCHIVE_NAME = "cifar-10-python.tar.gz"
CACHE_NAME = "cifar10.npz"
LOCK_NAME = ".cifar10.lock"
TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_BATCH = "test_batch"
META = "batches.meta"
LABEL_NAMES = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)
IMAGES_PER_BATCH = 10_000
PIXELS = 32 * 32 * 3
VALIDATION_FRACTION = 0.1  # 5,000 of the 50,000 training images, as in the study
PIXELS_PER_COUNT = 1 << 18  # norm_stats' histograms: pixels counted per slice (2 MB copies)

# An official batch is 31 MB; anything far beyond that is not CIFAR-10.
MAX_MEMBER_BYTES = 64 * 2**20
MAX_MEMBERS = 64


class DataError(Exception):
    """Bad or missing data. The message names the file and the problem in one line."""


# --------------------------------------------------------------------------- safe unpickling


def _numpy_reconstruct():
    try:
        from numpy._core.multiarray import _reconstruct  # numpy >= 2
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core.multiarray import _reconstruct
    return _reconstruct


def _plain_dtype(*args):
    dtype = np.dtype(*args)
    if dtype.hasobject:
        raise pickle.UnpicklingError("object dtype is not allowed")
    return dtype


_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"): _numpy_reconstruct(),
    ("numpy._core.multiarray", "_reconstruct"): _numpy_reconstruct(),
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): _plain_dtype,
}


class RestrictedUnpickler(pickle.Unpickler):
    """Admits only the globals an official CIFAR-10 batch references."""

    def find_class(self, module, name):
        try:
            return _ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"refused global {module}.{name}") from None

    def persistent_load(self, pid):
        raise pickle.UnpicklingError("refused persistent id")


def safe_unpickle(data: bytes, where: str):
    """Unpickle a Python-2 pickle (keys as bytes) with the restricted unpickler."""
    try:
        return RestrictedUnpickler(io.BytesIO(data), encoding="bytes").load()
    except pickle.UnpicklingError as e:
        raise DataError(f"{where}: unsafe or corrupt pickle ({e})") from None
    except Exception as e:  # truncated or garbled pickles raise many kinds of errors
        raise DataError(f"{where}: corrupt pickle ({type(e).__name__}: {e})") from None


# --------------------------------------------------------------------------- the dataset


@dataclass
class Dataset:
    """CIFAR-10 as arrays: images uint8 (N, 32, 32, 3), labels int64 (N,)."""

    x_train: np.ndarray  # the full 50,000 training images, in archive order
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    label_names: tuple[str, ...]
    sha256: str  # of the archive (or of the batch files, for an imported folder)
    source: str  # where it was imported from
    verified: str  # "checksum" (official sha256) or "content" (validated by content)
    # The test images' file names as the archive carries them (MLPerf Tiny names its
    # 200-image accuracy list by them); () when the archive has none, None for a cache
    # written before they were kept (such a cache is imported again).
    test_names: tuple[str, ...] | None = None

    @property
    def record(self) -> dict:
        """What a run records about its data."""
        # the archive's file name only: an absolute path means nothing on another machine
        return {
            "sha256": self.sha256,
            "source": Path(self.source).name,
            "verified": self.verified,
            "train_images": int(len(self.x_train)),
            "test_images": int(len(self.x_test)),
        }


@dataclass
class Split:
    x: np.ndarray
    y: np.ndarray

    def __len__(self) -> int:
        return len(self.y)


@dataclass
class Splits:
    train: Split
    val: Split
    test: Split

    def norm_stats(self) -> tuple[np.ndarray, np.ndarray]:
        """Per-channel mean and variance of the TRAIN split only (0-255 scale).

        Uint8 pixels take 256 values, so each channel's histogram gives both exactly, in a
        fraction of the time and none of the memory of a float64 copy of the images. The
        histograms are counted a slice of pixels at a time: ``np.bincount`` copies its input
        to 8-byte integers, and a copy of all the pixels at once is hundreds of megabytes of
        fresh memory each call."""
        x = self.train.x.reshape(-1, 3)
        counts = np.zeros((3, 256), np.int64)
        for start in range(0, len(x), PIXELS_PER_COUNT):
            part = x[start : start + PIXELS_PER_COUNT]
            for c in range(3):
                counts[c] += np.bincount(part[:, c], minlength=256)
        values = np.arange(256, dtype=np.float64)
        total = counts.sum(axis=1)
        mean = counts @ values / total
        variance = (counts * (values - mean[:, None]) ** 2).sum(axis=1) / total
        return mean.astype(np.float32), variance.astype(np.float32)

    def principal_components(self, k: int, pool: int = 1) -> np.ndarray:
        """(3072 / pool ** 2, k): the top-``k`` principal directions of the TRAIN split's
        flattened images, standardized per channel as the models' first layer does and
        averaged over pool x pool blocks as their pooling layer does; largest first."""
        mean, variance = self.norm_stats()
        x = (self.train.x.reshape(len(self.train), -1, 3) - mean) / np.sqrt(variance)
        x = x.astype(np.float32).reshape(len(self.train), 32, 32, 3)
        if pool > 1:
            side = 32 // pool
            x = x.reshape(len(x), side, pool, side, pool, 3).mean(axis=(2, 4))
        x = x.reshape(len(self.train), -1)
        x -= x.mean(axis=0)
        count, width = x.shape
        if count >= width:
            values, vectors = np.linalg.eigh((x.T @ x).astype(np.float64) / count)
            return vectors[:, ::-1][:, :k].astype(np.float32)
        # Fewer images than pixels: the images' own SVD is far cheaper than the pixels'
        # covariance, and past its directions any orthonormal rest carries no variance.
        vectors = np.linalg.svd(x.astype(np.float64), full_matrices=False)[2].T
        if k > count:
            rest = np.random.default_rng(0).normal(size=(width, k - count))
            vectors = np.linalg.qr(np.concatenate([vectors, rest], axis=1))[0]
        return vectors[:, :k].astype(np.float32)


def split(ds: Dataset, val_fraction: float = VALIDATION_FRACTION) -> Splits:
    """Validation = the first ``val_fraction`` of the training images, train = the rest."""
    n_val = int(round(len(ds.x_train) * val_fraction))
    return Splits(
        train=Split(ds.x_train[n_val:], ds.y_train[n_val:]),
        val=Split(ds.x_train[:n_val], ds.y_train[:n_val]),
        test=Split(ds.x_test, ds.y_test),
    )


def batch_names(obj, count: int) -> tuple[str, ...] | None:
    """The file names an unpickled batch carries (``filenames``), or None when it has none
    (or not one per image)."""
    raw = obj.get(b"filenames") if isinstance(obj, dict) else None
    if not isinstance(raw, list) or len(raw) != count:
        return None
    if not all(isinstance(v, (bytes, str)) for v in raw):
        return None
    return tuple(v.decode("latin1") if isinstance(v, bytes) else v for v in raw)


def parse_batch(obj, where: str) -> tuple[np.ndarray, np.ndarray]:
    """Check one unpickled batch and return (images (N,32,32,3) uint8, labels (N,) int64)."""
    if not isinstance(obj, dict):
        raise DataError(f"{where}: expected a dict, found {type(obj).__name__}")
    data, labels = obj.get(b"data"), obj.get(b"labels")
    if not isinstance(data, np.ndarray) or labels is None:
        raise DataError(f"{where}: missing 'data' array or 'labels' list")
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != PIXELS:
        raise DataError(f"{where}: data is {data.dtype} {data.shape}, expected uint8 (N, {PIXELS})")
    if not isinstance(labels, list) or not all(type(v) is int for v in labels):
        raise DataError(f"{where}: labels must be a list of ints")
    y = np.asarray(labels, dtype=np.int64)
    if len(y) != len(data):
        raise DataError(f"{where}: {len(data)} images but {len(y)} labels")
    if len(y) and (y.min() < 0 or y.max() > 9):
        raise DataError(f"{where}: labels outside 0-9 (min {y.min()}, max {y.max()})")
    x = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return np.ascontiguousarray(x), y


def _assemble(blobs: dict[str, bytes], origin: str) -> tuple[np.ndarray, ...]:
    missing = [n for n in (*TRAIN_BATCHES, TEST_BATCH) if n not in blobs]
    if missing:
        raise DataError(f"{origin}: missing {', '.join(missing)}")
    pickles = {n: safe_unpickle(blobs[n], f"{origin}:{n}") for n in (*TRAIN_BATCHES, TEST_BATCH)}
    parts = [parse_batch(pickles[n], f"{origin}:{n}") for n in (*TRAIN_BATCHES, TEST_BATCH)]
    sizes = {len(y) for _, y in parts}
    if len(sizes) != 1 or 0 in sizes:
        raise DataError(f"{origin}: batches differ in size or are empty ({sorted(sizes)})")
    if sizes != {IMAGES_PER_BATCH}:
        log.warning(
            "%s holds %d images per batch, not %d: this is not the full CIFAR-10",
            origin,
            sizes.pop(),
            IMAGES_PER_BATCH,
        )
    x_train = np.concatenate([x for x, _ in parts[:5]])
    y_train = np.concatenate([y for _, y in parts[:5]])
    names = LABEL_NAMES
    if META in blobs:
        meta = safe_unpickle(blobs[META], f"{origin}:{META}")
        raw = meta.get(b"label_names") if isinstance(meta, dict) else None
        if isinstance(raw, list) and len(raw) == 10:
            names = tuple(v.decode("latin1") if isinstance(v, bytes) else str(v) for v in raw)
    test_names = batch_names(pickles[TEST_BATCH], len(parts[5][1])) or ()
    return x_train, y_train, parts[5][0], parts[5][1], names, test_names


def _check_member(m: tarfile.TarInfo, origin: str) -> None:
    name = m.name
    if name.startswith(("/", "\\")) or ".." in Path(name).parts:
        raise DataError(f"{origin}: refused member {name!r}: path escapes the archive")
    if m.issym() or m.islnk():
        raise DataError(f"{origin}: refused member {name!r}: links are not allowed")
    if not (m.isfile() or m.isdir()):
        raise DataError(f"{origin}: refused member {name!r}: not a regular file")
    if m.size > MAX_MEMBER_BYTES:
        raise DataError(f"{origin}: refused member {name!r}: absurd size ({m.size} bytes)")


def read_archive(path: Path) -> tuple[np.ndarray, ...]:
    """Read and validate a cifar-10-python.tar.gz without extracting it."""
    wanted = {*TRAIN_BATCHES, TEST_BATCH, META}
    blobs: dict[str, bytes] = {}
    try:
        with tarfile.open(path, "r:*") as tar:
            for i, m in enumerate(tar):
                if i >= MAX_MEMBERS:
                    raise DataError(f"{path}: too many members for a CIFAR-10 archive")
                _check_member(m, str(path))
                base = Path(m.name).name
                if m.isfile() and base in wanted:
                    if base in blobs:
                        raise DataError(f"{path}: member {base} appears twice")
                    blobs[base] = tar.extractfile(m).read()
    except DataError:
        raise
    except (tarfile.TarError, EOFError, zlib.error, OSError) as e:
        raise DataError(f"{path}: truncated or corrupt archive ({type(e).__name__}: {e})") from None
    return _assemble(blobs, str(path))


def _batch_folder(path: Path) -> Path:
    for candidate in (path, path / "cifar-10-batches-py"):
        if (candidate / TEST_BATCH).is_file():
            return candidate
    raise DataError(f"{path}: no {TEST_BATCH} here or in cifar-10-batches-py/")


def read_folder(path: Path) -> tuple[np.ndarray, ...]:
    """Read and validate an extracted cifar-10-batches-py folder."""
    folder = _batch_folder(path)
    blobs = {}
    for name in (*TRAIN_BATCHES, TEST_BATCH, META):
        f = folder / name
        if f.is_symlink():
            raise DataError(f"{f}: refused: links are not allowed")
        if f.is_file():
            if f.stat().st_size > MAX_MEMBER_BYTES:
                raise DataError(f"{f}: refused: absurd size ({f.stat().st_size} bytes)")
            blobs[name] = f.read_bytes()
    return _assemble(blobs, str(folder))


def sha256_of(path: Path) -> str:
    """sha256 of an archive file; for a folder, of its batch files in a fixed order."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such file or folder")
    if path.is_dir():
        h = hashlib.sha256()
        folder = _batch_folder(path)
        for name in (*TRAIN_BATCHES, TEST_BATCH, META):
            f = folder / name
            if f.is_file():
                h.update(name.encode() + b"\0" + hashlib.sha256(f.read_bytes()).digest())
        return h.hexdigest()
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


# --------------------------------------------------------------------------- cache


def harness_home(home: Path | None = None) -> Path:
    return Path(home or os.environ.get("HARNESS_HOME") or Path.home() / ".cache" / "harness")


def cache_path(home: Path | None = None) -> Path:
    return harness_home(home) / CACHE_NAME


@contextmanager
def cache_lock(home: Path | None = None):
    """Hold the cache folder's lock: one process at a time downloads or imports.

    fcntl.flock because it is in the standard library and the kernel drops it when its
    holder dies (no stale lock to clear), also across containers sharing the volume. The
    lock file is removed by its holder, so the folder holds only the data; a waiter that
    wakes on a removed file locks the new one instead.
    """
    folder = harness_home(home)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK_NAME
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                print(f"waiting for another process to fill the cache in {folder}", file=sys.stderr)
                fcntl.flock(fd, fcntl.LOCK_EX)
            if os.fstat(fd).st_ino == os.stat(path).st_ino:
                break
        except FileNotFoundError:  # removed by the holder we waited for
            pass
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)
    try:
        _remove_leftovers(folder)
        yield
    finally:
        path.unlink(missing_ok=True)  # still held: no one else can have locked this file
        os.close(fd)


def _remove_leftovers(folder: Path) -> None:
    """Partial files of a process killed while it held the lock (none is writing now)."""
    for pattern in (f".{ARCHIVE_NAME}.*.part", f"{ARCHIVE_NAME}.part", f".{CACHE_NAME}.*.tmp"):
        for stale in folder.glob(pattern):
            stale.unlink(missing_ok=True)


def _write_cache(ds: Dataset, home: Path | None) -> Path:
    buf = io.BytesIO()
    np.savez(
        buf,
        x_train=ds.x_train,
        y_train=ds.y_train,
        x_test=ds.x_test,
        y_test=ds.y_test,
        label_names=np.array(ds.label_names),
        sha256=np.array(ds.sha256),
        source=np.array(ds.source),
        verified=np.array(ds.verified),
        test_names=np.array(ds.test_names or (), dtype=str),
    )
    target = cache_path(home)
    atomic_write_bytes(target, buf.getvalue())
    return target


def read_cache(home: Path | None = None) -> Dataset | None:
    path = cache_path(home)
    if not path.exists():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            return Dataset(
                z["x_train"],
                z["y_train"],
                z["x_test"],
                z["y_test"],
                tuple(str(s) for s in z["label_names"]),
                str(z["sha256"]),
                str(z["source"]),
                str(z["verified"]),
                tuple(str(s) for s in z["test_names"]) if "test_names" in z.files else None,
            )
    except Exception as e:
        raise DataError(
            f"{path}: unreadable cache ({type(e).__name__}: {e}); "
            "delete it and import the data again"
        ) from None


def _cached_with(sha256: str, home: Path | None) -> Dataset | None:
    """The cached dataset if it came from an archive with this sha256 (an unreadable cache
    counts as none: it is about to be replaced)."""
    try:
        cached = read_cache(home)
    except DataError:
        return None
    fresh = cached is not None and cached.sha256 == sha256 and cached.test_names is not None
    return cached if fresh else None


def import_data(path: Path, home: Path | None = None, sha256: str | None = None) -> Dataset:
    """Validate an archive or extracted folder and cache it. Nothing is cached on error.

    Under the cache's lock; when the cache already holds this archive (another process
    imported it while this one waited), that cache is returned as it is."""
    path = Path(path).expanduser()
    if not path.exists():
        raise DataError(f"{path}: no such file or folder")
    sha256 = sha256 or sha256_of(path)
    with cache_lock(home):
        return _cached_with(sha256, home) or _import_locked(path, home, sha256)


def _import_locked(path: Path, home: Path | None, sha256: str) -> Dataset:
    arrays = read_folder(path) if path.is_dir() else read_archive(path)
    if sha256 == OFFICIAL_SHA256:
        verified = "checksum"
    else:
        verified = "content"
        log.warning(
            "%s: sha256 %s is not the official archive's; validated by content instead",
            path,
            sha256[:16],
        )
    x_train, y_train, x_test, y_test, names, test_names = arrays
    ds = Dataset(
        x_train,
        y_train,
        x_test,
        y_test,
        names,
        sha256=sha256,
        source=str(path.resolve()),
        verified=verified,
        test_names=test_names,
    )
    _write_cache(ds, home)
    return ds


def download(home: Path | None = None, url: str | None = None, sha256: str | None = None) -> Path:
    """Download the archive into the cache folder, under the cache's lock: a temporary file
    of its own, verified, then renamed. ``url`` and ``sha256`` default to $HARNESS_CIFAR_URL
    and $HARNESS_CIFAR_SHA256, else the official ones. An archive already there and
    verified (downloaded while this process waited) is not fetched again."""
    with cache_lock(home):
        return _download_locked(home, url, sha256)


def _download_locked(home: Path | None, url: str | None, sha256: str | None) -> Path:
    import click  # only for the progress bar

    url = url or os.environ.get(URL_ENV) or OFFICIAL_URL
    sha256 = sha256 or os.environ.get(SHA256_ENV) or OFFICIAL_SHA256
    target = harness_home(home) / ARCHIVE_NAME
    if target.exists() and sha256_of(target) == sha256:
        return target
    fd, name = tempfile.mkstemp(dir=target.parent, prefix=f".{ARCHIVE_NAME}.", suffix=".part")
    part = Path(name)
    try:
        with urllib.request.urlopen(url, timeout=60) as resp, os.fdopen(fd, "wb") as out:
            total = int(resp.headers.get("Content-Length") or 0)
            chunks = iter(lambda: resp.read(1 << 20), b"")  # the bar counts 1 MiB chunks
            with click.progressbar(
                chunks,
                length=-(-total // (1 << 20)) or None,
                label="Downloading CIFAR-10 (MiB)",
                file=sys.stderr,
            ) as bar:
                for chunk in bar:
                    out.write(chunk)
        got = sha256_of(part)
        if got != sha256:
            raise DataError(f"{url}: downloaded file has sha256 {got}, expected {sha256}")
        os.chmod(part, 0o666 & ~_UMASK)  # mkstemp makes 0600: the usual permissions
        os.replace(part, target)
    except (urllib.error.URLError, OSError, TimeoutError) as e:
        raise DataError(
            f"{url}: download failed ({e}); on a machine without internet, "
            "use --archive PATH or `harness data import PATH`"
        ) from None
    finally:
        part.unlink(missing_ok=True)
    return target


def load(archive: Path | None = None, home: Path | None = None) -> Dataset:
    """The dataset, from (in order) ``archive`` or $HARNESS_ARCHIVE, the cache, a download.

    A given archive is checked against the cache by sha256 and imported when it differs.
    Without a cache, the first process downloads and imports under the cache's lock, and
    processes that waited for it read its cache.
    """
    archive = archive or os.environ.get("HARNESS_ARCHIVE") or None
    if archive:
        sha = sha256_of(Path(archive).expanduser())
        cached = read_cache(home)
        if cached is not None and cached.sha256 == sha and cached.test_names is not None:
            return cached
        return import_data(Path(archive), home, sha256=sha)
    cached = read_cache(home)
    if cached is not None:
        return cached
    with cache_lock(home):
        cached = read_cache(home)  # made while this process waited for the lock?
        if cached is not None:
            return cached
        archive_path = _download_locked(home, None, None)
        return _import_locked(archive_path, home, sha256_of(archive_path))


def class_counts(ds: Dataset) -> dict[str, dict[str, int]]:
    """Images per class per split, for ``harness data info``."""
    s = split(ds)
    return {
        name: {ds.label_names[c]: int((part.y == c).sum()) for c in range(10)}
        for name, part in (("train", s.train), ("val", s.val), ("test", s.test))
    }
