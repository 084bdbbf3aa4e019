"""The pure parts of benchmarks/deploy_arm64.py: agreement figures, pins, cpuinfo, tags.

No qemu, network or dataset: the emulated runs themselves are exercised by running the
script (see its docstring); CI has no qemu.
"""

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "deploy_arm64.py"


@pytest.fixture(scope="module")
def arm64():
    spec = importlib.util.spec_from_file_location("deploy_arm64", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def reference():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(2000, 10))
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    return probs.astype(np.float32)


def test_identical_probabilities_agree_fully_and_pass(arm64, reference):
    labels = reference.argmax(1)
    figures = arm64.compare_probs(reference.copy(), reference, labels)
    assert figures["argmax_agreement"] == 1.0 and figures["disagreements"] == 0
    assert figures["max_abs_prob_diff"] == 0.0
    assert figures["accuracy"] == figures["x86_accuracy"] == 1.0
    assert figures["accuracy_delta_points"] == 0 and figures["passed"]


def test_two_flips_in_2000_are_99_9_percent_and_pass_only_within_the_accuracy_target(
    arm64, reference
):
    labels = reference.argmax(1)
    probs = reference.copy()
    # Swap the top two classes of images 0 and 1: both now disagree with x86 and are wrong.
    for i in (0, 1):
        order = np.argsort(probs[i])
        probs[i, [order[-1], order[-2]]] = probs[i, [order[-2], order[-1]]]
    figures = arm64.compare_probs(probs, reference, labels)
    assert figures["disagreements"] == 2
    assert figures["argmax_agreement"] == pytest.approx(0.999)
    assert figures["accuracy_delta_points"] == pytest.approx(-0.1)
    assert figures["passed"]  # both targets are met exactly at their limits
    assert figures["max_abs_prob_diff"] == pytest.approx(float(np.abs(probs - reference).max()))
    worse = probs.copy()
    order = np.argsort(worse[2])
    worse[2, [order[-1], order[-2]]] = worse[2, [order[-2], order[-1]]]
    assert not arm64.compare_probs(worse, reference, labels)["passed"]


def test_flips_that_cancel_in_accuracy_still_fail_the_agreement_target(arm64, reference):
    labels = reference.argmax(1)
    labels[:5] = (labels[:5] + 1) % 10  # x86 is wrong on images 0-4 ...
    probs = reference.copy()
    probs[:5] = np.eye(10)[labels[:5]]  # ... the emulated run right: 5 flips
    probs[5:10] = np.eye(10)[(labels[5:10] + 1) % 10]  # and 5 right ones become wrong
    figures = arm64.compare_probs(probs, reference, labels)
    assert figures["accuracy_delta_points"] == 0
    assert figures["disagreements"] == 10 and not figures["passed"]


def test_without_labels_only_agreement_counts_and_bad_shapes_are_refused(arm64, reference):
    figures = arm64.compare_probs(reference, reference, None)
    assert "accuracy" not in figures and figures["passed"]
    with pytest.raises(ValueError, match="cannot be compared"):
        arm64.compare_probs(reference[:10], reference, None)
    with pytest.raises(ValueError, match="cannot be compared"):
        arm64.compare_probs(reference[:0], reference[:0], None)


def test_requirements_must_be_pinned(arm64):
    text = (
        "# pinned by harness deploy\nnumpy==2.4.6\nPillow == 13.0.0  # images\n"
        "ai_edge_litert==2.3.0 ; python_version >= '3.10'\n\n"
    )
    assert arm64.read_requirements(text) == {
        "numpy": "2.4.6",
        "pillow": "13.0.0",
        "ai-edge-litert": "2.3.0",
    }
    with pytest.raises(ValueError, match="not pinned"):
        arm64.read_requirements("numpy>=2\n")
    key = arm64.requirements_key(arm64.read_requirements(text))
    assert key == arm64.requirements_key(
        {"ai-edge-litert": "2.3.0", "pillow": "13.0.0", "numpy": "2.4.6"}
    )
    assert key != arm64.requirements_key({"numpy": "2.4.6"})


def test_cpuinfo_names_the_board_cpu_once_per_processor(arm64):
    text = arm64.cpuinfo_text("cortex-a76", 3)
    assert text.count("processor\t:") == 3 and text.count("CPU part\t: 0xd0b") == 3
    assert "asimddp" in text and "Raspberry Pi 5" in text
    assert "0xd08" in arm64.cpuinfo_text("cortex-a72", 1)


def test_platform_tags_cover_every_glibc_up_to_the_userland(arm64):
    tags = arm64.manylinux_platforms(36)
    assert tags[0] == "manylinux2014_aarch64"
    assert "manylinux_2_17_aarch64" in tags and tags[-1] == "manylinux_2_36_aarch64"
    assert "manylinux_2_37_aarch64" not in tags


def test_json_lines_become_probabilities_in_class_order(arm64):
    out = (
        '{"image": "a.png", "top": [{"class": "cat", "index": 3, "probability": 0.75}, '
        '{"class": "dog", "index": 5, "probability": 0.25}]}\n'
        "note: not json\n"
        '{"image": "b.png", "top": [{"class": "dog", "index": 5, "probability": 1.0}, '
        '{"class": "cat", "index": 3, "probability": 0.0}]}\n'
    )
    probs = arm64.read_json_lines(out, 10)
    assert probs.shape == (2, 10) and probs.sum() == pytest.approx(2.0)
    assert probs[0, 3] == 0.75 and probs[1].argmax() == 5
    with pytest.raises(ValueError):
        arm64.read_json_lines('{"image": "a.png"}\n', 10)
