"""Reduce-on-plateau and early stopping as pure, jittable state machines (seed 000 §3.4,
seed 004 §4.3).

``reduce_on_plateau`` is an optax transform, chained like any other
(``optax.chain(bt.adam(1e-3), bt.reduce_on_plateau())``): each
``update(updates, state, value=metric)`` consumes one metric (e.g. the validation loss of an
epoch) and multiplies the updates by ``state.scale``. A training loop that calls ``update``
every step but evaluates only now and then also passes ``value_count=`` (the number of
evaluations so far; ``bt.train`` does): the metric is then consumed once, on the first
update that sees a new count, and the updates in between are scaled by the current scale.
Its decision rule is PyTorch's ``ReduceLROnPlateau``, transcribed:

* better: ``a < best (1 - threshold)`` (min, rel), ``a < best - threshold`` (min, abs),
  ``a > best (1 + threshold)`` (max, rel), ``a > best + threshold`` (max, abs); ``best``
  starts at +inf (min) or -inf (max); a NaN metric is never better;
* a better metric resets the count of bad metrics, any other adds one; while a cooldown
  runs, it ticks down and bad metrics are not counted;
* when the count exceeds ``patience``: ``scale <- max(scale factor, min_scale)`` if that
  lowers it by more than ``eps``, then cooldown starts and the count resets.

optax.contrib.reduce_on_plateau has a different rule (rtol and atol together, no mode,
no eps), so this one is written here.

``EarlyStopping`` keeps the best metric and stops after ``patience`` updates in a row
without an improvement larger than ``min_delta``.
"""

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from bigtune_jax.transforms import dtypes
from bigtune_jax import validation

_MODES = ("min", "max")


def _improves(value, best, mode: str, delta, relative: bool = False):
  """Whether ``value`` beats ``best`` by more than ``delta`` (absolute or relative)."""
  if mode == "min":
    return value < (best * (1.0 - delta) if relative else best - delta)
  return value > (best * (1.0 + delta) if relative else best + delta)


def _scalar_metric(name: str, value, dtype) -> jax.Array:
  """``value`` as a 0-d array of ``dtype``; a metric with a shape is an error, not a batch."""
  message = f"{name} must be a real number (the monitored metric), got {value!r}"
  if value is None or isinstance(value, (str, bytes, bool)):
    raise ValueError(message)
  try:
    array = jnp.asarray(value)  # traced values pass through; objects and dicts do not
  except TypeError as error:
    raise ValueError(message) from error
  if not (jnp.issubdtype(array.dtype, jnp.integer) or jnp.issubdtype(array.dtype, jnp.floating)):
    raise ValueError(message)  # bool, complex, ...
  value = array.astype(dtype)
  if value.shape != ():
    raise ValueError(f"{name} must be a scalar metric, got shape {value.shape}")
  return value


class ReduceOnPlateauState(NamedTuple):
  """State of :func:`reduce_on_plateau`."""
  scale: jax.Array  # shape=(), float: current lr / initial lr
  best: jax.Array  # shape=(), float: best metric so far
  num_bad: jax.Array  # shape=(), int32: metrics since the last improvement
  cooldown_counter: jax.Array  # shape=(), int32: metrics left in the cooldown
  count: jax.Array  # shape=(), int32: metrics seen (the last `value_count` consumed)


def reduce_on_plateau(factor: float = 0.1, patience: int = 10, mode: str = "min",
                      threshold: float = 1e-4, threshold_mode: str = "rel",
                      cooldown: int = 0, min_scale: float = 0.0,
                      eps: float = 1e-8) -> optax.GradientTransformationExtraArgs:
  """Scales updates down by ``factor`` when a metric stops improving.

  Args:
    factor: multiplicative reduction in ``(0, 1)``.
    patience: metrics without improvement tolerated before reducing, integer >= 0.
    mode: ``"min"`` (lower metric is better) or ``"max"``.
    threshold: improvement margin >= 0, relative or absolute per ``threshold_mode``.
    threshold_mode: ``"rel"`` or ``"abs"``.
    cooldown: metrics to wait after a reduction before counting again, integer >= 0.
    min_scale: lower bound of the scale, >= 0 (PyTorch's ``min_lr / lr``).
    eps: smallest reduction of the scale that is applied (PyTorch's ``eps / lr``).

  Returns:
    A transform whose update takes the metric as ``value=`` (and optionally
    ``value_count=``, module docstring); ``state.scale`` is the current ``lr / lr0`` and
    equals PyTorch's learning-rate ratio for the same metrics.

  Example:
    >>> import jax.numpy as jnp, optax
    >>> tx = optax.chain(optax.sgd(0.1), reduce_on_plateau(factor=0.5, patience=0))
    >>> params = {"w": jnp.ones(2)}
    >>> state = tx.init(params)
    >>> for metric in [1.0, 2.0]:  # one update per evaluation
    ...   updates, state = tx.update(params, state, params, value=metric)
    >>> float(state[1].scale)  # 2.0 did not improve on 1.0: halved
    0.5
  """
  validation.check_interval("factor", factor, 0.0, 1.0, low_closed=False)
  validation.check_int("patience", patience, 0)
  validation.check_choice("mode", mode, _MODES)
  validation.check_non_negative("threshold", threshold)
  validation.check_choice("threshold_mode", threshold_mode, ("rel", "abs"))
  validation.check_int("cooldown", cooldown, 0)
  validation.check_non_negative("min_scale", min_scale)
  validation.check_non_negative("eps", eps)

  def init_fn(params):
    dtype = dtypes.state_dtype(params)
    zero = lambda: jnp.zeros([], jnp.int32)  # one buffer per field: states get donated
    worst = jnp.inf if mode == "min" else -jnp.inf
    return ReduceOnPlateauState(scale=jnp.ones([], dtype), best=jnp.asarray(worst, dtype),
                                num_bad=zero(), cooldown_counter=zero(), count=zero())

  def update_fn(updates, state, params=None, *, value=None, value_count=None, **extra_args):
    del params, extra_args
    value = _scalar_metric("value", value, state.best.dtype)
    if value_count is None:  # every update brings a metric
      new_state = _consume(state, value, optax.safe_increment(state.count))
    else:
      value_count = jnp.asarray(value_count, jnp.int32)
      new_state = jax.tree.map(lambda new, old: jnp.where(value_count > state.count, new, old),
                               _consume(state, value, value_count), state)
    # At scale 1 the updates pass as they are: XLA would otherwise fuse the product into
    # the parameter update differently (1 ulp), and a run with a plateau would not be bit
    # for bit the run without one until its first cut.
    scale = new_state.scale
    updates = jax.tree.map(lambda u: jnp.where(scale == 1, u, (scale * u).astype(u.dtype)),
                           updates)
    return updates, new_state

  def _consume(state, value, count) -> ReduceOnPlateauState:
    """The state after PyTorch's rule has seen ``value``, the ``count``-th metric."""
    better = _improves(value, state.best, mode, threshold, relative=threshold_mode == "rel")
    best = jnp.where(better, value, state.best)
    num_bad = jnp.where(better, 0, state.num_bad + 1)
    in_cooldown = state.cooldown_counter > 0
    cooldown_counter = jnp.where(in_cooldown, state.cooldown_counter - 1, state.cooldown_counter)
    num_bad = jnp.where(in_cooldown, 0, num_bad)
    reduce = num_bad > patience
    reduced = jnp.maximum(state.scale * factor, min_scale)
    scale = jnp.where(reduce & (state.scale - reduced > eps), reduced, state.scale)
    cooldown_counter = jnp.where(reduce, cooldown, cooldown_counter)
    num_bad = jnp.where(reduce, 0, num_bad)
    return ReduceOnPlateauState(scale, best, num_bad.astype(jnp.int32),
                                cooldown_counter.astype(jnp.int32),
                                jnp.asarray(count, jnp.int32))

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


class EarlyStoppingState(NamedTuple):
  """State of :class:`EarlyStopping`."""
  best: jax.Array  # shape=(), float: best metric so far
  best_step: jax.Array  # shape=(), int32: index of the update that gave `best` (-1: none)
  num_bad: jax.Array  # shape=(), int32: updates in a row without improvement
  step: jax.Array  # shape=(), int32: updates seen
  should_stop: jax.Array  # shape=(), bool: latched once patience is exhausted


@dataclasses.dataclass(frozen=True)
class EarlyStopping:
  """Stops training when a metric has not improved for ``patience`` updates in a row.

  Improvement means better than ``best`` by more than ``min_delta``. ``should_stop``
  becomes true on the update that makes ``patience`` non-improving updates in a row
  (``patience=0`` stops at the first non-improving update, as in Keras) and stays true.
  Pure: ``update`` returns a new state and can be jitted, vmapped or scanned.

  Example:
    >>> import bigtune_jax as bt
    >>> stopper = bt.EarlyStopping(patience=2)
    >>> state = stopper.init()
    >>> for loss in [1.0, 0.5, 0.6, 0.7]:
    ...   state = stopper.update(state, loss)
    >>> bool(state.should_stop), float(state.best), int(state.best_step)
    (True, 0.5, 1)

  To restore the best parameters, keep a copy with :meth:`select_best` after each update;
  ``bt.train.fit`` does so when ``restore_best`` is set (Keras' ``restore_best_weights``)
  and puts them back when training ends.
  """
  patience: int
  min_delta: float = 0.0
  mode: str = "min"
  restore_best: bool = False  # for bt.train.fit: keep and restore the best parameters

  def __post_init__(self):
    validation.check_int("patience", self.patience, 0)
    validation.check_non_negative("min_delta", self.min_delta)
    validation.check_choice("mode", self.mode, _MODES)
    if not isinstance(self.restore_best, bool):
      raise ValueError(f"restore_best must be True or False, got {self.restore_best!r}")

  def init(self, dtype=None) -> EarlyStoppingState:
    """A fresh state; ``dtype`` of ``best`` defaults to JAX's default float."""
    worst = jnp.inf if self.mode == "min" else -jnp.inf
    zero = lambda: jnp.zeros([], jnp.int32)  # one buffer per field: states get donated
    return EarlyStoppingState(best=jnp.asarray(worst, dtype), best_step=zero() - 1,
                              num_bad=zero(), step=zero(), should_stop=jnp.zeros([], bool))

  def update(self, state: EarlyStoppingState, metric) -> EarlyStoppingState:
    """Consumes one metric and returns the new state."""
    metric = _scalar_metric("metric", metric, state.best.dtype)
    improved = _improves(metric, state.best, self.mode, self.min_delta)
    num_bad = jnp.where(improved, 0, state.num_bad + 1).astype(jnp.int32)
    stop = state.should_stop | (~improved & (num_bad >= self.patience))
    return EarlyStoppingState(
        best=jnp.where(improved, metric, state.best),
        best_step=jnp.where(improved, state.step, state.best_step).astype(jnp.int32),
        num_bad=num_bad, step=state.step + 1, should_stop=stop)

  @staticmethod
  def select_best(state: EarlyStoppingState, best_params, params):
    """``params`` if the last update was an improvement, else ``best_params``."""
    improved = state.best_step == state.step - 1
    return jax.tree.map(lambda b, p: jnp.where(improved, p, b), best_params, params)
