"""Fused tied language-model head and softmax cross-entropy, in token chunks.

The loss of seed 003 §4.1's language model, ``loss_n = logsumexp_v(z_nv) - z_{n,t_n}`` with
logits ``z = x E^T`` (``x``: final hidden states, ``E``: the token embedding, tied as in
Press & Wolf, "Using the Output Embedding to Improve Language Models", 2017). Its gradient
is ``dL/dz_nv = g_n (softmax(z_n)_v - [v = t_n])``, with ``g_n`` the cotangent of ``loss_n``.

At GPT-2 sizes the logits dominate activation memory: 16 x 1024 tokens x 50304 words is
3.3 GB in float32. Differentiating ``log_softmax(x E^T)`` with float32 logits makes both
backward products float32 matmuls (the cotangent is float32), and writes a float32
gradient of the logits. Here the forward pass turns each chunk of logits (``chunk_size``
tokens x vocabulary) into ``P = softmax(z) - onehot(t)`` in the compute dtype, the only
vocabulary-sized array kept for the backward pass (the bytes of PyTorch's bfloat16
logits), and the backward pass needs no second look at the logits, because the row
scaling by ``g`` commutes with the two products (both in the compute dtype)::

  dx = g * (P E),        dE = P^T (g * x).

The logits are accumulated in float32 and written in ``logits_dtype`` (float32 by default,
as ``GPT``'s plain head returns them); ``P`` is rounded to ``x.dtype`` (what an autocast
PyTorch model back-propagates too). Chunks bound memory; on an H100 at GPT-2 124M one
chunk is fastest (128-token chunks run the head's product at a third of the matmul
rate; ``benchmarks/gpt_step_NOTES.md``).
The idea is that of Liger Kernel's fused linear cross-entropy (Hsu et al., 2024) and of
Wijmans et al., "Cut Your Losses in Large-Vocabulary Language Models" (2024), written as a
``jax.custom_vjp`` over XLA's own matrix products.
"""

import functools
from typing import Any

import jax
import jax.numpy as jnp

from bigtune_jax import validation


def _split(x: jax.Array, targets: jax.Array, chunk_size: int):
  """Flattens to tokens, pads them to whole chunks: ``(K, chunk, C)``, ``(K, chunk)``."""
  x = x.reshape(-1, x.shape[-1])
  targets = targets.reshape(-1)
  pad = -x.shape[0] % chunk_size
  x = jnp.pad(x, ((0, pad), (0, 0)))
  targets = jnp.pad(targets, (0, pad))
  return x.reshape(-1, chunk_size, x.shape[-1]), targets.reshape(-1, chunk_size)


def _chunk_losses(x: jax.Array, embedding: jax.Array, targets: jax.Array, chunk_size: int,
                  logits_dtype: Any, keep_probs: bool):
  """Per-token losses ``(N,)`` and, if ``keep_probs``, ``P`` as ``(K * chunk, V)``."""
  n = targets.size
  xs, ts = _split(x, targets, chunk_size)
  weights = embedding.astype(x.dtype)  # (V, C): the multiply runs in the compute dtype
  acc = jnp.promote_types(x.dtype, jnp.float32)  # float32 arithmetic (float64 for float64)
  written = jnp.promote_types(logits_dtype, x.dtype)

  def one_chunk(_, chunk):
    xc, tc = chunk  # (chunk, C), (chunk,)
    logits = jnp.einsum("nc,vc->nv", xc, weights, preferred_element_type=written)
    logits = logits.astype(acc)  # (chunk, V); the cast fuses into the reductions that read it
    lse = jax.nn.logsumexp(logits, axis=-1)  # (chunk,)
    target_logit = jnp.take_along_axis(logits, tc[:, None], axis=-1)[:, 0]
    out = (lse - target_logit,)
    if keep_probs:
      onehot = jax.lax.broadcasted_iota(jnp.int32, logits.shape, 1) == tc[:, None]
      out += ((jnp.exp(logits - lse[:, None]) - onehot).astype(x.dtype),)  # (chunk, V)
    return None, out

  _, out = jax.lax.scan(one_chunk, None, (xs, ts))
  losses = out[0].reshape(-1)[:n]
  return (losses, out[1].reshape(-1, embedding.shape[0])) if keep_probs else (losses, None)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def _fused(x, embedding, targets, chunk_size, logits_dtype):
  return _chunk_losses(x, embedding, targets, chunk_size, logits_dtype, keep_probs=False)[0]


def _fused_fwd(x, embedding, targets, chunk_size, logits_dtype):
  losses, probs = _chunk_losses(x, embedding, targets, chunk_size, logits_dtype,
                                keep_probs=True)
  return losses, (x, embedding, probs)


def _fused_bwd(chunk_size, logits_dtype, residuals, g):
  del chunk_size, logits_dtype
  x, embedding, probs = residuals  # probs: P = softmax - onehot, (N padded, V)
  n, pad = g.size, probs.shape[0] - g.size  # padded tokens get g = 0: they add nothing
  x2 = jnp.pad(x.reshape(n, x.shape[-1]), ((0, pad), (0, 0)))  # (N padded, C)
  acc = jnp.promote_types(x.dtype, jnp.float32)
  g = jnp.pad(g.reshape(n).astype(acc), (0, pad))[:, None]  # (N padded, 1)
  dx = jnp.einsum("nv,vc->nc", probs, embedding.astype(x.dtype),
                  preferred_element_type=acc) * g  # (N padded, C)
  d_embedding = jnp.einsum("nv,nc->vc", probs, (x2.astype(acc) * g).astype(x.dtype),
                           preferred_element_type=acc)  # (V, C)
  dx = dx[:n].astype(x.dtype).reshape(x.shape)
  return dx, d_embedding.astype(embedding.dtype), None


_fused.defvjp(_fused_fwd, _fused_bwd)


def tied_softmax_cross_entropy(x: jax.Array, embedding: jax.Array, targets: jax.Array, *,
                               chunk_size: int | None = None,
                               logits_dtype: Any = jnp.float32) -> jax.Array:
  """Cross-entropy of the tied head ``x @ embedding^T`` at ``targets``, per token.

  Args:
    x: final hidden states ``(..., C)`` in the compute dtype (the product runs in it).
    embedding: the token embedding ``(V, C)``, any float dtype (its gradient has it).
    targets: integer word ids ``(...)`` in ``[0, V)``, the shape of ``x`` without ``C``.
    chunk_size: tokens per chunk of logits, >= 1 (the tokens are padded to whole chunks);
      ``None``: all tokens in one chunk (fastest at GPT-2 124M; 128 keeps a chunk of
      float32 logits inside an H100's L2 cache but runs the head's product 2.5x slower).
    logits_dtype: dtype the product writes the logits in (float32 accumulation either
      way); ``jnp.bfloat16`` halves the logits' bytes, as PyTorch's autocast does.

  Returns:
    float32 losses (float64 for float64 ``x``) of ``targets``'s shape; differentiable in
    ``x`` and ``embedding``.

  Example:
    >>> import jax.numpy as jnp
    >>> x, emb = jnp.ones((2, 3, 4)), jnp.zeros((5, 4))
    >>> tied_softmax_cross_entropy(x, emb, jnp.zeros((2, 3), jnp.int32))[0, 0]  # log(5)
    Array(1.609438, dtype=float32)
  """
  if chunk_size is not None:
    validation.check_int("chunk_size", chunk_size, 1)
  if x.ndim < 1 or targets.shape != x.shape[:-1]:
    raise ValueError(f"targets must have x's shape without its last axis, got x {x.shape}, "
                     f"targets {targets.shape}")
  if not jnp.issubdtype(targets.dtype, jnp.integer):
    raise ValueError(f"targets must be integer word ids, got dtype {targets.dtype}")
  if embedding.ndim != 2 or embedding.shape[1] != x.shape[-1]:
    raise ValueError(f"embedding must be (vocab, {x.shape[-1]}), got {embedding.shape}")
  tokens = max(targets.size, 1)  # no tokens: one empty chunk of 1
  chunk_size = tokens if chunk_size is None else min(chunk_size, tokens)
  losses = _fused(x, embedding, targets.astype(jnp.int32), chunk_size, jnp.dtype(logits_dtype))
  return losses.reshape(targets.shape)
