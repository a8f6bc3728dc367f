"""LSTM sequence classifier (seed 000 §4.3; Hochreiter & Schmidhuber, 1997).

The seed's ``ComplexRNN`` runs a one-layer ``nn.LSTM`` over ``(B, T, F)`` and maps the last
hidden state through a linear layer to the classes. It then applies ``nn.Softmax`` and feeds
the probabilities to ``F.cross_entropy``, which applies log-softmax again: a double softmax,
whose loss is bounded below by ``-log(e / (e + K - 1))`` and whose gradients vanish as the
model grows confident. That is a bug, and this module fixes it: it returns **logits**; use
``optax.softmax_cross_entropy_with_integer_labels`` on them, or ``jax.nn.softmax`` for
probabilities.

The cell is the standard LSTM (the same gates as ``torch.nn.LSTM``)::

  i = sigmoid(x W_ii + h W_hi + b_i)    f = sigmoid(x W_if + h W_hf + b_f)
  g = tanh(x W_ig + h W_hg + b_g)       o = sigmoid(x W_io + h W_ho + b_o)
  c' = f * c + i * g                    h' = o * tanh(c')

with zero initial state. Flax keeps one bias per gate where PyTorch keeps two
(``bias_ih + bias_hh``), so it has ``4 * hidden_size`` fewer parameters and the same
functions; initializers are Flax's (LeCun normal input kernels, orthogonal recurrent
kernels, zero biases). An image is classified by reading its rows as the sequence: NHWC
images ``(B, H, W, C)`` are read as ``H`` steps of ``W * C`` features, so a ``(B, 28, 28, 1)``
digit is 28 steps of 28 pixels.
"""

import flax.linen as nn
import jax

from bigtune_jax import validation


class LSTMClassifier(nn.Module):
  """One LSTM layer, then a dense head on the last hidden state: ``(B, T, F) -> (B, K)`` logits.

  NHWC images ``(B, H, W, C)`` are read row by row, as ``(B, H, W * C)``.

  Attributes:
    hidden_size: LSTM state width.
    num_classes: logits per sequence.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from bigtune_jax.models import LSTMClassifier
    >>> model = LSTMClassifier(hidden_size=32, num_classes=10)
    >>> x = jnp.ones((2, 28, 28, 1))  # read as 28 rows of 28 pixels
    >>> model.apply(model.init(jax.random.key(0), x), x).shape
    (2, 10)
  """
  hidden_size: int = 128
  num_classes: int = 10

  def __post_init__(self):
    validation.check_int("hidden_size", self.hidden_size, 1)
    validation.check_int("num_classes", self.num_classes, 1)
    super().__post_init__()

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    if x.ndim == 4:  # NHWC image: one step per row
      x = x.reshape(x.shape[0], x.shape[1], -1)  # (B, H, W * C)
    if x.ndim != 3:
      raise ValueError("LSTMClassifier expects sequences (batch, time, features) or NHWC "
                       f"images (batch, height, width, channels), got shape {x.shape}")
    lstm = nn.RNN(nn.OptimizedLSTMCell(self.hidden_size, name="lstm"), return_carry=True)
    (_, h), _ = lstm(x)  # carry (c, h), each (B, hidden_size); outputs (B, T, hidden_size)
    return nn.Dense(self.num_classes, name="head")(h)  # (B, num_classes)
