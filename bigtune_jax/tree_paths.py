"""Naming the leaves of a pytree by their path.

A leaf's path is its keys joined by ``/``: ``hidden_0/kernel``, ``opt_state/0/mu/head/bias``
— dict keys, dataclass field names and sequence indices alike, so a tree and its Orbax
metadata (where dataclasses come back as dicts) give the same names. Checkpoint errors,
pruning predicates and fine-tuning selections all use these names.
"""

from flax import traverse_util
import jax


def path_name(key_path) -> str:
  """``"hidden_0/kernel"`` for a pytree key path (from ``jax.tree_util.*_with_path``)."""
  return jax.tree_util.keystr(key_path, simple=True, separator="/")


def flatten(tree) -> dict:
  """``{path: leaf}`` for every leaf of ``tree``, in flattening order."""
  return {path_name(p): leaf for p, leaf in jax.tree_util.tree_leaves_with_path(tree)}


def leaf_paths(tree) -> list[str]:
  """The path of every leaf of ``tree``, in flattening order."""
  return list(flatten(tree))


def unflatten(flat: dict) -> dict:
  """Nested dicts from ``{path: leaf}``: the inverse of ``flatten`` for a dict tree."""
  return traverse_util.unflatten_dict(flat, sep="/")
