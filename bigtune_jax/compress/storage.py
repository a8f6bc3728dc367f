"""What a compressed parameter tree holds and costs to store (seed 004 §3.1.1).

Sizes are real bytes of the arrays that would be written, not parameter counts times a
nominal width:

* :func:`dense_nbytes`: every leaf as it is (``leaf.nbytes``): float32 weights, or the
  int8 values plus float32 scales of a qwix-quantized tree (its ``QArray`` leaves).
* :func:`bitmask_nbytes`: each leaf in a **bitmask sparse format** -- one bit per element
  saying whether it is nonzero (``ceil(size / 8)`` bytes) plus the nonzero values in order
  (``nnz * itemsize``) -- or dense where that is smaller (biases, scales). At 90 % sparsity
  a float32 kernel costs 0.1 * 4 + 1/8 = 0.525 bytes a weight instead of 4; an int8 one
  0.1 + 1/8 = 0.225 instead of 1. (CSR with int32 column indices would cost
  ``0.1 * (4 + 4)`` + row pointers: more than the bitmask below ~97 % sparsity.)

:func:`sparsity_report` lists every leaf's size, zeros and zero fraction, and
:func:`format_sparsity_report` prints it as a table with a total row.
"""

import math
from typing import NamedTuple

import jax
import numpy as np

from bigtune_jax.tree_paths import path_name


def _arrays(tree) -> list[np.ndarray]:
  return [np.asarray(leaf) for leaf in jax.tree.leaves(jax.device_get(tree))]


def dense_nbytes(tree) -> int:
  """Bytes of every leaf stored densely (works on qwix-quantized trees too)."""
  return int(sum(leaf.nbytes for leaf in _arrays(tree)))


def bitmask_nbytes(tree) -> int:
  """Bytes in the bitmask sparse format: per leaf ``min(dense, ceil(size/8) + nnz*itemsize)``."""
  total = 0
  for leaf in _arrays(tree):
    sparse = math.ceil(leaf.size / 8) + int(np.count_nonzero(leaf)) * leaf.itemsize
    total += min(leaf.nbytes, sparse)
  return int(total)


class LayerSparsity(NamedTuple):
  path: str  # e.g. "hidden_0/kernel"
  size: int  # elements
  zeros: int  # elements exactly 0
  fraction: float  # zeros / size


def sparsity_report(params) -> list[LayerSparsity]:
  """One row per leaf of ``params``: its path, size, exact zeros and their fraction."""
  rows = []
  for path, leaf in jax.tree_util.tree_leaves_with_path(jax.device_get(params)):
    leaf = np.asarray(leaf)
    zeros = int(leaf.size - np.count_nonzero(leaf))
    rows.append(LayerSparsity(path_name(path), int(leaf.size), zeros,
                              zeros / leaf.size if leaf.size else 0.0))
  return rows


def format_sparsity_report(rows: list[LayerSparsity]) -> str:
  """A printable table of :func:`sparsity_report`'s rows, with a total row."""
  size = sum(r.size for r in rows)
  zeros = sum(r.zeros for r in rows)
  total = LayerSparsity("total", size, zeros, zeros / size if size else 0.0)
  width = max([len("layer")] + [len(r.path) for r in rows])
  lines = [f"{'layer':<{width}}  {'size':>10}  {'zeros':>10}  {'sparsity':>8}"]
  for r in [*rows, total]:
    lines.append(f"{r.path:<{width}}  {r.size:>10,}  {r.zeros:>10,}  {r.fraction:>8.2%}")
  return "\n".join(lines)
