"""Gradient descent and stochastic gradient descent (seed 000 §3.1, seed 001 §3.1.1-3.1.2,
seed 002 §3.1, seed 003 §3.1.1-3.1.2).

.. math::
  w_{t+1} = w_t - \\eta_t \\, g_t

GD and SGD share this rule: they differ only in whether :math:`g_t` is the gradient of
the full-batch loss or of a mini-batch. Composed from ``optax.scale_by_learning_rate``;
equals ``torch.optim.SGD(lr)``.
"""

import optax

from bigtune_jax import validation


def sgd(learning_rate: optax.ScalarOrSchedule) -> optax.GradientTransformation:
  """Plain (stochastic) gradient descent, ``w <- w - lr * g``.

  Args:
    learning_rate: a scalar >= 0, a traced array, or a schedule ``step -> lr``.

  Returns:
    An ``optax.GradientTransformation``.

  Example:
    >>> import jax.numpy as jnp, optax, bigtune_jax as bt
    >>> opt = bt.sgd(0.1)
    >>> params = {"w": jnp.ones(2)}
    >>> updates, _ = opt.update({"w": jnp.ones(2)}, opt.init(params))
    >>> optax.apply_updates(params, updates)["w"]
    Array([0.9, 0.9], dtype=float32)
  """
  validation.check_learning_rate("learning_rate", learning_rate)
  return optax.with_extra_args_support(optax.scale_by_learning_rate(learning_rate))
