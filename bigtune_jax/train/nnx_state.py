"""Flax NNX models in the engine: ``nnx.split`` outside, ``nnx.merge`` inside the loss.

The engine trains a pure function of a parameter tree (``TrainState.params``). An NNX
model enters it split: its graph definition stays static (inside the loss), and its
``nnx.Param`` state becomes the parameter tree as a plain nested dict,
``nnx.to_pure_dict(nnx.state(model, nnx.Param))``, the layout of the linen twin's ``params``.
A parameter annotated with logical axis names (``out_sharding`` / ``sharding_names``
metadata, as the NNX ``GPT`` and ``Llama`` do) is boxed in ``nn.LogicallyPartitioned``
exactly as linen's ``nn.with_logical_partitioning`` leaves it, so the mesh placement
(``sharding.state_sharding``), the checkpoints (the checkpointed ``params`` are that
dict), the jit with donation and the non-finite step guard are the linen path's own.
``nnx.Optimizer`` is not used: it would keep a second, mutable copy of that state outside
the engine's donated, checkpointed ``TrainState``.

After ``fit``, :func:`to_nnx` puts the trained parameters back into the module.
"""

from collections.abc import Callable
from typing import Any

from flax import nnx
import flax.linen as nn
import jax

# Variable metadata naming a parameter's logical axes (flax 0.12: out_sharding; earlier
# releases: sharding_names, sharding).
_AXES_METADATA = ("out_sharding", "sharding_names", "sharding")


def is_nnx(model) -> bool:
  return isinstance(model, nnx.Module)


def _split(model: nnx.Module):
  """``(graphdef, params, rest)``; ``rest`` must hold no arrays (the engine carries the
  parameters only: batch statistics or a stored ``nnx.Rngs`` would be lost)."""
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  kept = [f"{'.'.join(map(str, path))} ({type(v).__name__})"
          for path, v in nnx.to_flat_state(rest)]
  if kept:
    raise ValueError(f"the engine trains NNX models whose state is nnx.Param only; "
                     f"{type(model).__name__} also holds {', '.join(kept[:5])}: pass "
                     f"rngs at call time instead of storing nnx.Rngs, no BatchNorm")
  return graphdef, params


def _axes(variable) -> tuple | None:
  metadata = variable.get_metadata()
  for key in _AXES_METADATA:
    if metadata.get(key) is not None:
      return tuple(metadata[key])
  return None


def params_of(model: nnx.Module) -> dict:
  """The model's ``nnx.Param`` state as the engine's parameter tree: a nested dict like
  ``to_pure_dict()``, leaves with logical axes boxed in ``nn.LogicallyPartitioned``.
  The arrays are the model's own (not copied)."""
  _, params = _split(model)
  tree: dict = {}
  for path, variable in nnx.to_flat_state(params):
    node = tree
    for key in path[:-1]:
      node = node.setdefault(key, {})
    axes = _axes(variable)
    value = variable.get_value()
    node[path[-1]] = value if axes is None else nn.LogicallyPartitioned(value, axes)
  return tree


def train_params(model: nnx.Module, params) -> dict:
  """The parameter tree a ``TrainState`` of ``model`` starts from: ``params`` (a tree like
  :func:`params_of`'s), or the model's own when None."""
  if params is None:
    return params_of(model)
  if not isinstance(params, dict):
    raise ValueError(f"params of an NNX model must be None (the model's own) or a nested "
                     f"dict like nnx_state.params_of(model), got {type(params).__name__}")
  for path, _ in nnx.to_flat_state(_split(model)[1]):
    _leaf_at(params, path)  # every parameter is there
  return params


def _leaf_at(tree, path):
  for depth, key in enumerate(path):
    if not isinstance(tree, dict) or key not in tree:
      raise ValueError(f"params has no {'.'.join(map(str, path[:depth + 1]))}; the model's "
                       f"parameters are a tree like nnx.state(model, nnx.Param)")
    tree = tree[key]
  return tree.value if isinstance(tree, nn.Partitioned) else tree


def merge(graphdef, state_template, params) -> nnx.Module:
  """A module of ``graphdef`` holding ``params`` (a tree like :func:`params_of`'s, boxed
  or not; traceable), its variables' metadata taken from ``state_template``."""
  flat = nnx.to_flat_state(state_template)
  values = [_leaf_at(params, path) for path, _ in flat]
  state = jax.tree.unflatten(jax.tree.structure(state_template), values)
  return nnx.merge(graphdef, state)


def apply_fn(model: nnx.Module, takes_train: bool) -> Callable:
  """``apply(params, x, rng, train, **kwargs)`` of the engine's losses for an NNX model:
  ``nnx.merge`` of the model's graph with ``params``, called as
  ``model(x, train=train, rng=rng, **kwargs)`` (without ``train``/``rng`` when its
  ``__call__`` takes no ``train``)."""
  graphdef, template = _split(model)
  template = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), template)

  def apply(params, x, rng, train, **kwargs):
    module = merge(graphdef, template, params)
    if takes_train:
      return module(x, train=train, rng=rng, **kwargs)
    return module(x, **kwargs)

  return apply


def to_nnx(model: nnx.Module, params: Any) -> nnx.Module:
  """``model`` updated in place to hold ``params`` (a ``TrainState``'s, e.g.
  ``fit(...).state.params``; boxed or not) and returned; paths and shapes must match."""
  flat = nnx.to_flat_state(_split(model)[1])
  for path, variable in flat:
    value = _leaf_at(params, path)
    if value.shape != variable.get_value().shape:
      raise ValueError(f"params[{'.'.join(map(str, path))}] has shape {value.shape}, the "
                       f"model's {variable.get_value().shape}")
  nnx.update(model, jax.tree.map(lambda x: x, nn.unbox(params)))
  return model
