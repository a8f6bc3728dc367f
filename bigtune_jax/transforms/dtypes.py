"""The dtype of a transform's scalar state, from concrete or abstract parameters."""

from typing import Any

import jax
import jax.numpy as jnp


def leaf_dtype(x: Any) -> Any:
  """``x.dtype`` for arrays and ``jax.ShapeDtypeStruct`` (no array is made), else numpy's."""
  return x.dtype if hasattr(x, "dtype") else jnp.asarray(x).dtype


def state_dtype(params) -> Any:
  """float32, or the widest real float of the parameters (float64 under x64; float32 for
  complex64 parameters: rates, scales and norms are real).

  Works on ``jax.ShapeDtypeStruct`` leaves, so ``init`` builds a large model's optimizer
  state from shapes alone, as optax's own transforms do.
  """
  widest = jnp.result_type(jnp.float32, *[leaf_dtype(p) for p in jax.tree.leaves(params)])
  return jnp.finfo(widest).dtype
