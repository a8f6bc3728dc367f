"""An NNX model's parameters as the engine's tree, and back.

``params_of(model)`` is ``nnx.to_pure_dict(nnx.state(model, nnx.Param))`` with each
parameter that names logical axes (``out_sharding`` / ``sharding_names`` metadata) boxed in
``nn.LogicallyPartitioned``: exactly what the linen twin's ``init`` returns, so one weight
table, one sharding rule set and one checkpoint layout serve both. ``to_nnx`` puts such a
tree back into a module; ``from_linen`` / ``to_linen`` cross between the twins
(``GPT``, ``Llama``) over the same arrays.
"""

from typing import Any

from flax import nnx
import flax.linen as nn
import jax

from bigtune_jax.models import gpt as linen_gpt
from bigtune_jax.models import llama as linen_llama
from bigtune_jax.models.nnx.gpt import GPT
from bigtune_jax.models.nnx.llama import Llama

# Variable metadata naming a parameter's logical axes (flax 0.12: out_sharding; earlier
# releases: sharding_names, sharding).
_AXES_METADATA = ("out_sharding", "sharding_names", "sharding")
# linen class -> NNX class, for the models built from a config
_TWINS = {linen_gpt.GPT: GPT, linen_llama.Llama: Llama}


def trained_filter(model: nnx.Module) -> type:
  """What the engine trains of ``model``: ``nnx.LoRAParam`` when it holds any (its LoRA
  adapters only, Flax's ``wrt=nnx.LoRAParam``), else every ``nnx.Param``."""
  has_lora = any(isinstance(v, nnx.LoRAParam) for _, v in nnx.to_flat_state(nnx.state(model)))
  return nnx.LoRAParam if has_lora else nnx.Param


def split(model: nnx.Module, wrt: type = nnx.Param):
  """``(graphdef, trained, frozen)``: the state of ``wrt`` and the other ``nnx.Param``s.
  Any other state is refused (the engine carries parameters only: batch statistics or a
  stored ``nnx.Rngs`` would be lost)."""
  graphdef, trained, frozen, rest = nnx.split(model, wrt, nnx.Param, ...)
  kept = [f"{'.'.join(map(str, path))} ({type(v).__name__})"
          for path, v in nnx.to_flat_state(rest)]
  if kept:
    raise ValueError(f"the engine trains NNX models whose state is nnx.Param only; "
                     f"{type(model).__name__} also holds {', '.join(kept[:5])}: pass "
                     f"rngs at call time instead of storing nnx.Rngs, no BatchNorm")
  return graphdef, trained, frozen


def _axes(variable) -> tuple | None:
  metadata = variable.get_metadata()
  for key in _AXES_METADATA:
    if metadata.get(key) is not None:
      return tuple(metadata[key])
  return None


def params_of(model: nnx.Module, wrt: type = nnx.Param) -> dict:
  """The model's ``wrt`` state as the engine's parameter tree: a nested dict like
  ``nnx.to_pure_dict``'s, leaves with logical axes boxed in ``nn.LogicallyPartitioned``.
  The arrays are the model's own (not copied)."""
  _, params, _ = split(model, wrt)
  tree: dict = {}
  for path, variable in nnx.to_flat_state(params):
    node = tree
    for key in path[:-1]:
      node = node.setdefault(key, {})
    axes = _axes(variable)
    value = variable.get_value()
    node[path[-1]] = value if axes is None else nn.LogicallyPartitioned(value, axes)
  return tree


def leaf_at(tree, path):
  for depth, key in enumerate(path):
    if not isinstance(tree, dict) or key not in tree:
      raise ValueError(f"params has no {'.'.join(map(str, path[:depth + 1]))}; the model's "
                       f"parameters are a tree like nnx.state(model, nnx.Param)")
    tree = tree[key]
  return tree.value if isinstance(tree, nn.Partitioned) else tree


def merge(graphdef, state_template, params, *frozen) -> nnx.Module:
  """A module of ``graphdef`` holding ``params`` (a tree like :func:`params_of`'s, boxed
  or not; traceable), its variables' metadata taken from ``state_template``, and the
  ``frozen`` states as they are."""
  flat = nnx.to_flat_state(state_template)
  values = [leaf_at(params, path) for path, _ in flat]
  state = jax.tree.unflatten(jax.tree.structure(state_template), values)
  return nnx.merge(graphdef, state, *frozen)


def to_nnx(model: nnx.Module, params: Any) -> nnx.Module:
  """``model`` updated in place to hold ``params`` (a ``TrainState``'s, e.g.
  ``fit(...).state.params``, boxed or not: every parameter the engine trained) and
  returned; paths and shapes must match."""
  flat = nnx.to_flat_state(split(model, trained_filter(model))[1])
  for path, variable in flat:
    value = leaf_at(params, path)
    if value.shape != variable.get_value().shape:
      raise ValueError(f"params[{'.'.join(map(str, path))}] has shape {value.shape}, the "
                       f"model's {variable.get_value().shape}")
  nnx.update(model, jax.tree.map(lambda x: x, nn.unbox(params)))
  return model


def from_linen(model: nn.Module, params) -> nnx.Module:
  """The NNX twin of a linen ``GPT`` / ``Llama`` (same config) holding ``params`` (its
  linen tree, boxed or not; the arrays are shared, not copied, wherever they are placed)."""
  if type(model) not in _TWINS:
    raise ValueError(f"from_linen takes a bt.models.GPT or Llama, got {type(model).__name__}")
  twin = _TWINS[type(model)]
  module = nnx.eval_shape(lambda: twin(model.config, rngs=nnx.Rngs(0)))
  return to_nnx(module, params)


def to_linen(model: nnx.Module) -> tuple[nn.Module, dict]:
  """``(linen model, params)`` of an NNX ``GPT`` / ``Llama``: the linen twin of the same
  config and :func:`params_of` the module (the same arrays)."""
  linen = {v: k for k, v in _TWINS.items()}.get(type(model))
  if linen is None:
    raise ValueError(f"to_linen takes a bt.models.nnx.GPT or Llama, got {type(model).__name__}")
  return linen(model.config), params_of(model)
