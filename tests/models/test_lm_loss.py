"""train.language_model_loss goes through the models' fused head: the same loss and
gradients as the logits formula, without (B, T, V) float32 logits."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from bigtune_jax import models
from bigtune_jax import train


class LogitsOnly(nn.Module):
  """The same model without the ``targets`` argument: the engine's logits path."""
  inner: nn.Module

  @nn.compact
  def __call__(self, idx, *, train: bool = False):
    return self.inner(idx, train=train)


def _batch(vocab, seed=0):
  rng = np.random.default_rng(seed)
  tokens = rng.integers(0, vocab, (4, 10))
  return {"inputs": jnp.asarray(tokens[:, :-1], jnp.int32),
          "targets": jnp.asarray(tokens[:, 1:], jnp.int32),
          "mask": jnp.asarray([True, True, False, True])}  # a padding row counts nothing


@pytest.mark.parametrize("make", [
    lambda: models.GPT(models.GPTConfig.tiny(head_chunk=7)),
    lambda: models.Llama(models.LlamaConfig.tiny(head_chunk=4))])  # tied: test_llama.py
def test_fused_loss_equals_the_logits_formula(make):
  model = make()
  batch = _batch(model.config.vocab_size)
  params = train.init_params(model, batch["inputs"][:1])
  fused = train.language_model_loss(model)
  plain = train.language_model_loss(LogitsOnly(model))
  wrapped = {"inner": params}  # LogitsOnly nests the same parameters one level down
  key = jax.random.key(0)
  (loss, sums), grads = jax.jit(jax.value_and_grad(fused, has_aux=True), static_argnums=3)(
      params, batch, key, False)
  (loss_ref, sums_ref), grads_ref = jax.jit(jax.value_and_grad(plain, has_aux=True),
                                            static_argnums=3)(wrapped, batch, key, False)
  np.testing.assert_allclose(loss, loss_ref, rtol=1e-6)
  np.testing.assert_allclose(sums["loss_sum"], sums_ref["loss_sum"], rtol=1e-6)
  assert float(sums["count"]) == 27.0 == float(sums_ref["count"])  # 3 real rows x 9 tokens
  assert "correct" not in sums and "correct" in sums_ref
  for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(grads_ref["inner"])):
    np.testing.assert_allclose(a, b, atol=1e-6)
  # And the logits path is what optax computes from the logits, by hand:
  logits = jax.jit(model.apply)({"params": params}, batch["inputs"])
  per_token = optax.softmax_cross_entropy_with_integer_labels(logits, batch["targets"])
  np.testing.assert_allclose(loss, per_token[np.asarray(batch["mask"])].mean(), rtol=1e-6)


def test_the_fused_train_step_holds_less_memory_than_the_logits_step():
  """Compiled memory analysis at a 50k vocabulary (the benchmark's figures, small shape)."""
  from benchmarks import lm_loss_memory  # pylint: disable=import-outside-toplevel
  rows = lm_loss_memory.measure(vocab=50304, n_layer=1, n_embd=64, batch=4, block=256,
                                head_chunk=256, dtype="float32")
  fused, logits = rows["fused"], rows["logits"]
  logits_bytes = 4 * 256 * 50304 * 4  # one float32 (B, T, V) array
  # The logits path holds the logits and their gradient; the fused path one P = softmax -
  # onehot and a chunk of logits: at least half a logits array less.
  assert logits["peak_bytes"] - fused["peak_bytes"] > 0.5 * logits_bytes
