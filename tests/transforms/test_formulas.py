"""Every transform against a NumPy float64 transcription of its documented formula:
60 steps on a nested pytree of several shapes, fresh random gradients every step."""

import jax
import pytest

import bigtune_jax as bt
from tests import reference as R
from tests import registry
from tests.utils import assert_trees_close

STEPS = 60
WITH_REFERENCE = [c for c in registry.CASES if c.reference is not None]


@pytest.mark.usefixtures("x64")
@pytest.mark.parametrize("case", WITH_REFERENCE, ids=repr)
def test_matches_numpy_transcription(case):
  params, curvature, noise = registry.quadratic_problem(seed=len(case.name), steps=STEPS)
  lr = case.learning_rate
  actual = registry.run_jax(case.make(lr), params, curvature, noise)
  expected = registry.run_numpy(case.reference(lambda t: lr), params, curvature, noise)
  assert_trees_close(actual, expected, rtol=1e-9, atol=1e-12)


@pytest.mark.usefixtures("x64")
@pytest.mark.parametrize("case", [c for c in WITH_REFERENCE if c.accepts_schedule], ids=repr)
def test_matches_numpy_with_a_schedule(case):
  """A schedule goes wherever a learning rate does; step t uses schedule(t - 1)."""
  params, curvature, noise = registry.quadratic_problem(seed=7, steps=STEPS)
  schedule = R.step_decay_lr(0.08, step_size=7, gamma=0.6)
  actual = registry.run_jax(case.make(bt.step_decay(0.08, step_size=7, gamma=0.6)),
                            params, curvature, noise)
  expected = registry.run_numpy(case.reference(lambda t: schedule(t - 1)), params, curvature,
                                noise)
  assert_trees_close(actual, expected, rtol=1e-9, atol=1e-12)


@pytest.mark.usefixtures("x64")
def test_hypergradient_state_exposes_the_learned_rate():
  params, curvature, noise = registry.quadratic_problem(seed=3, steps=1)
  opt = bt.hypergradient_sgd(0.05, hyper_lr=1e-2)
  state = opt.init(params)
  assert float(state.learning_rate) == 0.05
  grads = jax.tree.map(lambda a, w: a * w, curvature, params)
  _, state = opt.update(grads, state)
  assert float(state.learning_rate) == 0.05  # d_0 = 0: the first step keeps alpha_0
  _, state = opt.update(grads, state)
  expected = 0.05 + 1e-2 * sum(float((g * g).sum()) for g in jax.tree.leaves(grads))
  assert abs(float(state.learning_rate) - expected) < 1e-12



@pytest.mark.usefixtures("x64")
def test_ema_momentum_is_heavy_ball_with_a_rescaled_rate():
  """ema_momentum(a, b) == momentum(a (1 - b), b) for constant rates (momentum_forms.py)."""
  params, curvature, noise = registry.quadratic_problem(seed=9, steps=STEPS)
  ema = registry.run_jax(bt.ema_momentum(0.3, beta=0.8), params, curvature, noise)
  heavy_ball = registry.run_jax(bt.momentum(0.3 * (1 - 0.8), gamma=0.8), params, curvature, noise)
  assert_trees_close(ema, heavy_ball, rtol=1e-9, atol=1e-12)
