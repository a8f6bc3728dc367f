"""Multi-layer perceptron classifier (seed 000 §4.1; structure tunables from seed 000 §2.3).

The seed's ``SimpleMLP`` is 784-256-10 with one ReLU: ``MLP(hidden=(256,), num_classes=10)``.
Seed 000 §2.3 names "Layer Number" and "Hidden Unit Number" as hyperparameters to tune, so
depth and widths are one tuple, ``hidden``, rather than a fixed pair of layers. Differences
from the seed: inputs of any shape ``(B, ...)`` are flattened here (the seed calls
``data.view(-1, 784)`` in its training loop), the activation is selectable, and optional
dropout (Srivastava et al., 2014) follows every hidden activation. The output is logits,
as in the seed (its ``F.cross_entropy`` applies the log-softmax).
"""

from collections.abc import Callable, Sequence
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp

from bigtune_jax import validation

# "gelu" is the exact erf form, as torch.nn.GELU(); jax.nn.gelu defaults to the tanh form.
ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "relu": jax.nn.relu,
    "sigmoid": jax.nn.sigmoid,
    "tanh": jnp.tanh,
    "gelu": functools.partial(jax.nn.gelu, approximate=False),
}


def resolve_activation(name: str, activation: str | Callable) -> Callable:
  """Returns the activation function for a name in ``ACTIVATIONS`` or a callable."""
  if callable(activation):
    return activation
  validation.check_choice(name, activation, ACTIVATIONS)
  return ACTIVATIONS[activation]


def check_mlp_fields(hidden, num_classes, activation, dropout_rate) -> None:
  """The fields of ``MLP`` (linen and NNX alike), each checked by name."""
  if isinstance(hidden, (str, bytes)) or not isinstance(hidden, Sequence):
    raise ValueError(f"hidden must be a sequence of integers >= 1 (one per hidden layer), "
                     f"got {hidden!r}")
  for i, width in enumerate(hidden):
    validation.check_int(f"hidden[{i}]", width, 1)
  validation.check_int("num_classes", num_classes, 1)
  resolve_activation("activation", activation)
  validation.check_interval("dropout_rate", dropout_rate, 0.0, 1.0)


def mlp_forward(x: jax.Array, hidden_layers: Sequence[Callable], head: Callable,
                act: Callable, dropouts: Sequence[Callable]) -> jax.Array:
  """The MLP's math, shared by the linen and NNX modules: ``x`` flattened to ``(B, D)``,
  then ``dropout_i(act(layer_i(x)))`` for each hidden layer, then ``head``: logits."""
  x = x.reshape((x.shape[0], -1))  # (B, D)
  for layer, dropout in zip(hidden_layers, dropouts, strict=True):
    x = dropout(act(layer(x)))  # (B, hidden[i])
  return head(x)  # (B, num_classes)


class MLP(nn.Module):
  """Dense layers with an activation between them: ``(B, ...) -> (B, num_classes)`` logits.

  Attributes:
    hidden: width of each hidden layer, in order; its length is the number of hidden
      layers (``()`` gives multinomial logistic regression).
    num_classes: outputs (logits) per example.
    activation: ``"relu"``, ``"sigmoid"``, ``"tanh"``, ``"gelu"`` (exact) or a callable.
    dropout_rate: in ``[0, 1)``; applied after each hidden activation when ``train=True``,
      drawing from the ``'dropout'`` rng.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from bigtune_jax.models import MLP
    >>> model = MLP(hidden=(256,), num_classes=10)  # the seed's 784-256-10
    >>> params = model.init(jax.random.key(0), jnp.ones((2, 28, 28)))
    >>> model.apply(params, jnp.ones((2, 28, 28))).shape
    (2, 10)
  """
  hidden: Sequence[int] = (256,)
  num_classes: int = 10
  activation: str | Callable[[jax.Array], jax.Array] = "relu"
  dropout_rate: float = 0.0

  def __post_init__(self):
    check_mlp_fields(self.hidden, self.num_classes, self.activation, self.dropout_rate)
    super().__post_init__()

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
    layers = [nn.Dense(width, name=f"hidden_{i}") for i, width in enumerate(self.hidden)]
    dropouts = [nn.Dropout(self.dropout_rate, deterministic=not train) for _ in layers]
    return mlp_forward(x, layers, nn.Dense(self.num_classes, name="head"),
                       resolve_activation("activation", self.activation), dropouts)
