"""Whole epochs as one compiled program (JAX): the training images stay on the device, each
epoch is one call that shuffles, slices and trains every batch inside XLA (``lax.scan`` over
Keras' stateless step), and validation is one more. Small networks spend most of a
``model.fit`` epoch outside their arithmetic (the per-batch Python dispatch, the host's
batch slicing and copy, the state's pytree handling, docs/lab/tuning.md); this path leaves
them only their arithmetic.

It is Keras' documented stateless training loop ("Writing a training loop from scratch in
JAX": ``stateless_call``, ``optimizer.stateless_apply``) put inside one scan, written here
because Keras 3's JAX trainer runs ``steps_per_execution`` steps as a Python loop of
single-step calls. The step is the model's own forward pass, loss, regularization losses,
optimizer, schedule and constraints; callbacks see the same per-epoch logs (loss,
accuracy, val_loss, val_accuracy, learning_rate) and the model's variables after every epoch.

Used where it applies (:func:`applies`): JAX, arrays of integer labels or of target
probabilities (a teacher's, without mixup; mixup's batches come from a generator). Every
step has one shape: where the batch size does not divide the training images, each
epoch leaves out the last partial batch of its shuffled order (other images each epoch:
200 of 45,000 at batch 256), and the validation images are padded to whole batches and
the padding weighted out.
"""

from __future__ import annotations

import math
import threading
import weakref

import numpy as np


def applies(cfg, x: np.ndarray, y: np.ndarray, val: tuple) -> bool:
    """Whether ``cfg`` trains on (x, y) through :func:`fit_compiled`."""
    import keras

    return bool(
        cfg.loop == "compiled"
        and keras.backend.backend() == "jax"
        and y.ndim in (1, 2)
        and len(x) >= cfg.batch_size
    )


def fit_compiled(model, cfg, x, y, validation_data, epochs: int, callbacks=()):
    """``model.fit(x, y, batch_size, epochs, validation_data, callbacks, shuffle=True)`` as
    compiled epochs; returns the History. The model must be compiled (its optimizer, loss).
    Batches are shuffled by (seed, epoch), so an epoch's batches do not depend on the
    epochs before it."""
    import jax
    import jax.numpy as jnp
    import keras

    optimizer, batch = model.optimizer, cfg.batch_size
    loss_fn = keras.losses.get(model.loss)
    if not isinstance(loss_fn, keras.losses.Loss):  # a function of per-image losses

        def loss_fn(yb, pred, sample_weight, per_image=loss_fn):
            return jnp.sum(per_image(yb, pred) * sample_weight) / len(yb)

    optimizer.build(model.trainable_variables)
    steps = len(x) // batch
    # arguments of the compiled epoch, not constants baked into it (slow to compile)
    data = _on_device(x, y, *validation_data, batch)

    def forward(trainable, non_trainable, xb, yb, training, weight=None):
        pred, non_trainable, losses = model.stateless_call(
            trainable, non_trainable, xb.astype("float32"), training=training, return_losses=True
        )
        weight = jnp.ones(len(yb), "float32") if weight is None else weight
        # per image, weighted: the mean over the real images of a padded batch, times its size
        loss = loss_fn(yb, pred, sample_weight=weight) * len(yb) / jnp.sum(weight)
        if losses:  # regularization, in the validation loss too, as Keras reports it
            loss = loss + sum(losses)
        truth = yb if yb.ndim == 1 else jnp.argmax(yb, axis=-1)
        hits = jnp.sum((jnp.argmax(pred, axis=-1) == truth) * weight) / jnp.sum(weight)
        return loss, (non_trainable, hits)

    grad = jax.value_and_grad(forward, has_aux=True)

    def rate_after(opt):
        """The learning rate at the optimizer's state ``opt`` (its step counter, a
        plateau's rate), as EpochLog would read it from the variables after the epoch."""
        with keras.StatelessScope(state_mapping=list(zip(optimizer.variables, opt))):
            rate = optimizer.learning_rate
            return jnp.asarray(rate.value if isinstance(rate, keras.Variable) else rate)

    def train_epoch(state, order, data):
        x_train, y_train, x_val, y_val, w_val = data

        def step(state, idx):
            trainable, non_trainable, opt = state
            (loss, (non_trainable, hits)), grads = grad(
                trainable, non_trainable, x_train[idx], y_train[idx], True
            )
            trainable, opt = optimizer.stateless_apply(opt, grads, trainable)
            return (trainable, non_trainable, opt), (loss, hits)

        state, (losses, hits) = jax.lax.scan(step, state, order.reshape(steps, batch))
        trainable, non_trainable, opt = state

        def val_step(_, part):
            xb, yb, wb = part
            loss, (_, hits) = forward(trainable, non_trainable, xb, yb, False, wb)
            return None, (loss, hits, wb.sum())

        _, (val_losses, val_hits, counts) = jax.lax.scan(val_step, None, (x_val, y_val, w_val))
        share = counts / counts.sum()  # each batch by its real images
        logs = (
            losses.mean(),
            hits.mean(),
            (val_losses * share).sum(),
            (val_hits * share).sum(),
            rate_after(opt),
        )
        return state, logs

    compiled = jax.jit(train_epoch, donate_argnums=0)
    variables = (model.trainable_variables, model.non_trainable_variables, optimizer.variables)
    state = tuple([v.value for v in group] for group in variables)

    callback_list = keras.callbacks.CallbackList(
        list(callbacks), add_history=True, model=model, epochs=epochs, steps=steps, verbose=0
    )
    model.stop_training = False
    callback_list.on_train_begin()
    for epoch in range(epochs):
        callback_list.on_epoch_begin(epoch)
        order = np.random.default_rng([cfg.seed, epoch]).permutation(len(x))[: steps * batch]
        state, logs = compiled(state, jnp.asarray(order, jnp.int32), data)
        loss, accuracy, val_loss, val_accuracy, rate = (float(v) for v in logs)
        for group, values in zip(variables, state):
            for variable, value in zip(group, values):
                variable.assign(value)
        state = tuple([v.value for v in group] for group in variables)
        callback_list.on_epoch_end(
            epoch,
            {
                "accuracy": accuracy,
                "loss": loss,
                "val_accuracy": val_accuracy,
                "val_loss": val_loss,
                "learning_rate": rate,  # read in the program: no schedule compiled per fit
            },
        )
        if model.stop_training or not math.isfinite(loss):
            break  # a NaN or infinite loss ends the run, as TerminateOnNaN would
    callback_list.on_train_end()
    return model.history


_COPIES: dict = {}  # "last": (weak references to the arrays copied last, batch, copies)
_COPIES_LOCK = threading.Lock()


def _on_device(x, y, x_val, y_val, batch: int) -> tuple:
    """(x, y, validation x, y and weights in whole batches) on the device. A search's
    trials all train on the same arrays, so the copies of the last arrays passed are kept,
    and shared by trials side by side, while those arrays live, instead of copying the
    training images (hundreds of megabytes) again for every trial. The copies are inputs
    of the compiled epoch, never donated or written; harness never writes its splits'
    arrays either."""
    import jax.numpy as jnp

    arrays = (x, y, x_val, y_val)
    with _COPIES_LOCK:
        last = _COPIES.pop("last", None)
        if last and last[1] == batch and all(r() is a for r, a in zip(last[0], arrays)):
            _COPIES["last"] = last
            return last[2]
        del last  # the old copies go before the new ones are made
        data = (jnp.asarray(x), _labels(y), *_padded(x_val, y_val, batch))
        try:
            refs = tuple(weakref.ref(a, _forget) for a in arrays)
        except TypeError:  # not an array that can be referred to weakly: not kept
            return data
        _COPIES["last"] = (refs, batch, data)
        return data


def _forget(_dead) -> None:
    """One of the arrays copied last is gone: so are its copies (if a newer entry is
    dropped instead, the next call copies its arrays again)."""
    _COPIES.pop("last", None)


def _labels(y: np.ndarray):
    """Integer labels as int32, target probabilities as float32, on the device."""
    import jax.numpy as jnp

    return jnp.asarray(y, jnp.int32 if y.ndim == 1 else jnp.float32)


def _padded(x: np.ndarray, y: np.ndarray, batch: int):
    """(x, y, weights) in whole batches, shaped (batches, batch, ...): the last batch padded
    with copies of the first images, weighted 0."""
    import jax.numpy as jnp

    pad = (-len(x)) % batch
    weights = np.concatenate([np.ones(len(x), np.float32), np.zeros(pad, np.float32)])
    x, y = np.concatenate([x, x[:pad]]), np.concatenate([y, y[:pad]])
    shape = (-1, batch)
    return (
        jnp.asarray(x).reshape(*shape, *x.shape[1:]),
        _labels(y).reshape(*shape, *y.shape[1:]),
        jnp.asarray(weights).reshape(shape),
    )
