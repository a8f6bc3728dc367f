"""Deterministic train / validation / test splits of in-memory arrays.

The seeds train on a ``train_loader`` and say nothing about held-out data (seed 000 §4.1-4.3);
early stopping and plateau schedules (seed 000 §3.4) need a validation split, so every
dataset without an official one is split here, the same way for the same ``seed``.

Choices:

* Split sizes: the cut points are ``round(cumsum(fractions) * n)``, so the sizes always add
  up to ``n`` and differ from ``fraction * n`` by less than one example.
* Plain random: a ``np.random.default_rng(seed)`` permutation cut at those points.
* Stratified (``labels`` given): each class is put in a random order, example ``r`` of a
  class of size ``n_c`` gets the position ``(r + 0.5) / n_c``, and all examples are sorted by
  position (ties in random order) before the same cuts. Every split then holds each class in
  the overall proportion, to about one example per class, and the split sizes are exactly
  those of the plain split (systematic sampling; scikit-learn's ``StratifiedShuffleSplit``
  gives similar proportions with a different random stream).
* The indices of each split are returned sorted; batching shuffles them anyway.
"""

from collections.abc import Mapping, Sequence

import numpy as np

from bigtune_jax.validation import check_int

_FRACTION_TOLERANCE = 1e-6


def _check_fractions(fractions: Sequence[float]) -> np.ndarray:
  if isinstance(fractions, (str, bytes)) or not all(
      isinstance(f, (int, float, np.number)) and not isinstance(f, (bool, np.bool_))
      for f in np.ravel(np.asarray(fractions, dtype=object))):
    raise ValueError(f"fractions must be a non-empty sequence of numbers, got {fractions!r}")
  fractions = np.asarray(fractions, dtype=np.float64)
  if fractions.ndim != 1 or fractions.size == 0:
    raise ValueError(f"fractions must be a non-empty sequence of numbers, got {fractions!r}")
  if np.any(~np.isfinite(fractions)) or np.any(fractions < 0) or np.any(fractions > 1):
    raise ValueError(f"each fraction must lie in [0, 1], got {fractions.tolist()}")
  if abs(fractions.sum() - 1.0) > _FRACTION_TOLERANCE:
    raise ValueError(f"fractions must add up to 1, got {fractions.tolist()} "
                     f"(sum {fractions.sum():.6g})")
  return fractions


def _stratified_order(perm: np.ndarray, labels: np.ndarray) -> np.ndarray:
  """``perm`` reordered so that every prefix holds each class in proportion."""
  _, klass, counts = np.unique(labels[perm], return_inverse=True, return_counts=True)
  by_class = np.argsort(klass, kind="stable")  # classes grouped, random order within
  starts = np.cumsum(counts) - counts
  rank = np.empty(perm.size, dtype=np.int64)
  rank[by_class] = np.arange(perm.size) - np.repeat(starts, counts)
  position = (rank + 0.5) / counts[klass]
  return perm[np.argsort(position, kind="stable")]  # ties keep the random order of perm


def split_indices(num_examples: int, fractions: Sequence[float], *, seed: int = 0,
                  labels=None) -> tuple[np.ndarray, ...]:
  """Splits ``range(num_examples)`` into disjoint, covering, sorted index arrays.

  Args:
    num_examples: how many examples there are.
    fractions: one fraction per split, each in [0, 1], adding up to 1; a 0 gives an empty split.
    seed: the same seed gives the same split.
    labels: if given, an array of ``num_examples`` class labels: the split is stratified.

  Returns:
    One int64 index array per fraction.
  """
  num_examples = check_int("num_examples", num_examples, 0)
  fractions = _check_fractions(fractions)
  seed = check_int("seed", seed, 0)
  order = np.random.default_rng(seed).permutation(num_examples)
  if labels is not None:
    labels = np.asarray(labels)
    if labels.shape != (num_examples,):
      raise ValueError(f"labels must have shape ({num_examples},), got {labels.shape}")
    order = _stratified_order(order, labels)
  cuts = np.round(np.cumsum(fractions) * num_examples).astype(np.int64)
  cuts[-1] = num_examples
  starts = np.concatenate([[0], cuts[:-1]])
  return tuple(np.sort(order[a:b]) for a, b in zip(starts, cuts))


def split_arrays(arrays: Mapping[str, np.ndarray], fractions: Mapping[str, float], *,
                 seed: int = 0, stratify: str | None = None) -> dict[str, dict[str, np.ndarray]]:
  """Splits equal-length arrays by name, e.g. ``{"train": 0.8, "validation": 0.2}``.

  Args:
    arrays: e.g. ``{"image": (N, H, W, C), "label": (N,)}``.
    fractions: split name -> fraction; the fractions add up to 1.
    seed: the same seed gives the same split.
    stratify: the name of the array of class labels to stratify by, or None (plain random).

  Returns:
    split name -> {array name -> the rows of that split}.
  """
  lengths = {name: len(a) for name, a in arrays.items()}
  if not lengths or len(set(lengths.values())) != 1:
    raise ValueError("arrays must be a non-empty mapping of equal-length arrays, "
                     f"got lengths {lengths}")
  if stratify is not None and stratify not in arrays:
    raise ValueError(f"stratify={stratify!r} names no array; arrays are {sorted(arrays)}")
  labels = None if stratify is None else arrays[stratify]
  parts = split_indices(next(iter(lengths.values())), list(fractions.values()), seed=seed,
                        labels=labels)
  return {split: {name: a[idx] for name, a in arrays.items()}
          for split, idx in zip(fractions, parts)}
