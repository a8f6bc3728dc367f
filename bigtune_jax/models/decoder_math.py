"""The decoders' math as pure functions, shared by the linen and the NNX modules.

Each takes arrays (and layers as callables) and returns arrays; the modules only hold the
parameters. Formulas and sources are in ``gpt.py`` and ``llama.py``.
"""

from collections.abc import Callable

import jax
import jax.numpy as jnp

from bigtune_jax.models.tied_head import tied_softmax_cross_entropy


def check_token_inputs(idx: jax.Array, targets: jax.Array | None) -> None:
  """``idx`` integer token ids ``(batch, time)``; ``targets``, if given, of its shape."""
  if idx.ndim != 2 or not jnp.issubdtype(idx.dtype, jnp.integer):
    raise ValueError(f"idx must be integer token ids (batch, time), got {idx.dtype} "
                     f"of shape {idx.shape}")
  if targets is not None and targets.shape != idx.shape:
    raise ValueError(f"targets must have idx's shape {idx.shape}, got {targets.shape}")


def rms_norm(x: jax.Array, scale: jax.Array, eps: float, dtype) -> jax.Array:
  """RMSNorm (Zhang & Sennrich, 2019): ``scale * x / sqrt(mean(x^2) + eps)``, statistics
  in float32, the result in ``dtype``."""
  x32 = x.astype(jnp.float32)
  x32 = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, -1, keepdims=True) + eps)
  return jnp.asarray(scale, dtype) * x32.astype(dtype)


def swiglu(x: jax.Array, gate_proj: Callable, up_proj: Callable,
           down_proj: Callable) -> jax.Array:
  """SwiGLU (Shazeer, 2020): ``down_proj(silu(gate_proj(x)) * up_proj(x))``."""
  return down_proj(jax.nn.silu(gate_proj(x)) * up_proj(x))


def decoder_output(x: jax.Array, head: jax.Array, targets: jax.Array | None, config
                   ) -> jax.Array:
  """The LM head over the final hidden states ``x`` ``(B, T, C)`` and ``head`` ``(V, C)``:
  float32 logits ``x @ head^T`` ``(B, T, V)`` (multiplied in ``config.dtype``, accumulated
  in float32), or with ``targets`` the per-token cross-entropy ``(B, T)`` through the
  fused chunked head (``tied_head.py``)."""
  if targets is not None:
    return tied_softmax_cross_entropy(x, head, targets, chunk_size=config.head_chunk,
                                      logits_dtype=config.head_logits_dtype)  # (B, T)
  return jnp.einsum("btc,vc->btv", x, jnp.asarray(head, config.dtype),
                    preferred_element_type=jnp.float32)  # (B, T, V)
