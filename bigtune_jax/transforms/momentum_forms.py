"""The two momentum forms of the seeds.

Heavy-ball momentum with the learning rate inside the buffer (seed 000 §3.2;
Polyak 1964, Sutskever et al. 2013):

.. math::
  v_{t+1} = \\gamma v_t + \\eta_t g_t, \\qquad w_{t+1} = w_t - v_{t+1}, \\qquad v_0 = 0

For a constant learning rate this equals ``torch.optim.SGD(lr=eta, momentum=gamma)``
(PyTorch keeps ``b = gamma b + g`` and steps ``eta b``, the same sequence of updates).
With a schedule the two differ: here each gradient keeps the learning rate of the step
it was taken at.

Exponential-moving-average momentum (seed 001 §3.1.3):

.. math::
  v_{t+1} = \\beta v_t + (1 - \\beta) g_t, \\qquad w_{t+1} = w_t - \\alpha_t v_{t+1}, \\qquad v_0 = 0

(no bias correction). For constant rates the two forms are the same algorithm:
``ema_momentum(alpha, beta)`` takes exactly the steps of ``momentum(alpha (1 - beta), beta)``
(multiply the EMA recursion by :math:`\\alpha`); at the same nominal rate, heavy-ball steps
are about :math:`1/(1-\\gamma)` times larger. Both are compositions of optax primitives.
"""

import optax

from bigtune_jax import validation


def momentum(learning_rate: optax.ScalarOrSchedule,
             gamma: float = 0.9) -> optax.GradientTransformation:
  """Heavy-ball momentum, ``v <- gamma v + lr g; w <- w - v``.

  Args:
    learning_rate: a scalar >= 0, a traced array, or a schedule ``step -> lr``.
    gamma: momentum factor in ``[0, 1)``.

  Returns:
    ``optax.chain(scale_by_learning_rate(lr), trace(gamma))``.
  """
  validation.check_learning_rate("learning_rate", learning_rate)
  validation.check_interval("gamma", gamma, 0.0, 1.0)
  return optax.chain(optax.scale_by_learning_rate(learning_rate),
                     optax.trace(decay=gamma))


def ema_momentum(learning_rate: optax.ScalarOrSchedule,
                 beta: float = 0.9) -> optax.GradientTransformation:
  """EMA momentum, ``v <- beta v + (1 - beta) g; w <- w - lr v``.

  Args:
    learning_rate: a scalar >= 0, a traced array, or a schedule ``step -> lr``.
    beta: averaging factor in ``[0, 1)``.

  Returns:
    ``optax.chain(ema(beta, debias=False), scale_by_learning_rate(lr))``.
  """
  validation.check_learning_rate("learning_rate", learning_rate)
  validation.check_interval("beta", beta, 0.0, 1.0)
  return optax.chain(optax.ema(decay=beta, debias=False),
                     optax.scale_by_learning_rate(learning_rate))
