"""models.generate: greedy decoding equals transformers and a cache-free reference decode;
sampling is reproducible; top-k / top-p filters match a NumPy transcription."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bigtune_jax import models
from bigtune_jax.models import generation as generate_lib


@pytest.fixture(scope="module", params=("gpt", "llama"))
def tiny(request):
  if request.param == "gpt":
    model = models.GPT(models.GPTConfig.tiny(block_size=32))
  else:
    model = models.Llama(models.LlamaConfig.tiny(max_position_embeddings=32))
  params = model.init(jax.random.key(3), jnp.zeros((1, 4), jnp.int32))["params"]
  return model, params


def _prompt(batch=3, length=5, vocab=64, seed=0):
  return np.random.default_rng(seed).integers(0, vocab, (batch, length))


def test_cached_prefill_and_steps_equal_the_full_forward(tiny):
  model, params = tiny
  idx = jnp.asarray(_prompt(batch=2, length=12))
  full = model.apply({"params": params}, idx)
  cached = jax.jit(lambda piece, cache: model.apply({"params": params}, piece, cache=cache))
  cache, pieces = model.init_cache(2, 16), []
  for start, stop in ((0, 5), (5, 6), (6, 7), (7, 8), (8, 12)):  # a prefill, steps, a chunk
    logits, cache = cached(idx[:, start:stop], cache)
    pieces.append(logits)
  assert int(cache.length) == 12
  np.testing.assert_allclose(np.concatenate(pieces, 1), full, atol=1e-5)


def test_greedy_equals_a_decode_without_cache(tiny):
  model, params = tiny
  prompt = _prompt()
  # The reference runs the whole sequence through the model for every new token. Causal
  # attention makes position t blind to the zeros after it, so one padded length (one
  # compile) serves every step.
  forward = jax.jit(lambda ids: model.apply({"params": params}, ids))
  ids = np.zeros((3, 25), np.int32)
  ids[:, :5] = prompt
  for t in range(5, 25):
    ids[:, t] = np.argmax(np.asarray(forward(jnp.asarray(ids)))[:, t - 1], -1)
  np.testing.assert_array_equal(models.generate(model, params, prompt, 20), ids)


def test_sampling_is_reproducible_by_seed(tiny):
  model, params = tiny
  prompt = _prompt()
  first = models.generate(model, params, prompt, 12, temperature=1.5, seed=7)
  np.testing.assert_array_equal(first, models.generate(model, params, prompt, 12,
                                                       temperature=1.5, seed=7))
  assert (first != models.generate(model, params, prompt, 12, temperature=1.5, seed=8)).any()
  np.testing.assert_array_equal(first[:, :5], prompt)


def test_top_k_of_one_is_greedy(tiny):
  model, params = tiny
  prompt = _prompt(seed=1)
  np.testing.assert_array_equal(
      models.generate(model, params, prompt, 10, temperature=2.0, top_k=1, seed=3),
      models.generate(model, params, prompt, 10))


def test_eos_rows_keep_emitting_eos(tiny):
  model, params = tiny
  prompt = _prompt(batch=4, seed=2)
  free = np.asarray(models.generate(model, params, prompt, 10, temperature=3.0, seed=1))
  eos = int(free[0, 5 + 2])  # the token row 0 emits third
  ids = np.asarray(models.generate(model, params, prompt, 10, temperature=3.0, seed=1,
                                   eos_id=eos))
  for row_free, row in zip(free[:, 5:], ids[:, 5:]):
    hits = np.flatnonzero(row_free == eos)
    stop = hits[0] if len(hits) else len(row)
    np.testing.assert_array_equal(row[:stop + 1], row_free[:stop + 1])  # same until eos
    assert (row[stop:] == eos).all()
  assert (ids[0, 5 + 2:] == eos).all()


def _numpy_filter(logits, top_k, top_p):
  out = logits.astype(np.float64).copy()
  for row in out:
    if top_k is not None:
      row[row < np.sort(row)[::-1][top_k - 1]] = -np.inf
    if top_p is not None and top_p < 1.0:
      order = np.argsort(-row, kind="stable")
      p = np.exp(row[order] - np.max(row))
      p /= p.sum()
      mass, keep = 0.0, []
      for index, prob in zip(order, p):  # the smallest prefix whose mass reaches top_p
        keep.append(index)
        mass += prob
        if mass >= top_p:
          break
      drop = np.ones(len(row), bool)
      drop[keep] = False
      row[drop] = -np.inf
  return out


@pytest.mark.parametrize("top_k, top_p", [(None, 0.5), (None, 0.9), (5, None), (7, 0.8),
                                          (None, 1.0)])
def test_filters_match_a_numpy_transcription(top_k, top_p):
  logits = np.random.default_rng(top_k or 0).standard_normal((6, 40)).astype(np.float32) * 3
  got = np.asarray(generate_lib.filter_logits(jnp.asarray(logits), top_k, top_p))
  expected = _numpy_filter(logits, top_k, top_p)
  np.testing.assert_array_equal(np.isinf(got), np.isinf(expected))
  np.testing.assert_array_equal(got[~np.isinf(got)], logits[~np.isinf(expected)])


def test_a_second_call_with_the_same_shapes_does_not_retrace(tiny, monkeypatch):
  model, params = tiny
  models.generate(model, params, _prompt(batch=2, length=4), 6, temperature=0.7, top_p=0.9)
  traces = []
  original = generate_lib._next_token
  monkeypatch.setattr(generate_lib, "_next_token",
                      lambda *a, **k: traces.append(1) or original(*a, **k))
  models.generate(model, params, _prompt(batch=2, length=4, seed=5), 6, temperature=0.3,
                  top_p=0.5, seed=9)  # new values, same shapes and options
  assert traces == []
  models.generate(model, params, _prompt(batch=2, length=5), 6, temperature=0.3, top_p=0.5)
  assert traces  # a new prompt length compiles anew


@pytest.mark.parametrize("kwargs, match", [
    ({"max_new_tokens": 0}, "max_new_tokens must be an integer >= 1"),
    ({"max_new_tokens": 40}, "exceeds the model's 32 positions"),
    ({"temperature": -1.0}, "temperature must be a finite number >= 0"),
    ({"temperature": float("nan")}, "temperature must be a finite number >= 0"),
    ({"top_k": 0}, "top_k must be an integer >= 1"),
    ({"top_p": 0.0}, r"top_p must be in \(0.0, 1.0\]"),
    ({"top_p": 1.5}, r"top_p must be in \(0.0, 1.0\]"),
    ({"seed": -1}, "seed must be an integer >= 0"),
    ({"eos_id": 64}, r"eos_id must be a token id in \[0, 64\)"),
])
def test_bad_arguments_are_refused(tiny, kwargs, match):
  model, params = tiny
  kwargs = {"max_new_tokens": 4, **kwargs}
  with pytest.raises(ValueError, match=match):
    models.generate(model, params, _prompt(), **kwargs)


def test_bad_prompts_are_refused(tiny):
  model, params = tiny
  for prompt in (np.zeros((3,), np.int32), np.zeros((2, 3), np.float32), np.zeros((2, 0), int)):
    with pytest.raises(ValueError, match="prompt_ids must be integer token ids"):
      models.generate(model, params, prompt, 4)


def tiny_hf_models(tmp_path):
  """``[(name, transformers model, our model, params)]``: a tiny random Llama and GPT-2 made
  by transformers (seeded by the caller), saved and loaded back through ``hub.load_hf``."""
  transformers = pytest.importorskip("transformers")
  from bigtune_jax import hub  # pylint: disable=import-outside-toplevel
  small = dict(vocab_size=300, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
               num_attention_heads=4)
  loaded = []
  for name, hf_model in (
      ("llama", transformers.LlamaForCausalLM(transformers.LlamaConfig(
          **small, num_key_value_heads=2))),
      ("gpt2", transformers.GPT2LMHeadModel(transformers.GPT2Config(
          vocab_size=300, n_positions=64, n_embd=64, n_layer=2, n_head=4)))):
    hf_model.eval().save_pretrained(tmp_path / name)
    loaded.append((name, hf_model, *hub.load_hf(tmp_path / name, dtype=jnp.float32)))
  return loaded


def test_greedy_equals_transformers_generate(tmp_path):
  torch = pytest.importorskip("torch")
  torch.manual_seed(0)
  for _, hf_model, model, params in tiny_hf_models(tmp_path):
    prompt = _prompt(batch=3, length=6, vocab=300, seed=1)
    expected = hf_model.generate(torch.tensor(prompt), do_sample=False, max_new_tokens=20,
                                 min_new_tokens=20, eos_token_id=None, pad_token_id=0).numpy()
    np.testing.assert_array_equal(models.generate(model, params, prompt, 20), expected)
