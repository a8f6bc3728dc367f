"""Deterministic, fixed-shape, host-sharded batches of an in-memory dataset.

The seeds iterate ``for data, target in train_loader`` (seed 000 §4.1-4.3) and shard MNIST
over processes with ``DistributedSampler(num_replicas=size, rank=rank)`` (seed 004 §4.1.2).
Here a dataset is a dict of equal-length numpy arrays, and ``ArrayDataset.batches`` yields
dicts of numpy arrays, the same names plus ``"mask"``.

Choices:

* **Order by (seed, epoch).** Epoch ``e`` visits the examples in
  ``np.random.default_rng([seed, e]).permutation(n)``, so any epoch, and with ``start_step``
  any step of it, is reproduced without replaying earlier ones (resuming from a checkpoint).
* **Fixed shapes.** Every batch of a call has the same shapes and dtypes, so a jitted step
  compiles once. ``remainder="drop"`` leaves out the last ``n % batch_size`` examples of the
  shuffled order (different ones each epoch); ``remainder="pad"`` fills the last batch with
  rows of zeros whose ``mask`` is False: a loss must weight each row by ``mask`` and divide by
  ``mask.sum()`` (summed over hosts), not by the batch size. Use "pad" for evaluation, where
  every example must count exactly once. ``mask`` is always present (all True when no row is
  padding), so the batch structure never changes.
* **Per-host shards.** ``batch_size`` is the global batch. Host ``p`` of ``P`` gets rows
  ``[p b/P, (p+1) b/P)`` of every global batch, a contiguous slice, so that
  ``jax.make_array_from_process_local_data`` over a batch-sharded mesh reassembles the global
  batch in order. (``DistributedSampler`` instead deals examples round-robin and pads by
  repeating examples.) Every host computes the same permutation from the same seed, and
  every host gets the same number of steps, even when its slice of the last padded batch is
  all padding. ``process_index`` / ``process_count`` default to ``jax.process_index()`` /
  ``jax.process_count()``; tests pass them to simulate several hosts.
"""

from collections.abc import Iterator, Mapping

import jax
import numpy as np

from bigtune_jax.validation import check_int

REMAINDERS = ("drop", "pad")


def steps_per_epoch(num_examples: int, batch_size: int, remainder: str = "drop") -> int:
  """Global batches per epoch: ``n // b`` with "drop", ``ceil(n / b)`` with "pad"."""
  num_examples = check_int("num_examples", num_examples, 0)
  batch_size = check_int("batch_size", batch_size, 1)
  if remainder not in REMAINDERS:
    raise ValueError(f"remainder must be one of {REMAINDERS}, got {remainder!r}")
  if remainder == "drop":
    return num_examples // batch_size
  return -(-num_examples // batch_size)


def epoch_order(num_examples: int, *, seed: int = 0, epoch: int = 0,
                shuffle: bool = True) -> np.ndarray:
  """The order in which epoch ``epoch`` visits the examples (``arange`` if not shuffling)."""
  num_examples = check_int("num_examples", num_examples, 0)
  if not shuffle:
    return np.arange(num_examples)
  key = [check_int("seed", seed, 0), check_int("epoch", epoch, 0)]
  return np.random.default_rng(key).permutation(num_examples)


def _take_padded(array: np.ndarray, rows: np.ndarray, size: int) -> np.ndarray:
  """``array[rows]`` followed by rows of zeros up to ``size`` rows."""
  if len(rows) == size:
    return array[rows]
  out = np.zeros((size, *array.shape[1:]), array.dtype)
  out[:len(rows)] = array[rows]
  return out


class ArrayDataset:
  """Equal-length numpy arrays by name (e.g. ``image``, ``label``), held in host memory."""

  def __init__(self, arrays: Mapping[str, np.ndarray]):
    arrays = {name: np.asarray(a) for name, a in arrays.items()}
    lengths = {name: (a.shape[0] if a.ndim else None) for name, a in arrays.items()}
    if not arrays or None in lengths.values() or len(set(lengths.values())) != 1:
      raise ValueError("a dataset needs at least one array, all with the same leading "
                       f"dimension (the examples); got leading dimensions {lengths}")
    if "mask" in arrays:
      raise ValueError("'mask' is reserved for the padding mask that batches() adds; "
                       "rename that array")
    self.arrays = arrays
    self.num_examples = next(iter(lengths.values()))

  def __len__(self) -> int:
    return self.num_examples

  def __getitem__(self, name: str) -> np.ndarray:
    return self.arrays[name]

  def __repr__(self) -> str:
    fields = ", ".join(f"{k}: {a.dtype.name}{list(a.shape)}" for k, a in self.arrays.items())
    return f"ArrayDataset({fields})"

  def steps_per_epoch(self, batch_size: int, remainder: str = "drop") -> int:
    """Batches that ``batches(batch_size, remainder=remainder)`` yields per epoch."""
    return steps_per_epoch(self.num_examples, batch_size, remainder)

  def batches(self, batch_size: int, *, seed: int = 0, epoch: int = 0, shuffle: bool = True,
              remainder: str = "drop", start_step: int = 0, process_index: int | None = None,
              process_count: int | None = None) -> Iterator[dict[str, np.ndarray]]:
    """One epoch of this host's share of the global batches, from step ``start_step`` on.

    Args:
      batch_size: the global batch size, a multiple of ``process_count``.
      seed, epoch: select the order (see ``epoch_order``); ignored if ``shuffle`` is False.
      shuffle: False visits the examples in their stored order (evaluation).
      remainder: "drop" or "pad" (see the module docstring).
      start_step: skip the first steps of the epoch (resume).
      process_index, process_count: this host and the number of hosts; default jax's.

    Returns:
      An iterator of ``{name: (batch_size // process_count, ...) for each array, "mask": bool
      (batch_size // process_count,)}``; arguments are checked here, before the first batch.
    """
    batch_size = check_int("batch_size", batch_size, 1)
    steps = self.steps_per_epoch(batch_size, remainder)
    count = check_int("process_count",
                      jax.process_count() if process_count is None else process_count, 1)
    index = check_int("process_index",
                      jax.process_index() if process_index is None else process_index, 0)
    if index >= count:
      raise ValueError(f"process_index must be an integer in [0, {count}), got {index!r}")
    if batch_size % count:
      raise ValueError(f"batch_size {batch_size} must be a multiple of process_count {count} "
                       "(each host gets batch_size // process_count rows)")
    start_step = check_int("start_step", start_step, 0)
    if start_step > steps:
      raise ValueError(f"start_step must lie in [0, {steps}] (steps per epoch), "
                       f"got {start_step}")
    order = epoch_order(self.num_examples, seed=seed, epoch=epoch, shuffle=shuffle)
    return self._generate(order, batch_size, batch_size // count, index, start_step, steps)

  def _generate(self, order, batch_size, local, index, start_step, steps):
    for step in range(start_step, steps):
      first = step * batch_size + index * local
      rows = order[first:first + local]  # shorter (maybe empty) only in a padded last batch
      batch = {name: _take_padded(array, rows, local) for name, array in self.arrays.items()}
      batch["mask"] = np.arange(local) < len(rows)
      yield batch
