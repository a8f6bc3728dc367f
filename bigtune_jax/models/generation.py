"""Autoregressive generation with a key/value cache: greedy, or sampled with top-k / top-p.

``x_{t+1} ~ softmax(z_t / tau)`` restricted to the ``top_k`` most likely tokens (Fan et al.,
"Hierarchical Neural Story Generation", 2018) and to the smallest set of tokens whose
probability reaches ``top_p`` (nucleus sampling, Holtzman et al., "The Curious Case of
Neural Text Degeneration", 2020); ``tau = 0`` takes the argmax (greedy decoding, what
transformers' ``generate(do_sample=False)`` does).

One prefill pass writes the prompt's keys and values into a ``KVCache``; then a
``lax.scan`` of single-token steps reads them (``kv_cache.py``). The whole loop is one
program, compiled once per model, shapes and static options (greedy or not, ``top_k``,
whether ``top_p``/``eos_id`` are given) and reused across calls. Any model with
``init_cache(batch, max_len)`` returning a ``KVCache`` and ``__call__(idx, cache=...) ->
(logits, cache)`` works: ``GPT`` and ``Llama``.

Prompts of different lengths are left-padded to the longest, as transformers' ``generate``
pads them: the cache's ``start`` masks each row's padding out of attention and counts its
positions from its first real token, so every row continues as it would alone.
"""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from bigtune_jax import validation


def filter_logits(logits: jax.Array, top_k: int | None = None,
                  top_p: jax.Array | float | None = None) -> jax.Array:
  """``logits`` ``(B, V)`` with the tokens outside top-k and the nucleus set to ``-inf``.

  The nucleus keeps, in order of decreasing probability, every token whose preceding mass
  is below ``top_p``: the smallest set whose mass reaches ``top_p`` (the most likely token
  is always kept); ``top_p = 1`` keeps every token.
  """
  if top_k is not None:
    kth = jax.lax.top_k(logits, top_k)[0][:, -1:]  # (B, 1)
    logits = jnp.where(logits < kth, -jnp.inf, logits)
  if top_p is not None:
    ordered = jnp.sort(logits, axis=-1)[:, ::-1]  # (B, V), decreasing
    probs = jax.nn.softmax(ordered, axis=-1)
    before = jnp.cumsum(probs, axis=-1) - probs  # mass of the more likely tokens
    kept = (before < top_p) | (top_p >= 1.0)  # 1.0 keeps all, whatever the rounding
    threshold = jnp.min(jnp.where(kept, ordered, jnp.inf), axis=-1, keepdims=True)
    logits = jnp.where(logits < threshold, -jnp.inf, logits)
  return logits


def _next_token(logits, key, temperature, top_k, top_p, greedy):
  logits = logits.astype(jnp.float32)
  if greedy:
    return jnp.argmax(logits, axis=-1).astype(jnp.int32)
  logits = filter_logits(logits / temperature, top_k, top_p)
  return jax.random.categorical(key, logits, axis=-1).astype(jnp.int32)


@functools.partial(jax.jit, static_argnames=("model", "max_new_tokens", "greedy", "top_k"))
def _generate(model, variables, prompt, start, temperature, top_p, key, eos_id, *,
              max_new_tokens, greedy, top_k):
  batch, prompt_len = prompt.shape
  cache = model.init_cache(batch, prompt_len + max_new_tokens).replace(start=start)
  logits, cache = model.apply(variables, prompt, cache=cache)
  choose = functools.partial(_next_token, temperature=temperature, top_k=top_k, top_p=top_p,
                             greedy=greedy)
  first = choose(logits[:, -1], jax.random.fold_in(key, 0))
  done = jnp.zeros((batch,), bool) if eos_id is None else first == eos_id

  def step(carry, i):
    token, cache, done = carry
    logits, cache = model.apply(variables, token[:, None], cache=cache)
    token = choose(logits[:, -1], jax.random.fold_in(key, i))
    if eos_id is not None:  # finished rows keep emitting eos, as transformers pads them
      token = jnp.where(done, eos_id, token)
      done = done | (token == eos_id)
    return (token, cache, done), token

  _, rest = jax.lax.scan(step, (first, cache, done), jnp.arange(1, max_new_tokens))
  return jnp.concatenate([prompt, first[:, None], rest.T], axis=1)


def _token_id(name: str, value, vocab_size: int) -> None:
  if not (isinstance(value, (int, np.integer)) and not isinstance(value, bool)
          and 0 <= value < vocab_size):
    raise ValueError(f"{name} must be a token id in [0, {vocab_size}), got {value!r}")


def _prompt_batch(prompt_ids, vocab_size: int, pad_id: int) -> tuple[np.ndarray, np.ndarray]:
  """``(ids (B, T0max) int32 left-padded with pad_id, start (B,) int32)`` of the prompts.

  ``prompt_ids`` is a ``(B, T0)`` integer array, or a non-empty list of non-empty 1-D
  integer sequences (lists or arrays), of one length or several.
  """
  if isinstance(prompt_ids, (np.ndarray, jax.Array)):
    prompt = np.asarray(prompt_ids)
    if prompt.ndim != 2 or not np.issubdtype(prompt.dtype, np.integer) or prompt.shape[1] < 1:
      raise ValueError(f"prompt_ids must be integer token ids (batch, time) with time >= 1, "
                       f"or a list of 1-D prompts; got {prompt.dtype} of shape {prompt.shape}")
    validation.check_token_ids(prompt, vocab_size, "generate's prompt_ids")
    return prompt.astype(np.int32), np.zeros(len(prompt), np.int32)
  if not isinstance(prompt_ids, (list, tuple)) or not prompt_ids:
    raise ValueError(f"prompt_ids must be integer token ids (batch, time) or a non-empty list "
                     f"of 1-D prompts, got {type(prompt_ids).__name__} {prompt_ids!r:.80}")
  rows = []
  for i, row in enumerate(prompt_ids):
    array = np.asarray(row) if isinstance(row, (list, tuple, np.ndarray, jax.Array)) else None
    if array is None or array.ndim != 1 or not len(array) or not (
        np.issubdtype(array.dtype, np.integer)):
      described = (f"{array.dtype} of shape {array.shape}" if array is not None
                   else type(row).__name__)
      raise ValueError(f"prompt_ids[{i}] must be a non-empty 1-D sequence of integer token "
                       f"ids (one prompt is [ids]), got {described}")
    validation.check_token_ids(array, vocab_size, f"generate's prompt_ids[{i}]")
    rows.append(array)
  longest = max(len(r) for r in rows)
  prompt = np.full((len(rows), longest), pad_id, np.int32)
  for i, row in enumerate(rows):
    prompt[i, longest - len(row):] = row
  return prompt, np.asarray([longest - len(r) for r in rows], np.int32)


def generate(model, params, prompt_ids, max_new_tokens: int, *, temperature: float = 0.0,
             top_k: int | None = None, top_p: float | None = None, seed: int = 0,
             eos_id: int | None = None, pad_id: int = 0) -> jax.Array:
  """Continues each prompt by ``max_new_tokens`` tokens.

  Args:
    model: a ``GPT`` or ``Llama`` (anything with ``init_cache`` and ``cache=``).
    params: its parameters (as ``init_params``/``load_hf`` return them, or
      ``{"params": ...}``).
    prompt_ids: ``(B, T0)`` integer token ids (an array, or a list of equal-length rows),
      or a list of 1-D prompts of different lengths (lists or arrays), left-padded to the
      longest ``T0`` with padding masked out (transformers' left padding). Every id must
      lie in ``[0, vocab_size)``.
    max_new_tokens: >= 1; ``T0 + max_new_tokens`` must fit the model's positions.
    temperature: 0 for greedy decoding, > 0 to sample from ``softmax(logits / temperature)``.
    top_k: sample among the ``top_k`` most likely tokens only (>= 1).
    top_p: sample within the nucleus of mass ``top_p`` (in (0, 1]).
    seed: the sampling key's seed; the same seed gives the same tokens.
    eos_id: once a row emits it, the row continues with ``eos_id`` only.
    pad_id: the id in front of shorter prompts in the result (the model never sees it).

  Returns:
    ``(B, T0 + max_new_tokens)`` int32: each prompt, left-padded with ``pad_id`` to ``T0``,
    followed by its new tokens; prompt ``i`` and its continuation are
    ``ids[i, -(len(prompt_ids[i]) + max_new_tokens):]``. Greedy rows equal what each prompt
    gives alone.
  """
  cfg = model.config
  _token_id("pad_id", pad_id, cfg.vocab_size)
  prompt, start = _prompt_batch(prompt_ids, cfg.vocab_size, pad_id)
  validation.check_int("max_new_tokens", max_new_tokens, 1)
  if prompt.shape[1] + max_new_tokens > cfg.block_size:
    raise ValueError(f"prompt length {prompt.shape[1]} + max_new_tokens {max_new_tokens} "
                     f"exceeds the model's {cfg.block_size} positions")
  if not (isinstance(temperature, (int, float)) and math.isfinite(temperature)
          and temperature >= 0):
    raise ValueError(f"temperature must be a finite number >= 0, got {temperature!r}")
  if top_k is not None:
    validation.check_int("top_k", top_k, 1)
    top_k = min(top_k, cfg.vocab_size)
  if top_p is not None:
    validation.check_interval("top_p", top_p, 0.0, 1.0, low_closed=False, high_closed=True)
  validation.check_int("seed", seed, 0)
  if eos_id is not None:
    _token_id("eos_id", eos_id, cfg.vocab_size)
  variables = params if isinstance(params, dict) and set(params) == {"params"} else {
      "params": params}
  greedy = temperature == 0
  return _generate(model, variables, jnp.asarray(prompt), jnp.asarray(start),
                   jnp.float32(temperature if not greedy else 1.0),
                   None if top_p is None else jnp.float32(top_p), jax.random.key(seed),
                   None if eos_id is None else jnp.int32(eos_id),
                   max_new_tokens=max_new_tokens, greedy=greedy, top_k=top_k)
