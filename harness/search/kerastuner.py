"""Every touch of KerasTuner's internals, fenced in one module.

KerasTuner (pinned to the version these were written against, in pyproject.toml) leaves
seven needs of harness to its private parts, each patched here and nowhere else:

- the per-trial callback without per-batch hooks, and a worker's heartbeat to the chief
  (:class:`EpochTunerCallback`: ``keras_tuner.src.engine.tuner_utils.TunerCallback``,
  ``keras_tuner.src.distribute.oracle_client.OracleClient``);
- the best epoch's weights written once (:class:`BestEpochOnce`: ``SaveBestEpoch``);
- a resumed search that runs each unfinished trial once and no finished one again
  (:func:`mend_retries`: ``Oracle._retry_queue``, ``start_order``, ``end_order``);
- proposals that fit a device budget (:func:`constrain`: ``Oracle._random_values``,
  ``populate_space``, ``keras_tuner.src.engine.trial.TrialStatus``) and a chief that hands
  a silent worker's trial on (:func:`watch_workers`: ``create_trial``, ``update_trial``,
  ``ongoing_trials``, ``tuner_ids``, ``_retry_queue``);
- its state files written whole, so a search killed at any moment reloads
  (:func:`write_state_whole`: ``keras_tuner.src.utils.save_json``);
- trials side by side in one process (:func:`search_side_by_side`: ``Oracle.save`` under
  the oracle's lock; Keras' ``clear_session``, which KerasTuner calls before each build,
  clearing only its own thread: ``keras.src.backend.common.global_state``; the oracle's
  lock released when a tuner's call dies holding it: ``oracle.LOCKS``, ``THREADS``), and a
  Bayesian search's first model-based proposal made from all of its random trials
  (:func:`propose_from_every_initial_point`: ``BayesianOptimizationOracle.num_initial_points``
  and its default).

:data:`INTERNALS` names each; ``tests/test_kerastuner_fence.py`` fails by name when one
moves in a new KerasTuner.
"""

from __future__ import annotations

import json
import threading
import time

import keras

# What this module reaches for in KerasTuner: (module, attribute) pairs, attribute None for
# the module itself; "Oracle.x" means an attribute of keras_tuner.Oracle or its instances.
INTERNALS = (
    ("keras_tuner.src.engine.tuner_utils", "TunerCallback"),
    ("keras_tuner.src.engine.tuner_utils", "SaveBestEpoch"),
    ("keras_tuner.src.distribute.oracle_client", "OracleClient"),
    ("keras_tuner.src.engine.trial", "TrialStatus"),
    ("keras_tuner", "Oracle._retry_queue"),
    ("keras_tuner", "Oracle.start_order"),
    ("keras_tuner", "Oracle.end_order"),
    ("keras_tuner", "Oracle._random_values"),
    ("keras_tuner", "Oracle.populate_space"),
    ("keras_tuner", "Oracle.create_trial"),
    ("keras_tuner", "Oracle.update_trial"),
    ("keras_tuner", "Oracle.ongoing_trials"),
    ("keras_tuner", "Oracle.tuner_ids"),
    ("keras_tuner", "synchronized"),
    ("keras_tuner", "Oracle.save"),
    ("keras_tuner.src.utils", "save_json"),
    ("keras_tuner.src.engine.oracle", "LOCKS"),
    ("keras_tuner.src.engine.oracle", "THREADS"),
    ("keras.src.backend.common.global_state", "GLOBAL_STATE_TRACKER"),
    ("keras.src.backend.common.global_state", "GLOBAL_SETTINGS_TRACKER"),
    ("keras_tuner.oracles", "BayesianOptimizationOracle.num_initial_points"),
)


class EpochTunerCallback(keras.callbacks.Callback):
    """KerasTuner's per-trial callback (``tuner_utils.TunerCallback``) without its per-batch
    hooks, which call ``Tuner.on_batch_begin/end``: no-ops in KerasTuner's tuners, yet their
    presence made each JAX step wait for the one before. The epoch hooks are kept. Marking
    the original ``async_safe`` instead made JAX trials fail with "Buffer has been deleted
    or donated" (docs/training-speed.md).

    On a distributed worker it also tells the chief after each epoch that it is alive (an
    ``update_trial`` with no metrics, which :func:`watch_workers` takes as a
    heartbeat): KerasTuner 1.4.8 reports to the oracle only when a trial ends, so without
    it a trial longer than the chief's ``--worker-timeout`` looked like a dead worker's."""

    def __init__(self, original):
        super().__init__()
        from keras_tuner.src.distribute.oracle_client import OracleClient

        self.tuner, self.trial = original.tuner, original.trial
        self.heartbeat = isinstance(self.tuner.oracle, OracleClient)

    @classmethod
    def replacing(cls, callback):
        """``callback`` as an EpochTunerCallback when it is KerasTuner's TunerCallback and its
        tuner keeps the no-op batch hooks; else ``callback`` itself."""
        import keras_tuner as kt
        from keras_tuner.src.engine.tuner_utils import TunerCallback

        if not isinstance(callback, TunerCallback):
            return callback
        tuner = type(callback.tuner)
        if (
            tuner.on_batch_begin is not kt.Tuner.on_batch_begin
            or tuner.on_batch_end is not kt.Tuner.on_batch_end
        ):
            return callback  # a tuner that uses the batch hooks keeps them
        return cls(callback)

    def on_epoch_begin(self, epoch, logs=None):
        self.tuner.on_epoch_begin(self.trial, self.model, epoch, logs=logs)

    def on_epoch_end(self, epoch, logs=None):
        self.tuner.on_epoch_end(self.trial, self.model, epoch, logs=logs)
        if self.heartbeat:
            self.tuner.oracle.update_trial(self.trial.trial_id, {}, step=epoch)


class BestEpochOnce(keras.callbacks.Callback):
    """KerasTuner's ``SaveBestEpoch`` writing once: the best epoch's weights are copied in
    memory when the objective improves and written to the same file when training ends
    (KerasTuner writes the file after every improving epoch). An interrupted trial is run
    again from its start, so nothing is lost by writing at the end."""

    def __init__(self, original):
        super().__init__()
        # The original keeps the best value: it carries over to the trial's next execution.
        self.original = original
        self.best_weights = None

    @classmethod
    def replacing(cls, callback):
        """``callback`` as a BestEpochOnce when it is KerasTuner's SaveBestEpoch."""
        from keras_tuner.src.engine.tuner_utils import SaveBestEpoch

        return cls(callback) if type(callback) is SaveBestEpoch else callback

    def on_epoch_end(self, epoch, logs=None):
        objective, original = self.original.objective, self.original
        if not objective.has_value(logs):
            self.best_weights = self.model.get_weights()
            return
        value = objective.get_value(logs)
        if objective.better_than(value, original.best_value):
            original.best_value = value
            self.best_weights = self.model.get_weights()

    def on_train_end(self, logs=None):
        if self.best_weights is None:
            return
        last = self.model.get_weights()
        self.model.set_weights(self.best_weights)
        self.model.save_weights(self.original.filepath)
        self.model.set_weights(last)


def mend_retries(oracle) -> None:
    """Mend a reloaded oracle's bookkeeping so that each unfinished trial runs once and no
    finished one runs again.

    KerasTuner 1.4.8 leaves these gaps for a search killed and run again:

    - ``Oracle.end_trial`` saves the oracle before it takes the trial off
      ``ongoing_trials``, and ``reload`` queues every ongoing trial for a retry: the resumed
      search would train its last finished trial again (and overwrite it);
    - ``end_trial`` writes the trial's ``trial.json`` before the oracle's own file: a search
      killed between the two reloads a finished trial missing from ``end_order``;
    - ``create_trial`` writes a new trial's ``trial.json`` before the oracle's own file, and
      ``reload`` reads the trials from their files: a search killed between the two writes
      reloads a RUNNING trial that nothing queues, which never ran yet counts against
      ``max_trials`` (found by the test of a parallel search killed after its first trial).
    """
    finished = {"COMPLETED", "FAILED"}
    queue = [t for t in oracle._retry_queue if str(oracle.trials[t].status) not in finished]
    for trial_id, trial in sorted(oracle.trials.items()):
        if trial_id not in oracle.start_order:
            oracle.start_order.append(trial_id)
        if str(trial.status) == "RUNNING" and trial_id not in queue:
            queue.append(trial_id)
        elif str(trial.status) in finished and trial_id not in oracle.end_order:
            oracle.end_order.append(trial_id)
    oracle._retry_queue = queue


MAX_DRAWS = 200  # draws per trial before a budgeted search gives up on finding a network


def constrain(oracle, misses) -> dict[str, int]:
    """Make ``oracle`` propose only values whose network fits: ``misses(values)`` lists what
    a proposal breaks (empty: it fits). A random draw that does not fit is drawn again; a
    model-based proposal (Bayesian's optimum) that does not fit is replaced by a random one
    that does. Returns, per trial id, how many proposals were turned down before it."""
    from keras_tuner.src.engine.trial import TrialStatus

    from harness.search.budget import BudgetError

    draw, populate = oracle._random_values, oracle.populate_space
    rejected = {"now": 0}
    per_trial: dict[str, int] = {}

    def random_values():
        last = []
        for _ in range(MAX_DRAWS):
            values = draw()
            if values is None:  # the space is used up
                return None
            last = misses(values)
            if not last:
                return values
            rejected["now"] += 1
        raise BudgetError(
            f"none of {MAX_DRAWS} networks drawn from the search space fits "
            f"the budget (the last: {'; '.join(last)}); allow smaller networks "
            "or a larger budget"
        )

    def populate_space(trial_id):
        rejected["now"] = 0
        result = populate(trial_id)
        if result.get("status") == TrialStatus.RUNNING and misses(result["values"]):
            rejected["now"] += 1
            values = random_values()
            result = (
                {"status": TrialStatus.STOPPED, "values": None}
                if values is None
                else {"status": TrialStatus.RUNNING, "values": values}
            )
        per_trial[trial_id] = rejected["now"]
        return result

    oracle._random_values, oracle.populate_space = random_values, populate_space
    oracle.turned_down = per_trial  # read by run_trial for the trial's record
    return per_trial


def write_state_whole() -> None:
    """Make KerasTuner write its state files (``oracle.json``, each ``trial.json``, the
    tuner's) whole or not at all: it writes them in place, so a search killed during a
    write (more likely with trials side by side, each ending on its own) left a torn
    file that stopped the re-run's reload. Local paths only; others (``gs://``) as before."""
    from keras_tuner.src import utils

    from harness.core.records import atomic_write_text

    if getattr(utils.save_json, "whole", False):
        return
    original = utils.save_json

    def save_json(path, obj):
        if "://" in str(path):
            return original(path, obj)
        text = json.dumps(obj)
        atomic_write_text(path, text)
        return text

    save_json.whole = True
    utils.save_json = save_json


IDLE_PAUSE = 0.2  # seconds a tuner told to wait (IDLE) pauses before it asks again


def propose_from_every_initial_point(oracle) -> None:
    """Make a Bayesian oracle that runs trials side by side (threads, or a chief's workers)
    wait for its random trials to finish before its first model-based proposal.

    KerasTuner's Bayesian oracle draws at random until ``num_initial_points`` trials have
    completed (3 per hyperparameter by default), then fits its Gaussian process to them. With
    trials at once, the trial that should be the first model-based one is asked for while
    some random ones still run: it was drawn at random too (a 10-trial study search had no
    model-based trial at all). Here the asking tuner is told to wait (IDLE) instead, until
    the random trials it needs are done; other oracles are left as they are."""
    import keras_tuner as kt
    from keras_tuner.src.engine.trial import TrialStatus

    if not isinstance(oracle, kt.oracles.BayesianOptimizationOracle):
        return
    populate = oracle.populate_space

    def populate_space(trial_id):
        initial = oracle.num_initial_points or max(3 * len(oracle.hyperparameters.space), 3)
        completed = sum(t.status == TrialStatus.COMPLETED for t in oracle.trials.values())
        if len(oracle.trials) >= initial > completed and oracle.ongoing_trials:
            return {"status": TrialStatus.IDLE, "values": None}
        return populate(trial_id)

    oracle.populate_space = populate_space


def watch_workers(
    oracle, timeout: float, interval: float = 2.0, clock=time.monotonic
) -> threading.Thread:
    """Chief side: a worker silent for ``timeout`` s has its trial handed to another.

    KerasTuner's chief waits for every running trial to end, so one dead worker would hang
    the search forever. Workers report after every epoch (an ``update_trial`` without
    metrics is such a heartbeat, from :class:`EpochTunerCallback`, and
    goes no further); a trial whose worker has not been heard from within ``timeout`` goes
    back to the oracle's retry queue and the worker is forgotten (a worker that comes back
    simply asks for a new trial). A worker that asks for a trial when none is left while
    others still run is told to wait (IDLE, and KerasTuner's worker asks again) rather than
    to stop: if one of those others has died, its trial comes back to the queue and a live
    worker must be there to take it.
    """
    import keras_tuner as kt
    from keras_tuner.src.engine.trial import TrialStatus

    heard: dict[str, float] = {}
    create, update = oracle.create_trial, oracle.update_trial

    @kt.synchronized
    def others_running(oracle, tuner_id) -> bool:
        if any(t != tuner_id for t in oracle.ongoing_trials):
            oracle.tuner_ids.add(tuner_id)  # create() forgot it when it said STOPPED
            return True
        return False

    def create_trial(tuner_id):
        heard[tuner_id] = clock()
        trial = create(tuner_id)
        if trial.status == TrialStatus.STOPPED and others_running(oracle, tuner_id):
            trial.status = TrialStatus.IDLE
        if trial.status == TrialStatus.IDLE:
            time.sleep(IDLE_PAUSE)  # pace the asking worker (the chief serves one call at a time)
        return trial

    def update_trial(trial_id, metrics, step=0):
        for tuner_id, trial in list(oracle.ongoing_trials.items()):
            if trial.trial_id == trial_id:
                heard[tuner_id] = clock()
        if not metrics:  # a heartbeat: KerasTuner's own update needs the objective
            return oracle.trials[trial_id]
        return update(trial_id, metrics, step=step)

    @kt.synchronized
    def requeue_silent(oracle):
        now = clock()
        for tuner_id, trial in list(oracle.ongoing_trials.items()):
            if now - heard.get(tuner_id, now) > timeout:
                oracle.ongoing_trials.pop(tuner_id)
                oracle.tuner_ids.discard(tuner_id)
                oracle._retry_queue.append(trial.trial_id)
                heard.pop(tuner_id, None)
                print(
                    f"worker {tuner_id} silent for {timeout:g} s: trial {trial.trial_id} "
                    "goes to another worker",
                    flush=True,
                )

    def loop():
        while True:
            time.sleep(interval)
            requeue_silent(oracle)

    oracle.create_trial, oracle.update_trial = create_trial, update_trial
    thread = threading.Thread(target=loop, name="harness-worker-watch", daemon=True)
    thread.start()
    return thread


def _clear_this_thread(free_memory=True):
    """Keras' ``clear_session`` for the calling thread alone. Keras keeps its state per
    thread, yet ``clear_session`` replaces the per-thread holders for every thread: called
    by one trial before its build, it emptied another's state mid-build (two layers of one
    model both named ``batch_normalization``) or mid-trace. On JAX that state is all
    ``clear_session`` resets."""
    import gc

    from keras.src.backend.common import global_state

    global_state.GLOBAL_STATE_TRACKER.__dict__.clear()
    global_state.GLOBAL_SETTINGS_TRACKER.__dict__.clear()
    if free_memory:
        gc.collect()


def search_side_by_side(tuner, count: int, *fit_args, **fit_kwargs) -> None:
    """``tuner.search(*fit_args, **fit_kwargs)`` as ``count`` tuners sharing its oracle, each
    in its own thread, so ``count`` trials train at once in this process: one trial's
    compiling and its small kernels' waits leave the cores to another's training.

    This is KerasTuner's own parallel tuning (one oracle, a tuner id per tuner, the oracle's
    calls under its lock), with the tuners in threads instead of processes: no second
    import, no second copy of the data. KerasTuner's tuner also saves the oracle outside
    that lock after each trial; here that save takes the lock too, so two trials ending
    together cannot write ``oracle.json`` at once. An error in one thread is raised once
    every thread has ended; an interrupt leaves the search to resume like any other (the
    tuner's state is saved before the threads start, so a re-run always reloads it)."""
    import copy
    import traceback
    import types

    import keras_tuner as kt
    from keras_tuner.src.engine import oracle as oracle_module
    from keras_tuner.src.engine.trial import TrialStatus

    oracle = tuner.oracle
    oracle.save = types.MethodType(kt.synchronized(type(oracle).save), oracle)
    create = oracle.create_trial

    def create_trial(tuner_id):
        trial = create(tuner_id)
        if trial.status == TrialStatus.IDLE:
            time.sleep(IDLE_PAUSE)  # KerasTuner's tuner asks again at once
        return trial

    oracle.create_trial = create_trial
    # A re-run reloads the search only where the first tuner's file exists, and KerasTuner
    # writes it when that tuner ends a trial: a search stopped before then, with a sibling's
    # trial done, would start over.
    tuner.save()
    tuners = [tuner]
    for i in range(1, count):
        sibling = copy.copy(tuner)
        sibling.tuner_id = f"{tuner.tuner_id}-{i}"
        tuners.append(sibling)
    errors: list[BaseException] = []
    clear_session = keras.backend.clear_session
    keras.backend.clear_session = _clear_this_thread

    def search(one):
        try:
            one.search(*fit_args, **fit_kwargs)
        except BaseException as e:  # noqa: BLE001 (re-raised on the calling thread)
            errors.append(e)
            traceback.print_exc()  # now: the other trials may run on for minutes
            # KerasTuner's lock is not released when the call holding it raises: the other
            # tuners would wait for it forever.
            if oracle_module.THREADS[oracle] == threading.current_thread().name:
                oracle_module.THREADS[oracle] = None
                oracle_module.LOCKS[oracle].release()

    threads = [
        threading.Thread(target=search, args=(one,), name=f"harness-{one.tuner_id}", daemon=True)
        for one in tuners
    ]
    for thread in threads:
        thread.start()
    try:
        for thread in threads:
            while thread.is_alive():  # a timed join lets Ctrl-C through to this thread
                thread.join(0.5)
    finally:
        keras.backend.clear_session = clear_session
    if errors:
        raise errors[0]
