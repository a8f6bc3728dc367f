"""GPT's fused tied head (``tied_head.py``) and written-out GELU gradient, against float64
NumPy references and against the plain logits path, on tiny random inputs."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from scipy import special

from bigtune_jax import models
from bigtune_jax.models.gpt import gelu
from bigtune_jax.models.tied_head import tied_softmax_cross_entropy
from tests.utils import assert_trees_close


def _numpy_head(x, emb, targets, g):
  """float64 losses and the gradients of sum(g * losses) in x and emb."""
  z = x @ emb.T  # (..., V)
  lse = special.logsumexp(z, axis=-1)
  losses = lse - np.take_along_axis(z, targets[..., None], -1)[..., 0]
  p = np.exp(z - lse[..., None])
  np.put_along_axis(p, targets[..., None], np.take_along_axis(p, targets[..., None], -1) - 1, -1)
  dz = g[..., None] * p
  return losses, dz @ emb, dz.reshape(-1, emb.shape[0]).T @ x.reshape(-1, emb.shape[1])


@pytest.mark.parametrize("chunk_size", [None, 1, 4, 7, 64])
def test_fused_head_matches_float64_reference(x64, chunk_size):
  rng = np.random.default_rng(chunk_size or 0)
  x, emb = rng.standard_normal((3, 5, 8)), rng.standard_normal((11, 8))
  targets, g = rng.integers(0, 11, (3, 5)), rng.standard_normal((3, 5))
  losses, dx, demb = _numpy_head(x, emb, targets, g)

  def weighted(x, emb):
    return jnp.sum(g * tied_softmax_cross_entropy(x, emb, jnp.asarray(targets),
                                                   chunk_size=chunk_size))
  out = jax.jit(lambda x, e: tied_softmax_cross_entropy(x, e, jnp.asarray(targets),
                                                        chunk_size=chunk_size))(x, emb)
  assert out.shape == (3, 5)
  assert_trees_close(out, losses, rtol=1e-10, atol=1e-10)
  grads = jax.jit(jax.grad(weighted, argnums=(0, 1)))(x, emb)
  assert_trees_close(grads, (dx, demb), rtol=1e-10, atol=1e-10)


def test_fused_head_of_no_tokens_is_empty():
  x, emb, targets = jnp.ones((0, 4)), jnp.ones((5, 4)), jnp.zeros((0,), jnp.int32)
  for chunk_size in (None, 2):
    loss = lambda x: tied_softmax_cross_entropy(x, emb, targets, chunk_size=chunk_size).sum()
    assert jax.grad(loss)(x).shape == (0, 4)


def test_fused_head_bfloat16_logits_are_close():
  rng = np.random.default_rng(1)
  x = jnp.asarray(rng.standard_normal((16, 32)), jnp.bfloat16)
  emb, targets = jnp.asarray(rng.standard_normal((50, 32))), rng.integers(0, 50, 16)
  ref, *_ = _numpy_head(np.asarray(x, np.float64), np.asarray(emb, np.float64), targets,
                        np.zeros(16))
  for dtype in (jnp.float32, jnp.bfloat16):
    out = tied_softmax_cross_entropy(x, emb, jnp.asarray(targets), logits_dtype=dtype)
    assert out.dtype == jnp.float32
    assert_trees_close(out, ref, rtol=0.02, atol=0.2)  # inputs rounded to bfloat16 first


def test_gpt_targets_equal_plain_cross_entropy_in_value_and_gradient():
  cfg = models.GPTConfig.tiny(n_layer=1, head_chunk=5)  # 24 tokens: padded to 5 chunks
  rng = np.random.default_rng(4)
  idx, targets = (jnp.asarray(rng.integers(0, cfg.vocab_size, (2, 12))) for _ in range(2))
  model = models.GPT(cfg)
  shapes = nn.unbox(jax.eval_shape(model.init, jax.random.key(0), idx)["params"])
  params = jax.tree.map(lambda s: jnp.asarray(0.3 * rng.standard_normal(s.shape), s.dtype),
                        shapes)  # drawn by NumPy: no init program to compile

  def plain(p):
    logits = model.apply({"params": p}, idx)
    return optax.softmax_cross_entropy_with_integer_labels(logits, targets).mean()

  fused = lambda p: model.apply({"params": p}, idx, targets=targets).mean()
  both = jax.jit(lambda p: (jax.value_and_grad(fused)(p), jax.value_and_grad(plain)(p)))
  (fused_out, plain_out) = both(params)
  assert_trees_close(fused_out, plain_out, rtol=1e-5, atol=1e-6)


def test_gelu_gradient_is_exact_gelus(x64):
  x = np.random.default_rng(3).standard_normal(200) * 3
  cos = lambda f: lambda x: jnp.sum(f(x) * jnp.cos(x))
  ours = jax.grad(cos(gelu))(x)
  ref = jax.grad(cos(lambda x: jax.nn.gelu(x, approximate=False)))(x)
  assert_trees_close(ours, ref, rtol=1e-12, atol=1e-12)
  assert_trees_close(gelu(x), x * special.ndtr(x), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("make, field", [
    (lambda: tied_softmax_cross_entropy(jnp.ones((2, 3)), jnp.ones((5, 3)), jnp.zeros(2, int),
                                        chunk_size=0), "chunk_size"),
    (lambda: tied_softmax_cross_entropy(jnp.ones((2, 3)), jnp.ones((5, 3)), jnp.zeros(3, int)),
     "targets"),
    (lambda: tied_softmax_cross_entropy(jnp.ones((2, 3)), jnp.ones((5, 4)), jnp.zeros(2, int)),
     "embedding"),
    (lambda: tied_softmax_cross_entropy(jnp.ones((2, 3)), jnp.ones((5, 3)), jnp.zeros(2)),
     "targets must be integer"),
    (lambda: models.GPTConfig(head_chunk=0), "head_chunk"),
    (lambda: models.GPTConfig(head_logits_dtype="int8"), "head_logits_dtype"),
    (lambda: models.GPTConfig(head_logits_dtype="nope"), "head_logits_dtype"),
    (lambda: models.GPTConfig(scan_unroll=0), "scan_unroll"),
    (lambda: models.GPT(models.GPTConfig.tiny()).init(
        jax.random.key(0), jnp.zeros((1, 4), int), targets=jnp.zeros((1, 3), int)), "targets"),
])
def test_bad_arguments_raise(make, field):
  with pytest.raises(ValueError, match=field):
    make()
