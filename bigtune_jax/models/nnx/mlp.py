"""``MLP`` as an ``nnx.Module``: the linen ``bt.models.MLP``'s math (``mlp_forward``) and
parameter layout (``hidden_0 .. hidden_{n-1}``, ``head``, each a ``kernel`` and ``bias``)."""

from collections.abc import Callable
from collections.abc import Sequence

from flax import nnx
import jax

from bigtune_jax import validation
from bigtune_jax.models import mlp as linen_mlp
from bigtune_jax.models.nnx.dropout import dropout_layers


class MLP(nnx.Module):
  """Dense layers with an activation between them: ``(B, ...) -> (B, num_classes)`` logits.

  Args:
    in_features: features of one flattened input (784 for 28 x 28 images).
    hidden, num_classes, activation, dropout_rate: as the linen ``bt.models.MLP``.
    rngs: the parameters' initialization keys (``nnx.Rngs(seed)``).

  Call ``model(x)`` for logits, ``model(x, train=True, rng=key)`` with dropout (the key of
  layer ``i`` is ``fold_in(key, i)``).

  Example:
    >>> from flax import nnx
    >>> import jax.numpy as jnp
    >>> from bigtune_jax.models import nnx as nnx_models
    >>> model = nnx_models.MLP(784, hidden=(256,), num_classes=10, rngs=nnx.Rngs(0))
    >>> model(jnp.ones((2, 28, 28))).shape
    (2, 10)
  """

  def __init__(self, in_features: int, hidden: Sequence[int] = (256,), num_classes: int = 10,
               activation: str | Callable[[jax.Array], jax.Array] = "relu",
               dropout_rate: float = 0.0, *, rngs: nnx.Rngs):
    validation.check_int("in_features", in_features, 1)
    linen_mlp.check_mlp_fields(hidden, num_classes, activation, dropout_rate)
    self.hidden, self.activation, self.dropout_rate = tuple(hidden), activation, dropout_rate
    widths = (in_features, *self.hidden)
    for i, (width_in, width_out) in enumerate(zip(widths, self.hidden)):
      setattr(self, f"hidden_{i}", nnx.Linear(width_in, width_out, rngs=rngs))
    self.head = nnx.Linear(widths[-1], num_classes, rngs=rngs)

  def __call__(self, x: jax.Array, *, train: bool = False,
               rng: jax.Array | None = None) -> jax.Array:
    layers = [getattr(self, f"hidden_{i}") for i in range(len(self.hidden))]
    return linen_mlp.mlp_forward(
        x, layers, self.head, linen_mlp.resolve_activation("activation", self.activation),
        dropout_layers(len(layers), self.dropout_rate, train, rng))
