"""Naming parameters by path, and choosing some of them by path.

A parameter's path is its keys joined by ``/`` (``bigtune_jax.tree_paths``):
``hidden_0/kernel``, ``head/bias``, the names in the checkpoint errors of
``bigtune_jax.train``. A **selection** picks parameters by path and is one of:

* a collection of path prefixes (or one string), each matching whole components:
  ``"head"`` selects ``head/kernel`` and ``head/bias`` but not ``header/kernel``. Every
  prefix must match at least one path, so that a typo is an error, not an empty selection;
* a predicate ``path -> bool``;
* a mask: a pytree of booleans with the parameters' structure (``optax.freeze``'s form),
  where the parameters are a tree (not where only path names are at hand).

Fine-tuning uses selections for the trainable parameters (``freeze``), the layers that get
LoRA adapters, and the checkpoint entries ``load_pretrained`` skips.
"""

from collections.abc import Callable
from collections.abc import Collection
from collections.abc import Iterable
from collections.abc import Mapping

import jax

from bigtune_jax.tree_paths import leaf_paths
from bigtune_jax.tree_paths import path_name

Selection = Callable[[str], bool] | Collection[str] | Mapping


def under(path: str, prefix: str) -> bool:
  """Whether ``path`` is ``prefix`` or lies below it (whole components only)."""
  return path == prefix or path.startswith(prefix + "/")


def check_selection(name: str, selection) -> tuple[str, ...] | None:
  """The prefixes of a prefix selection, None for a predicate; ValueError for anything else."""
  if callable(selection):
    return None
  if isinstance(selection, Mapping):
    raise ValueError(f"{name}: a mask (a tree of booleans) is not accepted here; give a "
                     f"predicate path -> bool or path prefixes, got {selection!r}")
  if isinstance(selection, str):
    return (selection,)
  if isinstance(selection, Iterable) and all(isinstance(p, str) for p in selection):
    return tuple(selection)
  raise ValueError(f"{name} must be a predicate path -> bool, a path prefix or a collection "
                   f"of path prefixes (like 'head' or ('hidden_0', 'head')), got {selection!r}")


def describe(paths: list[str], n: int = 8) -> str:
  """The first ``n`` paths, for an error message."""
  return ", ".join(paths[:n]) + (", ..." if len(paths) > n else "")


def select(paths: Iterable[str], selection, name: str) -> set[str]:
  """The paths among ``paths`` that ``selection`` (prefixes or predicate) picks.

  Raises:
    ValueError: ``selection`` is neither, or one of its prefixes matches no path (the
      argument ``name`` and the available paths are named).
  """
  paths = list(paths)
  prefixes = check_selection(name, selection)
  if prefixes is None:
    return {p for p in paths if selection(p)}
  for prefix in prefixes:
    if not any(under(p, prefix) for p in paths):
      raise ValueError(f"{name}: no parameter path is or starts with {prefix!r}; "
                       f"the paths are: {describe(paths)}")
  return {p for p in paths if any(under(p, prefix) for prefix in prefixes)}


def selection_mask(tree, selection, name: str):
  """A pytree of booleans like ``tree``: True where ``selection`` picks the leaf.

  ``selection`` may also be the mask itself (checked against ``tree``'s structure).
  """
  if isinstance(selection, Mapping):
    if jax.tree.structure(tree) != jax.tree.structure(selection):
      raise ValueError(f"{name}: a mask must have the parameters' tree structure; the "
                       f"parameters are {jax.tree.structure(tree)}, the mask "
                       f"{jax.tree.structure(selection)}")
    return jax.tree.map(bool, selection)
  chosen = select(leaf_paths(tree), selection, name)
  return jax.tree_util.tree_map_with_path(lambda p, _: path_name(p) in chosen, tree)
