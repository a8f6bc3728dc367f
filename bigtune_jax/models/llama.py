"""The Llama family of decoders: Llama 2/3.x, Mistral (without sliding window) and Qwen2.

The pretrained large models of seed 001 §2.3/§4.2 and seed 003 §4.1, as transformers'
``LlamaForCausalLM``, ``MistralForCausalLM`` and ``Qwen2ForCausalLM`` define them, so their
checkpoints load with equal logits (``bigtune_jax.hub``). Each of ``num_hidden_layers``
pre-norm blocks computes::

  h = x + o_proj(attention(rope(q_proj(n1)), rope(k_proj(n1)), v_proj(n1))),  n1 = rms(x)
  x' = h + down_proj(silu(gate_proj(n2)) * up_proj(n2)),                      n2 = rms(h)

* RMSNorm (Zhang & Sennrich, 2019): ``w * x / sqrt(mean(x^2) + eps)``, statistics in float32.
* Rotary position embeddings (Su et al., "RoFormer", 2021) in transformers' half-split
  layout: ``q cos(p theta) + rotate_half(q) sin(p theta)`` with ``theta_i =
  rope_theta^(-2i/d)``; ``rope_scaling`` ``"linear"`` divides the frequencies by ``factor``
  and ``"llama3"`` (Llama 3.1/3.2) divides only the low frequencies, blending the middle band.
* Grouped-query attention (Ainslie et al., "GQA", 2023): ``num_key_value_heads`` key/value
  heads, each shared by ``num_attention_heads / num_key_value_heads`` query heads.
* SwiGLU MLP (Shazeer, "GLU Variants Improve Transformer", 2020); Qwen2 adds biases to
  q/k/v (``attention_bias``), Llama's ``attention_bias`` also to o_proj (``o_proj_bias``);
  the head is tied to the embedding or separate.
* Sliding-window attention (Mistral, Qwen2) is not implemented: with ``sliding_window`` set,
  sequences and caches are limited to the window, where full causal attention is exact
  (a query at distance < window from every key it sees).

Built like ``GPT``: layers stacked under ``nn.scan`` (compile time flat in depth), logical
axis names on every parameter (``vocab``, ``embed``, ``heads``, ``kv``, ``mlp``, ``layers``)
so ``train/sharding.py``'s rules place it on any mesh, compute in ``dtype`` with float32
norms, softmax and logits, ``targets=`` through the fused chunked head (``tied_head.py``; no
``(B, T, V)`` float32 logits), and ``cache=`` for generation (``kv_cache.py``).
"""

import dataclasses
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from bigtune_jax.models.gpt import FLOAT_DTYPES, attention_implementation, _dtype_name
from bigtune_jax.models.kv_cache import KVCache, cached_attention
from bigtune_jax.models import decoder_math
from bigtune_jax import validation

MODEL_TYPES = ("llama", "mistral", "qwen2")
ROPE_TYPES = ("default", "linear", "llama3")
_LLAMA3_KEYS = ("factor", "low_freq_factor", "high_freq_factor",
                "original_max_position_embeddings")


def _freeze(mapping):
  """A dict as a hashable, sorted tuple of items (modules are hashed by ``jax.jit``)."""
  return None if mapping is None else tuple(sorted(dict(mapping).items()))


@dataclasses.dataclass(frozen=True)
class LlamaConfig:
  """Sizes and numerics of a ``Llama``; field names are transformers' ``config.json`` keys.

  ``rope_scaling`` is ``None`` or a mapping with ``rope_type`` (``"default"``,
  ``"linear"``: ``factor``; ``"llama3"``: ``factor``, ``low_freq_factor``,
  ``high_freq_factor``, ``original_max_position_embeddings``); it is stored as a sorted
  tuple of items. ``LlamaConfig.tiny()`` is a seconds-on-CPU model.
  """
  vocab_size: int = 32000
  hidden_size: int = 4096
  intermediate_size: int = 11008
  num_hidden_layers: int = 32
  num_attention_heads: int = 32
  num_key_value_heads: int | None = None  # None: as many as query heads (no GQA)
  head_dim: int | None = None  # None: hidden_size // num_attention_heads
  max_position_embeddings: int = 4096
  rms_norm_eps: float = 1e-6
  rope_theta: float = 10000.0
  rope_scaling: Any = None
  attention_bias: bool = False  # biases on q/k/v (Qwen2; Llama's attention_bias)
  o_proj_bias: bool = False  # a bias on o_proj too (Llama's attention_bias)
  sliding_window: int | None = None  # Mistral/Qwen2: positions are limited to the window
  tie_word_embeddings: bool = False
  model_type: str = "llama"  # "llama", "mistral" or "qwen2": what save_hf writes
  dtype: Any = jnp.bfloat16  # compute dtype
  param_dtype: Any = jnp.float32  # storage dtype
  remat: bool = False
  scan_unroll: int = 1
  attention: str | None = None  # "xla", "cudnn" or None (chosen by attention_implementation)
  head_chunk: int | None = None  # tokens per chunk of the fused head's logits
  head_logits_dtype: Any = jnp.float32

  def __post_init__(self):
    for name in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                 "num_attention_heads", "max_position_embeddings", "scan_unroll"):
      validation.check_int(name, getattr(self, name), 1)
    for name in ("num_key_value_heads", "head_dim", "head_chunk", "sliding_window"):
      if getattr(self, name) is not None:
        validation.check_int(name, getattr(self, name), 1)
    if self.num_attention_heads % self.kv_heads:
      raise ValueError(f"num_key_value_heads must divide num_attention_heads, got "
                       f"{self.kv_heads} and {self.num_attention_heads}")
    if self.head_dim is None and self.hidden_size % self.num_attention_heads:
      raise ValueError(f"hidden_size must be divisible by num_attention_heads, got "
                       f"{self.hidden_size} and {self.num_attention_heads}")
    if self.head_size % 2:
      raise ValueError(f"head_dim must be even for rotary embeddings, got {self.head_size}")
    validation.check_interval("rms_norm_eps", self.rms_norm_eps, 0.0, 1.0, low_closed=False)
    validation.check_interval("rope_theta", self.rope_theta, 1.0, math.inf, high_closed=True)
    for name in ("dtype", "param_dtype"):
      validation.check_choice(name, _dtype_name(getattr(self, name)), FLOAT_DTYPES)
    if self.attention is not None:
      validation.check_choice("attention", self.attention, ("xla", "cudnn"))
    validation.check_choice("model_type", self.model_type, MODEL_TYPES)
    for name in ("attention_bias", "o_proj_bias", "tie_word_embeddings"):
      if not isinstance(getattr(self, name), bool):
        raise ValueError(f"{name} must be a bool, got {getattr(self, name)!r}")
    if self.sliding_window is not None and self.model_type == "llama":
      raise ValueError(f"sliding_window is for model_type 'mistral' or 'qwen2'; Llama "
                       f"attends to every position, got sliding_window={self.sliding_window}")
    if isinstance(self.rope_scaling, dict):
      object.__setattr__(self, "rope_scaling", _freeze(self.rope_scaling))
    _check_rope_scaling(self.rope_scaling_dict)

  @property
  def kv_heads(self) -> int:
    return self.num_key_value_heads or self.num_attention_heads

  @property
  def head_size(self) -> int:
    return self.head_dim or self.hidden_size // self.num_attention_heads

  @property
  def n_layer(self) -> int:  # the name generation and the benchmarks share with GPTConfig
    return self.num_hidden_layers

  @property
  def block_size(self) -> int:
    """The most positions a sequence or cache may hold: the window, when it is shorter."""
    return min(self.max_position_embeddings, self.sliding_window or self.max_position_embeddings)

  def check_positions(self, n: int, what: str) -> None:
    """Refuses ``n`` positions beyond ``block_size``, naming the field that limits them."""
    if n <= self.block_size:
      return
    if self.block_size < self.max_position_embeddings:
      raise ValueError(f"{what} {n} exceeds sliding_window={self.sliding_window}: "
                       f"sliding-window attention is not implemented, so sequences are "
                       f"limited to the window (where full attention is exact)")
    raise ValueError(f"{what} {n} exceeds max_position_embeddings={self.max_position_embeddings}")

  @property
  def rope_scaling_dict(self) -> dict | None:
    return None if self.rope_scaling is None else dict(self.rope_scaling)

  @classmethod
  def tiny(cls, **overrides) -> "LlamaConfig":
    """2 layers, 4 heads (2 key/value), width 32, vocab 64, 64 positions, float32."""
    sizes = dict(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                 dtype=jnp.float32)
    return cls(**{**sizes, **overrides})


def _check_rope_scaling(scaling: dict | None) -> None:
  if scaling is None:
    return
  kind = scaling.get("rope_type", scaling.get("type", "default"))
  if kind not in ROPE_TYPES:
    accepted = ", ".join(repr(t) for t in ROPE_TYPES)
    raise ValueError(f"rope_scaling type must be one of {accepted}, got {kind!r}")
  needed = {"default": (), "linear": ("factor",), "llama3": _LLAMA3_KEYS}[kind]
  missing = [k for k in needed if k not in scaling]
  if missing:
    raise ValueError(f"rope_scaling of type {kind!r} needs {', '.join(missing)}")
  if kind != "default":
    validation.check_interval("rope_scaling factor", scaling["factor"], 0.0, math.inf,
                              low_closed=False)


def rope_frequencies(config: LlamaConfig) -> jax.Array:
  """Inverse frequencies ``theta_i`` ``(head_dim / 2,)`` in float32, after ``rope_scaling``.

  ``"llama3"`` (transformers' ``_compute_llama3_parameters``): wavelengths ``2 pi / theta``
  longer than ``original / low_freq_factor`` are divided by ``factor``, those shorter than
  ``original / high_freq_factor`` kept, and the band between blended linearly in
  ``original / wavelength``.
  """
  d = config.head_size
  inv_freq = 1.0 / (config.rope_theta ** (jnp.arange(0, d, 2, dtype=jnp.float32) / d))
  scaling = config.rope_scaling_dict or {}
  kind = scaling.get("rope_type", scaling.get("type", "default"))
  if kind == "linear":
    return inv_freq / scaling["factor"]
  if kind != "llama3":
    return inv_freq
  factor, low, high = scaling["factor"], scaling["low_freq_factor"], scaling["high_freq_factor"]
  original = scaling["original_max_position_embeddings"]
  wavelen = 2 * math.pi / inv_freq
  scaled = jnp.where(wavelen > original / low, inv_freq / factor, inv_freq)
  smooth = (original / wavelen - low) / (high - low)
  blended = (1 - smooth) * scaled / factor + smooth * scaled
  medium = (wavelen >= original / high) & (wavelen <= original / low)
  return jnp.where(medium, blended, scaled)


def apply_rope(x: jax.Array, positions: jax.Array, inv_freq: jax.Array) -> jax.Array:
  """Rotates ``x`` ``(B, T, heads, d)`` by ``positions`` ``(T,)`` or ``(B, T)`` (one per
  row: left-padded generation) in the half-split layout."""
  angles = positions.astype(jnp.float32)[..., None] * inv_freq  # (T, d/2) or (B, T, d/2)
  cos = jnp.concatenate([jnp.cos(angles)] * 2, -1)[..., None, :]  # (T, 1, d) or (B, T, 1, d)
  sin = jnp.concatenate([jnp.sin(angles)] * 2, -1)[..., None, :]
  x32 = x.astype(jnp.float32)
  half = x.shape[-1] // 2
  rotated = jnp.concatenate([-x32[..., half:], x32[..., :half]], -1)  # rotate_half
  return (x32 * cos + rotated * sin).astype(x.dtype)


def _init(names, std: float | None = 0.02):
  init = nn.initializers.zeros_init() if std is None else nn.initializers.normal(std)
  return nn.with_logical_partitioning(init, names)


class RMSNorm(nn.Module):
  """``scale * x / sqrt(mean(x^2) + eps)``, statistics in float32, result in ``dtype``."""
  config: LlamaConfig

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    cfg = self.config
    scale = self.param("scale", nn.with_logical_partitioning(nn.initializers.ones_init(),
                                                             ("embed",)),
                       (x.shape[-1],), cfg.param_dtype)
    return decoder_math.rms_norm(x, scale, cfg.rms_norm_eps, cfg.dtype)


class Attention(nn.Module):
  """Grouped-query causal self-attention with rotary positions and an optional cache."""
  config: LlamaConfig

  @nn.compact
  def __call__(self, x, positions, layer_cache):
    cfg = self.config
    dense = lambda heads, name, names: nn.DenseGeneral(  # noqa: E731
        (heads, cfg.head_size), use_bias=cfg.attention_bias, dtype=cfg.dtype,
        param_dtype=cfg.param_dtype, kernel_init=_init(names), bias_init=_init(names[1:], None),
        name=name)
    q = dense(cfg.num_attention_heads, "q_proj", ("embed", "heads", "kv"))(x)  # (B, T, nh, hd)
    k = dense(cfg.kv_heads, "k_proj", ("embed", "heads", "kv"))(x)  # (B, T, nkv, hd)
    v = dense(cfg.kv_heads, "v_proj", ("embed", "heads", "kv"))(x)
    inv_freq = rope_frequencies(cfg)
    q, k = apply_rope(q, positions, inv_freq), apply_rope(k, positions, inv_freq)
    if layer_cache is None:
      y = jax.nn.dot_product_attention(q, k, v, is_causal=True,
                                       implementation=attention_implementation(cfg))
    else:
      y, cache_key, cache_value = cached_attention(q, k, v, *layer_cache)
      layer_cache = (cache_key, cache_value)
    y = nn.DenseGeneral(cfg.hidden_size, axis=(-2, -1), use_bias=cfg.o_proj_bias,
                        dtype=cfg.dtype, param_dtype=cfg.param_dtype,
                        kernel_init=_init(("heads", "kv", "embed")),
                        bias_init=_init(("embed",), None), name="o_proj")(y)  # (B, T, C)
    return y, layer_cache


class SwiGLU(nn.Module):
  """``down_proj(silu(gate_proj(x)) * up_proj(x))``."""
  config: LlamaConfig

  @nn.compact
  def __call__(self, x):
    cfg = self.config
    dense = lambda features, name, names: nn.Dense(  # noqa: E731
        features, use_bias=False, dtype=cfg.dtype, param_dtype=cfg.param_dtype,
        kernel_init=_init(names), name=name)
    return decoder_math.swiglu(x, dense(cfg.intermediate_size, "gate_proj", ("embed", "mlp")),
                               dense(cfg.intermediate_size, "up_proj", ("embed", "mlp")),
                               dense(cfg.hidden_size, "down_proj", ("mlp", "embed")))


class DecoderLayer(nn.Module):
  """One pre-norm block; ``(carry, layer_cache) -> (carry, layer_cache)`` for ``nn.scan``."""
  config: LlamaConfig

  @nn.compact
  def __call__(self, carry, layer_cache):
    x, positions, cache_index = carry  # cache_index: the cache's (length, start), or None
    cache = None if layer_cache is None else (*layer_cache, *cache_index)
    h, layer_cache = Attention(self.config, name="self_attn")(
        RMSNorm(self.config, name="input_layernorm")(x), positions, cache)
    x = x + h
    x = x + SwiGLU(self.config, name="mlp")(RMSNorm(self.config, name="post_attention_layernorm")(x))
    return (x, positions, cache_index), layer_cache


class Llama(nn.Module):
  """Token ids ``(B, T)`` -> float32 logits ``(B, T, vocab_size)``.

  ``targets`` ``(B, T)``: per-token cross-entropy ``(B, T)`` through the fused head instead.
  ``cache`` (from :meth:`init_cache`): the tokens fill slots ``cache.length ...`` at
  positions ``cache.positions(T)`` (left padding masked out), and the call returns
  ``(logits, cache)`` with the new keys and values written.
  ``train`` is accepted for the engine's sake (the family has no dropout).
  """
  config: LlamaConfig

  @nn.compact
  def __call__(self, idx: jax.Array, *, train: bool = False, targets: jax.Array | None = None,
               cache: KVCache | None = None):
    del train
    cfg = self.config
    decoder_math.check_token_inputs(idx, targets)
    if cache is None:
      cfg.check_positions(idx.shape[1], "sequence length")
    else:  # static: positions past the cache's end would be dropped silently
      cfg.check_positions(cache.max_len, "cache max_len")
    embed = nn.Embed(cfg.vocab_size, cfg.hidden_size, dtype=cfg.dtype,
                     param_dtype=cfg.param_dtype, embedding_init=_init(("vocab", "embed")),
                     name="embed_tokens")
    x = jnp.take(embed.embedding, idx, axis=0).astype(cfg.dtype)  # (B, T, C)
    if cache is None:
      positions, index = jnp.arange(idx.shape[1]), None  # (T,)
    else:
      positions, index = cache.positions(idx.shape[1]), (cache.length, cache.start)  # (B, T)
    layer = nn.remat(DecoderLayer, prevent_cse=False) if cfg.remat else DecoderLayer
    layers = nn.scan(layer, variable_axes={"params": 0}, split_rngs={"params": True},
                     length=cfg.num_hidden_layers, unroll=cfg.scan_unroll,
                     metadata_params={nn.PARTITION_NAME: "layers"})
    xs = None if cache is None else (cache.key, cache.value)
    (x, _, _), new_layers = layers(cfg, name="layers")((x, positions, index), xs)
    x = RMSNorm(cfg, name="norm")(x)
    if cfg.tie_word_embeddings:
      head = embed.embedding  # (V, C)
    else:
      head = self.param("lm_head", _init(("embed", "vocab")), (cfg.hidden_size, cfg.vocab_size),
                        cfg.param_dtype).T  # stored (C, V) as a Dense kernel
    logits = decoder_math.decoder_output(x, head, targets, cfg)  # (B, T, V); losses (B, T)
    if targets is not None or cache is None:
      return logits
    key, value = new_layers
    return logits, cache.replace(key=key, value=value, length=cache.length + idx.shape[1])

  def init_cache(self, batch_size: int, max_len: int | None = None) -> KVCache:
    """An empty cache for ``batch_size`` sequences of up to ``max_len`` positions
    (default and most: ``config.block_size``)."""
    cfg = self.config
    max_len = cfg.block_size if max_len is None else max_len
    validation.check_int("max_len", max_len, 1)
    cfg.check_positions(max_len, "cache max_len")
    return KVCache.zeros(n_layer=cfg.num_hidden_layers, batch_size=batch_size, max_len=max_len,
                         n_kv_heads=cfg.kv_heads, head_size=cfg.head_size, dtype=cfg.dtype)
