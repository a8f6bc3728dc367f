"""The training state: flax's ``TrainState`` plus what the fit loop must carry across a
restart.

``flax.training.train_state.TrainState`` holds ``step``, ``params``, ``tx`` and
``opt_state``. Added here, all of it checkpointed so that a resumed run continues
bit for bit:

* ``rng``: the base key; the dropout key of step ``t`` is ``fold_in(rng, t)``, so no key
  has to be split and carried, and step ``t`` draws the same mask after a resume;
* ``skipped_steps``: steps whose loss or gradients were not finite, skipped by the NaN
  guard of ``step.py``;
* ``plateau``: the state of a ``bt.reduce_on_plateau`` driven by the validation metric
  (its ``scale`` multiplies every update), or ``()`` when unused;
* ``early_stopping``: the state of a ``bt.EarlyStopping``, or ``()``;
* ``best_params``: a copy of the parameters at the best validation metric, kept when
  early stopping should restore them, or ``()``.
"""

import functools
import inspect
from typing import Any

import flax.linen as nn
from flax.training import train_state
import jax
import jax.numpy as jnp
import optax

from bigtune_jax import control


class TrainState(train_state.TrainState):
  rng: jax.Array
  skipped_steps: jax.Array  # shape=(), int32
  plateau: Any = ()  # control.ReduceOnPlateauState or ()
  early_stopping: Any = ()  # control.EarlyStoppingState or ()
  best_params: Any = ()  # like params, or ()


def accepts_train_flag(model: nn.Module) -> bool:
  """Whether ``model.__call__`` takes ``train=`` (dropout models do)."""
  return "train" in inspect.signature(type(model).__call__).parameters


def init_params(model: nn.Module, sample_input: jax.Array, seed: int = 0):
  """``model``'s parameters for inputs shaped like ``sample_input`` (jit-compiled init;
  compiled once per model configuration and input shape, not once per call)."""
  sample_input = jnp.asarray(sample_input)
  try:
    hash(model)
  except TypeError:  # a module with unhashable fields: compile for this call only
    return jax.jit(functools.partial(_init, model))(jax.random.key(seed), sample_input)
  return _init_jit(model, jax.random.key(seed), sample_input)


def _init(model: nn.Module, key, x):
  kwargs = {"train": False} if accepts_train_flag(model) else {}
  return model.init(key, x, **kwargs)["params"]


_init_jit = jax.jit(_init, static_argnums=0)


def create_train_state(model: nn.Module, params, tx: optax.GradientTransformation, *,
                       seed: int = 0, plateau: optax.GradientTransformationExtraArgs | None = None,
                       early_stopping: control.EarlyStopping | None = None,
                       keep_best_params: bool = False) -> TrainState:
  """A fresh state at step 0.

  Args:
    model: the flax module (its ``apply`` becomes ``state.apply_fn``).
    params: its parameters (e.g. from :func:`init_params`).
    tx: the optimizer, any optax transform (``bt.accumulate(...)`` for accumulation).
    seed: base of the per-step dropout keys.
    plateau: a ``bt.reduce_on_plateau(...)`` fed the validation metric by ``fit``.
    early_stopping: a ``bt.EarlyStopping`` fed the validation metric by ``fit``.
    keep_best_params: keep a copy of the best parameters (to restore on an early stop).

  Raises:
    ValueError: a ``plateau`` with an optimizer whose updates must stay unscaled
      (``bt.compress.prune``: ``scale * update`` would leave pruned weights non-zero).
  """
  state = TrainState.create(
      apply_fn=model.apply, params=params, tx=tx,
      rng=jax.random.key_data(jax.random.key(seed)),
      skipped_steps=jnp.zeros([], jnp.int32),
      plateau=plateau.init(params) if plateau is not None else (),
      early_stopping=early_stopping.init(jnp.float32) if early_stopping is not None else (),
      best_params=jax.tree.map(jnp.copy, params) if keep_best_params else ())
  if plateau is not None and _needs_unscaled_updates(state.opt_state):
    raise ValueError(
        "plateau cannot drive an optimizer whose updates must reach the parameters "
        "unscaled (e.g. bt.compress.prune: a scaled update would leave pruned weights "
        "non-zero); schedule the learning rate inside the wrapped optimizer instead")
  return state


def _needs_unscaled_updates(opt_state) -> bool:
  """Whether a state in ``opt_state`` belongs to a transform whose updates the plateau's
  ``scale`` must not multiply (its class sets ``needs_unscaled_updates = True``)."""
  marked = lambda x: getattr(type(x), "needs_unscaled_updates", False)  # noqa: E731
  return any(marked(x) for x in jax.tree.leaves(opt_state, is_leaf=marked))
