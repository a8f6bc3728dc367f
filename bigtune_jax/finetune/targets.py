"""Which Dense / DenseGeneral layers LoRA adapts: the layers a model calls, and the names
that choose them (PEFT's ``target_modules``, in our paths or in transformers' dotted ones).

A layer is named by its module path (``layers/self_attn/q_proj``; layers stacked under
``nn.scan`` are one path with a leading ``(n_layer,)`` axis). A target ``t`` chooses

* by our path: ``t`` is the path or ends it (``"q_proj"``, ``"attn/c_proj"``), or, with
  regex characters, ``re.fullmatch(t, path)``;
* by PEFT's rule on transformers' dotted module names (``model.layers.3.self_attn.q_proj``,
  for the families ``hub`` reads; ``path`` with ``/`` read as ``.`` for other models):
  with regex characters ``re.fullmatch(t, name)`` (PEFT's ``target_modules`` string), else
  ``name == t`` or ``name.endswith("." + t)`` (an entry of PEFT's list;
  ``peft.tuners.tuners_utils.check_target_module_exists``). A dotted name carries the layer
  index, so ``"model.layers.0.self_attn.q_proj"`` or ``r"model\\.layers\\.0\\..*"``
  choose layer 0 of the stack only: that layer's ``indices``. The others keep ``A = B =
  0``, a fixed point of training (each one's gradient is a product with the other).

``"all-linear"`` takes every layer the model calls (those trained in full excepted).
"""

from collections.abc import Mapping, Sequence
import dataclasses
import functools
import math
import re

import flax.linen as nn
import jax
import jax.numpy as jnp

from bigtune_jax import hub_tables
from bigtune_jax import tree_paths

ALL_LINEAR = "all-linear"
_REGEX_CHARS = set("^$*+?[](){}|\\")


@dataclasses.dataclass(frozen=True)
class LinearLayer:
  """One Dense / DenseGeneral layer of a model, as the probe sees it."""
  path: str  # the module's path, e.g. "h/attn/c_attn"
  stack: tuple[int, ...]  # leading axes of stacked layers (``(n_layer,)`` under nn.scan)
  in_shape: tuple[int, ...]  # the kernel's input axes
  out_shape: tuple[int, ...]  # the kernel's output axes
  indices: tuple[int, ...] | None = None  # the stacked layers adapted; None: all of them

  @property
  def n_in(self) -> int:
    return math.prod(self.in_shape)

  @property
  def n_out(self) -> int:
    return math.prod(self.out_shape)


def in_axes(module: nn.Module) -> int:
  """How many leading kernel axes are inputs (DenseGeneral may contract several)."""
  if isinstance(module, nn.Dense):
    return 1
  axis = module.axis if isinstance(module.axis, Sequence) else (module.axis,)
  return len(axis)


def is_linear(module) -> bool:
  return isinstance(module, (nn.Dense, nn.DenseGeneral))


def example_input(model: nn.Module) -> jax.Array:
  """A ``(1, 1)`` token batch for a language model (a config with ``vocab_size``)."""
  if not hasattr(getattr(model, "config", None), "vocab_size"):
    raise ValueError(f"example must be given for {type(model).__name__} (an input batch "
                     "the model takes, to find its Dense layers)")
  return jnp.zeros((1, 1), jnp.int32)


def linear_layers(model: nn.Module, params, example=None) -> dict[str, LinearLayer]:
  """Every Dense / DenseGeneral layer ``model`` calls on ``example``, by module path.

  Nothing is computed: the model is traced once with abstract values (``eval_shape``), once
  per model and shapes in a process (a second population or LoRA of the same structure
  traces nothing).
  """
  example = example_input(model) if example is None else example
  leaves, treedef = jax.tree.flatten(params)
  shapes = tuple((tuple(jnp.shape(x)), jnp.result_type(x)) for x in leaves)
  key = (model, treedef, shapes, tuple(jnp.shape(example)), jnp.result_type(example))
  try:
    found = _called_linears(*key)
  except TypeError:  # a model that cannot be hashed: traced every time
    found = _called_linears.__wrapped__(*key)
  flat = tree_paths.flatten(nn.unbox(params))
  layers = {}
  for path, (n_axes, kernel) in found:
    stored = tuple(jnp.shape(flat[f"{path}/kernel"]))
    stack = stored[:len(stored) - len(kernel)]
    layers[path] = LinearLayer(path, stack, kernel[:n_axes], kernel[n_axes:])
  return layers


@functools.lru_cache(maxsize=64)
def _called_linears(model, treedef, shapes, example_shape, example_dtype) -> tuple:
  """``((path, (input axes, kernel shape)), ...)`` of the linear layers ``model`` calls on
  abstract parameters and input of these shapes."""
  found: dict[str, tuple[int, tuple[int, ...]]] = {}

  def record(next_fun, args, kwargs, context):
    module = context.module
    if context.method_name == "__call__" and is_linear(module):
      kernel = nn.unbox(module.get_variable("params", "kernel"))
      found["/".join(module.path)] = (in_axes(module), tuple(jnp.shape(kernel)))
    return next_fun(*args, **kwargs)

  params = jax.tree.unflatten(treedef, [jax.ShapeDtypeStruct(*s) for s in shapes])
  with nn.intercept_methods(record):
    jax.eval_shape(lambda p, x: model.apply({"params": p}, x), params,
                   jax.ShapeDtypeStruct(example_shape, example_dtype))
  return tuple(found.items())


def hf_modules(model) -> dict[str, tuple[str, bool]]:
  """Our layer path -> (transformers module name with ``{i}``, stacked per layer), for the
  families ``hub`` reads (``hub_tables``); ``{}`` for any other model."""
  try:
    family = hub_tables.family_of(model)
  except ValueError:
    return {}
  return {e.path[:-len("/kernel")]: (e.hf_name[:-len(".weight")], e.per_layer)
          for e in family.entries(model.config) if e.path.endswith("/kernel")}


def dotted_names(layer: LinearLayer, modules: Mapping[str, tuple[str, bool]]):
  """``[(stack index or None, dotted module name)]`` of ``layer``: transformers' names, one
  per stacked layer, where ``modules`` (``hf_modules``) has it; else its path with dots."""
  if layer.path not in modules:
    return [(None, layer.path.replace("/", "."))]
  template, per_layer = modules[layer.path]
  if not per_layer:
    return [(None, template)]
  return [(i, template.format(i=i)) for i in range(layer.stack[0])]


def _matches_path(path: str, target: str) -> bool:
  if _REGEX_CHARS & set(target):
    return re.fullmatch(target, path) is not None
  return path == target or path.endswith("/" + target)


def _matches_dotted(name: str, target: str) -> bool:
  if _REGEX_CHARS & set(target):
    return re.fullmatch(target, name) is not None
  return name == target or name.endswith("." + target)


def _chosen_indices(layer: LinearLayer, target: str, modules) -> tuple[int, ...] | None | bool:
  """The stack indices ``target`` chooses of ``layer``: None for all, False for none."""
  if _matches_path(layer.path, target):
    return None
  names = dotted_names(layer, modules)
  hits = [i for i, name in names if _matches_dotted(name, target)]
  if not hits:
    return False
  return None if len(hits) == len(names) else tuple(hits)


def _merge_indices(old, new):
  if old is None or new is None:
    return None
  return tuple(sorted(set(old) | set(new)))


def check_targets(targets, names: str) -> tuple[str, ...]:
  """``targets`` as a tuple of non-empty strings; ValueError naming the accepted forms."""
  if isinstance(targets, str):
    targets = (targets,)
  if (not isinstance(targets, Sequence) or not targets
      or not all(isinstance(t, str) and t for t in targets)):
    raise ValueError(f"targets must be layer names like ('q_proj', 'v_proj'), a regex or "
                     f"'{ALL_LINEAR}', got {targets!r}; this model's layers: {names}")
  return tuple(targets)


def select_layers(layers: Mapping[str, LinearLayer], targets,
                  modules: Mapping[str, tuple[str, bool]] | None = None) -> list[LinearLayer]:
  """The layers ``targets`` names (module docstring), each with its chosen ``indices``;
  ValueError naming a target that chooses nothing."""
  modules = modules or {}
  names = ", ".join(sorted(layers))
  targets = check_targets(targets, names)
  if targets == (ALL_LINEAR,):
    return [layers[p] for p in sorted(layers)]
  chosen: dict[str, tuple[int, ...] | None] = {}
  for target in targets:
    hits = {p: _chosen_indices(layers[p], target, modules) for p in sorted(layers)}
    hits = {p: idx for p, idx in hits.items() if idx is not False}
    if not hits:
      dotted = [n for layer in layers.values() for _, n in dotted_names(layer, modules)[:1]]
      raise ValueError(f"targets: {target!r} names no Dense layer of this model; its layers "
                       f"are: {names} (as dotted module names: {', '.join(sorted(dotted))})")
    for path, indices in hits.items():
      chosen[path] = _merge_indices(chosen[path], indices) if path in chosen else indices
  return [dataclasses.replace(layers[p], indices=idx) for p, idx in chosen.items()]
