"""Assertions and test data behind one small module, so the backend (chex) could change."""

import chex
import numpy as np


def assert_trees_close(actual, expected, *, rtol=1e-9, atol=0.0):
  """Asserts two pytrees have the same structure and allclose leaves."""
  chex.assert_trees_all_close(actual, expected, rtol=rtol, atol=atol)


def random_tree(rng: np.random.Generator, dtype=np.float64):
  """A nested pytree with leaves of several shapes (scalar, vector, matrix, 3-d)."""
  return {
      "dense": {"kernel": rng.standard_normal((5, 3)).astype(dtype),
                "bias": rng.standard_normal((3,)).astype(dtype)},
      "conv": [rng.standard_normal((2, 3, 4)).astype(dtype)],
      "scale": np.asarray(rng.standard_normal(), dtype=dtype),
  }
