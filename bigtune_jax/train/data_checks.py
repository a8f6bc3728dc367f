"""Host checks that a dataset fits the model, run by ``fit`` and ``evaluate`` before any step.

Inside a jitted step nothing can raise: a label >= the head's class count, or a token id
>= the model's vocabulary, makes ``optax.softmax_cross_entropy_with_integer_labels`` read
outside the logits (NaN losses for every step after it, no error), and an embedding
lookup of it returns NaN (or, clipped, another token's row: a wrong model). A float label is cast; parameters made for another input
shape fail deep inside Flax. So each ``bt.train`` loss carries
``loss_fn.check_data(params, splits)``, ``splits`` mapping a name (``"the train split"``)
to a dataset (or None), and these functions do the work on the host: one min / max per
array, which is cheap next to a step; a memory-mapped token corpus is read once.
"""

from collections.abc import Callable
from collections.abc import Mapping
import functools
from typing import Any

import flax
import jax
import numpy as np

from bigtune_jax import validation

Splits = Mapping[str, Any]  # where ("the train split") -> dataset or None
_CHUNK = 1 << 22  # tokens per read of a memory-mapped corpus (8 MiB of uint16)


def check_data(loss_fn: Callable, params, splits: Splits) -> None:
  """The loss's own host checks of ``splits`` against the model of ``params`` (labels
  within the head's classes, token ids within the vocabulary), where the loss has them
  (``loss_fn.check_data``). What ``fit`` and ``evaluate`` run before any step; a runner
  that trains a population calls it with one member's parameters."""
  own = getattr(loss_fn, "check_data", None)
  if own is not None:
    own(params, splits)


def _array(dataset, key: str) -> np.ndarray | None:
  """``dataset``'s array ``key`` when it holds examples of it, else None."""
  array = getattr(dataset, "arrays", {}).get(key) if dataset is not None else None
  return None if array is None or len(array) == 0 else np.asarray(array)


def check_labels(splits: Splits, label_key: str,
                 classes: Callable[[str, Any], int]) -> None:
  """Every split's ``label_key`` array holds integers in ``[0, classes(where, dataset))``.

  ``classes`` is called at most once, with the first split that has labels, and reads the
  class count from the model's output shape (:func:`traced_shape`: no work is done).
  """
  count = None
  for where, dataset in splits.items():
    labels = _array(dataset, label_key)
    if labels is None:
      continue
    if not np.issubdtype(labels.dtype, np.integer):
      raise ValueError(f"{where}: labels ({label_key!r}) must be integer class indices, got "
                       f"dtype {labels.dtype}; convert them, e.g. labels.astype(np.int32)")
    count = classes(where, dataset) if count is None else count
    low, high = int(labels.min()), int(labels.max())
    if low < 0 or high >= count:
      raise ValueError(f"{where}: labels ({label_key!r}) must lie in [0, {count}) (the "
                       f"model's {count} classes), got values from {low} to {high}")


def _corpus_in_range(tokens: np.ndarray, vocab_size: int) -> bool:
  """One pass over a (memory-mapped) token array, in chunks: all ids in the vocabulary."""
  for start in range(0, len(tokens), _CHUNK):
    chunk = np.asarray(tokens[start:start + _CHUNK])
    if chunk.size and (chunk.min() < 0 or chunk.max() >= vocab_size):
      return False
  return True


def check_token_ids(splits: Splits, vocab_size: int,
                    keys: tuple[str, ...] = ("inputs", "targets")) -> None:
  """Every split's token ids (its ``keys`` arrays) lie in ``[0, vocab_size)``.

  In-memory arrays are checked whole. Token blocks over a memory-mapped corpus
  (``data.load_token_dataset``; they expose it as ``.tokens``) are read once per corpus
  (the splits share it), or not at all when the dataset records its corpus's largest id
  (``max_id``, which ``load_token_dataset`` keeps in its cache); only when an id is out of
  range is each split's own blocks read, batch by batch, to name the split, the batch and
  the position.
  """
  corpus_ok = {}
  for where, dataset in splits.items():
    if dataset is None:
      continue
    tokens = getattr(dataset, "tokens", None)
    if tokens is None:
      for key in keys:
        array = _array(dataset, key)
        if array is not None:
          validation.check_token_ids(array, vocab_size, f"{where} ({key!r})")
      continue
    if id(tokens) not in corpus_ok:
      max_id = getattr(dataset, "max_id", None)  # recorded when the corpus was tokenized
      corpus_ok[id(tokens)] = (0 <= max_id < vocab_size if max_id is not None
                               else _corpus_in_range(tokens, vocab_size))
    if corpus_ok[id(tokens)]:
      continue
    batches = dataset.batches(4096, shuffle=False, remainder="pad", process_index=0,
                              process_count=1)
    for number, batch in enumerate(batches):
      for key in keys:
        validation.check_token_ids(batch[key][batch["mask"]], vocab_size,
                                   f"{where} ({key!r} of batch {number} of 4096 blocks)")


def _shapes(batch: Mapping[str, Any]) -> dict:
  return {k: tuple(np.shape(v)[1:]) for k, v in batch.items() if k != "mask"}


def traced_shape(fn: Callable, params, inputs, where: str):
  """``jax.eval_shape(fn, params, inputs)`` (no work is done); a ``ValueError`` naming
  ``where`` when the parameters do not fit the inputs, e.g. parameters initialised from a
  sample without its batch axis (Flax's own error only names a kernel). A jitted ``fn`` is
  traced once per shape: a second run of the same structure traces nothing."""
  try:
    if hasattr(fn, "eval_shape"):  # jitted: its trace cache serves a repeated check
      return fn.eval_shape(params, inputs)
    return jax.eval_shape(fn, params, inputs)
  except KeyError as error:
    raise ValueError(f"the loss reads {error} but {where} has only "
                     f"{sorted(k for k in inputs if k != 'mask')}") from error
  except (flax.errors.FlaxError, TypeError, ValueError) as error:
    shapes = _shapes(inputs) if isinstance(inputs, Mapping) else tuple(np.shape(inputs)[1:])
    hint = (" -- were they made by train.init_params from a sample without its batch "
            "axis? It takes a batch, e.g. x[:1], not x[0]"
            if isinstance(error, flax.errors.FlaxError) else "")
    raise ValueError(f"the parameters do not fit {where} (examples shaped {shapes}): "
                     f"{str(error).splitlines()[0]}{hint}") from error


def check_params_fit(loss_fn: Callable, params, dataset, where: str) -> dict:
  """The shapes of ``loss_fn``'s sums on one batch of ``dataset``, by
  :func:`traced_shape` (which names ``where`` if the parameters do not fit it)."""
  batch = next(dataset.batches(jax.process_count(), shuffle=False, remainder="pad"))
  try:
    sums = _sums_of(loss_fn)
  except TypeError:  # an unhashable loss object: traced afresh
    sums = lambda p, b: loss_fn(p, b, jax.random.key(0), False)[1]  # noqa: E731
  return traced_shape(sums, params, batch, where)


@functools.lru_cache(maxsize=16)
def _sums_of(loss_fn: Callable) -> Callable:
  """``loss_fn``'s evaluation sums as one jitted function per loss (only ever shape-
  evaluated), so that checking a later trial of the same structure traces nothing."""
  return jax.jit(lambda p, b: loss_fn(p, b, jax.random.key(0), False)[1])
