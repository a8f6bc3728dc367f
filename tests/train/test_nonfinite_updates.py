"""A step whose *updates* are not finite (a NaN schedule, a rate of 1e40) is skipped like a
step with non-finite gradients: the parameters and optimizer state never see it."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import bigtune_jax as bt

from bigtune_jax import models
from bigtune_jax import train


def _setup(tx):
  rng = np.random.default_rng(0)
  x = rng.standard_normal((32, 6)).astype(np.float32)
  batch = {"image": x, "label": (x[:, 0] > 0).astype(np.int32), "mask": np.ones(32, bool)}
  model = models.MLP(hidden=(8,), num_classes=2)
  params = train.init_params(model, x[:1])
  state = train.create_train_state(model, params, tx)
  return jax.jit(train.make_train_step(train.classification_loss(model))), state, batch


def _nan_at_step_1(step):
  return jnp.where(step == 1, jnp.nan, 0.1)


# A skipped step leaves the optimizer state as it was, its step count included, so a
# schedule that is NaN at count 1 stays at count 1: every step from there on is skipped.
@pytest.mark.parametrize("tx, bad_steps", [
    (optax.sgd(_nan_at_step_1), {1, 2}),  # a schedule that returns NaN
    (optax.sgd(1e40), {0, 1, 2}),  # finite gradients, overflowing updates
    (optax.adam(_nan_at_step_1), {1, 2}),
])
def test_non_finite_updates_never_reach_the_state(tx, bad_steps):
  step, state, batch = _setup(tx)
  skipped = 0
  for i in range(3):
    before = jax.tree.map(np.asarray, (state.params, state.opt_state))
    state, out = step(state, batch)
    assert bool(jnp.isfinite(out["loss"])) and float(out["grad_norm"]) < 1e6  # grads fine
    if i in bad_steps:
      skipped += 1
      assert not bool(out["finite"])
      jax.tree.map(np.testing.assert_array_equal, (state.params, state.opt_state), before)
    else:
      assert bool(out["finite"])
    assert int(state.skipped_steps) == skipped
    for leaf in jax.tree.leaves((state.params, state.opt_state)):
      assert np.all(np.isfinite(np.asarray(leaf)))


def test_infinities_an_optimizer_state_holds_on_purpose_do_not_skip_steps():
  """A state may start at +inf on purpose (bt.reduce_on_plateau's best metric does): that is
  not a non-finite update."""
  holds_inf = optax.GradientTransformation(lambda params: jnp.asarray(jnp.inf),
                                           lambda updates, state, params=None: (updates, state))
  step, state, batch = _setup(optax.chain(optax.sgd(0.1), holds_inf))
  assert not np.isfinite(float(state.opt_state[1]))
  assert not np.isfinite(float(bt.reduce_on_plateau().init({}).best))  # the case in point
  for _ in range(3):
    state, out = step(state, batch)
    assert bool(out["finite"])
  assert int(state.skipped_steps) == 0
