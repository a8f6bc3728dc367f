"""models.generate on prompts of different lengths: left padding masked out, positions counted
from each row's first token, greedy rows equal to transformers' generate on each prompt alone;
bad prompts refused with an error that names prompt_ids (and out-of-vocabulary ids)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bigtune_jax import models
from tests.models.test_generate import tiny, tiny_hf_models  # noqa: F401 (tiny: a fixture)


def _ragged(rng, lengths, vocab):
  return [rng.integers(0, vocab, n).tolist() for n in lengths]


def test_left_padded_prefill_equals_each_prompt_alone(tiny):
  """The logits of a left-padded batch, read through the cache, are each prompt's own."""
  model, params = tiny
  rng = np.random.default_rng()
  prompts = _ragged(rng, (4, 11, 7), 64)
  longest = max(map(len, prompts))
  padded = np.asarray([[int(rng.integers(64))] * (longest - len(p)) + p for p in prompts])
  start = jnp.asarray([longest - len(p) for p in prompts], jnp.int32)
  cached = jax.jit(lambda ids, cache: model.apply({"params": params}, ids, cache=cache))
  logits, cache = cached(jnp.asarray(padded), model.init_cache(3, 16).replace(start=start))
  step, _ = cached(jnp.asarray([[5], [6], [7]]), cache)
  for i, prompt in enumerate(prompts):
    alone = jax.jit(model.apply)({"params": params}, jnp.asarray([prompt + [5 + i]]))[0]
    np.testing.assert_allclose(logits[i, longest - len(prompt):], alone[:-1], atol=1e-5)
    np.testing.assert_allclose(step[i, 0], alone[-1], atol=1e-5)


def test_ragged_greedy_equals_transformers_on_each_prompt_alone(tmp_path):
  torch = pytest.importorskip("torch")
  torch.manual_seed(int(np.random.default_rng().integers(1 << 30)))
  rng = np.random.default_rng()
  for name, hf_model, model, params in tiny_hf_models(tmp_path):
    prompts = _ragged(rng, (3, 10, 6), 300)
    ids = np.asarray(models.generate(model, params, prompts, 12, pad_id=7))
    assert ids.shape == (3, 10 + 12)
    for i, prompt in enumerate(prompts):
      assert (ids[i, :10 - len(prompt)] == 7).all()
      # The mask is given: without it transformers masks every prompt token equal to
      # pad_token_id (0 is a valid id here), which is what made this test fail at times.
      prompt_t = torch.tensor([prompt])
      out = hf_model.generate(prompt_t, attention_mask=torch.ones_like(prompt_t),
                              do_sample=False, max_new_tokens=12, min_new_tokens=12,
                              eos_token_id=None, pad_token_id=0, output_scores=True,
                              return_dict_in_generate=True)
      # An untrained model's logits can nearly tie: where transformers' top two are within
      # 1e-5 (the logits agree to ~1e-7), either may be picked, and the rows part there.
      top2 = torch.stack(out.scores)[:, 0].topk(2).values.numpy()  # (12, 2)
      ties = np.flatnonzero(top2[:, 0] - top2[:, 1] < 1e-5)
      kept = len(prompt) + (ties[0] if len(ties) else 12)
      np.testing.assert_array_equal(ids[i, 10 - len(prompt):][:kept],
                                    out.sequences[0].numpy()[:kept], name)


@pytest.mark.parametrize("prompt, match", [
    ([], r"prompt_ids must be integer token ids \(batch, time\) or a non-empty list"),
    ("some text", r"prompt_ids must be integer token ids .* got str 'some text'"),
    ([1, 2, 3], r"prompt_ids\[0\] must be a non-empty 1-D sequence .* \(one prompt is \[ids\]\)"),
    ([[1, 2], []], r"prompt_ids\[1\] must be a non-empty 1-D sequence .* shape \(0,\)"),
    ([[1, 2], [0.5, 2.0]], r"prompt_ids\[1\] must be .* integer token ids .* got float64"),
    ([[[1, 2]]], r"prompt_ids\[0\] must be a non-empty 1-D sequence .* shape \(1, 2\)"),
    ([[1, 2], "ab"], r"prompt_ids\[1\] must be a non-empty 1-D sequence .* got str"),
    ([[1, 2, 3], [4, 64]], r"generate's prompt_ids\[1\]: token id 64 at position \(1,\) is "
                           r"outside the model's vocabulary \[0, 64\)"),
    (np.asarray([[1, 2], [-1, 3]]), r"generate's prompt_ids: token id -1 at position \(1, 0\)"),
])
def test_bad_prompts_name_prompt_ids(tiny, prompt, match):
  model, params = tiny
  with pytest.raises(ValueError, match=match):
    models.generate(model, params, prompt, 4)


@pytest.mark.parametrize("pad_id", [64, -1, 1.0, True])
def test_bad_pad_ids_are_refused(tiny, pad_id):
  model, params = tiny
  with pytest.raises(ValueError, match=r"pad_id must be a token id in \[0, 64\)"):
    models.generate(model, params, [[1, 2], [3]], 4, pad_id=pad_id)
