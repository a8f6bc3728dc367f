"""LoRA on any flax model's Dense / DenseGeneral layers, computed in the forward pass
(Hu et al., 2021, arXiv:2106.09685; rsLoRA: Kalajdzievski, 2023, arXiv:2312.03732; seed 001
§3.2 step 3 and §6.2-6.4: which layers to train, at what rate, on the new data).

An adapted layer with kernel :math:`K` (``in -> out``, its input and output axes flattened)
computes

.. math:: y = x K + b + s \\,\\big(\\mathrm{dropout}(x) A\\big) B, \\qquad
          A \\in \\mathbb{R}^{in \\times r}, \\; B \\in \\mathbb{R}^{r \\times out},
          \\qquad s = \\alpha / r \\;(\\text{rsLoRA: } \\alpha / \\sqrt{r})

with :math:`A \\sim U(-1/\\sqrt{in}, 1/\\sqrt{in})` (PEFT's default, a Kaiming-uniform draw)
and :math:`B = 0`, so the adapted model starts exactly at the pretrained one. ``A``, ``B``
are PEFT's ``lora_A.weight.T`` and ``lora_B.weight.T`` (``peft_io.py`` writes them).

How: the adapters are extra entries ``lora_a`` / ``lora_b`` beside the frozen layer's
``kernel`` in the parameter tree handed to ``model.apply``, and ``flax.linen.intercept_methods``
adds the low-rank path to every Dense / DenseGeneral call whose module holds them. No model
code changes; layers stacked under ``nn.scan`` (GPT, Llama) get stacked adapters
``(n_layer, in, r)`` that the scan slices like any other parameter. The pretrained
parameters are an argument of the loss that is never differentiated: the optimizer state
and the gradients cover ``A`` and ``B`` only, and no ``in x out`` gradient of a frozen
kernel is ever formed (``LoRA.merge`` forms ``K + s A B`` once, for export).

Layers are chosen as PEFT's ``target_modules``: a name (``"q_proj"``) matches every layer
whose path is it or ends in ``/q_proj`` (``"attn/c_proj"`` narrows GPT-2's two
``c_proj``), a string with regex characters is matched in full against the path, and
``"all-linear"`` takes every Dense / DenseGeneral layer the model calls.

Populations: ``alpha`` may be a traced scalar, and ``rank`` a traced integer at most the
adapters' stored rank ``r_max``: columns ``rank..r_max`` of ``A`` (and rows of ``B``) are
masked off, so members of different ranks share one program. ``A``'s column ``j`` is drawn
from ``fold_in(key, j)``, so an adapter of rank ``r`` is the first ``r`` columns of one of
rank ``r_max`` drawn with the same key: a masked member equals the adapter trained alone.
"""

from collections.abc import Mapping, Sequence
import dataclasses
import math
import re
from typing import Any

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp

from bigtune_jax import tree_paths
from bigtune_jax.train.step import LossFn
from bigtune_jax import validation

LORA_A, LORA_B = "lora_a", "lora_b"
ALL_LINEAR = "all-linear"
_REGEX_CHARS = set("^$*+?[](){}|\\")


@dataclasses.dataclass(frozen=True)
class LinearLayer:
  """One Dense / DenseGeneral layer of a model, as the probe sees it."""
  path: str  # the module's path, e.g. "h/attn/c_attn"
  stack: tuple[int, ...]  # leading axes of stacked layers (``(n_layer,)`` under nn.scan)
  in_shape: tuple[int, ...]  # the kernel's input axes
  out_shape: tuple[int, ...]  # the kernel's output axes

  @property
  def n_in(self) -> int:
    return math.prod(self.in_shape)

  @property
  def n_out(self) -> int:
    return math.prod(self.out_shape)


def _in_axes(module: nn.Module) -> int:
  if isinstance(module, nn.Dense):
    return 1
  axis = module.axis if isinstance(module.axis, Sequence) else (module.axis,)
  return len(axis)


def _is_linear(module) -> bool:
  return isinstance(module, (nn.Dense, nn.DenseGeneral))


def example_input(model: nn.Module) -> jax.Array:
  """A ``(1, 1)`` token batch for a language model (a config with ``vocab_size``)."""
  if not hasattr(getattr(model, "config", None), "vocab_size"):
    raise ValueError(f"example must be given for {type(model).__name__} (an input batch "
                     "the model takes, to find its Dense layers)")
  return jnp.zeros((1, 1), jnp.int32)


def linear_layers(model: nn.Module, params, example=None) -> dict[str, LinearLayer]:
  """Every Dense / DenseGeneral layer ``model`` calls on ``example``, by module path.

  Nothing is computed: the model is traced once with abstract values (``eval_shape``).
  """
  example = example_input(model) if example is None else example
  found: dict[str, tuple[int, tuple[int, ...]]] = {}

  def record(next_fun, args, kwargs, context):
    module = context.module
    if context.method_name == "__call__" and _is_linear(module):
      found["/".join(module.path)] = (_in_axes(module),
                                      tuple(jnp.shape(nn.unbox(module.get_variable("params", "kernel")))))
    return next_fun(*args, **kwargs)

  with nn.intercept_methods(record):
    jax.eval_shape(lambda p, x: model.apply({"params": p}, x), params, example)
  flat = tree_paths.flatten(nn.unbox(params))
  layers = {}
  for path, (n_axes, kernel) in found.items():
    stored = tuple(jnp.shape(flat[f"{path}/kernel"]))
    stack = stored[:len(stored) - len(kernel)]
    layers[path] = LinearLayer(path, stack, kernel[:n_axes], kernel[n_axes:])
  return layers


def _matches(path: str, target: str) -> bool:
  if _REGEX_CHARS & set(target):
    return re.fullmatch(target, path) is not None
  return path == target or path.endswith("/" + target)


def select_layers(layers: Mapping[str, LinearLayer], targets) -> list[LinearLayer]:
  """The layers ``targets`` names (PEFT's ``target_modules``; see the module docstring)."""
  names = ", ".join(sorted(layers))
  if isinstance(targets, str):
    targets = (targets,)
  if (not isinstance(targets, Sequence) or not targets
      or not all(isinstance(t, str) and t for t in targets)):
    raise ValueError(f"targets must be layer names like ('q_proj', 'v_proj'), a regex or "
                     f"'{ALL_LINEAR}', got {targets!r}; this model's layers: {names}")
  if tuple(targets) == (ALL_LINEAR,):
    return [layers[p] for p in sorted(layers)]
  chosen = []
  for target in targets:
    hits = [p for p in sorted(layers) if _matches(p, target)]
    if not hits:
      raise ValueError(f"targets: {target!r} names no Dense layer of this model; its layers "
                       f"are: {names}")
    chosen += [p for p in hits if p not in chosen]
  return [layers[p] for p in chosen]


def _check_rank(rank, layers: Sequence[LinearLayer]) -> None:
  validation.check_int("rank", rank, 1)
  for layer in layers:
    if rank > min(layer.n_in, layer.n_out):
      raise ValueError(f"rank must be in [1, min(in, out)] = [1, {min(layer.n_in, layer.n_out)}]"
                       f" for {layer.path} ({layer.n_in} -> {layer.n_out}), got {rank}")


def _union(base, extra):
  """``base`` with ``extra``'s leaves added (nested dicts; ``base``'s arrays are not copied)."""
  out = dict(base)
  for key, value in extra.items():
    if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
      out[key] = _union(out[key], value)
    else:
      out[key] = value
  return out


@flax.struct.dataclass
class Adapters:
  """Trained LoRA adapters that carry the rank and alpha they were trained at, so that
  ``LoRA.merge``, ``save_peft`` and a parameter count need not be told them again.

  ``params`` is ``{layer path: {"lora_a": (*stack, in, rank), "lora_b": (*stack, rank,
  out)}}`` (a pytree node); ``rank`` and ``alpha`` are static metadata. A population
  member (``result.member(i)``) is one of these, sliced to its own rank.
  """
  params: Any
  rank: int = flax.struct.field(pytree_node=False)
  alpha: float = flax.struct.field(pytree_node=False)


@dataclasses.dataclass(frozen=True)
class LoRA:
  """LoRA adapters for ``model`` (see the module docstring).

  Attributes:
    model: the flax module (``models.GPT``, ``models.Llama``, an ``MLP``, ...).
    targets: PEFT's ``target_modules``: layer names, a regex, or ``"all-linear"``.
    rank: ``r`` (the stored rank; a population may use less through ``rank=``).
    alpha: ``alpha`` > 0 in the scale ``alpha / r``.
    dropout: dropout rate on the adapter's input during training, in ``[0, 1)``; it draws
      from the ``"dropout"`` rng the engine's losses pass when ``train=True``.
    rslora: scale by ``alpha / sqrt(r)`` (rank-stabilized LoRA) instead.
  """
  model: nn.Module
  targets: Any = ("q_proj", "v_proj")
  rank: int = 8
  alpha: float = 16.0
  dropout: float = 0.0
  rslora: bool = False

  def __post_init__(self):
    if isinstance(self.targets, list):  # hashable: the jitted population programs key on it
      object.__setattr__(self, "targets", tuple(self.targets))
    validation.check_int("rank", self.rank, 1)
    validation.check_interval("alpha", self.alpha, 0.0, math.inf, low_closed=False)
    validation.check_interval("dropout", self.dropout, 0.0, 1.0, high_closed=False)
    if not isinstance(self.rslora, bool):
      raise ValueError(f"rslora must be True or False, got {self.rslora!r}")

  def layers(self, params, example=None) -> list[LinearLayer]:
    """The adapted layers; ValueError naming a target that matches none, or a rank that
    does not fit a layer."""
    layers = select_layers(linear_layers(self.model, params, example), self.targets)
    _check_rank(self.rank, layers)
    return layers

  def init(self, rng: jax.Array, params, example=None, *, dtype=jnp.float32) -> dict:
    """The adapters: ``{layer path: {"lora_a": (*stack, in, r), "lora_b": (*stack, r, out)}}``
    nested like ``params``; ``A`` uniform in ``±1/sqrt(in)`` column by column, ``B = 0``."""
    flat = {}
    layers = self.layers(params, example)
    for layer, key in zip(layers, jax.random.split(rng, len(layers))):
      bound = 1.0 / math.sqrt(layer.n_in)
      # column j from fold_in(key, j): rank r's A is the first r columns of rank r_max's
      column = lambda j, key=key, layer=layer: jax.random.uniform(  # noqa: E731
          jax.random.fold_in(key, j), (*layer.stack, layer.n_in), dtype, -bound, bound)
      flat[f"{layer.path}/{LORA_A}"] = jnp.stack([column(j) for j in range(self.rank)], -1)
      flat[f"{layer.path}/{LORA_B}"] = jnp.zeros((*layer.stack, self.rank, layer.n_out), dtype)
    return tree_paths.unflatten(flat)

  def scale_and_mask(self, alpha=None, rank=None, stored_rank=None):
    """``(s, mask)``: the scale ``alpha / rank`` (rsLoRA: ``/ sqrt(rank)``) and the (r_max,)
    0/1 mask of the live columns, None when the full stored rank is used."""
    alpha = self.alpha if alpha is None else alpha
    stored_rank = self.rank if stored_rank is None else stored_rank
    if rank is None:
      rank_value, mask = stored_rank, None
    else:
      rank_value = jnp.asarray(rank, jnp.float32)
      mask = (jnp.arange(stored_rank) < rank_value).astype(jnp.float32)
    root = jnp.sqrt if not isinstance(rank_value, int) else math.sqrt
    return alpha / (root(rank_value) if self.rslora else rank_value), mask

  def _interceptor(self, scale, mask, train: bool):
    dropout = self.dropout

    def intercept(next_fun, args, kwargs, context):
      module = context.module
      if (context.method_name != "__call__" or not _is_linear(module)
          or not module.has_variable("params", LORA_A)):
        return next_fun(*args, **kwargs)
      y = next_fun(*args, **kwargs)
      x = args[0] if args else kwargs["inputs"]
      a, b = module.get_variable("params", LORA_A), module.get_variable("params", LORA_B)
      n_axes = _in_axes(module)
      dtype = module.dtype or jnp.result_type(x, a)
      x = x.reshape(*x.shape[:x.ndim - n_axes], -1).astype(dtype)  # (..., in)
      if train and dropout > 0.0:
        keep = jax.random.bernoulli(module.make_rng("dropout"), 1.0 - dropout, x.shape)
        x = jnp.where(keep, x / (1.0 - dropout), 0.0).astype(dtype)
      h = x @ a.astype(dtype)  # (..., r)
      if mask is not None:
        h = h * mask.astype(dtype)
      delta = (h @ b.astype(dtype)) * jnp.asarray(scale, dtype)  # (..., out)
      return y + delta.reshape(y.shape).astype(y.dtype)

    return intercept

  def _adapted(self, call, params, lora_params, alpha, rank, train: bool):
    """``call(params with the adapters added)`` with the low-rank paths switched on."""
    scale, mask = self.scale_and_mask(alpha, rank, _stored_rank(lora_params))
    with nn.intercept_methods(self._interceptor(scale, mask, train)):
      return call(_union(params, lora_params))

  def apply(self, params, lora_params, *args, alpha=None, rank=None, train: bool = False,
            **kwargs):
    """``model.apply`` of the pretrained ``params`` with the adapters ``lora_params``."""
    return self._adapted(lambda p: self.model.apply({"params": p}, *args, **kwargs), params,
                         lora_params, alpha, rank, train)

  def loss(self, loss_fn: LossFn, params, *, alpha=None, rank=None) -> LossFn:
    """``loss_fn`` (a ``bt.train`` loss of ``model``) as a function of the adapters, the
    pretrained ``params`` frozen: ``loss(lora_params, batch, rng, train)``. Pass ``params``
    as an argument of the jitted caller (not a Python constant) for large models."""

    def loss(lora_params, batch, rng, train):
      return self._adapted(lambda p: loss_fn(p, batch, rng, train), params, lora_params,
                           alpha, rank, train)

    return loss

  def merge(self, params, lora_params, *, alpha=None, rank=None):
    """The plain parameters ``K + s (A ⊙ mask) B`` of every adapted kernel, for a model
    without adapters (``save_hf``, generation)."""
    scale, mask = self.scale_and_mask(alpha, rank, _stored_rank(lora_params))
    lora = tree_paths.flatten(lora_params)
    adapted = {path.rpartition("/")[0] for path in lora if path.endswith("/" + LORA_A)}

    def merged(key_path, kernel):
      name = tree_paths.path_name(key_path)
      layer, _, leaf = name.rpartition("/")
      if leaf != "kernel" or layer not in adapted:
        return kernel
      a, b = lora[f"{layer}/{LORA_A}"], lora[f"{layer}/{LORA_B}"]
      if mask is not None:
        a = a * mask
      delta = jnp.einsum("...ir,...ro->...io", a.astype(jnp.float32), b.astype(jnp.float32))
      value = nn.unbox(kernel)
      new = (value.astype(jnp.float32) + scale * delta.reshape(value.shape)).astype(value.dtype)
      return kernel.replace_boxed(new) if isinstance(kernel, nn.meta.AxisMetadata) else new

    missing = adapted - {p.rpartition("/")[0] for p in tree_paths.leaf_paths(nn.unbox(params))}
    if missing:
      raise ValueError(f"lora_params adapt {sorted(missing)[0]!r}, which params lack")
    return jax.tree_util.tree_map_with_path(
        merged, params, is_leaf=lambda x: isinstance(x, nn.meta.AxisMetadata))


def _stored_rank(lora_params) -> int:
  """``r_max``: the last axis of any ``lora_a``."""
  for path, leaf in tree_paths.flatten(lora_params).items():
    if path.endswith(LORA_A):
      return int(jnp.shape(leaf)[-1])
  raise ValueError("lora_params hold no adapter (no 'lora_a' entry)")


def adapter_parameter_count(lora_params) -> int:
  """How many scalars the adapters train."""
  return sum(int(leaf.size) for leaf in jax.tree.leaves(lora_params))
