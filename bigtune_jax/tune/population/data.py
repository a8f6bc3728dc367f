"""A population's data: the training arrays on the device and the rows of each step.

The host sends only the row indices of each step, the order of
``ArrayDataset.batches(batch_size, seed=seed, epoch=e)`` (remainder dropped), so member
:math:`i` takes exactly the steps it would take trained alone by ``bt.train.fit`` / a plain
loop over ``make_train_step`` with ``FitConfig(seed=seed)``.
"""

from collections.abc import Mapping
import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from bigtune_jax.data.pipeline import ArrayDataset
from bigtune_jax.data.pipeline import epoch_order
from bigtune_jax import validation


class PopulationData:
  """A dataset's arrays on the device and the row indices of any run of steps."""

  def __init__(self, train_data: ArrayDataset, val_data: ArrayDataset | None,
               batch_size: int, seed: int, eval_batch_size: int = 512):
    for name, dataset in (("train_data", train_data), ("val_data", val_data)):
      if not isinstance(dataset, ArrayDataset) and (name == "train_data" or dataset is not None):
        raise ValueError(f"{name} must be a bigtune_jax.data.ArrayDataset, got {dataset!r}")
    validation.check_int("batch_size", batch_size, 1)
    validation.check_int("eval_batch_size", eval_batch_size, 1)
    self.steps_per_epoch = train_data.steps_per_epoch(batch_size)
    if self.steps_per_epoch < 1:
      raise ValueError(f"batch_size {batch_size} is larger than the training set "
                       f"({len(train_data)} examples)")
    self.num_examples, self.batch_size, self.seed = len(train_data), batch_size, seed
    self.train = {name: jnp.asarray(a) for name, a in train_data.arrays.items()}
    self.sample = {k: a[:1] for k, a in self.train.items()}
    self._val_data, self._eval_batch_size = val_data, eval_batch_size

  @functools.cached_property
  def val(self) -> dict[str, jax.Array]:
    """The validation set as padded batches ``(num_batches, batch, ...)`` on the device,
    built on first use (DARTS and a bare ``initial_state`` never evaluate through it)."""
    if self._val_data is None:
      raise ValueError("this PopulationData has no validation set (val_data=None)")
    size = min(self._eval_batch_size, max(len(self._val_data), 1))
    batches = list(self._val_data.batches(size, shuffle=False, remainder="pad",
                                          process_index=0, process_count=1))
    return {k: jnp.asarray(np.stack([b[k] for b in batches])) for k in batches[0]}

  def rows(self, start: int, count: int) -> np.ndarray:
    """``(count, batch_size)`` int32 rows of steps ``start .. start + count - 1``."""
    first, last = start // self.steps_per_epoch, (start + count - 1) // self.steps_per_epoch
    used = self.steps_per_epoch * self.batch_size  # the rest of each epoch is dropped
    orders = [epoch_order(self.num_examples, seed=self.seed, epoch=e)[:used]
              for e in range(first, last + 1)]
    offset = (start - first * self.steps_per_epoch) * self.batch_size
    rows = np.concatenate(orders)[offset:offset + count * self.batch_size]
    return rows.reshape(count, self.batch_size).astype(np.int32)


_TARGET_KEYS = ("label", "y", "targets")


def model_input(sample: Mapping[str, Any], input_key: str | None) -> jax.Array:
  """The model input among the arrays of one example, ``(1, ...)`` each (e.g.
  ``PopulationData.sample``): array ``input_key``, or by default the first array not named
  like a target (``label``, ``y``, ``targets``)."""
  names = [k for k in sample if k not in _TARGET_KEYS]
  if input_key is None and names:
    input_key = names[0]
  if input_key not in sample:
    raise ValueError(f"input_key must name the model input among {sorted(sample)}, "
                     f"got {input_key!r}")
  return jnp.asarray(sample[input_key])


def as_arrays(dataset, name: str, vocab_size: int | None = None) -> ArrayDataset:
  """``dataset`` as arrays the device can hold (``TokenBlocks`` become inputs / targets);
  with a ``vocab_size`` (a language model's) every integer array's ids are checked to lie in
  ``[0, vocab_size)`` (``validation.check_token_ids``, naming ``name`` and the array)."""
  if hasattr(dataset, "materialize"):
    dataset = dataset.materialize()
  if not isinstance(dataset, ArrayDataset):
    raise ValueError(f"{name} must be a bigtune_jax.data.ArrayDataset or TokenBlocks, got "
                     f"{dataset!r}")
  if vocab_size is not None:
    for key, array in dataset.arrays.items():
      if np.issubdtype(np.asarray(array).dtype, np.integer):
        validation.check_token_ids(array, vocab_size, f"{name}[{key!r}]")
  return dataset
