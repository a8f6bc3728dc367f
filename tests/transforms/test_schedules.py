"""Schedules against NumPy transcriptions; traced hyperparameters for populations."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import bigtune_jax as bt
from tests import reference as R


@pytest.mark.usefixtures("x64")
@pytest.mark.parametrize("peak,warmup,total,init,end", [
    (1e-3, 100, 1000, 0.0, 0.0), (0.5, 10, 60, 0.05, 0.01), (0.1, 0, 50, 0.0, 1e-3)])
def test_warmup_cosine_matches_numpy(peak, warmup, total, init, end):
  steps = np.arange(total + 20)
  expected = [R.warmup_cosine_lr(peak, warmup, total, init, end)(s) for s in steps]
  actual = jax.jit(bt.warmup_cosine_decay(peak, warmup, total, init, end))(steps)
  np.testing.assert_allclose(actual, expected, rtol=1e-12, atol=1e-15)
  assert float(actual[warmup]) == pytest.approx(peak)
  assert float(actual[-1]) == pytest.approx(end)


@pytest.mark.usefixtures("x64")
def test_constant_and_exponential_match_numpy():
  steps = np.arange(50)
  np.testing.assert_allclose(bt.constant(0.3)(steps), np.full(50, 0.3), rtol=1e-15)
  np.testing.assert_allclose(bt.exponential_decay(0.3, 0.8, every=3)(steps),
                             0.3 * 0.8 ** (steps // 3), rtol=1e-12)


def test_hyperparameters_can_be_traced_for_a_population():
  """optax's factories branch in Python on these values; ours vmap over them."""
  peaks = jnp.asarray([0.1, 0.2, 0.4])
  gammas = jnp.asarray([0.5, 0.9, 0.99])
  step = jnp.asarray(30)
  cosine = jax.vmap(lambda p: bt.warmup_cosine_decay(p, 10, 100)(step))(peaks)
  decay = jax.vmap(lambda g: bt.exponential_decay(0.1, g, every=5)(step))(gammas)
  for i in range(3):
    np.testing.assert_allclose(cosine[i], bt.warmup_cosine_decay(float(peaks[i]), 10, 100)(step),
                               rtol=1e-6)
    np.testing.assert_allclose(cosine[i], R.warmup_cosine_lr(float(peaks[i]), 10, 100)(30),
                               rtol=1e-6)
    np.testing.assert_allclose(decay[i], 0.1 * float(gammas[i]) ** 6, rtol=1e-5)
