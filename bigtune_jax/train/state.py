"""The training state: flax's ``TrainState`` plus what the fit loop must carry across a
restart.

``flax.training.train_state.TrainState`` holds ``step``, ``params``, ``tx`` and
``opt_state``. Added here, all of it checkpointed so that a resumed run continues
bit for bit:

* ``rng``: the base key; the dropout key of step ``t`` is ``fold_in(rng, t)``, so no key
  has to be split and carried, and step ``t`` draws the same mask after a resume;
* ``skipped_steps``: steps whose loss or gradients were not finite, skipped by the NaN
  guard of ``step.py``;
* ``metric`` / ``metric_count``: the monitored metric of the last evaluation (0 before
  the first, when the count says there is none) and the number of evaluations so far. The train step passes them to the
  optimizer as ``update(..., value=metric, value_count=metric_count)``, so a
  ``bt.reduce_on_plateau`` chained into it consumes each evaluation once;
* ``early_stopping``: the state of the ``bt.EarlyStopping`` given to ``fit``, or ``()``;
* ``best_params``: a copy of the parameters at the best validation metric, kept when
  the early stopping restores them (``restore_best=True``), or ``()``.
"""

import functools
import inspect
from typing import Any

import flax.linen as nn
from flax.training import train_state
import jax
import jax.numpy as jnp
import optax

from bigtune_jax.train import nnx_state


class TrainState(train_state.TrainState):
  rng: jax.Array
  skipped_steps: jax.Array  # shape=(), int32
  metric: jax.Array  # shape=(), float32: the last evaluation's monitored metric (or 0)
  metric_count: jax.Array  # shape=(), int32: evaluations so far
  early_stopping: Any = ()  # control.EarlyStoppingState or ()
  best_params: Any = ()  # like params, or ()


def accepts_train_flag(model: nn.Module) -> bool:
  """Whether ``model.__call__`` takes ``train=`` (dropout models do)."""
  return "train" in inspect.signature(type(model).__call__).parameters


def init_params(model: nn.Module, sample_input: jax.Array, seed: int = 0):
  """``model``'s parameters for inputs shaped like ``sample_input`` (jit-compiled init;
  compiled once per model configuration and input shape, not once per call).

  ``sample_input`` is a *batch*: its first axis is the examples (``images[:1]``, shape
  ``(1, 28, 28, 1)``), never one example (``images[0]``): an MLP would then take the 28
  rows for a batch and size its first kernel for 28 features. A scalar is refused here;
  ``fit`` and ``evaluate`` name any other mismatch with their data before a step.
  """
  sample_input = jnp.asarray(sample_input)
  if sample_input.ndim == 0:
    raise ValueError(f"sample_input must be a batch of examples (its first axis the batch, "
                     f"e.g. x[:1]), got a scalar {sample_input!r}")
  try:
    hash(model)
  except TypeError:  # a module with unhashable fields: compile for this call only
    return jax.jit(functools.partial(params_from_key, model))(jax.random.key(seed),
                                                              sample_input)
  return _init_jit(model, jax.random.key(seed), sample_input)


def params_from_key(model: nn.Module, key: jax.Array, x: jax.Array):
  """``model``'s parameters drawn from ``key`` for inputs like ``x`` (dropout off): the
  init of :func:`init_params`, traceable (populations vmap it over their seeds)."""
  kwargs = {"train": False} if accepts_train_flag(model) else {}
  return model.init(key, x, **kwargs)["params"]


_init_jit = jax.jit(params_from_key, static_argnums=0)


def create_train_state(model: nn.Module, params, tx: optax.GradientTransformation, *,
                       seed: int = 0) -> TrainState:
  """A fresh state at step 0.

  Args:
    model: the flax module (its ``apply`` becomes ``state.apply_fn``), linen or NNX.
    params: its parameters (e.g. from :func:`init_params`). For an ``nnx.Module``: None
      (its own ``nnx.Param`` state, ``nnx_state.params_of``; the arrays are the model's,
      which ``fit`` copies unless ``FitConfig.donate``) or a tree like that one.
    tx: the optimizer, any optax transform: ``bt.accumulate(...)`` for accumulation,
      ``optax.chain(..., bt.reduce_on_plateau())`` to follow the monitored metric,
      ``optax.inject_hyperparams`` to have ``fit`` log the learning rate.
    seed: base of the per-step dropout keys.
  """
  apply = model.apply if not nnx_state.is_nnx(model) else nnx_state.apply_fn(
      model, accepts_train_flag(model))
  if nnx_state.is_nnx(model):
    params = nnx_state.train_params(model, params)
  return TrainState.create(
      apply_fn=apply, params=params, tx=tx,
      rng=jax.random.key_data(jax.random.key(seed)),
      skipped_steps=jnp.zeros([], jnp.int32),
      # not NaN: a multi-host device_put checks that every process holds the same value
      metric=jnp.zeros([], jnp.float32), metric_count=jnp.zeros([], jnp.int32))
