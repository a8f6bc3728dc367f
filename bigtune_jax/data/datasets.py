"""``load_dataset``: one entry point for every dataset, embedded or from ``--data-dir``.

=================  ==========================================  =================================
name               data_dir=None (embedded, no network)        data_dir=DIR (files users bring)
=================  ==========================================  =================================
``digits``         scikit-learn digits, 8 x 8 (``digits.py``)  --
``mnist``          -- (use ``digits``, ``image_size=28``)      IDX files (``idx.py``)
``fashion_mnist``  --                                          IDX files (``idx.py``)
``cifar10``        --                                          binary or python batches
``linear_toy``     seed 002 §4.4 toy (``toy.py``)              --
``text``           Python's pydoc topics (``text.py``)         a .txt file or a folder of them
=================  ==========================================  =================================

A dataset with no embedded copy and no ``data_dir`` raises a ``ValueError`` saying what to
pass; nothing is ever downloaded, and nothing falls back silently to other data.

Splits (always the keys "train", "validation" and, except for text, "test"):

* digits, linear_toy: ``test_fraction`` and ``validation_fraction`` of the examples, the rest
  train; stratified by label for digits unless ``stratify=False`` (``splits.py``).
* mnist, fashion_mnist, cifar10: the official test set; validation is ``validation_fraction``
  of the official training set.
* text: the last ``validation_fraction`` of the bytes is validation; no test split.

Image values become float32 in [0, 1] (bytes / 255, digits / 16), NHWC; labels int32.
"""

import numpy as np

from bigtune_jax.data import cifar
from bigtune_jax.data import digits
from bigtune_jax.data import idx
from bigtune_jax.data import splits
from bigtune_jax.data import text
from bigtune_jax.data import toy
from bigtune_jax.data.pipeline import ArrayDataset
from bigtune_jax.validation import check_int

DATASETS = ("digits", "mnist", "fashion_mnist", "cifar10", "linear_toy", "text")
_EMBEDDED = ("digits", "linear_toy", "text")
_FROM_FILES = ("mnist", "fashion_mnist", "cifar10", "text")
_SPLIT_THREE_WAYS = ("digits", "linear_toy")  # no official test set: test_fraction applies
DEFAULT_BLOCK_SIZE = 128


def _images_to_unit(split: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  image = split["image"].astype(np.float32)
  image /= 255.0  # in place: no second float32 copy of the images
  return {"image": image, "label": split["label"]}


def _check_options(name, data_dir, validation_fraction, test_fraction, image_size, block_size):
  if name not in DATASETS:
    raise ValueError(f"unknown dataset {name!r}; expected one of {DATASETS}")
  if data_dir is None and name not in _EMBEDDED:
    raise ValueError(f"dataset {name!r} has no embedded copy and nothing is downloaded: pass "
                     "data_dir=... (--data-dir) with its files, or use 'digits' (image_size=28 "
                     "gives an upsampled 28 x 28 view)")
  if data_dir is not None and name not in _FROM_FILES:
    raise ValueError(f"dataset {name!r} is embedded and reads no files; data_dir must be None, "
                     f"got {data_dir!r}")
  for field, value in (("validation_fraction", validation_fraction),
                       ("test_fraction", test_fraction)):
    if isinstance(value, bool) or not isinstance(value, (int, float, np.number)) or not (
        0.0 <= value < 1.0):
      raise ValueError(f"{field} must lie in [0, 1), got {value!r}")
  if name in _SPLIT_THREE_WAYS and validation_fraction + test_fraction >= 1.0:
    raise ValueError(f"validation_fraction + test_fraction must be < 1 (the rest is train), "
                     f"got {validation_fraction} + {test_fraction}")
  if image_size is not None and name != "digits":
    raise ValueError(f"image_size applies to 'digits' only, got image_size={image_size!r} "
                     f"for {name!r}")
  if block_size is not None and name != "text":
    raise ValueError(f"block_size applies to 'text' only, got block_size={block_size!r} "
                     f"for {name!r}")


def load_dataset(name: str, data_dir=None, *, seed: int = 0, validation_fraction: float = 0.1,
                 test_fraction: float = 0.2, stratify: bool = True,
                 image_size: int | None = None,
                 block_size: int | None = None) -> dict[str, ArrayDataset]:
  """Loads dataset ``name`` and splits it, the same way for the same arguments.

  Args:
    name: one of ``DATASETS`` (see the module docstring).
    data_dir: None for the embedded data, or the file / folder holding the dataset's files.
    seed: selects the validation / test examples (the order of batches has its own seed).
    validation_fraction: the fraction held out for validation.
    test_fraction: the fraction held out for testing, for digits and linear_toy (the other
      datasets have an official test set, or none for text).
    stratify: keep the class proportions in every split of a labelled dataset.
    image_size: digits only: 8 (default) or the side of the upsampled view, e.g. 28.
    block_size: text only: the context length of the windows (default 128).

  Returns:
    ``{"train": ArrayDataset, "validation": ..., "test": ...}`` (no "test" for text). Images
    give ``{"image", "label"}``, linear_toy ``{"x", "y"}``, text ``{"inputs", "targets"}``
    (uint8 bytes, vocabulary 256, targets shifted by one).
  """
  _check_options(name, data_dir, validation_fraction, test_fraction, image_size, block_size)
  seed = check_int("seed", seed, 0)
  if not isinstance(stratify, (bool, np.bool_)):
    raise ValueError(f"stratify must be True or False, got {stratify!r}")
  if name == "text":
    tokens = text.stdlib_corpus() if data_dir is None else text.read_text(data_dir)
    return text_splits(tokens, DEFAULT_BLOCK_SIZE if block_size is None else block_size,
                       validation_fraction)
  if name in _SPLIT_THREE_WAYS:
    if name == "digits":
      arrays = digits.load_digits(image_size=digits.NATIVE_SIZE if image_size is None
                                  else image_size)
    else:
      arrays = toy.linear_regression_toy()
    fractions = {"train": 1.0 - validation_fraction - test_fraction,
                 "validation": validation_fraction, "test": test_fraction}
    key = "label" if stratify and "label" in arrays else None
    parts = splits.split_arrays(arrays, fractions, seed=seed, stratify=key)
    return {split: ArrayDataset(part) for split, part in parts.items()}
  official = cifar.load_cifar10(data_dir) if name == "cifar10" else idx.load_mnist(data_dir)
  parts = splits.split_arrays(  # split the uint8 bytes, then convert each part once
      official["train"], {"train": 1.0 - validation_fraction, "validation": validation_fraction},
      seed=seed, stratify="label" if stratify else None)
  parts["test"] = official["test"]
  return {split: ArrayDataset(_images_to_unit(part)) for split, part in parts.items()}


def text_splits(tokens: np.ndarray, block_size: int, validation_fraction: float,
                test_fraction: float | None = None, *,
                what: str = "the text") -> dict[str, ArrayDataset]:
  """Windows of ``block_size`` tokens from the contiguous train / validation (/ test)
  pieces of ``text.split_tokens``: no window of one split overlaps another's.

  Args:
    tokens: a 1-D token array (bytes).
    block_size: the context length of the windows.
    validation_fraction: the fraction of the tokens held out for validation.
    test_fraction: the fraction held out for testing; None: no "test" split.
    what: names the tokens in the error raised when a piece is too short.

  Returns:
    ``{"train", "validation"(, "test")}`` -> ``ArrayDataset`` of ``{"inputs", "targets"}``.
    A piece of fraction 0 is an empty split; any other must hold at least one window.
  """
  pieces = text.split_tokens(tokens, validation_fraction, test_fraction)
  fractions = (1.0, validation_fraction, test_fraction)
  datasets = {}
  for name, piece, fraction in zip(("train", "validation", "test"), pieces, fractions):
    windows = text.lm_windows(piece, block_size)
    if len(windows["inputs"]) == 0 and fraction > 0:
      raise ValueError(f"{what}: its {name} part ({len(piece)} bytes) is shorter than one "
                       f"window of block_size + 1 = {block_size + 1} bytes; use a smaller "
                       "block_size or more text")
    datasets[name] = ArrayDataset(windows)
  return datasets
