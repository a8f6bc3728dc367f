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

After ``fit``, :func:`to_nnx` puts the trained parameters back into the module. A model
holding ``nnx.LoRAParam`` (``finetune.nnx_lora``) trains its adapters only.
"""

from collections.abc import Callable

from flax import nnx
import jax

from bigtune_jax.models.nnx import params as nnx_params
from bigtune_jax.models.nnx.params import params_of  # noqa: F401  (the engine's names)
from bigtune_jax.models.nnx.params import split
from bigtune_jax.models.nnx.params import to_nnx  # noqa: F401


def is_nnx(model) -> bool:
  return isinstance(model, nnx.Module)


def train_params(model: nnx.Module, params) -> dict:
  """The parameter tree a ``TrainState`` of ``model`` starts from: ``params`` (a tree like
  :func:`params_of`'s), or the model's own when None."""
  wrt = nnx_params.trained_filter(model)
  if params is None:
    return params_of(model, wrt)
  if not isinstance(params, dict):
    raise ValueError(f"params of an NNX model must be None (the model's own) or a nested "
                     f"dict like nnx_state.params_of(model), got {type(params).__name__}")
  for path, _ in nnx.to_flat_state(split(model, wrt)[1]):
    nnx_params.leaf_at(params, path)  # every parameter is there
  return params


def apply_fn(model: nnx.Module, takes_train: bool) -> Callable:
  """``apply(params, x, rng, train, **kwargs)`` of the engine's losses for an NNX model:
  ``nnx.merge`` of the model's graph with ``params``, called as
  ``model(x, train=train, rng=rng, **kwargs)`` (without ``train``/``rng`` when its
  ``__call__`` takes no ``train``). A model holding LoRA adapters trains those only
  (``nnx_params.trained_filter``): its other parameters are constants of the loss."""
  graphdef, template, frozen = split(model, nnx_params.trained_filter(model))
  template = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), template)

  def apply(params, x, rng, train, **kwargs):
    module = nnx_params.merge(graphdef, template, params, frozen)
    if takes_train:
      return module(x, train=train, rng=rng, **kwargs)
    return module(x, **kwargs)

  return apply


