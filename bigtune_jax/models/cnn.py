"""Convolutional classifiers: ``SimpleCNN`` (seed 000 §4.2) and ``VGG16`` (seed 004 §4.2-4.3).

Inputs are NHWC, ``(B, H, W, C)``, the layout XLA prefers; outputs are logits.

``SimpleCNN`` is the seed's network layer for layer: conv 1->10 (5x5, no padding), ReLU,
2x2 max-pool; conv 10->20 (5x5), ReLU, 2x2 max-pool; flatten (320 features for a 28x28
input); dense 50, ReLU; dense ``num_classes``: 21,840 parameters for 10 classes. The seed
has no dropout (unlike the PyTorch MNIST example it resembles), so neither has this. Two
differences, neither changing the function class: the flatten is in (H, W, C) order rather
than PyTorch's (C, H, W), and the initializers are Flax's (LeCun normal, zero bias) rather
than PyTorch's uniform ones. Spatial sizes below 16x16 leave nothing after the second pool.

``VGG16`` is configuration D of Simonyan & Zisserman, "Very Deep Convolutional Networks for
Large-Scale Image Recognition" (ICLR 2015): thirteen 3x3 convolutions with ReLU in five
stages (64, 64, M, 128, 128, M, 256 x3, M, 512 x3, M, 512 x3, M), then a classifier
4096-4096-classes with ReLU and dropout 0.5 after each hidden layer. The seed writes it as an
``nn.Sequential`` for CIFAR-10 (32x32): the 1x1x512 map is flattened to 512 features, and its
classifier ends 4096 -> 1000 -> ReLU -> dropout -> 10, an ImageNet head with a 10-class
layer bolted on. Here the head goes straight to ``num_classes``, as in the paper and
torchvision. The input size is free in one of two ways, chosen by ``pool_size``:

* ``pool_size=7`` (default): adaptive average pooling to 7x7 before flattening, exactly as
  ``torchvision.models.vgg16`` (``nn.AdaptiveAvgPool2d((7, 7))``), so a 224x224 input with
  1000 classes has torchvision's 138,357,544 parameters.
* ``pool_size=None``: flatten right after the conv stack, as the seed does; the classifier's
  input width is then ``512 * (H/32) * (W/32)`` (512 for CIFAR-10). Prefer it for 32x32
  inputs: pooling a 1x1 map "up" to 7x7 copies it 49 times into a 25,088-wide input.

``width`` scales every conv's channels and ``classifier_width`` the two hidden dense layers,
so ``VGG16(num_classes=10, width=0.125, classifier_width=64, pool_size=None)`` is a CPU-sized
network of the same shape. Initialization follows torchvision (He normal, fan-out, for the
convolutions; N(0, 0.01) for the dense layers; zero biases): a plain 16-layer ReLU net
trains poorly from Flax's default LeCun init, which shrinks activations ~sqrt(2)x a layer.
"""

import math
from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from bigtune_jax import validation


class SimpleCNN(nn.Module):
  """The seed's two-conv network: ``(B, 28, 28, 1) -> (B, num_classes)`` logits.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from bigtune_jax.models import SimpleCNN
    >>> model = SimpleCNN(num_classes=10)
    >>> params = model.init(jax.random.key(0), jnp.ones((2, 28, 28, 1)))
    >>> model.apply(params, jnp.ones((2, 28, 28, 1))).shape
    (2, 10)
  """
  num_classes: int = 10

  def __post_init__(self):
    validation.check_int("num_classes", self.num_classes, 1)
    super().__post_init__()

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    return simple_cnn_forward(
        x, nn.Conv(10, (5, 5), padding="VALID", name="conv1"),
        nn.Conv(20, (5, 5), padding="VALID", name="conv2"), nn.Dense(50, name="fc1"),
        nn.Dense(self.num_classes, name="fc2"))


def check_simple_cnn_input(shape: tuple[int, ...]) -> None:
  """Images ``(batch, height, width, channels)`` of at least 16 x 16 pixels."""
  if len(shape) != 4 or min(shape[1:3]) < 16:  # two VALID 5x5 convs and two 2x2 pools
    raise ValueError(f"SimpleCNN takes images (batch, height, width, channels) of at least "
                     f"16 x 16 pixels (two 5x5 convolutions and two 2x2 pools), got shape "
                     f"{tuple(shape)}; upsample small images, e.g. load_dataset('digits', "
                     f"image_size=28)")


def simple_cnn_forward(x: jax.Array, conv1: Callable, conv2: Callable, fc1: Callable,
                       fc2: Callable) -> jax.Array:
  """SimpleCNN's math, shared by the linen and NNX modules (layers given, 5x5 VALID convs):
  conv1, ReLU, 2x2 max-pool, conv2, ReLU, 2x2 max-pool, flatten (H, W, C), fc1, ReLU, fc2."""
  check_simple_cnn_input(x.shape)
  x = nn.relu(conv1(x))  # (B, 24, 24, 10)
  x = nn.max_pool(x, (2, 2), strides=(2, 2))  # (B, 12, 12, 10)
  x = nn.relu(conv2(x))  # (B, 8, 8, 20)
  x = nn.max_pool(x, (2, 2), strides=(2, 2))  # (B, 4, 4, 20)
  x = x.reshape((x.shape[0], -1))  # (B, 320)
  x = nn.relu(fc1(x))  # (B, 50)
  return fc2(x)  # (B, num_classes)


# Configuration D: output channels of each 3x3 conv, "M" a 2x2 max-pool.
VGG16_LAYERS: tuple[int | str, ...] = (
    64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")


def _adaptive_pool_matrix(size_in: int, size_out: int) -> np.ndarray:
  """(size_out, size_in) averaging weights of PyTorch's adaptive pooling along one axis.

  Output cell i averages input cells floor(i * n / m) .. ceil((i + 1) * n / m) - 1.
  """
  weights = np.zeros((size_out, size_in), np.float32)
  for i in range(size_out):
    start = (i * size_in) // size_out
    end = -((-(i + 1) * size_in) // size_out)  # ceil
    weights[i, start:end] = 1.0 / (end - start)
  return weights


def adaptive_avg_pool(x: jax.Array, size: int) -> jax.Array:
  """``torch.nn.AdaptiveAvgPool2d((size, size))`` for NHWC: ``(B, H, W, C) -> (B, size, size, C)``.

  Each axis is averaged with a fixed (size, n) matrix, so any input size works: smaller maps
  are repeated (a 1x1 map becomes 7x7 copies), larger ones averaged over overlapping windows.
  """
  _, height, width, _ = x.shape
  if (height, width) == (size, size):
    return x
  rows = jnp.asarray(_adaptive_pool_matrix(height, size), x.dtype)  # (size, H)
  cols = jnp.asarray(_adaptive_pool_matrix(width, size), x.dtype)  # (size, W)
  return jnp.einsum("ih,bhwc,jw->bijc", rows, x, cols)


class VGG16(nn.Module):
  """VGG-16 (configuration D): ``(B, H, W, C) -> (B, num_classes)`` logits.

  Attributes:
    num_classes: outputs per example.
    width: multiplier on every conv's channels (``> 0``; each conv keeps at least 1).
    classifier_width: units of the two hidden dense layers (4096 in the paper).
    dropout_rate: in ``[0, 1)``, after each hidden dense layer when ``train=True``.
    pool_size: adaptive-average-pool the last feature map to ``pool_size`` squared cells
      (torchvision), or ``None`` to flatten it as it is (the seed).

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from bigtune_jax.models import VGG16
    >>> model = VGG16(num_classes=10, width=0.125, classifier_width=64, pool_size=None)
    >>> x = jnp.ones((2, 32, 32, 3))
    >>> model.apply(model.init(jax.random.key(0), x), x).shape
    (2, 10)
  """
  num_classes: int = 1000
  width: float = 1.0
  classifier_width: int = 4096
  dropout_rate: float = 0.5
  pool_size: int | None = 7

  def __post_init__(self):
    validation.check_int("num_classes", self.num_classes, 1)
    validation.check_interval("width", self.width, 0.0, math.inf, low_closed=False)
    validation.check_int("classifier_width", self.classifier_width, 1)
    validation.check_interval("dropout_rate", self.dropout_rate, 0.0, 1.0)
    if self.pool_size is not None:
      validation.check_int("pool_size", self.pool_size, 1)
    super().__post_init__()

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
    conv_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")
    dense_init = nn.initializers.normal(0.01)
    convs = 0
    for layer in VGG16_LAYERS:
      if layer == "M":
        x = nn.max_pool(x, (2, 2), strides=(2, 2))  # (B, H/2, W/2, C)
      else:
        channels = max(1, round(layer * self.width))
        x = nn.Conv(channels, (3, 3), padding=1, kernel_init=conv_init, name=f"conv{convs}")(x)
        x = nn.relu(x)  # (B, H, W, channels)
        convs += 1
    if self.pool_size is not None:
      x = adaptive_avg_pool(x, self.pool_size)  # (B, pool_size, pool_size, C)
    x = x.reshape((x.shape[0], -1))  # (B, 7 * 7 * C) or (B, H/32 * W/32 * C)
    for i in range(2):
      x = nn.relu(nn.Dense(self.classifier_width, kernel_init=dense_init, name=f"fc{i}")(x))
      x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)  # (B, classifier_width)
    return nn.Dense(self.num_classes, kernel_init=dense_init, name="head")(x)  # (B, classes)
