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
accuracy, val_loss, val_accuracy) and the model's variables after every epoch.

Used where it applies (:func:`applies`): JAX, integer labels (no mixup or teacher
generator) and batches that divide both splits evenly, so every step has one shape.
"""

from __future__ import annotations

import math

import numpy as np


def applies(cfg, x: np.ndarray, y: np.ndarray, val: tuple) -> bool:
    """Whether ``cfg`` trains on (x, y) through :func:`fit_compiled`."""
    import keras

    return bool(
        cfg.loop == "compiled"
        and keras.backend.backend() == "jax"
        and y.ndim == 1
        and len(x) % cfg.batch_size == 0
        and len(val[0]) % cfg.batch_size == 0
    )


def fit_compiled(model, cfg, x, y, validation_data, epochs: int, callbacks=(), initial_epoch=0):
    """``model.fit(x, y, batch_size, epochs, validation_data, callbacks, shuffle=True)`` as
    compiled epochs; returns the History. The model must be compiled (its optimizer, loss).
    Batches are shuffled by (seed, epoch), so an epoch's batches do not depend on the
    epochs before it."""
    import jax
    import jax.numpy as jnp
    import keras

    optimizer, loss_fn, batch = model.optimizer, model.loss, cfg.batch_size
    loss_fn = keras.losses.get(loss_fn) if isinstance(loss_fn, str) else loss_fn
    optimizer.build(model.trainable_variables)
    steps = len(x) // batch
    x_train, y_train = jnp.asarray(x), jnp.asarray(y, jnp.int32)
    x_val = jnp.asarray(validation_data[0]).reshape(-1, batch, *validation_data[0].shape[1:])
    y_val = jnp.asarray(validation_data[1], jnp.int32).reshape(-1, batch)

    def forward(trainable, non_trainable, xb, yb, training):
        pred, non_trainable, losses = model.stateless_call(
            trainable, non_trainable, xb.astype("float32"), training=training, return_losses=True
        )
        loss = jnp.mean(loss_fn(yb, pred))
        if losses:  # regularization, in the validation loss too, as Keras reports it
            loss = loss + sum(losses)
        hits = jnp.mean((jnp.argmax(pred, axis=-1) == yb).astype("float32"))
        return loss, (non_trainable, hits)

    grad = jax.value_and_grad(forward, has_aux=True)

    def train_epoch(state, order):
        def step(state, idx):
            trainable, non_trainable, opt = state
            (loss, (non_trainable, hits)), grads = grad(
                trainable, non_trainable, x_train[idx], y_train[idx], True
            )
            trainable, opt = optimizer.stateless_apply(opt, grads, trainable)
            return (trainable, non_trainable, opt), (loss, hits)

        state, (losses, hits) = jax.lax.scan(step, state, order.reshape(steps, batch))
        trainable, non_trainable, _ = state

        def val_step(_, part):
            loss, (_, hits) = forward(trainable, non_trainable, part[0], part[1], False)
            return None, (loss, hits)

        _, (val_losses, val_hits) = jax.lax.scan(val_step, None, (x_val, y_val))
        logs = (losses.mean(), hits.mean(), val_losses.mean(), val_hits.mean())
        return state, logs

    compiled = jax.jit(train_epoch, donate_argnums=0)
    variables = (model.trainable_variables, model.non_trainable_variables, optimizer.variables)
    state = tuple([v.value for v in group] for group in variables)

    callback_list = keras.callbacks.CallbackList(
        list(callbacks), add_history=True, model=model, epochs=epochs, steps=steps, verbose=0
    )
    model.stop_training = False
    callback_list.on_train_begin()
    for epoch in range(initial_epoch, epochs):
        callback_list.on_epoch_begin(epoch)
        order = np.random.default_rng([cfg.seed, epoch]).permutation(len(x))[: steps * batch]
        state, logs = compiled(state, jnp.asarray(order, jnp.int32))
        loss, accuracy, val_loss, val_accuracy = (float(v) for v in logs)
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
            },
        )
        if model.stop_training or not math.isfinite(loss):
            break  # a NaN or infinite loss ends the run, as TerminateOnNaN would
    callback_list.on_train_end()
    return model.history
