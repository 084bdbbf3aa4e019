import json
import os
import time
import types

import keras
import numpy as np
import pytest
from click.testing import CliRunner

import harness.train.fit as train_mod
from harness.cli import main
from harness.core.config import ConfigError, resolve
from harness.core.records import RunDir, atomic_write_json
from harness.data import cifar as data
from harness.search.space import SearchSpace
from harness.search.sweep import sweep_lr
from harness.search.tune import format_trials, tune

SPACE = SearchSpace(layers=(1, 2), units=(8, 16))


def test_sweep_trains_a_fresh_model_per_rate(tmp_path, archive, monkeypatch):
    built = []
    real_build = train_mod.build_model

    def recording_build(cfg, mean, variance, components=None):
        model = real_build(cfg, mean, variance, components)
        built.append([w.copy() for w in model.get_weights()])
        return model

    monkeypatch.setattr(train_mod, "build_model", recording_build)
    rates = (1e-4, 1e-2, 1e-3)
    base = resolve("selu", overrides={"layers": 1, "units": 16, "batch_size": 64})
    record = sweep_lr(base, data.load(archive), tmp_path, "s", rates=rates, epochs=2, verbose=0)

    root = tmp_path / "sweeps" / "s"
    assert [r["lr"] for r in record["rates"]] == list(rates)
    assert json.loads((root / "sweep.json").read_text()) == record
    # the best rate is the one with the highest validation accuracy that did not diverge
    usable = [r for r in record["rates"] if not r["diverged"]]
    best = next(r for r in usable if r["lr"] == record["best_lr"])
    assert best["best_val_accuracy"] == max(r["best_val_accuracy"] for r in usable)
    runs = [RunDir.named(root, f"lr-{r:g}") for r in rates]
    assert [run.read_metrics()["config"]["lr"] for run in runs] == list(rates)
    assert all(r["epochs_run"] == 2 for r in record["rates"])
    finals = [keras.saving.load_model(run.model).get_weights() for run in runs]
    assert len(built) == len(rates)
    for i in range(1, len(rates)):
        # Each rate starts from fresh weights, not where the previous rate ended...
        assert not all(np.allclose(a, b) for a, b in zip(built[i], finals[i - 1]))
        # ...and from the same seeded initialization, so the rates compete fairly.
        assert all(np.array_equal(a, b) for a, b in zip(built[i], built[0]))


def test_sweep_cli_prints_table(tmp_path, archive):
    result = CliRunner().invoke(
        main,
        [
            "--archive",
            str(archive),
            "--results",
            str(tmp_path),
            "sweep-lr",
            "--preset",
            "selu",
            "--layers",
            "1",
            "--units",
            "8",
            "--epochs",
            "1",
            "--rates",
            "1e-3,1e-2",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "best learning rate:" in result.output and "diverged" in result.output
    assert (tmp_path / "sweeps/selu-lr/runs/lr-0.01/metrics.json").exists()


@pytest.mark.parametrize("kind,trials", [("bayesian", 3), ("hyperband", None)])
def test_search_writes_every_output(tmp_path, archive, kind, trials):
    ds = data.load(archive)
    base = resolve("bn-elu", overrides={"epochs": 2, "batch_size": 64})
    summary = tune(base, ds, tmp_path, "t", SPACE, kind, max_trials=trials or 10, verbose=0)
    root = tmp_path / "tuning" / "t"
    rows = json.loads((root / "trials.json").read_text())
    if trials:
        assert len(rows) == trials
    assert all(r["status"] == "COMPLETED" and r["epochs"] >= 1 for r in rows)
    assert all(1 <= r["hp_n_hidden"] <= 2 and 8 <= r["hp_n_neurons"] <= 16 for r in rows)
    assert len((root / "trials.csv").read_text().splitlines()) == len(rows) + 1
    best = json.loads((root / "best_hyperparameters.json").read_text())
    assert best["score"] == max(r["score"] for r in rows)
    assert (root / "keras_tuner" / "oracle.json").exists()
    run = RunDir(root / "best")
    metrics = run.read_metrics()
    assert metrics["status"] == "completed" and metrics["tuning"]["trial_id"] == best["trial_id"]
    assert metrics["config"]["layers"] == best["values"]["n_hidden"]
    assert summary["best_test_accuracy"] == metrics["test"]["accuracy"]
    model = keras.saving.load_model(run.model)
    probs = model.predict(ds.x_test.astype(np.float32), verbose=0)
    accuracy = float((probs.argmax(1) == ds.y_test).mean())
    assert accuracy == pytest.approx(metrics["test"]["accuracy"])
    assert len(run.history.read_text().splitlines()) == metrics["epochs_run"] + 1


@pytest.mark.parametrize(
    "space",
    [
        SearchSpace(layers=(3, 1)),
        SearchSpace(units=(0, 10)),
        SearchSpace(lr=(0.0, 1e-3)),
        SearchSpace(lr=(1e-3, 1e-3)),
        SearchSpace(dropout=(0.2, 1.0)),
        SearchSpace(activations=("tanh",)),
    ],
)
def test_bad_search_spaces_are_refused(space):
    with pytest.raises(ConfigError):
        space.validate()


def _blocks_async_dispatch(callback) -> bool:
    """Keras' rule (CallbackList._configure_async_dispatch): a callback that is not
    async_safe and has its own per-batch end hook makes every training step wait."""
    from keras.src import utils

    return not getattr(callback, "async_safe", False) and not (
        utils.is_default(callback.on_batch_end) and utils.is_default(callback.on_train_batch_end)
    )


def test_search_callbacks_keep_async_dispatch(tmp_path):
    """KerasTuner's per-trial callback loses its per-batch hooks (no-ops in its tuners), so
    trials keep JAX's async dispatch; a tuner that uses the hooks keeps them."""
    import keras_tuner as kt
    from keras_tuner.src.engine.tuner_utils import TunerCallback

    from harness.search.kerastuner import EpochTunerCallback
    from harness.train.fit import epoch_log, recipe_callbacks

    tuner = kt.RandomSearch(
        lambda hp: None,
        objective="val_accuracy",
        max_trials=1,
        directory=str(tmp_path),
        project_name="t",
    )
    original = TunerCallback(tuner, trial="trial")
    assert _blocks_async_dispatch(original)
    replaced = EpochTunerCallback.replacing(original)
    assert isinstance(replaced, EpochTunerCallback) and replaced.trial == "trial"
    cfg = resolve("bn-elu-fast", overrides={"batch_size": 64})
    ours = [c for c in (epoch_log(), *recipe_callbacks(cfg)) if c is not None]
    assert not any(_blocks_async_dispatch(c) for c in [*ours, replaced])

    seen = []

    class Batchy(kt.RandomSearch):
        def on_batch_end(self, trial, model, batch, logs=None):
            seen.append(batch)

    batchy = Batchy(
        lambda hp: None,
        objective="val_accuracy",
        max_trials=1,
        directory=str(tmp_path),
        project_name="b",
    )
    kept = TunerCallback(batchy, trial="trial")
    assert EpochTunerCallback.replacing(kept) is kept
    assert EpochTunerCallback.replacing("other") == "other"


def test_the_best_epoch_is_written_once_with_its_weights(tmp_path, monkeypatch):
    """KerasTuner's SaveBestEpoch, replaced: the checkpoint holds the best epoch's weights,
    written once when training ends; the model keeps its last weights."""
    import keras_tuner as kt
    from keras_tuner.src.engine.tuner_utils import SaveBestEpoch

    from harness.search.kerastuner import BestEpochOnce

    original = SaveBestEpoch(kt.Objective("val_accuracy", "max"), str(tmp_path / "best.weights.h5"))
    callback = BestEpochOnce.replacing(original)
    assert isinstance(callback, BestEpochOnce) and BestEpochOnce.replacing("x") == "x"
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    callback.set_model(model)
    writes = []
    save = model.save_weights
    monkeypatch.setattr(model, "save_weights", lambda path: (writes.append(path), save(path)))
    snapshots = []
    for epoch, score in enumerate([0.3, 0.6, 0.5]):  # the best is epoch 1
        model.set_weights([np.full(w.shape, epoch + 1.0, np.float32) for w in model.weights])
        snapshots.append(model.get_weights())
        callback.on_epoch_end(epoch, {"val_accuracy": score})
    assert writes == []
    callback.on_train_end()
    assert writes == [str(tmp_path / "best.weights.h5")]
    assert original.best_value == 0.6
    for now, last in zip(model.get_weights(), snapshots[2]):
        np.testing.assert_array_equal(now, last)
    model.load_weights(str(tmp_path / "best.weights.h5"))
    for now, best in zip(model.get_weights(), snapshots[1]):
        np.testing.assert_array_equal(now, best)


def test_a_worker_sends_a_heartbeat_after_each_epoch():
    """KerasTuner 1.4.8 reports to the oracle only when a trial ends: a worker's callback
    says after each epoch that it is alive; a local search's callback does not."""
    from keras_tuner.src.distribute.oracle_client import OracleClient

    from harness.search.kerastuner import EpochTunerCallback

    calls = []

    class Client(OracleClient):
        def __init__(self):  # no chief to dial: only the class matters
            pass

        def update_trial(self, trial_id, metrics, step=0):
            calls.append((trial_id, metrics, step))

    class Tuner:
        def __init__(self, oracle):
            self.oracle = oracle

        def on_epoch_end(self, *args, **kwargs):
            pass

    trial = types.SimpleNamespace(trial_id="7")
    EpochTunerCallback(types.SimpleNamespace(tuner=Tuner(Client()), trial=trial)).on_epoch_end(3)
    EpochTunerCallback(types.SimpleNamespace(tuner=Tuner(object()), trial=trial)).on_epoch_end(4)
    assert calls == [("7", {}, 3)]


def test_the_chief_keeps_a_trial_whose_worker_beats_and_hands_on_a_silent_ones(tmp_path):
    import keras_tuner as kt

    from harness.search.kerastuner import watch_workers

    now = [0.0]
    hp = kt.HyperParameters()
    hp.Int("units", 1, 100)
    oracle = kt.oracles.RandomSearchOracle(
        objective="val_accuracy", max_trials=3, hyperparameters=hp, seed=1
    )
    oracle._set_project_dir(str(tmp_path), "p")
    watch_workers(oracle, timeout=5, interval=0.01, clock=lambda: now[0])
    trial = oracle.create_trial("w1")
    for beat in (4, 8, 12):  # heartbeats 4 s apart: never 5 s of silence
        now[0] = beat
        assert oracle.update_trial(trial.trial_id, {}).trial_id == trial.trial_id
        time.sleep(0.1)
        assert "w1" in oracle.ongoing_trials
    now[0] = 18  # 6 s without a word
    deadline = time.monotonic() + 10
    while "w1" in oracle.ongoing_trials and time.monotonic() < deadline:
        time.sleep(0.01)
    assert "w1" not in oracle.ongoing_trials and trial.trial_id in oracle._retry_queue


def test_a_reloaded_search_runs_a_trial_killed_before_the_oracle_saved_it(tmp_path):
    """Killed between a new trial's file and the oracle's: the re-run runs that trial (it
    would otherwise stay RUNNING, never run, and count against max_trials), and does not
    run the finished one again; killed between a finished trial's file and the oracle's:
    the re-run counts it as ended and runs it not again."""
    import keras_tuner as kt

    from harness.search.kerastuner import mend_retries

    def oracle():
        made = kt.oracles.RandomSearchOracle(objective="val_accuracy", max_trials=2, seed=1)
        made.hyperparameters.Int("units", 1, 100)
        made._set_project_dir(str(tmp_path), "p")
        return made

    status = kt.engine.trial.TrialStatus
    first = oracle()
    done = first.create_trial("a")
    first.update_trial(done.trial_id, {"val_accuracy": 0.5})
    done.status = status.COMPLETED
    first.end_trial(done)
    state = tmp_path / "p" / "oracle.json"
    before = state.read_text()
    killed = first.create_trial("a")
    state.write_text(before)  # the kill: the trial's file written, the oracle's not
    again = oracle()
    again.reload()
    mend_retries(again)
    resumed = again.create_trial("b")
    assert resumed.status == status.RUNNING and resumed.trial_id == killed.trial_id
    assert again.create_trial("c").status == status.STOPPED  # nothing else, nothing twice
    before = state.read_text()
    again.update_trial(resumed.trial_id, {"val_accuracy": 0.6})
    resumed.status = status.COMPLETED
    again.end_trial(resumed)
    state.write_text(before)  # killed as it ended: the trial's file written, the oracle's not
    last = oracle()
    last.reload()
    mend_retries(last)
    assert last.end_order == [done.trial_id, resumed.trial_id] and not last._retry_queue
    assert last.create_trial("d").status == status.STOPPED


def test_a_bayesian_search_side_by_side_proposes_from_every_random_trial(tmp_path):
    """The first model-based proposal waits until all the random trials are done."""
    import keras_tuner as kt

    from harness.search.kerastuner import propose_from_every_initial_point

    oracle = kt.oracles.BayesianOptimizationOracle(
        objective="val_accuracy", max_trials=4, num_initial_points=2, seed=1
    )
    oracle.hyperparameters.Float("lr", 1e-4, 1e-2)
    oracle._set_project_dir(str(tmp_path), "p")
    propose_from_every_initial_point(oracle)
    status = kt.engine.trial.TrialStatus
    first, second = oracle.create_trial("a"), oracle.create_trial("b")  # random draws
    assert first.status == second.status == status.RUNNING
    oracle.update_trial(first.trial_id, {"val_accuracy": 0.5})
    first.status = status.COMPLETED
    oracle.end_trial(first)
    assert oracle.create_trial("a").status == status.IDLE  # "b" still runs: wait for it
    oracle.update_trial(second.trial_id, {"val_accuracy": 0.6})
    second.status = status.COMPLETED
    oracle.end_trial(second)
    third = oracle.create_trial("a")
    assert third.status == status.RUNNING and third.trial_id == "2"


def test_a_trial_clearing_keras_state_leaves_the_other_threads_state():
    """Trials side by side: the clear_session before one trial's build must not empty the
    state of another trial mid-build (Keras' own replaces every thread's)."""
    import threading

    from keras.src.backend.common import global_state

    from harness.search.kerastuner import _clear_this_thread

    seen, ready, cleared = {}, threading.Event(), threading.Event()

    def other_trial():
        global_state.set_global_attribute("probe", "other")
        ready.set()
        cleared.wait(10)
        seen["after"] = global_state.get_global_attribute("probe")

    thread = threading.Thread(target=other_trial)
    thread.start()
    assert ready.wait(10)
    global_state.set_global_attribute("probe", "this")
    _clear_this_thread(free_memory=False)
    cleared.set()
    thread.join(10)
    assert global_state.get_global_attribute("probe") is None and seen["after"] == "other"


def test_kerastuner_state_files_are_written_whole(tmp_path, monkeypatch):
    """A write of KerasTuner's state that dies midway leaves the file as it was."""
    from keras_tuner.src import utils

    from harness.search.kerastuner import write_state_whole

    write_state_whole()
    path = tmp_path / "oracle.json"
    utils.save_json(str(path), {"trials": 1})

    def dies(fd):
        raise OSError("killed")

    monkeypatch.setattr(os, "fsync", dies)
    with pytest.raises(OSError, match="killed"):
        utils.save_json(str(path), {"trials": 2})
    assert json.loads(path.read_text()) == {"trials": 1}
    assert list(tmp_path.iterdir()) == [path]  # no torn temporary left


def test_a_trial_draws_its_own_initial_weights_in_every_call_and_thread(archive):
    """Seeded by the search's seed and the trial's values, not by whatever NumPy's global
    generator holds: the same weights in a second call, or while another thread draws."""
    import threading

    import keras_tuner as kt

    from harness.search.space import make_hypermodel

    hypermodel = make_hypermodel(resolve("bn-elu"), SPACE, data.split(data.load(archive)))

    def weights(units, out=None):
        hp = kt.HyperParameters()
        hp.values = {"n_hidden": 2, "n_neurons": units, "learning_rate": 1e-3}
        drawn = [np.asarray(w) for w in hypermodel.build(hp).get_weights()]
        if out is not None:
            out.append(drawn)
        return drawn

    first = weights(16)
    np.random.seed(123)  # the global generator moved on
    beside = []
    other = threading.Thread(target=lambda: [np.random.standard_normal(10**6) for _ in range(20)])
    other.start()
    mine = threading.Thread(target=weights, args=(16, beside))
    mine.start(), mine.join(), other.join()
    for a, b in zip(first, beside[0], strict=True):
        np.testing.assert_array_equal(a, b)
    kernel, narrower = (next(w for w in ws if w.ndim == 2) for ws in (first, weights(8)))
    assert not np.allclose(kernel[:, :8], narrower)  # another trial: its own draw


def test_a_trials_dropout_layers_are_seeded_by_the_trial_alone():
    """Inside a trial's own seed, dropout layers get seeds drawn from it (the same ones in
    every call); outside, None, and Keras seeds them as harness train always has."""
    from harness.train.layers import weights_seeded
    from harness.train.models import build_model

    cfg = resolve("bn-elu", overrides={"dropout": 0.2, "layers": 2, "units": 8})

    def seeds():
        model = build_model(cfg, np.zeros(3), np.ones(3))
        return [layer.seed for layer in model.layers if isinstance(layer, keras.layers.Dropout)]

    with weights_seeded(5):
        first = seeds()
    with weights_seeded(5):
        assert seeds() == first
    assert len(first) == 2 and all(isinstance(seed, int) for seed in first)
    assert seeds() == [None, None]


def test_the_median_rule_stops_only_a_trial_behind_enough_finished_ones():
    from harness.search.stopping import STARTUP_TRIALS, WARMUP_EPOCHS, behind

    finished = [[0.3, 0.4, 0.5, 0.6], [0.2, 0.3, 0.4], [0.1, 0.2, 0.3, 0.4, 0.5]]
    assert STARTUP_TRIALS == len(finished) and WARMUP_EPOCHS == 2
    assert not behind([0.0, 0.0], finished)  # warm-up: never in the first two epochs
    assert behind([0.0, 0.0, 0.39], finished)  # median at the third epoch: 0.4
    assert not behind([0.0, 0.0, 0.4], finished)  # at the median is not behind
    assert not behind([0.45, 0.0, 0.1], finished)  # its best so far counts, not its last
    assert not behind([0.0] * 4, finished)  # only two finished trials reached a fourth epoch
    assert not behind([0.0] * 3, finished[:2])  # too few finished trials


def test_the_median_rule_counts_trials_that_end_while_it_runs(tmp_path):
    """Side by side, few trials have ended when one starts: each epoch reads them again."""
    from harness.search.stopping import MedianStop

    def finish(name):
        atomic_write_json(
            tmp_path / f"{name}.json", {"history": {"val_accuracy": [0.5] * 4}, "stopped_at": None}
        )

    finish("a"), finish("b")
    stop = MedianStop(tmp_path, "val_accuracy")
    stop.set_model(types.SimpleNamespace(stop_training=False))
    stop.on_train_begin()
    for epoch in range(3):
        stop.on_epoch_end(epoch, {"val_accuracy": 0.1})
    assert not stop.model.stop_training  # two finished trials: too few to judge
    finish("c")  # a third ends meanwhile
    stop.on_epoch_end(3, {"val_accuracy": 0.1})
    assert stop.model.stop_training and stop.stopped_at == 4


def test_a_search_stops_a_trial_behind_the_finished_ones_median(tmp_path, archive):
    ds = data.load(archive)
    base = resolve("bn-elu", overrides={"epochs": 4, "batch_size": 64})
    root = tmp_path / "tuning" / "t"
    # three finished trials that reached a validation accuracy no trial here can
    for name in ("a", "b", "c"):
        atomic_write_json(
            root / "trial_meta" / f"earlier-{name}.json",
            {"history": {"val_accuracy": [1.0] * 4}, "stopped_at": None},
        )
    summary = tune(base, ds, tmp_path, "t", SPACE, "random", 1, verbose=0, stop_behind=True)
    (row,) = json.loads((root / "trials.json").read_text())
    assert row["stopped_at"] == row["epochs"] == 3 and summary["stopped_behind"] == 1
    meta = json.loads((root / "trial_meta" / f"{row['trial_id']}.json").read_text())
    assert len(meta["history"]["val_accuracy"]) == 3
    # a stopped trial's curve is cut short: it is not a finished trial for the next one
    from harness.search.stopping import finished_curves

    assert len(finished_curves(root / "trial_meta", "val_accuracy")) == 3
    assert "stopped behind" in format_trials([row])
    with pytest.raises(ConfigError, match="hyperband"):
        tune(base, ds, tmp_path, "h", SPACE, "hyperband", 1, verbose=0, stop_behind=True)
