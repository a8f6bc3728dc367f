"""The embedded image dataset: scikit-learn's handwritten digits (seed 000 §4.1-4.2).

Seed 000 trains an MLP on 784 = 28 x 28 inputs (§4.1) and a SimpleCNN on 1 x 28 x 28
images (§4.2) from a ``train_loader`` it never defines; seed 004 §4.1 uses MNIST. MNIST
cannot be downloaded here (no network, ever), so the default is the real data that ships
inside scikit-learn: ``sklearn.datasets.load_digits``, 1,797 handwritten digits (UCI
"Optical Recognition of Handwritten Digits"), 8 x 8 pixels with values 0..16, about 180 per
class. MNIST or Fashion-MNIST files can be brought with ``--data-dir`` (see ``idx.py``).

Choices:

* Images are float32 in [0, 1] (the value / 16), NHWC ``(N, H, W, 1)``, labels int32; the
  same layout as every image dataset of this package (PyTorch's ``ToTensor`` range, Flax's
  channel-last order).
* ``image_size=28`` gives a 28 x 28 view for the seeds' 28 x 28 models. **It is an upsampled
  8 x 8 image, not MNIST**: the same 1,797 blurry digits, bilinearly interpolated (half-pixel
  centres, edge-normalized triangle weights; this equals ``jax.image.resize(...,
  method="linear")`` and is computed here with two small numpy matrices). It holds no more
  information than the 8 x 8 image, and accuracies on it are not comparable with MNIST's.
"""

import numpy as np

from bigtune_jax.validation import check_int

NUM_CLASSES = 10
NATIVE_SIZE = 8
_MAX_VALUE = 16.0  # load_digits pixels are counts of set bits in 4 x 4 blocks: 0..16


def _linear_weights(in_size: int, out_size: int) -> np.ndarray:
  """``(out_size, in_size)`` bilinear interpolation matrix with half-pixel centres."""
  source = (np.arange(out_size) + 0.5) * (in_size / out_size) - 0.5  # output centre, input coords
  weights = np.maximum(0.0, 1.0 - np.abs(source[:, None] - np.arange(in_size)[None, :]))
  return weights / weights.sum(axis=1, keepdims=True)  # rows at the border lose a neighbour


def resize_bilinear(images: np.ndarray, size: int) -> np.ndarray:
  """Resizes NHWC ``images`` to ``(N, size, size, C)`` by bilinear interpolation (float32)."""
  if images.ndim != 4:
    raise ValueError(f"images must be NHWC (4-D), got shape {images.shape}")
  size = check_int("size", size, 1)
  rows = _linear_weights(images.shape[1], size)
  cols = _linear_weights(images.shape[2], size)
  out = np.einsum("ih,nhwc,jw->nijc", rows, images.astype(np.float64), cols)
  return out.astype(np.float32)


def load_digits(*, image_size: int = NATIVE_SIZE) -> dict[str, np.ndarray]:
  """The 1,797 scikit-learn digits, in the fixed order scikit-learn ships them.

  Args:
    image_size: 8 for the native images; any larger size (28 for the seeds' MLP and
      SimpleCNN) gives the bilinearly upsampled view described in the module docstring.

  Returns:
    ``{"image": float32 (1797, image_size, image_size, 1) in [0, 1], "label": int32 (1797,)}``.
  """
  image_size = check_int("image_size", image_size, NATIVE_SIZE,
                         " (the digits are 8 x 8; 28 gives the upsampled view)")
  from sklearn import datasets  # deferred: scikit-learn takes about a second to import

  bunch = datasets.load_digits()  # read from the files inside the installed package
  images = (bunch.images / _MAX_VALUE).astype(np.float32)[..., None]  # (1797, 8, 8, 1)
  if image_size != NATIVE_SIZE:
    images = resize_bilinear(images, image_size)
  return {"image": images, "label": bunch.target.astype(np.int32)}
