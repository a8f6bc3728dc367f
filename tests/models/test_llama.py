"""models.Llama on its own: rotary frequencies, the cache, the fused head, config checks.
(Equality with transformers' LlamaForCausalLM / Mistral / Qwen2 is in test_hub.py.)"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from bigtune_jax import models
from bigtune_jax.models import llama

LLAMA3 = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
          "high_freq_factor": 4.0, "original_max_position_embeddings": 32}


def _tokens(shape, vocab=64, seed=0):
  return jnp.asarray(np.random.default_rng(seed).integers(0, vocab, shape), jnp.int32)


def test_llama3_frequencies_match_a_float64_transcription():
  cfg = models.LlamaConfig.tiny(head_dim=32, rope_theta=500000.0, rope_scaling=LLAMA3)
  d = 32
  inv = 1.0 / (500000.0 ** (np.arange(0, d, 2, dtype=np.float64) / d))
  expected = []
  for f in inv:  # Meta's apply_scaling (llama-models), one frequency at a time
    wavelen = 2 * math.pi / f
    if wavelen < 32 / 4.0:
      expected.append(f)
    elif wavelen > 32 / 1.0:
      expected.append(f / 8.0)
    else:
      smooth = (32 / wavelen - 1.0) / (4.0 - 1.0)
      expected.append((1 - smooth) * f / 8.0 + smooth * f)
  got = np.asarray(llama.rope_frequencies(cfg))
  np.testing.assert_allclose(got, expected, rtol=1e-6)
  assert (got < inv).any() and (got == inv.astype(np.float32)).any()  # both bands present


def test_linear_rope_scaling_divides_every_frequency():
  plain = llama.rope_frequencies(models.LlamaConfig.tiny())
  scaled = llama.rope_frequencies(models.LlamaConfig.tiny(
      rope_scaling={"rope_type": "linear", "factor": 4.0}))
  np.testing.assert_allclose(scaled, plain / 4.0, rtol=1e-6)


@pytest.mark.parametrize("overrides", [
    {}, {"tie_word_embeddings": True}, {"attention_bias": True, "num_key_value_heads": 1},
    {"rope_scaling": LLAMA3}])
def test_cache_prefill_and_steps_equal_the_full_forward(overrides):
  model = models.Llama(models.LlamaConfig.tiny(**overrides))
  idx = _tokens((2, 11))
  params = model.init(jax.random.key(0), idx)
  full = model.apply(params, idx)
  cache = model.init_cache(2, 16)
  pieces = []
  cached = jax.jit(lambda piece, cache: model.apply(params, piece, cache=cache))
  for start, stop in ((0, 6), (6, 7), (7, 8), (8, 11)):
    logits, cache = cached(idx[:, start:stop], cache)
    pieces.append(logits)
  assert int(cache.length) == 11
  np.testing.assert_allclose(np.concatenate(pieces, 1), full, atol=1e-5)


@pytest.mark.parametrize("tied", (False, True))
def test_targets_give_the_cross_entropy_of_the_logits_and_its_gradient(tied):
  model = models.Llama(models.LlamaConfig.tiny(tie_word_embeddings=tied, head_chunk=5))
  idx, targets = _tokens((2, 9)), _tokens((2, 9), seed=1)
  params = model.init(jax.random.key(1), idx)

  def fused(p):
    return model.apply(p, idx, targets=targets).mean()

  def plain(p):
    logits = model.apply(p, idx)
    return optax.softmax_cross_entropy_with_integer_labels(logits, targets).mean()
  (fused_loss, got), (plain_loss, expected) = jax.jit(
      lambda p: (jax.value_and_grad(fused)(p), jax.value_and_grad(plain)(p)))(params)
  np.testing.assert_allclose(fused_loss, plain_loss, rtol=1e-6)
  for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(expected)):
    np.testing.assert_allclose(a, b, atol=1e-6)


def test_layers_are_stacked_with_logical_axis_names():
  model = models.Llama(models.LlamaConfig.tiny())
  params = model.init(jax.random.key(0), _tokens((1, 4)))["params"]
  q = params["layers"]["self_attn"]["q_proj"]["kernel"]
  assert q.names == ("layers", "embed", "heads", "kv") and q.value.shape == (2, 32, 4, 8)
  assert params["lm_head"].names == ("embed", "vocab")
  assert "lm_head" not in models.Llama(models.LlamaConfig.tiny(tie_word_embeddings=True)).init(
      jax.random.key(0), _tokens((1, 4)))["params"]


def test_bfloat16_compute_returns_float32_logits():
  model = models.Llama(models.LlamaConfig.tiny(dtype=jnp.bfloat16, param_dtype=jnp.bfloat16))
  idx = _tokens((2, 5))
  params = model.init(jax.random.key(0), idx)
  assert model.apply(params, idx).dtype == jnp.float32
  assert jax.tree.leaves(params)[0].dtype == jnp.bfloat16


@pytest.mark.parametrize("overrides, match", [
    ({"num_key_value_heads": 3}, "num_key_value_heads must divide num_attention_heads"),
    ({"hidden_size": 30}, "hidden_size must be divisible by num_attention_heads"),
    ({"head_dim": 7}, "head_dim must be even"),
    ({"rms_norm_eps": 0.0}, r"rms_norm_eps must be in \(0.0, 1.0\)"),
    ({"rope_scaling": {"rope_type": "dynamic", "factor": 2.0}},
     "rope_scaling type must be one of 'default', 'linear', 'llama3', got 'dynamic'"),
    ({"rope_scaling": {"rope_type": "llama3", "factor": 8.0}},
     "rope_scaling of type 'llama3' needs low_freq_factor"),
    ({"model_type": "gemma"}, "model_type must be one of 'llama', 'mistral', 'qwen2'"),
    ({"dtype": "int8"}, "dtype must be one of"),
])
def test_bad_config_is_refused_at_construction(overrides, match):
  with pytest.raises(ValueError, match=match):
    models.LlamaConfig.tiny(**overrides)


def test_bad_inputs_are_refused():
  model = models.Llama(models.LlamaConfig.tiny(max_position_embeddings=8))
  params = model.init(jax.random.key(0), _tokens((1, 4)))
  with pytest.raises(ValueError, match="idx must be integer token ids"):
    model.apply(params, jnp.zeros((1, 4)))
  with pytest.raises(ValueError, match="exceeds max_position_embeddings=8"):
    model.apply(params, _tokens((1, 9)))
  with pytest.raises(ValueError, match="targets must have idx's shape"):
    model.apply(params, _tokens((1, 4)), targets=_tokens((1, 3)))
