"""Key/value cache for autoregressive decoding, shared by ``GPT`` and the Llama family.

Generating token ``t + 1`` needs the keys and values of positions ``0..t`` in every layer;
recomputing them costs a full forward pass per new token (quadratic work in the length).
The cache keeps them: a prefill pass writes the prompt's keys and values, and each decode
step writes one more position and attends to the filled prefix (Pope et al., "Efficiently
Scaling Transformer Inference", 2022, §2).

The cache is a plain pytree (no Flax ``'cache'`` collection): a model called with
``cache=`` returns ``(logits, new_cache)``, so a whole generation loop is one
``jax.lax.while_loop`` or ``scan`` under ``jit`` with static shapes. Its arrays are stacked
over layers, like the scanned parameters, so ``nn.scan`` hands each block its own slice.

Prompts of different lengths are left-padded, as transformers does: every row has the same
``length`` (cache slots filled), and row ``b``'s real tokens begin at slot ``start[b]``.
Attention masks the slots before ``start[b]`` out, and positions count from it, so a row
computes what it would alone (``positions``). ``start`` is 0 for prompts of one length.
"""

import flax.struct
import jax
import jax.numpy as jnp

from bigtune_jax import validation


class KVCache(flax.struct.PyTreeNode):
  """Keys and values of every layer at positions ``[0, length)``; the rest is unused."""
  key: jax.Array  # (n_layer, B, max_len, n_kv_heads, head_size), compute dtype
  value: jax.Array  # (n_layer, B, max_len, n_kv_heads, head_size)
  length: jax.Array  # () int32: slots filled so far, the same for every row
  start: jax.Array  # (B,) int32: each row's first real slot; the slots before it are padding

  @classmethod
  def zeros(cls, *, n_layer: int, batch_size: int, max_len: int, n_kv_heads: int,
            head_size: int, dtype) -> "KVCache":
    """An empty cache for ``batch_size`` sequences of up to ``max_len`` positions."""
    for name, value in (("n_layer", n_layer), ("batch_size", batch_size), ("max_len", max_len),
                        ("n_kv_heads", n_kv_heads), ("head_size", head_size)):
      validation.check_int(name, value, 1)
    shape = (n_layer, batch_size, max_len, n_kv_heads, head_size)
    return cls(key=jnp.zeros(shape, dtype), value=jnp.zeros(shape, dtype),
               length=jnp.zeros((), jnp.int32), start=jnp.zeros((batch_size,), jnp.int32))

  @property
  def max_len(self) -> int:
    return self.key.shape[2]

  def positions(self, t: int) -> jax.Array:
    """``(B, t)`` int32 positions of ``t`` new tokens: slot ``length + i`` of row ``b`` is
    position ``length + i - start[b]`` (transformers' ``attention_mask.cumsum(-1) - 1``);
    negative on padding, which the caller may clip (it is masked out)."""
    return self.length + jnp.arange(t, dtype=jnp.int32)[None, :] - self.start[:, None]


def cached_attention(q: jax.Array, k: jax.Array, v: jax.Array, cache_key: jax.Array,
                     cache_value: jax.Array, length: jax.Array, start: jax.Array
                     ) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Causal attention of new slots over one layer's cache, and the updated cache.

  Args:
    q: queries ``(B, T, n_heads, head_size)`` of slots ``length .. length + T - 1``.
    k, v: their keys and values ``(B, T, n_kv_heads, head_size)``; ``n_kv_heads`` divides
      ``n_heads`` (grouped-query attention, Ainslie et al. 2023).
    cache_key, cache_value: this layer's ``(B, max_len, n_kv_heads, head_size)``.
    length: ``()`` int32, slots already in the cache.
    start: ``(B,)`` int32, each row's first real slot (``KVCache.start``).

  Returns:
    ``(y, cache_key, cache_value)``: ``y`` ``(B, T, n_heads, head_size)``, where the query
    in slot ``p`` of row ``b`` attends to the slots in ``[start[b], p]`` (a padding query
    sees none: a finite average, masked out of every real query); the cache with ``k``,
    ``v`` written at ``length``. The caller advances ``length`` by ``T`` once per pass.
  """
  cache_key = jax.lax.dynamic_update_slice(cache_key, k.astype(cache_key.dtype),
                                           (0, length, 0, 0))
  cache_value = jax.lax.dynamic_update_slice(cache_value, v.astype(cache_value.dtype),
                                             (0, length, 0, 0))
  query_slots = length + jnp.arange(q.shape[1])  # (T,)
  key_slots = jnp.arange(cache_key.shape[1])  # (max_len,)
  causal = key_slots[None, :] <= query_slots[:, None]  # (T, max_len)
  mask = causal[None] & (key_slots[None, None, :] >= start[:, None, None])  # (B, T, max_len)
  y = jax.nn.dot_product_attention(q, cache_key.astype(q.dtype), cache_value.astype(q.dtype),
                                   mask=mask[:, None], implementation="xla")
  return y, cache_key, cache_value
