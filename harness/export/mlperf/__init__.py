"""MLPerf Tiny's two measurement modes for image classification, beside bench's percentiles.

- accuracy: the 200 test images of MLPerf Tiny's fixed list (``ic01_y_labels.csv``, from
  mlcommons/tiny ``benchmark/evaluation/datasets/ic01/y_labels.csv``, Apache-2.0, see
  LICENSE.md), one image a call, no warm-up: top-1 accuracy. The list names the images by
  their file names in the official archive (``<name>.bin`` for ``<name>.png``), so they
  are found by name: archives that order the test set differently still give the same 200.
- performance: the median throughput of 5 windows of at least ``window_s`` seconds each
  (MLPerf Tiny's runner: 10 s), one image a call; latency = 1 / that median.
"""

from __future__ import annotations

import csv
import time
from pathlib import Path

import numpy as np

ACCURACY_LIST = Path(__file__).with_name("ic01_y_labels.csv")
LIST_ORIGIN = (
    "mlcommons/tiny benchmark/evaluation/datasets/ic01/y_labels.csv (Apache-2.0), commit 1afd2c9"
)
WINDOWS = 5
WINDOW_S = 10.0  # MLPerf Tiny's runner times each window for at least 10 s


class MlperfError(ValueError):
    """The mode cannot run on this data; the message is one line."""


def read_list(path: Path = ACCURACY_LIST) -> list[tuple[str, int]]:
    """(PNG file name, class) of each image of the list, in its order."""
    with open(path, newline="", encoding="utf-8") as f:
        return [(Path(name).stem + ".png", int(label)) for name, _, label in csv.reader(f)]


def accuracy_images(ds, path: Path = ACCURACY_LIST) -> tuple[np.ndarray, np.ndarray]:
    """The list's images and classes from ``ds``'s test set, found by file name;
    MlperfError when the archive lacks names, an image, or agrees on no class."""
    if not ds.test_names:
        raise MlperfError(
            "this dataset has no file names for its test images (a cache made "
            "before harness kept them, or an archive without them): import the "
            "archive again (harness data import PATH)"
        )
    index = {name: i for i, name in enumerate(ds.test_names)}
    wanted = read_list(path)
    missing = [name for name, _ in wanted if name not in index]
    if missing:
        raise MlperfError(
            f"the test set lacks {len(missing)} of the {len(wanted)} images of "
            f"MLPerf Tiny's accuracy list (e.g. {missing[0]}): not CIFAR-10's "
            f"official test images?"
        )
    picks = np.array([index[name] for name, _ in wanted])
    labels = np.array([label for _, label in wanted])
    wrong = np.flatnonzero(ds.y_test[picks] != labels)
    if len(wrong):
        name = wanted[wrong[0]][0]
        raise MlperfError(
            f"{len(wrong)} images of MLPerf Tiny's accuracy list have another "
            f"class in this archive (e.g. {name})"
        )
    return ds.x_test[picks], labels


def accuracy_mode(predict, x: np.ndarray, y: np.ndarray) -> dict:
    """Top-1 accuracy of ``predict`` on the list's images, one image a call, no warm-up."""
    answers = np.array([int(np.argmax(predict(x[i : i + 1])[0])) for i in range(len(x))])
    return {
        "images": int(len(x)),
        "correct": int((answers == y).sum()),
        "accuracy": float(np.mean(answers == y)),
        "warmup": 0,
        "list": LIST_ORIGIN,
    }


def performance_mode(
    predict, image: np.ndarray, window_s: float = WINDOW_S, windows: int = WINDOWS
) -> dict:
    """Median throughput (images/s) of ``windows`` windows, each of whole calls until at
    least ``window_s`` seconds have passed, one image a call; latency = 1 / median."""
    rates = []
    for _ in range(windows):
        calls, start = 0, time.perf_counter()
        while True:
            predict(image)
            calls += 1
            elapsed = time.perf_counter() - start
            if elapsed >= window_s:
                break
        rates.append(calls / elapsed)
    median = float(np.median(rates))
    return {
        "windows": windows,
        "window_s": window_s,
        "throughput_ips": median,
        "latency_us": 1e6 / median,
        "window_ips": [round(r, 3) for r in rates],
    }
