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
``init_cache(batch, max_len)`` and ``__call__(idx, cache=...) -> (logits, cache)`` works:
``GPT`` and ``Llama``.
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
def _generate(model, variables, prompt, temperature, top_p, key, eos_id, *, max_new_tokens,
              greedy, top_k):
  batch, prompt_len = prompt.shape
  cache = model.init_cache(batch, prompt_len + max_new_tokens)
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


def generate(model, params, prompt_ids, max_new_tokens: int, *, temperature: float = 0.0,
             top_k: int | None = None, top_p: float | None = None, seed: int = 0,
             eos_id: int | None = None) -> jax.Array:
  """Continues each prompt by ``max_new_tokens`` tokens.

  Args:
    model: a ``GPT`` or ``Llama`` (anything with ``init_cache`` and ``cache=``).
    params: its parameters (as ``init_params``/``load_hf`` return them, or
      ``{"params": ...}``).
    prompt_ids: ``(B, T0)`` integer token ids, every row the same length (no padding).
    max_new_tokens: >= 1; ``T0 + max_new_tokens`` must fit the model's positions.
    temperature: 0 for greedy decoding, > 0 to sample from ``softmax(logits / temperature)``.
    top_k: sample among the ``top_k`` most likely tokens only (>= 1).
    top_p: sample within the nucleus of mass ``top_p`` (in (0, 1]).
    seed: the sampling key's seed; the same seed gives the same tokens.
    eos_id: once a row emits it, the row continues with ``eos_id`` only.

  Returns:
    ``(B, T0 + max_new_tokens)`` int32: the prompts followed by the new tokens.
  """
  cfg = model.config
  prompt = np.asarray(prompt_ids) if not isinstance(prompt_ids, jax.Array) else prompt_ids
  if prompt.ndim != 2 or not np.issubdtype(prompt.dtype, np.integer) or prompt.shape[1] < 1:
    raise ValueError(f"prompt_ids must be integer token ids (batch, time) with time >= 1, got "
                     f"{prompt.dtype} of shape {prompt.shape}")
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
  if eos_id is not None and not (isinstance(eos_id, (int, np.integer))
                                 and 0 <= eos_id < cfg.vocab_size):
    raise ValueError(f"eos_id must be a token id in [0, {cfg.vocab_size}), got {eos_id!r}")
  variables = params if isinstance(params, dict) and set(params) == {"params"} else {
      "params": params}
  greedy = temperature == 0
  return _generate(model, variables, jnp.asarray(prompt, jnp.int32),
                   jnp.float32(temperature if not greedy else 1.0),
                   None if top_p is None else jnp.float32(top_p), jax.random.key(seed),
                   None if eos_id is None else jnp.int32(eos_id),
                   max_new_tokens=max_new_tokens, greedy=greedy, top_k=top_k)
