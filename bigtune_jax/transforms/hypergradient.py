"""Hypergradient descent: the learning rate is learned online (seed 003 §3.1.3 "dynamic
gradient descent", §3.3; Baydin et al., ICLR 2018).

An optimizer steps :math:`w_t = w_{t-1} - \\alpha_t d_t`, with :math:`d_t` the direction
(:math:`g_t` for SGD, :math:`\\hat m_t/(\\sqrt{\\hat v_t}+\\epsilon)` for Adam). The loss
at :math:`w_{t-1}` depends on the previous rate through :math:`w_{t-1}`, so its derivative
is the *hypergradient*

.. math::
  h_t = \\frac{\\partial f(w_{t-1})}{\\partial \\alpha_{t-1}} = -\\, g_t \\cdot d_{t-1},
  \\qquad \\alpha_t = \\alpha_{t-1} - \\beta\\, h_t = \\alpha_{t-1} + \\beta\\, g_t \\cdot d_{t-1}

with :math:`d_0 = 0` (the first step keeps :math:`\\alpha_0`). When consecutive steps
agree the rate grows; when they oscillate it shrinks. SGD-HD and Adam-HD are this one
wrapper around ``optax.identity()`` and ``optax.scale_by_adam``. The current rate is
``state.learning_rate``. optax has no hypergradient transform, so it is written here.
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from bigtune_jax.transforms import dtypes
from bigtune_jax import validation


class HypergradientState(NamedTuple):
  """State of :func:`hypergradient_descent`."""
  learning_rate: jax.Array  # shape=(), dtype=float32 or wider: the current rate alpha_t
  previous_direction: optax.Updates  # like params: d_{t-1} (zeros before the first step)
  inner_state: optax.OptState  # state of the direction transform


def _real_vdot(xs, ys, dtype) -> jax.Array:
  """``Re(sum_i conj(x_i) y_i)`` over two trees, accumulated in the real ``dtype``.

  The rate is real, also for complex parameters (optax's convention for complex vdot). An
  elementwise product and a full sum rather than ``optax.tree.vdot``: under a mesh with
  ``AxisType.Explicit`` axes a dot product over a sharded dimension has an ambiguous output
  sharding (``ShardingTypeError``), while a full reduction is replicated.
  """
  total = jnp.zeros([], dtype)
  for x, y in zip(jax.tree.leaves(xs), jax.tree.leaves(ys)):
    total = total + jnp.sum(jnp.real(jnp.conj(x) * y).astype(dtype))
  return total


def hypergradient_descent(direction: optax.GradientTransformation, learning_rate: float,
                          hyper_lr: float) -> optax.GradientTransformation:
  """Steps ``-alpha_t * direction(g)``, learning ``alpha_t`` by hypergradient descent.

  Args:
    direction: transform producing the unscaled direction d_t from the gradient.
    learning_rate: the initial rate alpha_0 (a scalar >= 0 or a traced array).
    hyper_lr: the hypergradient step beta >= 0 (``0`` keeps alpha fixed).
  """
  validation.check_learning_rate("learning_rate", learning_rate, allow_schedule=False)
  validation.check_non_negative("hyper_lr", hyper_lr)

  def init_fn(params):
    dtype = dtypes.state_dtype(params)
    return HypergradientState(
        learning_rate=jnp.asarray(learning_rate, dtype),
        previous_direction=optax.tree.zeros_like(params),
        inner_state=direction.init(params))

  def update_fn(updates, state, params=None):
    dtype = state.learning_rate.dtype
    hypergradient = -_real_vdot(updates, state.previous_direction, dtype)
    rate = state.learning_rate - hyper_lr * hypergradient
    new_direction, inner_state = direction.update(updates, state.inner_state, params)
    updates = jax.tree.map(lambda d: (-rate * d).astype(d.dtype), new_direction)
    return updates, HypergradientState(rate, new_direction, inner_state)

  return optax.with_extra_args_support(optax.GradientTransformation(init_fn, update_fn))


def hypergradient_sgd(learning_rate: float, hyper_lr: float) -> optax.GradientTransformation:
  """SGD-HD (Baydin et al. 2018, Algorithm "SGD-HD"): ``alpha += beta * g_t . g_{t-1}``.

  Baydin et al. use ``hyper_lr = 0.001`` for SGD-HD on MNIST-scale problems.
  """
  return hypergradient_descent(optax.identity(), learning_rate, hyper_lr)


def hypergradient_adam(learning_rate: float = 1e-3, hyper_lr: float = 1e-7, b1: float = 0.9,
                       b2: float = 0.999, eps: float = 1e-8) -> optax.GradientTransformation:
  """Adam-HD (Baydin et al. 2018): Adam whose rate follows its hypergradient.

  Defaults are the paper's (``hyper_lr = 1e-7``).
  """
  validation.check_interval("b1", b1, 0.0, 1.0)
  validation.check_interval("b2", b2, 0.0, 1.0)
  validation.check_non_negative("eps", eps)
  return hypergradient_descent(optax.scale_by_adam(b1=b1, b2=b2, eps=eps), learning_rate,
                               hyper_lr)
