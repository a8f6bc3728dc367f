"""Gradient accumulation over micro-batches (seed 004 §2.3, §3.1.3, §4.2).

.. math::
  \\bar g = \\frac{1}{k} \\sum_{j=1}^{k} g^{(j)}, \\qquad
  \\text{apply the optimizer to } \\bar g \\text{ once every } k \\text{ calls}

With equal micro-batches, the mean of the micro-batch gradients is the gradient of the
mean loss over their concatenation, so ``accumulate(opt, k)`` on ``k`` micro-batches
takes the same step as ``opt`` on the ``k``-times larger batch, with ``1/k`` of the
activation memory. Between the updates it returns zero updates. This is
``optax.MultiSteps``; ``optax.MultiSteps(...).has_updated(state)`` tells whether the
last call applied an update.
"""

from typing import Any

import jax
import jax.numpy as jnp
import optax

from bigtune_jax.transforms import dtypes
from bigtune_jax import validation


def accumulate(optimizer: optax.GradientTransformation, k: int, *,
               accumulator_dtype: Any = jnp.float32) -> optax.GradientTransformationExtraArgs:
  """Applies ``optimizer`` to the mean of every ``k`` consecutive gradients.

  Args:
    optimizer: the inner optax transformation.
    k: number of micro-batches per update, an integer >= 1.
    accumulator_dtype: dtype of the running sum of gradients (optax's default,
      float32; pass ``jnp.float64`` for float64 training and a complex dtype for complex
      parameters, which a real accumulator refuses at ``init``).

  Returns:
    ``optax.MultiSteps(optimizer, k).gradient_transformation()`` (its state and update).
  """
  validation.check_int("k", k, 1)
  if not hasattr(optimizer, "init") or not hasattr(optimizer, "update"):
    raise ValueError(f"optimizer must be an optax GradientTransformation, got {optimizer!r}")
  multi_steps = optax.MultiSteps(optimizer, every_k_schedule=int(k),
                                 accumulator_dtype=accumulator_dtype).gradient_transformation()
  real_accumulator = not jnp.issubdtype(jnp.dtype(accumulator_dtype), jnp.complexfloating)

  def init_fn(params):
    if real_accumulator and any(jnp.issubdtype(dtypes.leaf_dtype(p), jnp.complexfloating)
                                for p in jax.tree.leaves(params)):
      raise ValueError(f"params are complex but accumulator_dtype is {jnp.dtype(accumulator_dtype)}"
                       ", which would drop the imaginary parts of the gradients; pass "
                       "accumulator_dtype=jnp.complex64 (or complex128)")
    return multi_steps.init(params)

  return optax.GradientTransformationExtraArgs(init_fn, multi_steps.update)
