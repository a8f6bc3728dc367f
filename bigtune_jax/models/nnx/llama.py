"""``Llama`` (Llama / Mistral / Qwen2) as an ``nnx.Module``: the linen ``bt.models.Llama``'s
configuration, math (``decoder_math``, ``llama.apply_rope``) and parameter layout
(``embed_tokens``, ``layers`` stacked ``(num_hidden_layers, ...)``, ``norm``, ``lm_head``),
logical axis names included, so ``hub_tables``' one table loads and saves both.

Without a KV cache: generation stays with the linen model (``hub.load_hf`` gives either
over the same arrays).
"""

from flax import nnx
import jax
import jax.numpy as jnp

from bigtune_jax.models import decoder_math
from bigtune_jax.models import llama as linen_llama
from bigtune_jax.models.gpt import attention_implementation
from bigtune_jax.models.nnx.layers import axes, check_config, param, scan_layers, stacked, \
    token_embedding

_NORMAL = nnx.initializers.normal(0.02)


class RMSNorm(nnx.Module):
  def __init__(self, config: linen_llama.LlamaConfig, *, rngs: nnx.Rngs):
    del rngs
    self.config = config
    self.scale = nnx.Param(jnp.ones((config.hidden_size,), config.param_dtype), **axes("embed"))

  def __call__(self, x: jax.Array) -> jax.Array:
    return decoder_math.rms_norm(x, self.scale[...], self.config.rms_norm_eps, self.config.dtype)


class Attention(nnx.Module):
  """Grouped-query causal self-attention with rotary positions."""

  def __init__(self, config: linen_llama.LlamaConfig, *, rngs: nnx.Rngs):
    self.config = config
    cfg, c, hd = config, config.hidden_size, config.head_size
    def projection(heads):
      return nnx.LinearGeneral(c, (heads, hd), use_bias=cfg.attention_bias, dtype=cfg.dtype,
                               param_dtype=cfg.param_dtype, kernel_init=_NORMAL, rngs=rngs,
                               kernel_metadata=axes("embed", "heads", "kv"),
                               bias_metadata=axes("heads", "kv"))
    self.q_proj = projection(cfg.num_attention_heads)
    self.k_proj = projection(cfg.kv_heads)
    self.v_proj = projection(cfg.kv_heads)
    self.o_proj = nnx.LinearGeneral(
        (cfg.num_attention_heads, hd), c, axis=(-2, -1), use_bias=cfg.o_proj_bias,
        dtype=cfg.dtype, param_dtype=cfg.param_dtype, kernel_init=_NORMAL, rngs=rngs,
        kernel_metadata=axes("heads", "kv", "embed"), bias_metadata=axes("embed"))

  def __call__(self, x: jax.Array, positions: jax.Array) -> jax.Array:
    cfg = self.config
    inv_freq = linen_llama.rope_frequencies(cfg)
    q = linen_llama.apply_rope(self.q_proj(x), positions, inv_freq)  # (B, T, nh, hd)
    k = linen_llama.apply_rope(self.k_proj(x), positions, inv_freq)  # (B, T, nkv, hd)
    y = jax.nn.dot_product_attention(q, k, self.v_proj(x), is_causal=True,
                                     implementation=attention_implementation(cfg))
    return self.o_proj(y)  # (B, T, C)


class SwiGLU(nnx.Module):
  def __init__(self, config: linen_llama.LlamaConfig, *, rngs: nnx.Rngs):
    cfg = config
    def dense(features_in, features_out, *names):
      return nnx.Linear(features_in, features_out, use_bias=False, dtype=cfg.dtype,
                        param_dtype=cfg.param_dtype, kernel_init=_NORMAL, rngs=rngs,
                        kernel_metadata=axes(*names))
    self.gate_proj = dense(cfg.hidden_size, cfg.intermediate_size, "embed", "mlp")
    self.up_proj = dense(cfg.hidden_size, cfg.intermediate_size, "embed", "mlp")
    self.down_proj = dense(cfg.intermediate_size, cfg.hidden_size, "mlp", "embed")

  def __call__(self, x: jax.Array) -> jax.Array:
    return decoder_math.swiglu(x, self.gate_proj, self.up_proj, self.down_proj)


class DecoderLayer(nnx.Module):
  """One pre-norm block: ``h = x + attn(rms(x))``, ``x' = h + mlp(rms(h))``."""

  def __init__(self, config: linen_llama.LlamaConfig, *, rngs: nnx.Rngs):
    self.input_layernorm = RMSNorm(config, rngs=rngs)
    self.self_attn = Attention(config, rngs=rngs)
    self.post_attention_layernorm = RMSNorm(config, rngs=rngs)
    self.mlp = SwiGLU(config, rngs=rngs)

  def __call__(self, x: jax.Array, positions: jax.Array) -> jax.Array:
    x = x + self.self_attn(self.input_layernorm(x), positions)
    return x + self.mlp(self.post_attention_layernorm(x))


class Llama(nnx.Module):
  """Token ids ``(B, T)`` -> float32 logits ``(B, T, vocab_size)``; with ``targets`` the
  per-token cross-entropy ``(B, T)`` through the fused head. ``train`` and ``rng`` are
  accepted for the engine's sake (the family has no dropout). Built as
  ``Llama(LlamaConfig.tiny(), rngs=nnx.Rngs(0))``; see ``nnx.GPT`` for an example.
  """

  def __init__(self, config: linen_llama.LlamaConfig, *, rngs: nnx.Rngs):
    check_config(config, linen_llama.LlamaConfig)
    self.config = cfg = config
    self.embed_tokens = token_embedding(cfg.vocab_size, cfg.hidden_size, cfg, rngs)
    self.layers = stacked(lambda r: DecoderLayer(cfg, rngs=r), cfg.num_hidden_layers, rngs)
    self.norm = RMSNorm(cfg, rngs=rngs)
    if not cfg.tie_word_embeddings:  # stored (C, V) as a Dense kernel
      self.lm_head = param(rngs.params(), _NORMAL, (cfg.hidden_size, cfg.vocab_size),
                           cfg.param_dtype, "embed", "vocab")

  def __call__(self, idx: jax.Array, *, train: bool = False, rng: jax.Array | None = None,
               targets: jax.Array | None = None) -> jax.Array:
    del train, rng
    cfg = self.config
    decoder_math.check_token_inputs(idx, targets)
    cfg.check_positions(idx.shape[1], "sequence length")
    embedding = self.embed_tokens.embedding[...]
    x = jnp.take(embedding, idx, axis=0).astype(cfg.dtype)  # (B, T, C)
    positions = jnp.arange(idx.shape[1])
    x = scan_layers(self.layers, x, lambda layer, x: layer(x, positions),
                    unroll=cfg.scan_unroll, remat=cfg.remat)
    head = embedding if cfg.tie_word_embeddings else self.lm_head[...].T  # (V, C)
    return decoder_math.decoder_output(self.norm(x), head, targets, cfg)
