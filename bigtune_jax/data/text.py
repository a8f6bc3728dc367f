"""Byte-level text for language models (seed 003 §4.1: tuning a GPT-style language model).

The seed names GPT-2 and a ``dataloader`` it never defines. With no network, the embedded
corpus is real English prose that every Python ships: the help topics of ``pydoc_data.topics``
(the text behind ``help("if")``, about 470 kB in Python 3.11), joined in sorted key order
with a blank line between topics. Users bring their own with ``--data-dir`` (one ``.txt``
file, or a folder whose ``*.txt`` files are read in sorted name order).

Choices:

* Tokens are the raw bytes of the UTF-8 text: ``uint8``, vocabulary 256, no tokenizer to
  train or ship, and any file can be read without decoding it.
* The corpus depends on the Python version (the topics are regenerated for each release);
  it is fixed for one interpreter.
* The splits are contiguous pieces of the stream, in its order (as in nanoGPT): train, then
  validation, then (if asked for) test; each held-out piece is ``round(fraction * len)``
  bytes, train the rest at the start. No window of one split overlaps another's.
* ``lm_windows`` returns read-only views into the token buffer (no copy, whatever the
  stride); batching copies only the rows of a batch. ``targets`` are ``inputs`` shifted by
  one byte. The default stride is ``block_size``: windows tile the text and one epoch reads
  every byte once; a stride of 1 gives every offset (``block_size`` times more windows).
"""

import pathlib

import numpy as np

from bigtune_jax.validation import check_int

VOCAB_SIZE = 256  # byte values


def stdlib_corpus() -> np.ndarray:
  """The embedded corpus: Python's pydoc help topics as ``uint8`` UTF-8 bytes."""
  try:
    from pydoc_data import topics
  except ImportError as error:  # some Linux distributions package it separately
    raise FileNotFoundError(
        "the embedded text corpus needs the standard-library module pydoc_data, which this "
        "Python lacks; pass data_dir=... with a .txt file instead") from error
  text = "\n\n".join(topics.topics[key] for key in sorted(topics.topics))
  return np.frombuffer(text.encode("utf-8"), dtype=np.uint8)


def read_text(path) -> np.ndarray:
  """The bytes of one text file, or of a folder's ``*.txt`` files in sorted name order."""
  path = pathlib.Path(path)
  if path.is_dir():
    files = sorted(path.glob("*.txt"))
    if not files:
      raise FileNotFoundError(f"{path}: no *.txt file in this folder (expected the text of a "
                              "language-model corpus, e.g. input.txt)")
  elif path.is_file():
    files = [path]
  else:
    raise FileNotFoundError(f"{path}: no such text file or folder")
  data = b"".join(f.read_bytes() for f in files)
  if not data:
    raise ValueError(f"{path}: the text is empty; expected at least a few bytes of text")
  return np.frombuffer(data, dtype=np.uint8)


def _check_fraction(name: str, value) -> float:
  """``value`` if it is a number in [0, 1); else a ValueError naming ``name``."""
  if isinstance(value, bool) or not isinstance(value, (int, float, np.number)) or not (
      0.0 <= value < 1.0):
    raise ValueError(f"{name} must lie in [0, 1), got {value!r}")
  return value


def split_tokens(tokens: np.ndarray, validation_fraction: float,
                 test_fraction: float | None = None) -> tuple[np.ndarray, ...]:
  """Contiguous pieces of the tokens, in their order: ``(train, validation)``, or
  ``(train, validation, test)`` when ``test_fraction`` is given.

  Each held-out piece holds ``round(fraction * len(tokens))`` tokens, validation before
  test at the end of the stream; train is the rest, from the start.
  """
  fractions = [_check_fraction("validation_fraction", validation_fraction)]
  if test_fraction is not None:
    fractions.append(_check_fraction("test_fraction", test_fraction))
  if sum(fractions) >= 1.0:
    raise ValueError(f"validation_fraction + test_fraction must be < 1 (the rest is train), "
                     f"got {validation_fraction} + {test_fraction}")
  sizes = [int(round(f * len(tokens))) for f in fractions]
  starts = len(tokens) - np.cumsum(sizes[::-1])[::-1]  # where each held-out piece begins
  return tuple(np.split(tokens, starts))


def lm_windows(tokens: np.ndarray, block_size: int, *,
               stride: int | None = None) -> dict[str, np.ndarray]:
  """Next-token windows: ``inputs[i] = tokens[s:s+T]``, ``targets[i] = tokens[s+1:s+T+1]``.

  Args:
    tokens: a 1-D token array (bytes).
    block_size: ``T``, the context length.
    stride: the distance ``s`` between window starts; default ``block_size`` (tiling).

  Returns:
    ``{"inputs": (N, T), "targets": (N, T)}`` read-only views, ``N = (len - 1 - T) // s + 1``
    (0 if the text is shorter than ``T + 1``).
  """
  tokens = np.asarray(tokens)
  if tokens.ndim != 1:
    raise ValueError(f"tokens must be 1-D, got shape {tokens.shape}")
  block_size = check_int("block_size", block_size, 1)
  stride = block_size if stride is None else check_int("stride", stride, 1)
  if len(tokens) < block_size + 1:  # not one full window: empty, with the right shape
    empty = np.zeros((0, block_size), tokens.dtype)
    return {"inputs": empty, "targets": empty}
  windows = np.lib.stride_tricks.sliding_window_view(tokens, block_size + 1)[::stride]
  return {"inputs": windows[:, :-1], "targets": windows[:, 1:]}
