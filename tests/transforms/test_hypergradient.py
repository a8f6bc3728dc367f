"""Hypergradient descent on a quadratic: a too-small rate grows, a too-large one shrinks
(Baydin et al. 2018, §3)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import bigtune_jax as bt

CURVATURE = jnp.asarray(np.random.default_rng(0).uniform(0.5, 2.0, 20))  # L = max <= 2
START = jnp.asarray(np.random.default_rng(1).standard_normal(20))


def loss(w):
  return 0.5 * jnp.sum(CURVATURE * w * w)


def train(opt, steps):
  @jax.jit
  def run():
    def step(carry, _):
      w, state = carry
      updates, state = opt.update(jax.grad(loss)(w), state, w)
      w = optax.apply_updates(w, updates)
      return (w, state), None
    (w, state), _ = jax.lax.scan(step, (START, opt.init(START)), None, length=steps)
    return w, state
  return run()


@pytest.mark.parametrize("make,small,large", [
    (lambda lr: bt.hypergradient_sgd(lr, hyper_lr=1e-2), 1e-3, 1.2),   # 2/L ~ 1.0: 1.2 diverges
    (lambda lr: bt.hypergradient_adam(lr, hyper_lr=1e-3), 1e-3, 0.5),
])
def test_small_rate_grows_and_large_rate_shrinks(make, small, large):
  w, state = train(make(small), steps=50)
  assert float(state.learning_rate) > 2 * small
  assert float(loss(w)) < float(loss(START))
  w, state = train(make(large), steps=50)
  assert float(state.learning_rate) < large
  assert float(loss(w)) < float(loss(START))


def test_hypergradient_beats_the_fixed_too_small_rate():
  w_fixed, _ = train(bt.sgd(1e-3), steps=100)
  w_hd, _ = train(bt.hypergradient_sgd(1e-3, hyper_lr=1e-2), steps=100)
  assert float(loss(w_hd)) < 0.1 * float(loss(w_fixed))


def test_zero_hyper_lr_is_plain_sgd():
  w_sgd, _ = train(bt.sgd(0.1), steps=20)
  w_hd, state = train(bt.hypergradient_sgd(0.1, hyper_lr=0.0), steps=20)
  np.testing.assert_allclose(w_hd, w_sgd, rtol=1e-6)
  assert float(state.learning_rate) == pytest.approx(0.1)
