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

Layers are chosen as PEFT's ``target_modules`` (``targets.py``): a name (``"q_proj"``)
matches every layer whose path is it or ends in ``/q_proj`` (``"attn/c_proj"`` narrows
GPT-2's two ``c_proj``), a regex is matched in full against the path, PEFT's dotted names
and regexes (``r".*\\.(q_proj|v_proj)"``, ``"model.layers.0.self_attn.q_proj"``) against
transformers' module names, and ``"all-linear"`` takes every Dense / DenseGeneral layer.

``also_train`` (a ``paths`` selection, e.g. ``("head",)``) trains those parameters in full
beside the adapters: ``init`` copies them into the trainable tree, the loss and ``apply``
use the copies in place of the frozen ones, and ``merge`` returns them. The optimizer
sees the adapters and these parameters only; the rest stays frozen.

``init`` returns the trainable tree (a train state's ``params``), read at the ``LoRA``'s
own ``rank`` and ``alpha``, which it must hold. An :class:`Adapters` carries a rank and
alpha of its own (a population member's, ``result.member(i)``): ``merge``, ``apply``,
``loss``, ``save_peft`` and ``adapter_parameter_count`` read them from it, and an explicit
``rank`` / ``alpha`` that contradicts it is refused.
"""

from collections.abc import Mapping, Sequence
import dataclasses
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from bigtune_jax import tree_paths
from bigtune_jax import validation
from bigtune_jax.finetune import paths
from bigtune_jax.finetune import targets as targets_lib
from bigtune_jax.finetune.carried import LORA_A
from bigtune_jax.finetune.carried import LORA_B
from bigtune_jax.finetune.carried import Adapters  # noqa: F401  (finetune.adapters.Adapters)
from bigtune_jax.finetune.carried import unpack
from bigtune_jax.finetune.targets import LinearLayer
from bigtune_jax.train.step import LossFn


def _check_rank(rank, layers: Sequence[LinearLayer]) -> None:
  validation.check_int("rank", rank, 1)
  for layer in layers:
    if rank > min(layer.n_in, layer.n_out):
      raise ValueError(f"rank must be in [1, min(in, out)] = [1, {min(layer.n_in, layer.n_out)}]"
                       f" for {layer.path} ({layer.n_in} -> {layer.n_out}), got {rank}")


def _union(base, extra):
  """``base`` with ``extra``'s leaves added or replaced (nested dicts; ``base``'s arrays
  are not copied)."""
  out = dict(base)
  for key, value in extra.items():
    if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
      out[key] = _union(out[key], value)
    else:
      out[key] = value
  return out


@dataclasses.dataclass(frozen=True)
class LoRA:
  """LoRA adapters for ``model`` (see the module docstring).

  Attributes:
    model: the flax module (``models.GPT``, ``models.Llama``, an ``MLP``, ...).
    targets: PEFT's ``target_modules``: layer names, a regex, dotted transformers module
      names, or ``"all-linear"`` (``targets.py``).
    rank: ``r`` (the stored rank; a population may use less through ``rank=``).
    alpha: ``alpha`` > 0 in the scale ``alpha / r``.
    dropout: dropout rate on the adapter's input during training, in ``[0, 1)``; it draws
      from the ``"dropout"`` rng the engine's losses pass when ``train=True``.
    rslora: scale by ``alpha / sqrt(r)`` (rank-stabilized LoRA) instead.
    also_train: a selection (``paths``) of parameters trained in full beside the adapters,
      e.g. a new head ``("head",)``; none of them may lie in an adapted layer.
  """
  model: nn.Module
  targets: Any = ("q_proj", "v_proj")
  rank: int = 8
  alpha: float = 16.0
  dropout: float = 0.0
  rslora: bool = False
  also_train: Any = ()

  def __post_init__(self):
    for name in ("targets", "also_train"):  # hashable: the jitted population programs key on it
      if isinstance(getattr(self, name), list):
        object.__setattr__(self, name, tuple(getattr(self, name)))
    validation.check_int("rank", self.rank, 1)
    validation.check_interval("alpha", self.alpha, 0.0, math.inf, low_closed=False)
    validation.check_interval("dropout", self.dropout, 0.0, 1.0, high_closed=False)
    if not isinstance(self.rslora, bool):
      raise ValueError(f"rslora must be True or False, got {self.rslora!r}")
    if self.also_train:
      paths.check_selection("also_train", self.also_train)

  def full_paths(self, params) -> list[str]:
    """The parameter paths ``also_train`` selects (ValueError for a prefix matching none)."""
    if not self.also_train:
      return []
    flat = tree_paths.leaf_paths(nn.unbox(params))
    chosen = paths.select(flat, self.also_train, "also_train")
    return [p for p in flat if p in chosen]

  def layers(self, params, example=None) -> list[LinearLayer]:
    """The adapted layers; ValueError naming a target that matches none, a rank that does
    not fit a layer, or a layer both adapted and trained in full."""
    full = self.full_paths(params)
    layers = targets_lib.linear_layers(self.model, params, example)
    if targets_lib.check_targets(self.targets, ", ".join(sorted(layers))) == (
        targets_lib.ALL_LINEAR,):
      layers = {p: l for p, l in layers.items() if not any(paths.under(f, p) for f in full)}
    chosen = targets_lib.select_layers(layers, self.targets, targets_lib.hf_modules(self.model))
    for layer in chosen:
      both = [f for f in full if paths.under(f, layer.path)]
      if both:
        raise ValueError(f"{both[0]!r} is both adapted (targets) and trained in full "
                         "(also_train)")
    _check_rank(self.rank, chosen)
    return chosen

  def init(self, rng: jax.Array, params, example=None, *, dtype=jnp.float32) -> dict:
    """The trainable tree ``{layer path: {"lora_a": (*stack, in, r), "lora_b": (*stack, r,
    out)}}`` nested like ``params`` (at ``self.rank``, read at ``self.alpha``), plus copies
    of the ``also_train`` parameters; ``A`` uniform in ``±1/sqrt(in)`` column by column
    (zero on stacked layers the targets leave out), ``B = 0``. ``example``: an input batch,
    for a model that is not a language model."""
    layers, full = self.layers(params, example), set(self.full_paths(params))
    flat = {p: jnp.copy(v) for p, v in tree_paths.flatten(nn.unbox(params)).items()
            if p in full}  # copies: fit donates its params
    for layer, key in zip(layers, jax.random.split(rng, len(layers))):
      bound = 1.0 / math.sqrt(layer.n_in)
      # column j from fold_in(key, j): rank r's A is the first r columns of rank r_max's
      column = lambda j, key=key, layer=layer: jax.random.uniform(  # noqa: E731
          jax.random.fold_in(key, j), (*layer.stack, layer.n_in), dtype, -bound, bound)
      a = jnp.stack([column(j) for j in range(self.rank)], -1)
      if layer.indices is not None:  # only some stacked layers: the others stay 0
        keep = jnp.zeros(layer.stack[0], dtype).at[jnp.asarray(layer.indices)].set(1)
        a = a * keep.reshape(-1, *[1] * (a.ndim - 1))
      flat[f"{layer.path}/{LORA_A}"] = a
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

  def _resolve(self, lora_params, alpha, rank):
    """``(tree, scale, mask)`` of ``lora_params`` (see ``unpack``)."""
    tree, alpha, rank, stored = unpack(lora_params, self.rank, self.alpha, alpha, rank)
    return (tree, *self.scale_and_mask(alpha, rank, stored))

  def _interceptor(self, scale, mask, train: bool):
    dropout = self.dropout

    def intercept(next_fun, args, kwargs, context):
      module = context.module
      if (context.method_name != "__call__" or not targets_lib.is_linear(module)
          or not module.has_variable("params", LORA_A)):
        return next_fun(*args, **kwargs)
      y = next_fun(*args, **kwargs)
      x = args[0] if args else kwargs["inputs"]
      a, b = module.get_variable("params", LORA_A), module.get_variable("params", LORA_B)
      n_axes = targets_lib.in_axes(module)
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
    tree, scale, mask = self._resolve(lora_params, alpha, rank)
    with nn.intercept_methods(self._interceptor(scale, mask, train)):
      return call(_union(params, tree))

  def apply(self, params, lora_params, *args, alpha=None, rank=None, train: bool = False,
            **kwargs):
    """``model.apply`` of the pretrained ``params`` with the adapters ``lora_params``."""
    return self._adapted(lambda p: self.model.apply({"params": p}, *args, **kwargs), params,
                         lora_params, alpha, rank, train)

  def loss(self, loss_fn: LossFn, params, *, alpha=None, rank=None) -> LossFn:
    """``loss_fn`` (a ``bt.train`` loss of ``model``) as a function of the adapters
    (``Adapters`` or their tree), the pretrained ``params`` frozen: ``loss(lora_params,
    batch, rng, train)``. Pass ``params`` as an argument of the jitted caller (not a
    Python constant) for large models."""

    def loss(lora_params, batch, rng, train):
      return self._adapted(lambda p: loss_fn(p, batch, rng, train), params, lora_params,
                           alpha, rank, train)

    return loss

  def merge(self, params, lora_params, *, alpha=None, rank=None):
    """The plain parameters: ``K + s (A ⊙ mask) B`` for every adapted kernel and the
    ``also_train`` parameters' trained values, for a model without adapters (``save_hf``,
    generation)."""
    tree, scale, mask = self._resolve(lora_params, alpha, rank)
    lora = tree_paths.flatten(tree)
    adapted = {path.rpartition("/")[0] for path in lora if path.endswith("/" + LORA_A)}
    replaced = {p: v for p, v in lora.items() if p.rpartition("/")[0] not in adapted}
    have = {p: jnp.shape(v) for p, v in tree_paths.flatten(nn.unbox(params)).items()}
    missing = sorted(({f"{p}/kernel" for p in adapted} | set(replaced)) - set(have))
    if missing:
      raise ValueError(f"lora_params: {missing[0]!r} is not a parameter of params")
    for path, value in replaced.items():
      if jnp.shape(value) != have[path]:
        raise ValueError(f"lora_params: {path!r} has shape {jnp.shape(value)}; params' "
                         f"{path!r} has {have[path]}")

    def merged(key_path, leaf):
      name = tree_paths.path_name(key_path)
      value = replaced.get(name, nn.unbox(leaf))
      layer, _, last = name.rpartition("/")
      if last == "kernel" and layer in adapted:
        a, b = lora[f"{layer}/{LORA_A}"], lora[f"{layer}/{LORA_B}"]
        a = a if mask is None else a * mask
        wide = jnp.promote_types(value.dtype, jnp.float32)  # bf16 kernels: add in float32
        delta = jnp.einsum("...ir,...ro->...io", a.astype(wide), b.astype(wide))
        value = (value.astype(wide) + scale * delta.reshape(value.shape)).astype(value.dtype)
      return leaf.replace_boxed(value) if isinstance(leaf, nn.meta.AxisMetadata) else value

    return jax.tree_util.tree_map_with_path(
        merged, params, is_leaf=lambda x: isinstance(x, nn.meta.AxisMetadata))
