"""The saved model is the best epoch's, also when a later epoch is worse.

In the other tests' short runs validation improves every epoch, so the best epoch is the
last one and a checkpoint that kept the last model passed them all (issue 20's mutation
check: save_best_only=False survived). Here the last epoch is ruined on purpose.
"""

import csv

import keras
import numpy as np
import pytest

from harness.core.config import resolve
from harness.core.records import RunDir
from harness.data import cifar as data
from harness.train.fit import train

EPOCHS = 3


class _RuinLastEpoch(keras.callbacks.Callback):
    """Zeroes every trainable weight after each training step of the last epoch, so that epoch ends
    with a model that answers 1/10 for every class (validation loss ln 10), and records
    the model's weights at each epoch's end."""

    def __init__(self):
        super().__init__()
        self.epoch, self.at_end = 0, []

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        if self.epoch == EPOCHS - 1:
            for w in self.model.trainable_weights:
                w.assign(np.zeros(w.shape, w.dtype))

    def on_epoch_end(self, epoch, logs=None):
        self.at_end.append([np.array(w) for w in self.model.get_weights()])


def test_the_saved_model_is_the_best_epoch_not_the_last(tmp_path, archive):
    ds = data.load(archive)
    cfg = resolve(
        "selu", overrides=dict(layers=2, units=32, batch_size=64, epochs=EPOCHS, name="ruined")
    )
    ruin = _RuinLastEpoch()
    metrics = train(cfg, ds, tmp_path, verbose=0, extra_callbacks=[ruin])
    run = RunDir.named(tmp_path, "ruined")
    with open(run.history) as f:
        val_loss = [float(r["val_loss"]) for r in csv.DictReader(f)]
    assert len(val_loss) == EPOCHS and val_loss[-1] == pytest.approx(np.log(10), rel=1e-3)
    assert metrics["best_epoch"] < EPOCHS and min(val_loss) < val_loss[-1]
    saved = keras.saving.load_model(run.model).get_weights()
    best = ruin.at_end[metrics["best_epoch"] - 1]
    assert all(np.allclose(s, b, atol=1e-7) for s, b in zip(saved, best))
    assert metrics["val"]["loss"] == pytest.approx(val_loss[metrics["best_epoch"] - 1], rel=1e-4)
    assert metrics["test"]["accuracy"] > 0.5  # the ruined model scores 0.10
