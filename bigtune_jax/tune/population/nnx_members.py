"""Population members that are Flax NNX models (issue 25 item 4): the NNX kinds beside
``members.WholeModels`` and ``members.AdapterMembers``, for the one runner.

An NNX module enters the runner in the engine's functional form, as it enters
``bt.train.fit`` (``train/nnx_state.py``): ``nnx.split`` outside (the graph static, the
trained ``nnx.Param`` state a plain tree, ``nnx_params.params_of``), ``nnx.merge`` inside
the loss. The runner's programs (``jax.vmap`` over the members' trees inside a
``lax.scan`` over the steps, pruning, compaction, PBT) are therefore the linen path's own;
what differs is how a member's tree starts and what ``result.member(i)`` gives back:

* :class:`NNXModels`: member :math:`i` is ``make_model(nnx.Rngs(seed_i))``. The user passes
  the factory ``lambda rngs: Model(..., rngs=rngs)``: a built module holds one seed's
  weights, and only its constructor draws another's. Each member is built on the host, op by
  op, exactly as a solo ``fit`` of ``make_model(nnx.Rngs(seed_i))`` sees it (a jitted
  build may differ from it in the last bit). ``result.member(i)`` is a module of the
  factory's graph holding member i's trained weights.
* :class:`NNXAdapters`: member :math:`i` trains the ``nnx.LoRAParam`` adapters of ``model``,
  an NNX ``GPT`` / ``Llama`` given adapters by ``finetune.nnx_lora.add_lora`` at the stored
  rank :math:`r_{max}` and default alpha :math:`\\alpha_0` (scale :math:`s_0`), over its
  frozen base (held once, in the loss). Its adapters are drawn from its seed as
  ``add_lora(..., seed=seed_i)`` draws them (``finetune.LoRA.init``: ``A``'s column
  :math:`j` from ``fold_in(key, j)``). Its own alpha and rank enter the loss as

  .. math::
    A' = A \\odot m_{r_i}, \\qquad B' = \\frac{s_i}{s_0} B, \\qquad
    s_0\\, x A' B' = s_i\\, x A_{:, :r_i} B_{:r_i}

  with :math:`m_r` the 0/1 mask of the first :math:`r` columns and
  :math:`s = \\alpha / r` (rsLoRA: :math:`\\alpha / \\sqrt r`), Hu et al., 2021: the adapter
  of rank :math:`r_i` and alpha :math:`\\alpha_i` trained alone (masked columns get no
  gradient). ``result.member(i)`` is a new NNX model over the same base arrays holding
  member i's adapters cut to its rank, with its alpha: ``finetune.save_peft`` writes it.
"""

from collections.abc import Callable, Mapping
import dataclasses
from typing import Any

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np

from bigtune_jax.finetune import nnx_lora
from bigtune_jax.finetune.adapters import LoRA
from bigtune_jax.finetune.carried import LORA_A, LORA_B
from bigtune_jax.finetune.carried import check_member_values
from bigtune_jax.finetune.carried import member_adapters
from bigtune_jax.models.nnx import params as nnx_params
from bigtune_jax.train.step import LossFn

MakeModel = Callable[[nnx.Rngs], nnx.Module]


def _no_shared(shared, what: str) -> None:
  if shared is not None:
    raise ValueError(f"base_params is only for a finetune.LoRA (adapters over a frozen linen "
                     f"base); {what} holds its own parameters, got base_params too")


@dataclasses.dataclass(frozen=True)
class NNXModels:
  """Members that each train all of ``make_model(nnx.Rngs(seed_i))``'s ``nnx.Param`` with
  ``loss_fn`` (a ``bt.train`` loss of any module the factory builds)."""
  make_model: MakeModel
  loss_fn: LossFn
  model: nnx.Module = dataclasses.field(compare=False, repr=False)  # abstract: shapes only

  def check(self, values: Mapping[str, np.ndarray], shared) -> None:
    del values
    _no_shared(shared, f"an NNX model factory's {type(self.model).__name__}")

  def loss(self, shared, hp) -> LossFn:
    del shared, hp
    return self.loss_fn

  def params_on_host(self, seed: int, shared) -> dict:
    """Member ``seed``'s initial tree: the module its solo run would build."""
    del shared
    return nnx_params.params_of(self.make_model(nnx.Rngs(seed)))

  def member(self, params, hp: Mapping[str, float]) -> nnx.Module:
    """A new module of the factory's graph holding ``params`` (the arrays themselves)."""
    del hp
    return nnx_params.to_nnx(nnx.eval_shape(lambda: self.make_model(nnx.Rngs(0))), params)


@dataclasses.dataclass(frozen=True)
class NNXAdapters:
  """Members that each train adapters of the LoRA-adapted NNX ``model`` over its frozen
  base (module docstring); ``hparams`` may hold ``alpha`` (> 0) and ``rank`` (an integer
  in ``[1, r_max]``). Build with :meth:`of`."""
  model: nnx.Module  # holds nnx.LoRAParam adapters at the stored rank
  loss_fn: LossFn  # a bt.train loss of ``model`` (it trains the adapters only)
  lora: LoRA = dataclasses.field(compare=False, repr=False)  # the linen twin's spec
  base: Any = dataclasses.field(compare=False, repr=False)  # the un-adapted parameters

  @classmethod
  def of(cls, model: nnx.Module, loss_fn: LossFn) -> "NNXAdapters":
    """ValueError unless ``model`` is an NNX ``GPT`` / ``Llama`` holding adapters."""
    if not nnx_lora.adapted_layers(model):
      raise ValueError(f"an adapter population of an NNX model needs a model holding LoRA "
                       f"adapters (finetune.nnx_lora.add_lora), got {type(model).__name__} "
                       "without any (whole NNX models: a factory lambda rngs: "
                       "Model(..., rngs=rngs))")
    return cls(model, loss_fn, nnx_lora.adapters_of(model)[0], nnx_lora.base_params(model))

  def check(self, values: Mapping[str, np.ndarray], shared) -> None:
    _no_shared(shared, f"the LoRA-adapted NNX {type(self.model).__name__}")
    check_member_values(values, self.lora.rank)

  def loss(self, shared, hp) -> LossFn:
    del shared
    if "alpha" not in hp and "rank" not in hp:
      return self.loss_fn
    scale, mask = self.lora.scale_and_mask(hp.get("alpha"), hp.get("rank"))
    ratio = scale / self.lora.scale_and_mask()[0]  # s_i / s_0

    def rescale(path, x):
      leaf = jax.tree_util.keystr(path[-1:], simple=True)
      if leaf == LORA_A and mask is not None:
        return x * mask.astype(x.dtype)
      return x * jnp.asarray(ratio, x.dtype) if leaf == LORA_B else x

    def loss(adapters, batch, rng, train):
      return self.loss_fn(jax.tree_util.tree_map_with_path(rescale, adapters), batch, rng,
                          train)

    return loss

  def params_on_host(self, seed: int, shared) -> dict:
    """Member ``seed``'s initial adapters, drawn as ``add_lora(..., seed=seed)`` draws them."""
    del shared
    return nnx_lora.state_layout(self.lora.init(jax.random.key(seed), self.base))

  def member(self, params, hp: Mapping[str, float]) -> nnx.Module:
    """A new NNX model over the base's arrays holding the member's adapters at its own
    rank and alpha (``finetune.member_adapters``, the one cut)."""
    rank = int(round(float(hp["rank"]))) if "rank" in hp else self.lora.rank
    alpha = float(hp["alpha"]) if "alpha" in hp else float(self.lora.alpha)
    adapters = member_adapters(nnx_lora.lora_layout(params), rank, alpha)
    lora = dataclasses.replace(self.lora, rank=rank, alpha=alpha)
    model = nnx_params.from_linen(self.lora.model, self.base)
    return nnx_lora.insert(model, lora, adapters.params)


def nnx_kind(model, loss_fn: LossFn) -> NNXModels | NNXAdapters:
  """The NNX kind ``model`` names: an NNX module holding LoRA adapters (adapters over its
  frozen base), or a factory ``rngs -> nnx.Module`` (whole models); ValueError for a bare
  module (it holds one seed's weights) and for a factory that does not build a module."""
  if isinstance(model, nnx.Module):
    if nnx_lora.adapted_layers(model):
      return NNXAdapters.of(model, loss_fn)
    name = type(model).__name__
    raise ValueError(f"model is a built nnx.Module ({name}), which holds one seed's weights: "
                     f"a population of NNX models takes a factory, lambda rngs: "
                     f"{name}(..., rngs=rngs), called with nnx.Rngs(seed) for each member")
  try:
    built = nnx.eval_shape(lambda: model(nnx.Rngs(0)))  # shapes only: nothing is drawn
  except Exception as error:  # pylint: disable=broad-except
    built = error
  if not isinstance(built, nnx.Module):
    raise ValueError("model must be a flax.linen.Module (whole models) or a "
                     "bigtune_jax.finetune.LoRA with base_params (adapters over a frozen "
                     "base), or in Flax NNX a factory rngs -> nnx.Module (whole models) or "
                     f"an nnx.Module holding LoRA adapters; got {model!r}, and "
                     f"model(nnx.Rngs(0)) gave {built!r}")
  return NNXModels(model, loss_fn, built)
