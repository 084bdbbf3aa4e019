import hashlib
import http.server
import io
import os
import pickle
import tarfile
import threading
from pathlib import Path

import numpy as np
import pytest

from harness.data import cifar as data
from harness.data import synthetic
from harness.data.cifar import DataError


def test_synthetic_archive_is_python2_style(archive):
    with tarfile.open(archive) as tar:
        blob = tar.extractfile("cifar-10-batches-py/data_batch_1").read()
    as_bytes = pickle.loads(blob, encoding="bytes")
    as_str = pickle.loads(blob, encoding="latin1")
    assert set(as_bytes) == {b"batch_label", b"labels", b"data", b"filenames"}
    assert set(as_str) == {"batch_label", "labels", "data", "filenames"}
    assert as_bytes[b"data"].dtype == np.uint8 and as_bytes[b"data"].shape == (100, 3072)


def test_round_trip_keeps_images_labels_and_order(archive, batches):
    ds = data.load(archive)
    x_train = np.concatenate([batches[f"data_batch_{i}"][0] for i in range(1, 6)])
    y_train = np.concatenate([batches[f"data_batch_{i}"][1] for i in range(1, 6)])
    assert ds.x_train.dtype == np.uint8 and ds.x_train.shape == (500, 32, 32, 3)
    np.testing.assert_array_equal(ds.x_train, x_train)
    np.testing.assert_array_equal(ds.y_train, y_train)
    np.testing.assert_array_equal(ds.x_test, batches["test_batch"][0])
    np.testing.assert_array_equal(ds.y_test, batches["test_batch"][1])
    assert ds.label_names[0] == "airplane" and len(ds.label_names) == 10
    assert ds.sha256 == hashlib.sha256(Path(archive).read_bytes()).hexdigest()
    assert ds.verified == "content"


def test_channel_layout_matches_official_row_order():
    # Official rows are 1024 red values, then 1024 green, then 1024 blue.
    img = np.zeros((1, 32, 32, 3), np.uint8)
    img[0, 0, 1, 0], img[0, 0, 0, 2] = 7, 9  # red at (row 0, col 1), blue at (0, 0)
    blob = synthetic.batch_pickle(img, np.array([3]), "b")
    row = pickle.loads(blob, encoding="bytes")[b"data"][0]
    assert row[1] == 7 and row[2048] == 9
    x, y = data.parse_batch(pickle.loads(blob, encoding="bytes"), "b")
    np.testing.assert_array_equal(x, img)
    assert y.tolist() == [3]


def test_split_sizes_and_order(archive):
    ds = data.load(archive)
    s = data.split(ds)
    assert (len(s.train), len(s.val), len(s.test)) == (450, 50, 100)
    np.testing.assert_array_equal(s.val.x, ds.x_train[:50])  # validation = the first images
    np.testing.assert_array_equal(s.train.x, ds.x_train[50:])
    # The study's sizes on full-size data: 45,000 / 5,000 / 10,000.
    full = data.Dataset(
        np.zeros((50000, 32, 32, 3), np.uint8),
        np.zeros(50000, np.int64),
        np.zeros((10000, 32, 32, 3), np.uint8),
        np.zeros(10000, np.int64),
        data.LABEL_NAMES,
        "x",
        "x",
        "content",
    )
    s = data.split(full)
    assert (len(s.train), len(s.val), len(s.test)) == (45000, 5000, 10000)


@pytest.mark.parametrize("per_count", [data.PIXELS_PER_COUNT, 1000])
def test_normalization_stats_come_from_train_split_only(monkeypatch, per_count):
    """Exact, whether the histograms count all the pixels at once or slice by slice."""
    monkeypatch.setattr(data, "PIXELS_PER_COUNT", per_count)
    rng = np.random.default_rng(1)
    x = rng.integers(0, 100, size=(100, 32, 32, 3)).astype(np.uint8)
    x[:10] = 255  # the validation images: far brighter than the rest
    t = np.full((10, 32, 32, 3), 200, np.uint8)
    ds = data.Dataset(
        x, np.zeros(100, np.int64), t, np.zeros(10, np.int64), data.LABEL_NAMES, "x", "x", "content"
    )
    mean, var = data.split(ds).norm_stats()
    train = x[10:].reshape(-1, 3).astype(np.float64)
    np.testing.assert_allclose(mean, train.mean(0), rtol=1e-6)
    np.testing.assert_allclose(var, train.var(0), rtol=1e-6)
    assert mean.max() < 100


class _Evil:
    def __reduce__(self):
        return (os.system, ("touch pwned-by-pickle",))


def _tar_with(tmp_path: Path, members: dict[str, bytes], name="bad.tar.gz") -> Path:
    path = tmp_path / name
    with tarfile.open(path, "w:gz") as tar:
        for member, blob in members.items():
            info = tarfile.TarInfo(member)
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))
    return path


def _official_members(batches) -> dict[str, bytes]:
    return {
        f"cifar-10-batches-py/{n}": synthetic.batch_pickle(x, y, n) for n, (x, y) in batches.items()
    }


def test_malicious_pickle_is_refused(tmp_path, batches, monkeypatch):
    monkeypatch.chdir(tmp_path)
    members = _official_members(batches)
    members["cifar-10-batches-py/data_batch_3"] = pickle.dumps({"data": _Evil()}, protocol=2)
    path = _tar_with(tmp_path, members)
    with pytest.raises(DataError, match=r"data_batch_3.*refused global posix.system"):
        data.import_data(path)
    assert not (tmp_path / "pwned-by-pickle").exists()
    assert not data.cache_path().exists()


def test_pickle_with_object_dtype_is_refused():
    blob = pickle.dumps({b"data": np.array([1, "a"], dtype=object)}, protocol=2)
    with pytest.raises(DataError, match="unsafe or corrupt"):
        data.safe_unpickle(blob, "x")


@pytest.mark.parametrize("member", ["../escape", "/etc/evil", "cifar-10-batches-py/../../x"])
def test_traversal_tar_is_refused(tmp_path, batches, member):
    members = _official_members(batches)
    members[member] = b"boo"
    with pytest.raises(DataError, match="path escapes the archive"):
        data.import_data(_tar_with(tmp_path, members))
    assert not data.cache_path().exists()


def test_link_member_is_refused(tmp_path):
    path = tmp_path / "link.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        info = tarfile.TarInfo("cifar-10-batches-py/test_batch")
        info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tar.addfile(info)
    with pytest.raises(DataError, match="links are not allowed"):
        data.import_data(path)


def test_absurd_member_size_is_refused(tmp_path, monkeypatch, batches):
    monkeypatch.setattr(data, "MAX_MEMBER_BYTES", 1000)
    with pytest.raises(DataError, match="absurd size"):
        data.import_data(_tar_with(tmp_path, _official_members(batches)))


def test_truncated_archive_errors_and_leaves_no_cache(tmp_path, archive):
    cut = tmp_path / "cut.tar.gz"
    blob = Path(archive).read_bytes()
    cut.write_bytes(blob[: len(blob) // 2])
    with pytest.raises(DataError, match=r"cut.tar.gz: truncated or corrupt archive"):
        data.import_data(cut)
    home = data.harness_home()
    assert not data.cache_path().exists()
    assert not home.exists() or list(home.iterdir()) == []


def test_wrong_shapes_are_named(tmp_path, batches):
    members = _official_members(batches)
    members["cifar-10-batches-py/data_batch_2"] = synthetic.rows_pickle(
        np.zeros((100, 100), np.uint8), [0] * 100, "b"
    )
    with pytest.raises(DataError, match=r"data_batch_2: data is uint8 \(100, 100\)"):
        data.import_data(_tar_with(tmp_path, members))


def test_missing_batch_and_missing_file(tmp_path, batches):
    members = _official_members(batches)
    del members["cifar-10-batches-py/test_batch"]
    with pytest.raises(DataError, match="missing test_batch"):
        data.import_data(_tar_with(tmp_path, members))
    with pytest.raises(DataError, match="no such file"):
        data.load(tmp_path / "nope.tar.gz")


def test_labels_out_of_range(tmp_path, batches):
    x, y = batches["data_batch_1"]
    members = _official_members(batches)
    members["cifar-10-batches-py/data_batch_1"] = synthetic.batch_pickle(x, y + 5, "b")
    with pytest.raises(DataError, match="labels outside 0-9"):
        data.import_data(_tar_with(tmp_path, members))


def test_official_checksum_is_verified_without_warning(archive, monkeypatch, caplog):
    sha = hashlib.sha256(Path(archive).read_bytes()).hexdigest()
    monkeypatch.setattr(data, "OFFICIAL_SHA256", sha)
    assert data.import_data(archive).verified == "checksum"
    assert "not the official" not in caplog.text


def test_cached_dataset_is_reused_without_reparsing(archive, monkeypatch):
    first = data.load(archive)
    monkeypatch.setattr(data, "read_archive", lambda p: pytest.fail("parsed twice"))
    again = data.load(archive)
    np.testing.assert_array_equal(first.x_test, again.x_test)
    assert data.load().sha256 == first.sha256  # no archive given: the cache answers


def test_extracted_folder_imports_the_same_arrays(tmp_path, archive):
    with tarfile.open(archive) as tar:
        tar.extractall(tmp_path / "x", filter="data")
    from_folder = data.import_data(tmp_path / "x")
    from_archive = data.read_archive(archive)
    np.testing.assert_array_equal(from_folder.x_train, from_archive[0])
    assert from_folder.sha256 == data.sha256_of(tmp_path / "x" / "cifar-10-batches-py")


@pytest.fixture
def http_server(archive):
    handler = lambda *a, **k: http.server.SimpleHTTPRequestHandler(
        *a, directory=str(Path(archive).parent), **k
    )
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/{Path(archive).name}"
    server.shutdown()


def test_download_verifies_and_renames(http_server, archive):
    sha = hashlib.sha256(Path(archive).read_bytes()).hexdigest()
    path = data.download(url=http_server, sha256=sha)
    assert path.read_bytes() == Path(archive).read_bytes()
    assert not list(path.parent.glob("*.part"))


def test_download_with_wrong_checksum_keeps_nothing(http_server):
    with pytest.raises(DataError, match="expected 0000"):
        data.download(url=http_server, sha256="0000")
    assert list(data.harness_home().iterdir()) == []


def test_download_failure_suggests_offline_path():
    with pytest.raises(DataError, match="--archive"):
        data.download(url="http://127.0.0.1:9/none.tar.gz")
