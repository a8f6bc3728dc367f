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

**Traced hyperparameters.** ``tx`` is a static field of the state, so a train step is
compiled for one optimizer object: a new ``bt.adam(lr)`` per trial compiles the step again.
``create_train_state(model, params, make_optimizer=f, hparams={"learning_rate": 3e-3})``
instead builds the optimizer as ``optax.inject_hyperparams`` of ``f`` with the values
stored in the optimizer state (``opt_state.hyperparams``, float32) and rebuilt from there
at each update, ``tx = f(opt_state.hyperparams)``; the transform object itself is one per
``(f, names of hparams)`` (:func:`traced_optimizer`), so every trial of a structure (the
same model and loss objects, the same ``f``) runs the train step compiled for the first,
whatever its values: the contract of ``bt.tune.train_population``'s ``make_optimizer``,
for one model.
"""

import functools
import inspect
import math
import weakref
from collections.abc import Callable, Mapping
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


MakeOptimizer = Callable[[Mapping[str, jax.Array]], optax.GradientTransformation]
_TRACED: "weakref.WeakKeyDictionary[Callable, dict]" = weakref.WeakKeyDictionary()


def traced_optimizer(make_optimizer: MakeOptimizer,
                     names: tuple[str, ...]) -> optax.GradientTransformationExtraArgs:
  """``optax.inject_hyperparams`` of ``make_optimizer`` over the hyperparameters ``names``
  (float32), one object per ``(make_optimizer, names)``: its ``update`` rebuilds
  ``make_optimizer(state.hyperparams)`` from the values in its state, so states of any
  values share it, and the programs compiled for it. Its ``init`` holds placeholder
  values (zeros); :func:`create_train_state` initializes with the trial's own."""
  names = tuple(sorted(names))
  try:
    built = _TRACED.setdefault(make_optimizer, {})
  except TypeError:  # not weakly referable: one object for this call only
    built = {}
  if names not in built:
    built[names] = _inject(make_optimizer, names)(**dict.fromkeys(names, 0.0))
  return built[names]


def _inject(make_optimizer: MakeOptimizer, names: tuple[str, ...]):
  """``optax.inject_hyperparams`` of ``make_optimizer`` called with a dict: it binds the
  factory's signature, so the factory is given one keyword parameter per name."""
  def factory(**hparams):
    return make_optimizer(hparams)

  factory.__signature__ = inspect.Signature(
      [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY) for name in names])
  return optax.inject_hyperparams(factory, hyperparam_dtype=jnp.float32)


def _check_traced(tx, make_optimizer, hparams) -> None:
  """Exactly one of ``tx`` or ``make_optimizer`` + ``hparams`` (finite real scalars)."""
  if (tx is None) == (make_optimizer is None):
    raise ValueError("create_train_state takes either tx (an optax transform) or "
                     "make_optimizer with hparams (traced hyperparameters), not "
                     f"{'both' if tx is not None else 'neither'}")
  if make_optimizer is None:
    if hparams is not None:
      raise ValueError("hparams needs make_optimizer (hparams -> optax transform); with a "
                       "tx, the values are already in the transform")
    return
  if not callable(make_optimizer):
    raise ValueError(f"make_optimizer must be a callable hparams -> optax transform, got "
                     f"{make_optimizer!r}")
  if not isinstance(hparams, Mapping) or not hparams:
    raise ValueError(f"hparams must be a non-empty mapping {{name: number}}, got {hparams!r}")
  for name, value in hparams.items():
    if not (isinstance(name, str) and name.isidentifier()):
      raise ValueError(f"hparams names must be identifiers, got {name!r}")
    shape = getattr(value, "shape", ())
    try:
      number = float(value) if shape == () else math.nan
    except (TypeError, ValueError):
      number = math.nan
    if isinstance(value, bool) or not math.isfinite(number):
      raise ValueError(f"hparams[{name!r}] must be one finite real number, got {value!r}")


def create_train_state(model: nn.Module, params, tx: optax.GradientTransformation | None = None,
                       *, seed: int = 0, make_optimizer: MakeOptimizer | None = None,
                       hparams: Mapping[str, float] | None = None) -> TrainState:
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
    make_optimizer, hparams: instead of ``tx``, traced hyperparameters (module docstring):
      ``make_optimizer(h)`` builds the optax transform from ``h``, a dict of scalars that
      may be traced; ``hparams`` gives this state's values. ``fit`` logs
      ``hparams["learning_rate"]`` (if any) as ``lr``.

  Raises:
    ValueError: naming the argument, before any work.
  """
  _check_traced(tx, make_optimizer, hparams)
  if make_optimizer is not None:  # initialized with the trial's values, then the shared tx
    values = {name: float(value) for name, value in hparams.items()}
    tx = _inject(make_optimizer, tuple(sorted(values)))(**values)
  apply = model.apply if not nnx_state.is_nnx(model) else nnx_state.apply_fn(
      model, accepts_train_flag(model))
  if nnx_state.is_nnx(model):
    params = nnx_state.train_params(model, params)
  state = TrainState.create(
      apply_fn=apply, params=params, tx=tx,
      rng=jax.random.key_data(jax.random.key(seed)),
      skipped_steps=jnp.zeros([], jnp.int32),
      # not NaN: a multi-host device_put checks that every process holds the same value
      metric=jnp.zeros([], jnp.float32), metric_count=jnp.zeros([], jnp.int32))
  # a strongly typed int32 step, as a restored checkpoint's is: a weakly typed 0 made a
  # resumed fit trace and compile its train step again
  state = state.replace(step=jnp.zeros([], jnp.int32))
  if make_optimizer is None:
    return state
  return state.replace(tx=traced_optimizer(make_optimizer, tuple(hparams)))
