"""EarlyStopping against its definition, over random metric sequences; pure and jittable."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import bigtune_jax as bt
from tests import reference as R


@pytest.mark.usefixtures("x64")
@pytest.mark.parametrize("mode,patience,min_delta",
                         list(itertools.product(["min", "max"], [0, 1, 4], [0.0, 0.05])))
def test_matches_the_definition_on_random_sequences(mode, patience, min_delta):
  rng = np.random.default_rng(patience * 10 + int(min_delta * 100))
  metrics = np.round(rng.normal(size=(16, 40)).cumsum(axis=1) * 0.1, 2)  # ties included
  metrics = metrics if mode == "min" else -metrics
  stopper = bt.EarlyStopping(patience=patience, min_delta=min_delta, mode=mode)

  @jax.jit
  @jax.vmap
  def run(sequence):
    def step(state, metric):
      state = stopper.update(state, metric)
      return state, (state.best, state.best_step, state.should_stop)
    return jax.lax.scan(step, stopper.init(), sequence)[1]

  best, best_step, stop = run(jnp.asarray(metrics))
  for i, sequence in enumerate(metrics):
    expected = R.early_stopping(sequence, patience, min_delta, mode)
    np.testing.assert_allclose(best[i], [e[0] for e in expected], rtol=1e-15)
    np.testing.assert_array_equal(best_step[i], [e[1] for e in expected])
    np.testing.assert_array_equal(stop[i], [e[2] for e in expected])
  assert stop[:, -1].any() and not stop[:, 0].all(), "weak test: no stop / all stop at once"


def test_patience_counts_consecutive_non_improving_updates():
  stopper = bt.EarlyStopping(patience=2, min_delta=0.1)
  state = stopper.init()
  flags = []
  for metric in [1.0, 0.95, 0.8, 0.85, 0.75, 0.71]:  # 0.95 and 0.75 improve by <= 0.1
    state = stopper.update(state, metric)
    flags.append(bool(state.should_stop))
  assert flags == [False, False, False, False, True, True]
  assert float(state.best) == pytest.approx(0.8) and int(state.best_step) == 2


def test_select_best_keeps_the_best_parameters():
  stopper = bt.EarlyStopping(patience=5, mode="max")
  state, best = stopper.init(), {"w": jnp.zeros(2)}
  for step, accuracy in enumerate([0.5, 0.7, 0.6, 0.65]):
    params = {"w": jnp.full(2, float(step))}
    state = stopper.update(state, accuracy)
    best = stopper.select_best(state, best, params)
  np.testing.assert_array_equal(best["w"], [1.0, 1.0])  # the params of accuracy 0.7


def test_fresh_states_can_be_donated():
  """Each field is its own buffer, so a jit with donated state accepts a fresh state."""
  stopper = bt.EarlyStopping(patience=2)
  state = jax.jit(stopper.update, donate_argnums=0)(stopper.init(), 1.0)
  assert int(state.step) == 1
  plateau = bt.reduce_on_plateau()
  update = jax.jit(lambda s: plateau.update((), s, value=1.0)[1], donate_argnums=0)
  assert int(update(plateau.init(jnp.zeros(3))).count) == 1
