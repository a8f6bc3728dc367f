"""Accumulated-norm adaptive learning rate (seed 001 §3.1.4).

.. math::
  \\alpha_t = \\frac{\\alpha}{1 + \\beta \\sum_{i=1}^{t} \\lVert g_i \\rVert^2}, \\qquad
  w_{t+1} = w_t - \\alpha_t g_t

:math:`\\lVert\\cdot\\rVert` is the global L2 norm over the whole gradient tree and the sum
includes the current step. One scalar of state: the rate decays as the squared gradient
norms accumulate, like AdaGrad-Norm (Ward, Wu & Bottou, 2019, which divides by the square
root of the sum instead). optax has no transform with this formula, so it is written here.
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from bigtune_jax.transforms import dtypes
from bigtune_jax import validation


class ScaleByAccumulatedNormState(NamedTuple):
  """State of :func:`scale_by_accumulated_norm`."""
  sum_squared_norm: jax.Array  # shape=(), dtype=float32 or wider: sum_i ||g_i||^2


def scale_by_accumulated_norm(beta: float) -> optax.GradientTransformation:
  """Scales the updates by ``1 / (1 + beta * sum_{i<=t} ||g_i||^2)``; ``beta >= 0``."""
  validation.check_non_negative("beta", beta)

  def init_fn(params):
    return ScaleByAccumulatedNormState(jnp.zeros([], dtypes.state_dtype(params)))

  def update_fn(updates, state, params=None):
    del params
    total = state.sum_squared_norm + optax.tree.norm(updates, squared=True).astype(
        state.sum_squared_norm.dtype)
    factor = 1.0 / (1.0 + beta * total)
    updates = jax.tree.map(lambda g: (factor * g).astype(g.dtype), updates)
    return updates, ScaleByAccumulatedNormState(total)

  return optax.with_extra_args_support(optax.GradientTransformation(init_fn, update_fn))


def adaptive_sgd(learning_rate: optax.ScalarOrSchedule,
                 beta: float) -> optax.GradientTransformation:
  """SGD whose rate decays with the accumulated squared gradient norm.

  Args:
    learning_rate: the base rate alpha (a scalar >= 0, a traced array, or a schedule).
    beta: decay factor >= 0 (``beta = 0`` is plain SGD).

  Returns:
    ``optax.chain(scale_by_accumulated_norm(beta), scale_by_learning_rate(lr))``.
  """
  validation.check_learning_rate("learning_rate", learning_rate)
  return optax.chain(scale_by_accumulated_norm(beta),
                     optax.scale_by_learning_rate(learning_rate))
