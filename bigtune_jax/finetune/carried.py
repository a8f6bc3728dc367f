"""Adapters that carry their own rank and alpha (issue 21 item 5): what a LoRA population's
member is, so that ``LoRA.merge``, ``save_peft`` and ``adapter_parameter_count`` read the
member's rank and alpha from it instead of the population's stored rank and default alpha.

A member of rank ``r`` in a population stored at ``r_max`` is the first ``r`` columns of
its ``A`` and rows of its ``B`` (``LoRA.init`` draws ``A``'s column ``j`` from
``fold_in(key, j)``, and masked columns never train). ``unpack`` is the one rule every
consumer applies: an ``Adapters`` gives its own rank and alpha, and an explicit value that
contradicts them is refused; a plain tree is read at the ``LoRA``'s rank and alpha and must
be stored at that rank unless ``rank=`` says otherwise.
"""

import math
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from bigtune_jax import tree_paths
from bigtune_jax import validation

LORA_A, LORA_B = "lora_a", "lora_b"


@flax.struct.dataclass
class Adapters:
  """Trained LoRA adapters that carry the rank and alpha they were trained at, so that
  ``LoRA.merge``, ``save_peft`` and a parameter count need not be told them again.

  ``params`` is ``{layer path: {"lora_a": (*stack, in, rank), "lora_b": (*stack, rank,
  out)}}`` plus any parameter trained in full (``LoRA.also_train``), nested like the
  model's parameters (a pytree node; to train, give the train state ``params``: flax's
  ``TrainState.create`` tests ``key in params``, which an ``Adapters`` does not support);
  ``rank`` and ``alpha`` are static metadata.
  A population member (``result.member(i)``) is one of these, sliced to its own rank.
  """
  params: Any
  rank: int = flax.struct.field(pytree_node=False)
  alpha: float = flax.struct.field(pytree_node=False)


def _stored_rank(tree) -> int:
  """``r_max``: the last axis of any ``lora_a``."""
  for path, leaf in tree_paths.flatten(tree).items():
    if path.endswith(LORA_A):
      return int(jnp.shape(leaf)[-1])
  raise ValueError("lora_params hold no adapter (no 'lora_a' entry)")


def _agrees(name: str, given, own) -> None:
  """An explicit ``rank`` / ``alpha`` must equal the Adapters' own (a traced value, a
  population member's hyperparameter, is taken as given)."""
  if given is None or isinstance(given, jax.core.Tracer):
    return
  if float(given) != float(own):
    raise ValueError(f"{name}={given} contradicts the adapters' own {name}={own} (Adapters "
                     f"carry their {name}; leave {name} out)")


def _check_explicit_rank(rank, stored: int) -> None:
  if rank is None or isinstance(rank, jax.core.Tracer):
    return
  validation.check_int("rank", rank, 1)
  if int(rank) > stored:
    raise ValueError(f"rank must be in [1, {stored}] (the adapters' stored rank), got {rank}")


def unpack(lora_params, default_rank: int, default_alpha: float, alpha=None, rank=None):
  """``(tree, alpha, rank or None, stored rank)`` of ``lora_params`` (``Adapters`` or a
  plain tree); ``rank`` None means the full stored rank (no mask).

  Raises ValueError: an explicit ``rank`` / ``alpha`` contradicting an ``Adapters``, an
  ``Adapters`` whose ``lora_a`` holds another rank than it says, or a plain tree stored at
  another rank than ``default_rank`` (the ``LoRA``'s) with no ``rank`` given.
  """
  if isinstance(lora_params, Adapters):
    stored = _stored_rank(lora_params.params)
    if stored != lora_params.rank:
      raise ValueError(f"Adapters(rank={lora_params.rank}) hold lora_a of rank {stored}")
    _agrees("alpha", alpha, lora_params.alpha)
    _agrees("rank", rank, lora_params.rank)
    alpha = lora_params.alpha if alpha is None else alpha
    return lora_params.params, alpha, rank, stored
  stored = _stored_rank(lora_params)
  if rank is None and stored != default_rank:
    raise ValueError(f"lora_params are stored at rank {stored}, but this LoRA's rank is "
                     f"{default_rank}: pass finetune.Adapters (which carry their rank and "
                     "alpha) or rank=")
  _check_explicit_rank(rank, stored)
  return lora_params, default_alpha if alpha is None else alpha, rank, stored


def member_adapters(stored, rank: int, alpha: float) -> Adapters:
  """A population member's ``Adapters`` from its tree at the population's stored rank:
  the first ``rank`` columns of every ``A`` and rows of every ``B`` (``A``'s column ``j`` is
  drawn from ``fold_in(key, j)`` and masked columns never train, so this is the adapter of
  rank ``rank`` trained alone), other leaves (``also_train``) as they are. Given
  ``Adapters`` already, they are returned once ``rank`` and ``alpha`` agree with theirs."""
  if isinstance(stored, Adapters):
    _agrees("rank", rank, stored.rank)
    _agrees("alpha", alpha, stored.alpha)
    return stored
  _check_explicit_rank(rank, _stored_rank(stored))
  validation.check_interval("alpha", alpha, 0.0, math.inf, low_closed=False)
  rank = int(rank)

  def cut(path, x):
    leaf = tree_paths.path_name(path).rpartition("/")[2]
    return x[..., :rank] if leaf == LORA_A else x[..., :rank, :] if leaf == LORA_B else x

  return Adapters(jax.tree_util.tree_map_with_path(cut, stored), rank=rank, alpha=float(alpha))


def check_member_values(values, stored_rank: int) -> None:
  """A population's per-member ``alpha`` (every one > 0) and ``rank`` (integers in
  ``[1, stored_rank]``, the adapters' stored rank r_max), each optional in ``values``
  (``{name: (N,) array}``); ValueError naming the entry otherwise."""
  if "alpha" in values and not (values["alpha"] > 0).all():
    raise ValueError(f"hparams['alpha'] must be > 0 for every member, got {values['alpha']}")
  rank = values.get("rank")
  if rank is not None and not (np.all(rank == np.round(rank)) and rank.min() >= 1
                               and rank.max() <= stored_rank):
    raise ValueError(f"hparams['rank'] must be integers in [1, {stored_rank}] (the "
                     f"LoRA's stored rank), got {rank}")


def adapter_parameter_count(lora_params) -> int:
  """How many scalars the adapters train (``also_train`` parameters included): every
  leaf of an ``Adapters`` (held at its own rank) or a plain tree."""
  tree = lora_params.params if isinstance(lora_params, Adapters) else lora_params
  return sum(int(leaf.size) for leaf in jax.tree.leaves(tree))
