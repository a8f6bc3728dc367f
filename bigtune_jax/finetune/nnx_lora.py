"""LoRA on an NNX ``GPT`` / ``Llama`` with Flax's own ``nnx.LoRA`` and ``nnx.LoRAParam``.

``add_lora(model, targets, rank, alpha)`` wraps each chosen ``nnx.Linear`` /
``nnx.LinearGeneral`` (PEFT's ``target_modules``, chosen as ``finetune.LoRA`` chooses them
on the linen twin) in :class:`LoRAAdapted`: ``y = base(x) + s * nnx.LoRA(x)``, the input
and output axes flattened, ``s = alpha / r`` (rsLoRA: ``alpha / sqrt(r)``), Hu et al.,
2021. The adapters are drawn by ``finetune.LoRA.init`` on the linen twin (``A`` uniform in
``±1/sqrt(in)``, ``B = 0``, stacked ``(n_layer, ...)`` under the scanned layers), so an
NNX adapter equals the linen one drawn with the same key, and ``finetune.save_peft`` /
``load_peft`` take an NNX model and work on that same ``{layer: {lora_a, lora_b}}`` tree
(:func:`adapters_of`, :func:`insert`).

Training: a model holding ``nnx.LoRAParam`` trains those only (the engine splits it with
``wrt=nnx.LoRAParam``, ``train/nnx_state.py``): the base parameters are held fixed in the
loss, and neither gradients nor optimizer state are formed for them.
"""

import math

from flax import nnx
import jax

from bigtune_jax.finetune.adapters import LoRA
from bigtune_jax.finetune.carried import LORA_A, LORA_B
from bigtune_jax.finetune.targets import LinearLayer
from bigtune_jax.models.nnx import params as nnx_params
from bigtune_jax import tree_paths


class LoRAAdapted(nnx.Module):
  """``base(x) + scale * lora(x)`` with ``lora`` an ``nnx.LoRA`` over the flattened
  ``in_shape`` -> ``out_shape`` axes of ``base``'s kernel."""

  def __init__(self, base: nnx.Module, layer: LinearLayer, a: jax.Array, b: jax.Array,
               lora: LoRA):
    self.base, self.rank, self.alpha, self.rslora = base, lora.rank, lora.alpha, lora.rslora
    self.targets = lora.targets  # as given: their order is the order A was drawn in
    self.scale = lora.scale_and_mask()[0]
    self.in_shape, self.out_shape = layer.in_shape, layer.out_shape
    self.lora = nnx.eval_shape(lambda: nnx.LoRA(layer.n_in, lora.rank, layer.n_out,
                                                rngs=nnx.Rngs(0)))
    self.lora.lora_a = nnx.LoRAParam(a)  # (*stack, in, r)
    self.lora.lora_b = nnx.LoRAParam(b)  # (*stack, r, out)

  def __call__(self, x: jax.Array) -> jax.Array:
    batch = x.shape[:x.ndim - len(self.in_shape)]
    low_rank = self.lora(x.reshape(*batch, math.prod(self.in_shape)))  # (..., out)
    return self.base(x) + self.scale * low_rank.reshape(*batch, *self.out_shape)


def _parent(node, path: str):
  """``(parent, name)`` of ``path`` in a module (attributes) or a nested dict (keys)."""
  *parents, name = path.split("/")
  for part in parents:
    node = node[part] if isinstance(node, dict) else getattr(node, part)
  return node, name


def _check_unadapted(model: nnx.Module) -> None:
  if adapted_layers(model):
    raise ValueError(f"model already holds LoRA adapters on {', '.join(adapted_layers(model))}")


def insert(model: nnx.Module, lora: LoRA, adapters: dict) -> nnx.Module:
  """``model`` with ``adapters`` (``finetune.LoRA``'s tree for ``lora``) inserted, in place."""
  _check_unadapted(model)
  layers = {layer.path: layer for layer in lora.layers(nnx_params.params_of(model))}
  flat = tree_paths.flatten(adapters)
  for path, layer in layers.items():
    parent, name = _parent(model, path)
    setattr(parent, name, LoRAAdapted(getattr(parent, name), layer, flat[f"{path}/{LORA_A}"],
                                      flat[f"{path}/{LORA_B}"], lora))
  return model


def add_lora(model: nnx.Module, targets=("q_proj", "v_proj"), rank: int = 8,
             alpha: float = 16.0, *, rslora: bool = False, seed: int = 0) -> nnx.Module:
  """``model`` (an NNX ``GPT`` / ``Llama`` without adapters) with LoRA adapters on
  ``targets``, in place; ``seed`` draws ``A``. ValueError naming a target that matches no
  layer, or a rank that does not fit one, before the model is changed."""
  _check_unadapted(model)
  linen, params = nnx_params.to_linen(model)
  lora = LoRA(linen, targets=targets, rank=rank, alpha=alpha, rslora=rslora)
  return insert(model, lora, lora.init(jax.random.key(seed), params))


def adapted_layers(model: nnx.Module) -> dict[str, LoRAAdapted]:
  """``{layer path: LoRAAdapted}`` of every adapted layer (paths of the un-adapted model)."""
  return {"/".join(map(str, path)): module for path, module in nnx.iter_graph(model)
          if isinstance(module, LoRAAdapted)}


def adapters_of(model: nnx.Module) -> tuple[LoRA, dict]:
  """``(LoRA, {layer: {"lora_a", "lora_b"}})``: the linen twin's LoRA spec (the targets as
  given to ``add_lora``, so ``LoRA.init`` draws as it did) and the trained adapters in
  ``finetune.LoRA``'s layout (what ``finetune.save_peft`` writes)."""
  layers = adapted_layers(model)
  if not layers:
    raise ValueError("the model holds no LoRA adapter (add them with add_lora)")
  first = next(iter(layers.values()))
  base = nnx_params.to_linen(model)[0]
  lora = LoRA(base, targets=first.targets, rank=first.rank, alpha=first.alpha,
              rslora=first.rslora)
  flat = {}
  for path, module in layers.items():
    flat[f"{path}/{LORA_A}"] = module.lora.lora_a[...]
    flat[f"{path}/{LORA_B}"] = module.lora.lora_b[...]
  return lora, tree_paths.unflatten(flat)


def base_params(model: nnx.Module) -> dict:
  """The parameters of ``model`` without its adapters, in the un-adapted layout (each
  adapted layer's ``base`` parameters at the layer's own path): the tree ``add_lora``
  drew the adapters on, and what ``finetune.LoRA`` takes as ``params``. The arrays are
  the model's own."""
  tree = nnx_params.params_of(model)
  for path in adapted_layers(model):
    parent, name = _parent(tree, path)
    parent[name] = parent[name]["base"]
  return tree


def state_layout(adapters: dict) -> dict:
  """``finetune.LoRA``'s ``{layer: {lora_a, lora_b}}`` as the ``nnx.LoRAParam`` state of
  the adapted model (``{layer: {"lora": {lora_a, lora_b}}}``, what the engine trains)."""
  return tree_paths.unflatten({_with_lora(path): leaf
                               for path, leaf in tree_paths.flatten(adapters).items()})


def lora_layout(state: dict) -> dict:
  """The inverse of :func:`state_layout`."""
  return tree_paths.unflatten({path.replace("/lora/", "/"): leaf
                               for path, leaf in tree_paths.flatten(state).items()})


def _with_lora(path: str) -> str:
  layer, _, leaf = path.rpartition("/")
  return f"{layer}/lora/{leaf}"
