"""What the NNX decoders share: parameters tagged with the linen modules' logical axis
names, and a scan over a stack of layers."""

from collections.abc import Callable

from flax import nnx
import jax


def axes(*names) -> dict:
  """Variable metadata naming a parameter's logical axes, as linen's
  ``nn.with_logical_partitioning`` does (placement is the engine's: no eager sharding)."""
  return {"out_sharding": tuple(names), "eager_sharding": False}


def param(key: jax.Array, init: Callable, shape: tuple, dtype, *names) -> nnx.Param:
  """An ``nnx.Param`` drawn by ``init`` and tagged with logical axis ``names``."""
  return nnx.Param(init(key, shape, dtype), **axes(*names))


def stacked(make_layer: Callable[[nnx.Rngs], nnx.Module], count: int,
            rngs: nnx.Rngs) -> nnx.Module:
  """``count`` layers ``make_layer(rngs)`` as one module whose parameters have a leading
  ``(count, ...)`` axis named ``layers``: the layout of linen's ``nn.scan`` (each layer
  drawn from its own split of ``rngs``)."""

  @nnx.split_rngs(splits=count)
  @nnx.vmap(in_axes=(0,), out_axes=0, transform_metadata={nnx.PARTITION_NAME: "layers"})
  def make(layer_rngs):
    return make_layer(layer_rngs)

  return make(rngs)


def scan_layers(layers: nnx.Module, carry, apply_layer: Callable, *, unroll: int = 1,
                remat: bool = False):
  """``carry`` through each layer of a :func:`stacked` module in order,
  ``carry = apply_layer(layer, carry)`` (a ``jax.lax.scan`` over the stacked state, as
  linen's ``nn.scan``); ``remat`` recomputes each layer's activations in the backward
  pass (``jax.checkpoint``)."""
  graphdef, state = nnx.split(layers)

  def body(carry, layer_state):
    return apply_layer(nnx.merge(graphdef, layer_state), carry), None

  if remat:
    body = jax.checkpoint(body, prevent_cse=False)
  carry, _ = jax.lax.scan(body, carry, state, unroll=unroll)
  return carry


def check_config(config, expected: type) -> None:
  if not isinstance(config, expected):
    raise ValueError(f"config must be a bt.models.{expected.__name__}, got {config!r}")


def token_embedding(vocab_size: int, width: int, config, rngs: nnx.Rngs) -> nnx.Embed:
  """The ``(vocab_size, width)`` token table, N(0, 0.02), axes ``(vocab, embed)``."""
  return nnx.Embed(vocab_size, width, dtype=config.dtype, param_dtype=config.param_dtype,
                   embedding_init=nnx.initializers.normal(0.02),
                   embedding_metadata=axes("vocab", "embed"), rngs=rngs)
