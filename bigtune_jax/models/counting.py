"""Parameter counting for any model's parameter tree, concrete or abstract.

Works on ``model.init(...)`` results and on ``jax.eval_shape(model.init, ...)`` results
(``jax.ShapeDtypeStruct`` leaves), so the size of a model too large for this machine is
known without allocating it. Logical-partitioning boxes are unwrapped first.
"""

import math
from typing import Any

import flax.linen as nn
import jax
import numpy as np


def count_params(params: Any) -> int:
  """Total number of scalars in a pytree of arrays or ``jax.ShapeDtypeStruct``.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from bigtune_jax.models import SimpleCNN, count_params
    >>> shapes = jax.eval_shape(SimpleCNN().init, jax.random.key(0), jnp.ones((1, 28, 28, 1)))
    >>> count_params(shapes)
    21840
  """
  leaves = jax.tree.leaves(nn.unbox(params))
  return sum(math.prod(np.shape(leaf)) for leaf in leaves)
