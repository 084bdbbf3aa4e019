"""KerasTuner's internals that harness touches (harness.search.kerastuner.INTERNALS) are
where it expects them: a new KerasTuner that moves one fails here, by name, in a second."""

import importlib

import pytest

from harness.search.kerastuner import INTERNALS


@pytest.mark.parametrize("module,attribute", INTERNALS, ids=lambda v: str(v))
def test_each_kerastuner_internal_is_there(module, attribute):
    found = importlib.import_module(module)
    owner, _, name = attribute.rpartition(".")
    if owner:  # an attribute of a class or of its instances
        cls = getattr(found, owner)
        instance = cls(objective="val_accuracy", max_trials=1) if owner.endswith("Oracle") else None
        assert hasattr(cls, name) or hasattr(instance, name), f"{module}.{attribute} is gone"
    else:
        assert hasattr(found, name), f"{module}.{name} is gone"


def test_no_module_but_the_fence_reaches_into_kerastuner():
    from pathlib import Path

    harness = Path(__file__).resolve().parents[1] / "harness"
    for path in harness.rglob("*.py"):
        if path.name != "kerastuner.py":
            assert "keras_tuner.src" not in path.read_text(), path
