"""``SimpleCNN`` as an ``nnx.Module``: the linen ``bt.models.SimpleCNN``'s math
(``simple_cnn_forward``) and layout (``conv1``, ``conv2``, ``fc1``, ``fc2``)."""

from collections.abc import Sequence

from flax import nnx
import jax

from bigtune_jax import validation
from bigtune_jax.models import cnn as linen_cnn


class SimpleCNN(nnx.Module):
  """The seed's two-conv network: ``(B, H, W, C) -> (B, num_classes)`` logits.

  Args:
    num_classes: outputs per example.
    in_channels: ``C`` of the input images.
    image_size: ``(H, W)``, at least 16 x 16; sets ``fc1``'s input width
      (``20 * h * w`` with ``h = ((H - 4) // 2 - 4) // 2``: 320 for 28 x 28).
    rngs: the parameters' initialization keys.

  Example:
    >>> from flax import nnx
    >>> import jax.numpy as jnp
    >>> from bigtune_jax.models import nnx as nnx_models
    >>> model = nnx_models.SimpleCNN(num_classes=10, rngs=nnx.Rngs(0))
    >>> model(jnp.ones((2, 28, 28, 1))).shape
    (2, 10)
  """

  def __init__(self, num_classes: int = 10, *, in_channels: int = 1,
               image_size: Sequence[int] = (28, 28), rngs: nnx.Rngs):
    validation.check_int("num_classes", num_classes, 1)
    validation.check_int("in_channels", in_channels, 1)
    linen_cnn.check_simple_cnn_input((1, *tuple(image_size), in_channels))
    height, width = (((size - 4) // 2 - 4) // 2 for size in image_size)
    self.conv1 = nnx.Conv(in_channels, 10, (5, 5), padding="VALID", rngs=rngs)
    self.conv2 = nnx.Conv(10, 20, (5, 5), padding="VALID", rngs=rngs)
    self.fc1 = nnx.Linear(height * width * 20, 50, rngs=rngs)
    self.fc2 = nnx.Linear(50, num_classes, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    return linen_cnn.simple_cnn_forward(x, self.conv1, self.conv2, self.fc1, self.fc2)
