"""accumulate(opt, k) over k micro-batches == opt on their concatenation."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import bigtune_jax as bt
from tests.utils import assert_trees_close


def loss(params, x, y):
  hidden = jnp.tanh(x @ params["w1"] + params["b1"])
  return jnp.mean((hidden @ params["w2"] - y) ** 2)


@pytest.mark.usefixtures("x64")
@pytest.mark.parametrize("make", [lambda: bt.sgd(0.1), lambda: bt.momentum(0.05, 0.9),
                                  lambda: bt.adam(1e-2)], ids=["sgd", "momentum", "adam"])
@pytest.mark.parametrize("k", [2, 4])
def test_k_micro_batches_equal_one_big_batch(make, k):
  rng = np.random.default_rng(k)
  params = {"w1": rng.standard_normal((6, 8)), "b1": rng.standard_normal(8),
            "w2": rng.standard_normal((8, 1))}
  params = jax.tree.map(jnp.asarray, params)
  updates_count, micro = 3, 5
  x = jnp.asarray(rng.standard_normal((updates_count, k, micro, 6)))
  y = jnp.asarray(rng.standard_normal((updates_count, k, micro, 1)))
  grad = jax.jit(jax.grad(loss))

  big, big_params = make(), params
  big_state, big_update = big.init(params), jax.jit(big.update)
  accumulated, acc_params = bt.accumulate(make(), k, accumulator_dtype=jnp.float64), params
  acc_state, acc_update = accumulated.init(params), jax.jit(accumulated.update)
  for u in range(updates_count):
    g = grad(big_params, x[u].reshape(k * micro, 6), y[u].reshape(k * micro, 1))
    updates, big_state = big_update(g, big_state, big_params)
    big_params = optax.apply_updates(big_params, updates)
    for j in range(k):
      before = acc_params
      updates, acc_state = acc_update(grad(acc_params, x[u, j], y[u, j]), acc_state,
                                              acc_params)
      acc_params = optax.apply_updates(acc_params, updates)
      if j < k - 1:  # between updates the parameters do not move
        assert_trees_close(acc_params, before, rtol=0, atol=0)
    assert_trees_close(acc_params, big_params, rtol=1e-9, atol=1e-12)
