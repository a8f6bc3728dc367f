"""Gradual pruning's sparsity schedule (Zhu & Gupta, 2017; seed 004 §3.1.1).

Zhu & Gupta, "To prune, or not to prune: exploring the efficacy of pruning for model
compression" (arXiv:1710.01878), raise the sparsity from an initial :math:`s_i` at step
:math:`t_0` to a final :math:`s_f` over :math:`n` pruning updates :math:`\\Delta t` steps apart:

.. math::
  s_t = s_f + (s_i - s_f)\\left(1 - \\frac{t - t_0}{n \\Delta t}\\right)^3,
  \\qquad t \\in \\{t_0,\\ t_0 + \\Delta t,\\ \\dots,\\ t_0 + n \\Delta t\\}

It prunes fast while many weights are redundant and slowly near the end. Here
``end_step`` is :math:`t_0 + n\\Delta t`; between updates the sparsity is held at the last
update's value (``t`` is rounded down to ``t_0 + k\\Delta t``), ``end_step`` itself always
reaches :math:`s_f`, before ``begin_step`` nothing is pruned and after ``end_step`` the
sparsity stays :math:`s_f`. With :math:`s_i = 0` this is jaxpruner's ``PolynomialSchedule``
(power 3): :math:`s = s_f\\,(1 - (1 - p)^3)`, :math:`p = (t - t_0) / (t_\\text{end} - t_0)`.

``step`` counts updates done: ``schedule(t)`` is the sparsity of the weights after ``t``
updates (``prune`` evaluates it at its update count + 1).
"""

from collections.abc import Callable

import jax
import jax.numpy as jnp

from bigtune_jax import validation

SparsitySchedule = Callable[[jax.Array | int], jax.Array]


def polynomial_sparsity(final_sparsity, begin_step: int, end_step: int, *,
                        update_every: int = 1, initial_sparsity=0.0,
                        power: int = 3) -> SparsitySchedule:
  """Zhu & Gupta's polynomial schedule ``step -> sparsity`` (see the module docstring).

  Args:
    final_sparsity: :math:`s_f` in ``[0, 1)``; may be a traced array.
    begin_step: :math:`t_0`, the first pruning update (integer >= 0).
    end_step: the last one, where :math:`s_f` is reached (integer >= ``begin_step``).
    update_every: :math:`\\Delta t`, steps between mask updates (integer >= 1).
    initial_sparsity: :math:`s_i` in ``[0, 1)``, the sparsity at ``begin_step``.
    power: the exponent, 3 in the paper (integer >= 1).

  Returns:
    A jittable schedule: ``schedule(step)`` is a float32 scalar.

  Example:
    >>> schedule = polynomial_sparsity(0.9, begin_step=0, end_step=100, update_every=10)
    >>> [round(float(schedule(t)), 4) for t in (0, 9, 10, 50, 100, 500)]
    [0.0, 0.0, 0.2439, 0.7875, 0.9, 0.9]
  """
  validation.check_interval("final_sparsity", final_sparsity, 0.0, 1.0)
  validation.check_interval("initial_sparsity", initial_sparsity, 0.0, 1.0)
  validation.check_int("begin_step", begin_step, 0)
  validation.check_int("end_step", end_step, begin_step)
  validation.check_int("update_every", update_every, 1)
  validation.check_int("power", power, 1)
  length = max(end_step - begin_step, 1)

  def schedule(step):
    step = jnp.asarray(step, jnp.int32)
    since_begin = jnp.clip(step - begin_step, 0, length)
    last_update = (since_begin // update_every) * update_every
    progress = jnp.where(step >= end_step, 1.0, last_update / length).astype(jnp.float32)
    sparsity = final_sparsity + (initial_sparsity - final_sparsity) * (1.0 - progress) ** power
    return jnp.where(step < begin_step, 0.0, sparsity).astype(jnp.float32)

  return schedule
