"""GPT: a decoder-only Transformer language model in nanoGPT's structure.

The large model of seed 003 §4.1 ("tune a large language model such as BERT or GPT-2") and
seed 004 §2.1; the seeds leave it as ``model = ...``. It follows Radford et al., "Language
Models are Unsupervised Multitask Learners" (2019) as written in Karpathy's nanoGPT
``model.py``: learned token and position embeddings; ``n_layer`` pre-LayerNorm blocks of
causal self-attention and a 4x GELU MLP, each added to the residual stream; a final
LayerNorm; and a language-model head tied to the token embedding (``logits = x @ wte^T``).
The initialization is nanoGPT's: N(0, 0.02) weights, zero biases, and N(0, 0.02 / sqrt(2 L))
for the two projections that write into the residual stream.

Built for large runs, where it differs from nanoGPT:

* The blocks are one ``nn.scan`` over stacked parameters (every block parameter has a
  leading ``n_layer`` axis): compile time is flat in depth. ``remat=True`` wraps the block
  in ``nn.remat``: activations inside a block are recomputed in the backward pass.
  ``scan_unroll >= n_layer`` removes the loop (same parameters): on an H100 at GPT-2 124M
  the step is 15 ms faster (39.5 against 54.8 ms), because a scan copies every saved
  activation into, and back out of, its stacked ``(n_layer, ...)`` buffer.
* Mixed precision: parameters are stored in ``param_dtype`` (float32) and the model
  computes in ``dtype`` (bfloat16), the residual stream included; LayerNorm statistics and
  the attention softmax are computed in float32. The tied head multiplies in ``dtype`` but
  accumulates and returns **float32** logits (``preferred_element_type``), so the softmax
  cross-entropy sees full-precision logits.
* Attention is ``jax.nn.dot_product_attention(..., is_causal=True)``: cuDNN's fused
  (flash) kernel on GPU, XLA elsewhere. It has no dropout on the attention probabilities,
  so ``dropout`` applies to the embeddings and to each residual branch only.
* Parameters carry logical axis names (``vocab``, ``embed``, ``heads``, ``kv``, ``mlp``,
  ``layers``) through ``nn.with_logical_partitioning``; a rules table elsewhere maps them
  to mesh axes. Without a mesh they are plain metadata (``nn.unbox`` strips them).
* GELU is the exact (erf) form, as nanoGPT's ``nn.GELU()`` (``gelu_approximate=True``
  gives the tanh form of transformers' ``GPT2LMHeadModel``, ``gelu_new``); biases are always on. Its
  gradient is written out (``gelu``): the backward pass keeps only the pre-activation,
  where autodiff of ``jax.nn.gelu`` kept two more ``(B, T, 4C)`` intermediates.
* ``GPT(...)(idx, targets=t)`` returns the per-token cross-entropy through the fused head
  of ``tied_head.py`` instead of the logits. Its backward products run in ``dtype``; the
  plain path's float32 logits make both backward products of the head float32 matmuls.
  ``head_chunk`` bounds the logits held at once, ``head_logits_dtype=bfloat16`` halves
  their bytes (as PyTorch's autocast). Measurements: ``benchmarks/gpt_step_NOTES.md``.
* The token embedding is gathered from the float32 table and then cast, so its gradient
  is a float32 scatter-add (a bfloat16 table would sum repeated tokens in bfloat16).
"""

import dataclasses
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from bigtune_jax.models.counting import count_params
from bigtune_jax.models.kv_cache import KVCache, cached_attention
from bigtune_jax.models import decoder_math
from bigtune_jax import validation

ATTENTION_IMPLEMENTATIONS = ("xla", "cudnn")
FLOAT_DTYPES = ("float16", "bfloat16", "float32", "float64")


def _dtype_name(value: Any) -> Any:
  """``jnp.dtype(value).name``, or ``value`` itself when it names no dtype (for the error)."""
  try:
    return jnp.dtype(value).name
  except TypeError:  # not a dtype at all
    return value


@dataclasses.dataclass(frozen=True)
class GPTConfig:
  """Sizes and numerics of a ``GPT``; checked at construction.

  The defaults are GPT-2 small (124M). ``GPTConfig.tiny()`` is a seconds-on-CPU model.
  """
  vocab_size: int = 50304  # GPT-2's 50257 padded up to a multiple of 64 for efficiency
  block_size: int = 1024  # longest sequence: the number of learned positions
  n_layer: int = 12
  n_head: int = 12
  n_embd: int = 768  # residual stream width; head size is n_embd // n_head
  dropout: float = 0.0  # embeddings and residual branches; 0.0 for pretraining, as nanoGPT
  dtype: Any = jnp.bfloat16  # compute dtype of activations and matmuls
  param_dtype: Any = jnp.float32  # storage dtype of the parameters
  remat: bool = False  # recompute each block's activations in the backward pass
  attention: str | None = None  # "xla", "cudnn", or None: chosen by attention_implementation
  head_chunk: int | None = None  # tokens per logits chunk of the fused head (None: all)
  head_logits_dtype: Any = jnp.float32  # the fused head's logits; bfloat16 halves their bytes
  scan_unroll: int = 1  # blocks per iteration of the scan over layers (>= n_layer: no loop)
  gelu_approximate: bool = False  # True: tanh GELU, transformers' "gelu_new" (GPT-2 checkpoints)
  layer_norm_epsilon: float = 1e-5  # GPT-2's config.layer_norm_epsilon

  def __post_init__(self):
    for name in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd", "scan_unroll"):
      validation.check_int(name, getattr(self, name), 1)
    if self.head_chunk is not None:
      validation.check_int("head_chunk", self.head_chunk, 1)
    for name in ("dtype", "param_dtype"):
      validation.check_choice(name, _dtype_name(getattr(self, name)), FLOAT_DTYPES)
    validation.check_choice("head_logits_dtype", _dtype_name(self.head_logits_dtype),
                            ("float32", "bfloat16", "float16"))
    if self.n_embd % self.n_head:
      raise ValueError(f"n_embd must be divisible by n_head, got n_embd={self.n_embd}, "
                       f"n_head={self.n_head}")
    validation.check_interval("dropout", self.dropout, 0.0, 1.0)
    if not isinstance(self.gelu_approximate, bool):
      raise ValueError(f"gelu_approximate must be a bool, got {self.gelu_approximate!r}")
    validation.check_interval("layer_norm_epsilon", self.layer_norm_epsilon, 0.0, 1.0, low_closed=False)
    if self.attention is not None:
      validation.check_choice("attention", self.attention, ATTENTION_IMPLEMENTATIONS)

  @property
  def head_size(self) -> int:
    return self.n_embd // self.n_head

  @classmethod
  def gpt2_124m(cls, **overrides) -> "GPTConfig":
    """GPT-2 small: 12 layers, 12 heads, width 768, 1024 positions, vocab 50304."""
    sizes = dict(vocab_size=50304, block_size=1024, n_layer=12, n_head=12, n_embd=768)
    return cls(**{**sizes, **overrides})

  @classmethod
  def tiny(cls, **overrides) -> "GPTConfig":
    """2 layers, 2 heads, width 32, 16 positions, vocab 64, float32: for tests and CPU runs."""
    sizes = dict(vocab_size=64, block_size=16, n_layer=2, n_head=2, n_embd=32,
                 dtype=jnp.float32)
    return cls(**{**sizes, **overrides})


def attention_implementation(config: GPTConfig) -> str:
  """The ``implementation`` passed to ``jax.nn.dot_product_attention``.

  ``config.attention`` when set; otherwise ``"cudnn"`` when the default backend is a GPU and
  the kernel supports the call (bfloat16/float16, head size a multiple of 8 up to 128), and
  ``"xla"`` everywhere else.
  """
  if config.attention is not None:
    return config.attention
  half = jnp.dtype(config.dtype) in (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))
  head_ok = config.head_size % 8 == 0 and config.head_size <= 128
  return "cudnn" if jax.default_backend() == "gpu" and half and head_ok else "xla"


@jax.custom_vjp
def gelu(x: jax.Array) -> jax.Array:
  """Exact GELU ``x Phi(x)``; its derivative ``Phi(x) + x phi(x)`` is recomputed from ``x``."""
  return jax.nn.gelu(x, approximate=False)


def _gelu_fwd(x):
  return gelu(x), x


def _gelu_bwd(x, g):
  dtype = jnp.promote_types(x.dtype, jnp.float32)  # bfloat16 in, float32 arithmetic
  x32, g32 = x.astype(dtype), g.astype(dtype)
  cdf = 0.5 * (1.0 + jax.lax.erf(x32 * (1 / math.sqrt(2))))  # Phi(x)
  pdf = jnp.exp(-0.5 * x32 * x32) * (1 / math.sqrt(2 * math.pi))  # phi(x)
  return ((g32 * (cdf + x32 * pdf)).astype(x.dtype),)


gelu.defvjp(_gelu_fwd, _gelu_bwd)


def _init(names: tuple[str | None, ...], std: float | None = None):
  """An initializer, N(0, std^2) or zeros when std is None, tagged with logical axis names."""
  init = nn.initializers.zeros_init() if std is None else nn.initializers.normal(std)
  return nn.with_logical_partitioning(init, names)


def _layer_norm(config: GPTConfig, name: str) -> nn.LayerNorm:
  return nn.LayerNorm(epsilon=config.layer_norm_epsilon, dtype=config.dtype, param_dtype=config.param_dtype,
                      scale_init=nn.with_logical_partitioning(nn.initializers.ones_init(),
                                                              ("embed",)),
                      bias_init=_init(("embed",)), name=name)


class CausalSelfAttention(nn.Module):
  """Multi-head self-attention where position t sees positions <= t.

  With ``layer_cache = (keys, values, length, start)`` the queries sit in slots ``length ...``
  and attend over the cache (``kv_cache.cached_attention``); the updated ``(keys, values)``
  are returned beside the output.
  """
  config: GPTConfig

  @nn.compact
  def __call__(self, x: jax.Array, deterministic: bool, layer_cache=None):
    cfg = self.config
    nh, hs = cfg.n_head, cfg.head_size
    qkv = nn.DenseGeneral(
        (3, nh, hs), dtype=cfg.dtype, param_dtype=cfg.param_dtype,
        kernel_init=_init(("embed", None, "heads", "kv"), 0.02),
        bias_init=_init((None, "heads", "kv")), name="c_attn")(x)  # (B, T, 3, nh, hs)
    q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]  # each (B, T, nh, hs)
    if layer_cache is None:
      y = jax.nn.dot_product_attention(
          q, k, v, is_causal=True, implementation=attention_implementation(cfg))  # (B, T, nh, hs)
    else:
      y, *layer_cache = cached_attention(q, k, v, *layer_cache)
    y = nn.DenseGeneral(
        cfg.n_embd, axis=(-2, -1), dtype=cfg.dtype, param_dtype=cfg.param_dtype,
        kernel_init=_init(("heads", "kv", "embed"), 0.02 / math.sqrt(2 * cfg.n_layer)),
        bias_init=_init(("embed",)), name="c_proj")(y)  # (B, T, C)
    y = nn.Dropout(cfg.dropout)(y, deterministic=deterministic)
    return y if layer_cache is None else (y, tuple(layer_cache))


class FeedForward(nn.Module):
  """Position-wise MLP, C -> 4C -> GELU -> C (nanoGPT's ``MLP``)."""
  config: GPTConfig

  @nn.compact
  def __call__(self, x: jax.Array, deterministic: bool) -> jax.Array:
    cfg = self.config
    x = nn.Dense(4 * cfg.n_embd, dtype=cfg.dtype, param_dtype=cfg.param_dtype,
                 kernel_init=_init(("embed", "mlp"), 0.02), bias_init=_init(("mlp",)),
                 name="c_fc")(x)  # (B, T, 4C)
    # GPT-2 checkpoints use the tanh form; its autodiff keeps no extra (B, T, 4C) arrays.
    x = jax.nn.gelu(x, approximate=True) if cfg.gelu_approximate else gelu(x)
    x = nn.Dense(cfg.n_embd, dtype=cfg.dtype, param_dtype=cfg.param_dtype,
                 kernel_init=_init(("mlp", "embed"), 0.02 / math.sqrt(2 * cfg.n_layer)),
                 bias_init=_init(("embed",)), name="c_proj")(x)  # (B, T, C)
    return nn.Dropout(cfg.dropout)(x, deterministic=deterministic)


class Block(nn.Module):
  """Pre-LayerNorm Transformer block; the ``(carry, xs)`` signature ``nn.scan`` needs.

  ``layer_cache``: this layer's ``(keys, values)`` of a ``KVCache`` (scanned over layers),
  ``cache_index`` its ``(length, start)`` (broadcast); both None without a cache.
  """
  config: GPTConfig
  deterministic: bool = True

  @nn.compact
  def __call__(self, x: jax.Array, layer_cache=None, cache_index=None):
    cfg = self.config
    h = _layer_norm(cfg, "ln_1")(x)
    attention = CausalSelfAttention(cfg, name="attn")
    if layer_cache is None:
      x = x + attention(h, self.deterministic)
    else:
      h, layer_cache = attention(h, self.deterministic, (*layer_cache, *cache_index))
      x = x + h
    x = x + FeedForward(cfg, name="mlp")(_layer_norm(cfg, "ln_2")(x), self.deterministic)
    return x, layer_cache  # (B, T, C)


class GPT(nn.Module):
  """Decoder-only language model: token ids ``(B, T)`` -> float32 logits ``(B, T, vocab_size)``.

  ``train=True`` enables dropout (drawing from the ``'dropout'`` rng when
  ``config.dropout > 0``). ``T`` may be anything up to ``config.block_size``.
  With ``targets`` (word ids ``(B, T)``) the call returns the float32 cross-entropy of each
  position ``(B, T)`` instead, through the fused chunked head (``tied_head.py``): the same
  values as ``optax.softmax_cross_entropy_with_integer_labels(logits, targets)`` without
  the logits in memory. With ``cache`` (from :meth:`init_cache`) the tokens fill its slots
  ``cache.length ...``, at positions ``cache.positions(T)`` (left padding masked out), and the
  call returns ``(logits, cache)`` (generation: ``generation.py``).

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from bigtune_jax.models import GPT, GPTConfig
    >>> model = GPT(GPTConfig.tiny())
    >>> idx = jnp.zeros((2, 8), jnp.int32)
    >>> model.apply(model.init(jax.random.key(0), idx), idx).shape
    (2, 8, 64)
  """
  config: GPTConfig

  @nn.compact
  def __call__(self, idx: jax.Array, *, train: bool = False,
               targets: jax.Array | None = None, cache: KVCache | None = None):
    cfg = self.config
    decoder_math.check_token_inputs(idx, targets)
    _, t = idx.shape
    if cache is None and t > cfg.block_size:
      raise ValueError(f"sequence length {t} exceeds block_size={cfg.block_size}")
    wte = nn.Embed(cfg.vocab_size, cfg.n_embd, dtype=cfg.dtype, param_dtype=cfg.param_dtype,
                   embedding_init=_init(("vocab", "embed"), 0.02), name="wte")
    wpe = self.param("wpe", _init((None, "embed"), 0.02), (cfg.block_size, cfg.n_embd),
                     cfg.param_dtype)  # (block_size, C)
    if cache is None:
      positions = wpe[:t]
    else:  # (B, T, C); padding (negative positions, masked out) reads position 0
      positions = jnp.take(wpe, cache.positions(t), axis=0, mode="clip")
    x = (jnp.take(wte.embedding, idx, axis=0) + positions).astype(cfg.dtype)  # (B, T, C)
    x = nn.Dropout(cfg.dropout)(x, deterministic=not train)

    block = nn.remat(Block, prevent_cse=False) if cfg.remat else Block
    blocks = nn.scan(block, variable_axes={"params": 0},
                     split_rngs={"params": True, "dropout": True}, length=cfg.n_layer,
                     in_axes=(0, nn.broadcast), unroll=cfg.scan_unroll,
                     metadata_params={nn.PARTITION_NAME: "layers"})
    xs = None if cache is None else (cache.key, cache.value)
    index = None if cache is None else (cache.length, cache.start)
    x, new_layers = blocks(cfg, deterministic=not train, name="h")(x, xs, index)  # (B, T, C)
    x = _layer_norm(cfg, "ln_f")(x)
    # Tied head: wte.attend(x), with float32 accumulation and output; or the fused losses.
    logits = decoder_math.decoder_output(x, wte.embedding, targets, cfg)  # (B, T, V)
    if targets is not None or cache is None:
      return logits
    key, value = new_layers
    return logits, cache.replace(key=key, value=value, length=cache.length + t)

  def init_cache(self, batch_size: int, max_len: int | None = None) -> KVCache:
    """An empty cache for ``batch_size`` sequences of up to ``max_len`` (block_size) tokens."""
    cfg = self.config
    max_len = cfg.block_size if max_len is None else max_len
    return KVCache.zeros(n_layer=cfg.n_layer, batch_size=batch_size, max_len=max_len,
                         n_kv_heads=cfg.n_head, head_size=cfg.head_size, dtype=cfg.dtype)


def gpt_param_count(config: GPTConfig, *, non_embedding: bool = False) -> int:
  """Number of parameters, from shapes only (``jax.eval_shape``: nothing is allocated).

  ``non_embedding=True`` leaves out the position embedding, as nanoGPT's
  ``get_num_params()``; the token embedding stays in, since it is also the output layer.
  """
  idx = jax.ShapeDtypeStruct((1, 1), jnp.int32)
  shapes = jax.eval_shape(GPT(config).init, jax.random.key(0), idx)
  n = count_params(shapes)
  return n - config.block_size * config.n_embd if non_embedding else n


def gpt_flops_per_token(config: GPTConfig, seq_len: int | None = None) -> int:
  """Training FLOPs (forward and backward) per token, ``6 N + 12 L H Q T``.

  nanoGPT's ``estimate_mfu`` formula, from the PaLM paper (Chowdhery et al., 2022,
  appendix B): ``N`` non-embedding parameters (each used in one multiply-add forward and
  two backward), plus the attention scores and values, ``L`` layers, ``H`` heads, head size
  ``Q``, sequence length ``T`` (``config.block_size`` by default; the causal mask is not
  discounted). Multiply by tokens per second and divide by peak FLOP/s for the MFU.
  """
  t = config.block_size if seq_len is None else seq_len
  validation.check_int("seq_len", t, 1)
  n = gpt_param_count(config, non_embedding=True)
  return 6 * n + 12 * config.n_layer * config.n_head * config.head_size * t
