"""L2 and L1 regularization as gradient terms (seed 003 §6.4, seed 004 §3.2.3).

.. math::
  \\text{L2:}\\; g \\leftarrow g + \\lambda w \\qquad\\qquad
  \\text{L1:}\\; g \\leftarrow g + \\lambda \\operatorname{sign}(w)

These are the gradients of :math:`\\tfrac{\\lambda}{2}\\lVert w\\rVert_2^2` and of
:math:`\\lambda\\lVert w\\rVert_1` (with the subgradient 0 at 0). Put them *before* the
optimizer: ``optax.chain(bt.l2(1e-4), bt.sgd(0.1))`` equals
``torch.optim.SGD(lr=0.1, weight_decay=1e-4)``. (Before Adam this is L2-regularized Adam,
not AdamW's decoupled decay: use ``optax.adamw`` for that.)
"""

from typing import Any

import jax
import jax.numpy as jnp
import optax

from bigtune_jax import validation


def l2(weight_decay: float, mask: Any = None) -> optax.GradientTransformation:
  """Adds ``weight_decay * w`` to the gradient (``optax.add_decayed_weights``).

  Args:
    weight_decay: lambda >= 0.
    mask: optional pytree of booleans (or a callable ``params -> pytree``) selecting
      the leaves to regularize, e.g. to leave biases and norms alone.
  """
  validation.check_non_negative("weight_decay", weight_decay)
  return optax.with_extra_args_support(optax.add_decayed_weights(weight_decay, mask))


def _add_sign(strength: float) -> optax.GradientTransformation:
  """``g + strength * sign(w)``; optax has no L1 gradient term."""

  def init_fn(params):
    del params
    return optax.EmptyState()

  def update_fn(updates, state, params=None):
    if params is None:
      raise ValueError("bt.l1 needs params: call update(grads, state, params)")
    updates = jax.tree.map(lambda g, w: g + strength * jnp.sign(w).astype(g.dtype),
                           updates, params)
    return updates, state

  return optax.GradientTransformation(init_fn, update_fn)


def l1(strength: float, mask: Any = None) -> optax.GradientTransformation:
  """Adds ``strength * sign(w)`` to the gradient.

  Args:
    strength: lambda >= 0.
    mask: optional pytree of booleans (or callable) selecting the leaves to regularize.
  """
  validation.check_non_negative("strength", strength)
  transform = _add_sign(strength)
  transform = transform if mask is None else optax.masked(transform, mask)
  return optax.with_extra_args_support(transform)
