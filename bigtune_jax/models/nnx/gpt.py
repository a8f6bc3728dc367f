"""``GPT`` as an ``nnx.Module``: the linen ``bt.models.GPT``'s configuration, math
(``gpt.gelu``, ``decoder_math``) and parameter layout (``wte``, ``wpe``, ``h`` stacked
``(n_layer, ...)``, ``ln_f``), logical axis names included, so ``hub_tables``' one table
loads and saves both.

Dropout draws from the ``rng`` given at call time: the embeddings' mask from
``fold_in(rng, 0)``, layer ``i``'s two masks from keys split off ``fold_in(rng, 1)`` along
the scan (different masks from linen's ``'dropout'`` stream; without dropout both models
compute the same function). Without a KV cache: generation stays with the linen model.
"""

import math

from flax import nnx
import jax
import jax.numpy as jnp

from bigtune_jax.models import decoder_math
from bigtune_jax.models import gpt as linen_gpt
from bigtune_jax.models.nnx.dropout import dropout_layers
from bigtune_jax.models.nnx.layers import axes, check_config, param, scan_layers, stacked, \
    token_embedding

_NORMAL = nnx.initializers.normal(0.02)


def _layer_norm(cfg: linen_gpt.GPTConfig, rngs: nnx.Rngs) -> nnx.LayerNorm:
  return nnx.LayerNorm(cfg.n_embd, epsilon=cfg.layer_norm_epsilon, dtype=cfg.dtype,
                       param_dtype=cfg.param_dtype, scale_metadata=axes("embed"),
                       bias_metadata=axes("embed"), rngs=rngs)


class CausalSelfAttention(nnx.Module):
  def __init__(self, cfg: linen_gpt.GPTConfig, *, rngs: nnx.Rngs):
    self.config = cfg
    nh, hs = cfg.n_head, cfg.head_size
    self.c_attn = nnx.LinearGeneral(
        cfg.n_embd, (3, nh, hs), dtype=cfg.dtype, param_dtype=cfg.param_dtype,
        kernel_init=_NORMAL, kernel_metadata=axes("embed", None, "heads", "kv"),
        bias_metadata=axes(None, "heads", "kv"), rngs=rngs)
    self.c_proj = nnx.LinearGeneral(
        (nh, hs), cfg.n_embd, axis=(-2, -1), dtype=cfg.dtype, param_dtype=cfg.param_dtype,
        kernel_init=nnx.initializers.normal(0.02 / math.sqrt(2 * cfg.n_layer)),
        kernel_metadata=axes("heads", "kv", "embed"), bias_metadata=axes("embed"), rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    qkv = self.c_attn(x)  # (B, T, 3, nh, hs)
    y = jax.nn.dot_product_attention(
        qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2], is_causal=True,
        implementation=linen_gpt.attention_implementation(self.config))  # (B, T, nh, hs)
    return self.c_proj(y)  # (B, T, C)


class FeedForward(nnx.Module):
  """C -> 4C -> GELU -> C."""

  def __init__(self, cfg: linen_gpt.GPTConfig, *, rngs: nnx.Rngs):
    self.approximate = cfg.gelu_approximate
    c = cfg.n_embd
    self.c_fc = nnx.Linear(c, 4 * c, dtype=cfg.dtype, param_dtype=cfg.param_dtype,
                           kernel_init=_NORMAL, kernel_metadata=axes("embed", "mlp"),
                           bias_metadata=axes("mlp"), rngs=rngs)
    self.c_proj = nnx.Linear(4 * c, c, dtype=cfg.dtype, param_dtype=cfg.param_dtype,
                             kernel_init=nnx.initializers.normal(0.02 / math.sqrt(2 * cfg.n_layer)),
                             kernel_metadata=axes("mlp", "embed"), bias_metadata=axes("embed"),
                             rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    x = self.c_fc(x)  # (B, T, 4C)
    x = jax.nn.gelu(x, approximate=True) if self.approximate else linen_gpt.gelu(x)
    return self.c_proj(x)  # (B, T, C)


class Block(nnx.Module):
  """Pre-LayerNorm block: ``x + drop(attn(ln_1(x)))``, then ``+ drop(mlp(ln_2(x)))``."""

  def __init__(self, cfg: linen_gpt.GPTConfig, *, rngs: nnx.Rngs):
    self.ln_1 = _layer_norm(cfg, rngs)
    self.attn = CausalSelfAttention(cfg, rngs=rngs)
    self.ln_2 = _layer_norm(cfg, rngs)
    self.mlp = FeedForward(cfg, rngs=rngs)
    self.dropout_rate = cfg.dropout

  def __call__(self, x: jax.Array, train: bool, rng: jax.Array | None) -> jax.Array:
    drop_attn, drop_mlp = dropout_layers(2, self.dropout_rate, train, rng)
    x = x + drop_attn(self.attn(self.ln_1(x)))
    return x + drop_mlp(self.mlp(self.ln_2(x)))


class GPT(nnx.Module):
  """Token ids ``(B, T)`` -> float32 logits ``(B, T, vocab_size)``; with ``targets`` the
  per-token cross-entropy ``(B, T)`` through the fused head; ``train=True, rng=key`` turns
  dropout on (``config.dropout > 0``).

  Example:
    >>> from flax import nnx
    >>> import jax.numpy as jnp
    >>> from bigtune_jax.models import GPTConfig, nnx as nnx_models
    >>> model = nnx_models.GPT(GPTConfig.tiny(), rngs=nnx.Rngs(0))
    >>> model(jnp.zeros((2, 8), jnp.int32)).shape
    (2, 8, 64)
  """

  def __init__(self, config: linen_gpt.GPTConfig, *, rngs: nnx.Rngs):
    check_config(config, linen_gpt.GPTConfig)
    self.config = cfg = config
    self.wte = token_embedding(cfg.vocab_size, cfg.n_embd, cfg, rngs)
    self.wpe = param(rngs.params(), _NORMAL, (cfg.block_size, cfg.n_embd), cfg.param_dtype,
                     None, "embed")
    self.h = stacked(lambda r: Block(cfg, rngs=r), cfg.n_layer, rngs)
    self.ln_f = _layer_norm(cfg, rngs)

  def __call__(self, idx: jax.Array, *, train: bool = False, rng: jax.Array | None = None,
               targets: jax.Array | None = None) -> jax.Array:
    cfg = self.config
    decoder_math.check_token_inputs(idx, targets)
    if idx.shape[1] > cfg.block_size:
      raise ValueError(f"sequence length {idx.shape[1]} exceeds block_size={cfg.block_size}")
    (drop,) = dropout_layers(1, cfg.dropout, train, rng)
    embedding = self.wte.embedding[...]
    x = (jnp.take(embedding, idx, axis=0) + self.wpe[: idx.shape[1]]).astype(cfg.dtype)
    x = drop(x)  # (B, T, C)
    key = None if rng is None else jax.random.fold_in(rng, 1)

    def layer(block, carry):
      x, key = carry
      key, sub = (None, None) if key is None else jax.random.split(key)
      return block(x, train, sub), key

    x, _ = scan_layers(self.h, (x, key), layer, unroll=cfg.scan_unroll, remat=cfg.remat)
    return decoder_math.decoder_output(self.ln_f(x), embedding, targets, cfg)
