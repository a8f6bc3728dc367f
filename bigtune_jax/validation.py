"""The argument checks of the whole library, at the bottom of its import graph (it imports
only JAX and NumPy, so models, data and the engine check arguments without importing the
optimizer package).

One rule for counts (sizes, steps, seeds): a Python or NumPy integer (or a 0-d integer
array) passes; ``True``, integral floats such as ``32.0``, ``inf``, ``nan``, ``None`` and
strings are refused, as ``range`` and ``numpy.zeros`` refuse them.

Every check runs at construction, before any work, and raises one ``ValueError``
that names the argument, the accepted range and the value received. Traced
values (inside ``jax.jit`` / ``jax.vmap`` / ``optax.inject_hyperparams`` updates)
cannot be inspected and are accepted as they are, so that a population of
hyperparameters can be trained in one program; schedules (callables) are
accepted wherever a learning rate is, except where the rate is a number that something
else transforms (a schedule's own values, hypergradient descent's initial rate).
"""

from collections.abc import Collection
import math
from typing import Any

import jax
import numpy as np


def _concrete_scalar(name: str, value: Any) -> float | None:
  """Returns ``value`` as a float, or None when it is traced and cannot be checked."""
  if isinstance(value, jax.core.Tracer):
    return None
  try:
    array = np.asarray(value)
  except Exception as error:  # e.g. an object that is not a number at all
    raise ValueError(f"{name} must be a real scalar, got {value!r}") from error
  if array.ndim != 0 or not np.issubdtype(array.dtype, np.number) or np.iscomplexobj(array):
    raise ValueError(f"{name} must be a real scalar, got {value!r}")
  return float(array)


def check_learning_rate(name: str, value: Any, *, allow_schedule: bool = True,
                        dtype: Any = np.float32) -> None:
  """A learning rate: a scalar in ``[0, finfo(dtype).max]``, a traced array, or (if
  ``allow_schedule``) a schedule.

  The rate must be finite in the ``dtype`` it is used in (float32 by default, the dtype of
  the parameters and of optax's ``scale_by_learning_rate``): ``1e40`` is a finite Python
  float but ``inf`` in float32, and every update it scales is then skipped by the engine's
  NaN guard, so it is refused here, at construction.
  """
  if callable(value):
    if allow_schedule:
      return
    raise ValueError(f"{name} must be a finite number >= 0, not a schedule, got {value!r}")
  x = _concrete_scalar(name, value)
  largest = float(np.finfo(dtype).max)
  if x is not None and not (math.isfinite(x) and 0 <= x <= largest):
    or_schedule = " (or a schedule)" if allow_schedule else ""
    raise ValueError(f"{name} must be a finite number >= 0 and <= {largest:.4g} (finite in "
                     f"{np.dtype(dtype).name}){or_schedule}, got {value!r}")


def check_interval(name: str, value: Any, low: float, high: float, *,
                   low_closed: bool = True, high_closed: bool = False) -> None:
  """A scalar inside an interval, e.g. ``[0, 1)`` for an EMA decay."""
  x = _concrete_scalar(name, value)
  if x is None:
    return
  above = x >= low if low_closed else x > low
  below = x <= high if high_closed else x < high
  if not (math.isfinite(x) and above and below):
    interval = f"{'[' if low_closed else '('}{low}, {high}{']' if high_closed else ')'}"
    raise ValueError(f"{name} must be in {interval}, got {value!r}")


def check_non_negative(name: str, value: Any) -> None:
  """A finite scalar >= 0 (regularization strengths, thresholds, ...)."""
  x = _concrete_scalar(name, value)
  if x is not None and not (math.isfinite(x) and x >= 0):
    raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")


def check_int(name: str, value: Any, minimum: Any, note: str = "") -> Any:
  """An integer >= ``minimum`` (counts: patience, steps, k, sizes, seeds); returns it
  (a Python ``int`` when concrete). ``note`` is added to the error.

  Integer-valued 0-d arrays pass too (``optax.inject_hyperparams`` turns ints into int32
  arrays), and traced values are not inspected.
  """
  if isinstance(value, jax.core.Tracer) or isinstance(minimum, jax.core.Tracer):
    return value
  integral = isinstance(value, (int, np.integer)) or (
      isinstance(value, (np.ndarray, jax.Array)) and value.ndim == 0
      and np.issubdtype(value.dtype, np.integer))
  if isinstance(value, bool) or not integral or value < minimum:
    raise ValueError(f"{name} must be an integer >= {minimum}{note}, got {value!r}")
  return int(value)


def check_eval_every(eval_every: Any) -> None:
  """Steps between evaluations, an integer >= 1, or None: once per epoch. The one meaning
  ``eval_every`` has in ``bt.train.FitConfig`` and the population trainers."""
  if eval_every is not None:
    check_int("eval_every", eval_every, 1, " or None (once per epoch)")


def check_choice(name: str, value: Any, choices: Collection[str]) -> None:
  """One of a fixed set of strings."""
  if value not in choices:
    accepted = ", ".join(repr(c) for c in choices)
    raise ValueError(f"{name} must be one of {accepted}, got {value!r}")


def check_token_ids(ids: Any, vocab_size: int, where: str) -> None:
  """Token ids (any integer array on the host or a device) within ``[0, vocab_size)``.

  A ``ValueError`` names the first offending id, its position, the vocabulary size and
  ``where`` the ids came from (e.g. ``"generate's prompt"``, ``"the train split"``); an
  out-of-range id would otherwise be clipped by the embedding lookup (a wrong model) or give
  NaN losses. Traced ids cannot be inspected and pass. One min/max pass: cheap next to a step.
  """
  if isinstance(ids, jax.core.Tracer):
    return
  array = np.asarray(ids)
  if array.size == 0:
    return
  if not np.issubdtype(array.dtype, np.integer):
    raise ValueError(f"{where}: token ids must be integers, got dtype {array.dtype}")
  low, high = array.min(), array.max()
  if low >= 0 and high < vocab_size:
    return
  bad = int(low) if low < 0 else int(high)
  position = tuple(int(i) for i in np.unravel_index(np.argmax(array == bad), array.shape))
  raise ValueError(f"{where}: token id {bad} at position {position} is outside the model's "
                   f"vocabulary [0, {vocab_size}); was the data tokenized with another tokenizer?")
