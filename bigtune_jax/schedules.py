"""Learning-rate schedules (seed 002 §3.2, §4.2-4.3; seed 004 §3.1.4): callables
``step -> lr`` usable wherever optax takes a schedule.

.. math::
  \\text{constant: } \\eta_t = \\eta \\qquad
  \\text{exponential: } \\eta_t = \\eta\\,\\gamma^{\\lfloor t/k \\rfloor} \\qquad
  \\text{step: } \\eta_t = \\eta\\,\\gamma^{\\lfloor t/s \\rfloor}

warmup + cosine (Loshchilov & Hutter 2017; Goyal et al. 2017 for the warmup), as
used to train large language models:

.. math::
  \\eta_t = \\begin{cases}
    \\eta_0 + (\\eta_{max} - \\eta_0)\\, t / W & t < W \\\\
    \\eta_{end} + (\\eta_{max} - \\eta_{end})\\, \\tfrac12 \\left(1 + \\cos \\pi \\tfrac{t - W}{T - W}\\right)
      & W \\le t \\le T \\\\
    \\eta_{end} & t > T
  \\end{cases}

optax's schedule factories have these formulas but branch in Python on their values
(``if decay_rate == 0``), so they cannot take traced hyperparameters; these are plain
``jnp`` expressions, so a population of schedules can be trained under ``jax.vmap``.
"""

from collections.abc import Callable

import jax
import jax.numpy as jnp

from bigtune_jax import validation

Schedule = Callable[[jax.typing.ArrayLike], jax.Array]


def constant(learning_rate: float) -> Schedule:
  """A fixed learning rate (seed 002 §3.2 "固定学习率")."""
  validation.check_learning_rate("learning_rate", learning_rate, allow_schedule=False)
  return lambda step: jnp.asarray(learning_rate) * jnp.ones_like(step, dtype=float)


def exponential_decay(learning_rate: float, gamma: float, every: int = 1) -> Schedule:
  """``lr * gamma ** floor(step / every)``.

  Equals ``torch.optim.lr_scheduler.ExponentialLR(gamma)`` stepped once per ``every``
  steps (seed 002 §4.2).

  Args:
    learning_rate: initial rate >= 0.
    gamma: decay per period, in ``(0, 1]``.
    every: period in steps, an integer >= 1.
  """
  validation.check_learning_rate("learning_rate", learning_rate, allow_schedule=False)
  validation.check_interval("gamma", gamma, 0.0, 1.0, low_closed=False, high_closed=True)
  validation.check_int("every", every, 1)

  def schedule(step):
    return learning_rate * jnp.power(gamma, jnp.floor_divide(step, every))

  return schedule


def step_decay(learning_rate: float, step_size: int, gamma: float = 0.1) -> Schedule:
  """``lr * gamma ** floor(step / step_size)``: equals ``torch.optim.lr_scheduler.StepLR``
  (seed 002 §4.3). The same formula as :func:`exponential_decay` with ``every=step_size``.

  Args:
    learning_rate: initial rate >= 0.
    step_size: steps between decays, an integer >= 1.
    gamma: multiplicative decay in ``(0, 1]``.
  """
  validation.check_int("step_size", step_size, 1)
  return exponential_decay(learning_rate, gamma, every=step_size)


def warmup_cosine_decay(learning_rate: float, warmup_steps: int, total_steps: int,
                        init_lr: float = 0.0, end_lr: float = 0.0) -> Schedule:
  """Linear warmup from ``init_lr`` to ``learning_rate`` (the peak) over ``warmup_steps``,
  then cosine decay to ``end_lr`` at ``total_steps``, constant after. (The rate is named
  ``learning_rate``, as in every schedule here and in the optimizers.)

  Args:
    learning_rate: the peak rate, reached at the end of warmup, >= 0.
    warmup_steps: integer >= 0.
    total_steps: integer > ``warmup_steps`` (warmup included).
    init_lr: rate at step 0, >= 0.
    end_lr: final rate, >= 0.
  """
  validation.check_learning_rate("learning_rate", learning_rate, allow_schedule=False)
  validation.check_learning_rate("init_lr", init_lr, allow_schedule=False)
  validation.check_learning_rate("end_lr", end_lr, allow_schedule=False)
  validation.check_int("warmup_steps", warmup_steps, 0)
  validation.check_int("total_steps", total_steps, warmup_steps + 1)

  def schedule(step):
    step = jnp.asarray(step)
    warm = init_lr + (learning_rate - init_lr) * step / jnp.maximum(warmup_steps, 1)
    progress = jnp.clip((step - warmup_steps) / (total_steps - warmup_steps), 0.0, 1.0)
    cosine = end_lr + (learning_rate - end_lr) * 0.5 * (1.0 + jnp.cos(jnp.pi * progress))
    return jnp.where(step < warmup_steps, warm, cosine)

  return schedule
