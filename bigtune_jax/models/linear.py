"""Linear regression, ``y = x W + b`` (seed 002 §4.4).

The seed defines ``LinearRegression`` as one ``nn.Linear(1, 1)`` but then trains a bare
tensor ``theta`` instead of the module (and draws its targets from ``theta = 0``, so they
are pure noise). Here the module is the model: one ``nn.Dense`` whose parameters the
optimizer updates. Inputs are ``(B, F)``; ``features`` outputs per example (1 by default,
as in the seed). Train it with a mean squared error, as the seed does.
"""

import flax.linen as nn
import jax

from bigtune_jax import validation


class LinearRegression(nn.Module):
  """A single affine layer: ``(B, F) -> (B, features)``.

  Attributes:
    features: outputs per example (``>= 1``).

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from bigtune_jax.models import LinearRegression
    >>> model = LinearRegression()
    >>> params = model.init(jax.random.key(0), jnp.ones((4, 1)))
    >>> model.apply(params, jnp.ones((4, 1))).shape
    (4, 1)
  """
  features: int = 1

  def __post_init__(self):
    validation.check_int("features", self.features, 1)
    super().__post_init__()

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    return nn.Dense(self.features, name="linear")(x)  # (B, features)
