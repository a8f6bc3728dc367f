"""Bad hyperparameters raise one ValueError at construction, naming the argument and
the accepted range; traced values are accepted (they cannot be inspected)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import bigtune_jax as bt

BAD = [
    # (call, argument named in the message, text of the accepted range)
    (lambda: bt.sgd(-0.1), "learning_rate", ">= 0"),
    (lambda: bt.sgd(float("nan")), "learning_rate", ">= 0"),
    (lambda: bt.sgd(float("inf")), "learning_rate", ">= 0"),
    (lambda: bt.sgd(np.ones(3)), "learning_rate", "scalar"),
    (lambda: bt.sgd("fast"), "learning_rate", "scalar"),
    (lambda: bt.momentum(0.1, gamma=1.0), "gamma", r"\[0.0, 1.0\)"),
    (lambda: bt.momentum(0.1, gamma=-0.5), "gamma", r"\[0.0, 1.0\)"),
    (lambda: bt.ema_momentum(0.1, beta=1.2), "beta", r"\[0.0, 1.0\)"),
    (lambda: bt.adam(b1=1.0), "b1", r"\[0.0, 1.0\)"),
    (lambda: bt.adam(b2=-0.1), "b2", r"\[0.0, 1.0\)"),
    (lambda: bt.adam(eps=-1e-8), "eps", ">= 0"),
    (lambda: bt.adam(learning_rate=-1e-3), "learning_rate", ">= 0"),
    (lambda: bt.adam(moment_dtype="bfloat16", seed=1.5), "seed", "integer >= 0"),
    (lambda: bt.adaptive_sgd(0.1, beta=-1.0), "beta", ">= 0"),
    (lambda: bt.transforms.scale_by_accumulated_norm(-1.0), "beta", ">= 0"),
    (lambda: bt.hypergradient_sgd(-0.1, 1e-3), "learning_rate", ">= 0"),
    (lambda: bt.hypergradient_sgd(0.1, -1e-3), "hyper_lr", ">= 0"),
    (lambda: bt.hypergradient_sgd(bt.constant(0.1), 1e-3), "learning_rate", "not a schedule"),
    (lambda: bt.hypergradient_adam(b1=1.5), "b1", r"\[0.0, 1.0\)"),
    (lambda: bt.l1(-0.1), "strength", ">= 0"),
    (lambda: bt.l2(float("nan")), "weight_decay", ">= 0"),
    (lambda: bt.accumulate(bt.sgd(0.1), 0), "k", ">= 1"),
    (lambda: bt.accumulate(bt.sgd(0.1), 2.5), "k", "integer"),
    (lambda: bt.accumulate("sgd", 2), "optimizer", "GradientTransformation"),
    (lambda: bt.reduce_on_plateau(factor=1.0), "factor", r"\(0.0, 1.0\)"),
    (lambda: bt.reduce_on_plateau(factor=0.0), "factor", r"\(0.0, 1.0\)"),
    (lambda: bt.reduce_on_plateau(patience=-1), "patience", ">= 0"),
    (lambda: bt.reduce_on_plateau(mode="mean"), "mode", "'min', 'max'"),
    (lambda: bt.reduce_on_plateau(threshold_mode="pct"), "threshold_mode", "'rel', 'abs'"),
    (lambda: bt.reduce_on_plateau(cooldown=-2), "cooldown", ">= 0"),
    (lambda: bt.reduce_on_plateau(threshold=-1e-4), "threshold", ">= 0"),
    (lambda: bt.reduce_on_plateau(min_scale=-0.1), "min_scale", ">= 0"),
    (lambda: bt.EarlyStopping(patience=-1), "patience", ">= 0"),
    (lambda: bt.EarlyStopping(patience=3, mode="avg"), "mode", "'min', 'max'"),
    (lambda: bt.EarlyStopping(patience=3, min_delta=-0.1), "min_delta", ">= 0"),
    (lambda: bt.EarlyStopping(patience=2.5), "patience", "integer"),
    (lambda: bt.constant(-1.0), "learning_rate", ">= 0"),
    (lambda: bt.constant(bt.constant(0.1)), "learning_rate", "not a schedule"),
    (lambda: bt.exponential_decay(lambda t: 0.1, gamma=0.9), "learning_rate", "not a schedule"),
    (lambda: bt.exponential_decay(0.1, gamma=0.0), "gamma", r"\(0.0, 1.0\]"),
    (lambda: bt.exponential_decay(0.1, gamma=1.5), "gamma", r"\(0.0, 1.0\]"),
    (lambda: bt.exponential_decay(0.1, gamma=0.9, every=0), "every", ">= 1"),
    (lambda: bt.step_decay(0.1, step_size=0), "step_size", ">= 1"),
    (lambda: bt.step_decay(0.1, step_size=5, gamma=2.0), "gamma", r"\(0.0, 1.0\]"),
    (lambda: bt.warmup_cosine_decay(1.0, warmup_steps=10, total_steps=10), "total_steps", ">= 11"),
    (lambda: bt.warmup_cosine_decay(1.0, warmup_steps=-1, total_steps=10), "warmup_steps", ">= 0"),
    (lambda: bt.warmup_cosine_decay(-1.0, warmup_steps=1, total_steps=10), "learning_rate", ">= 0"),
    (lambda: bt.warmup_cosine_decay(1.0, 1, 10, end_lr=lambda t: 0.0), "end_lr", "not a schedule"),
]


@pytest.mark.parametrize("make,argument,accepted", BAD, ids=lambda x: x if isinstance(x, str) else "")
def test_bad_hyperparameter_raises_naming_argument_and_range(make, argument, accepted):
  with pytest.raises(ValueError, match=argument) as error:
    make()
  assert __import__("re").search(accepted, str(error.value)), str(error.value)
  assert "got" in str(error.value)  # and what was received


def test_boundary_values_are_accepted():
  bt.sgd(0.0), bt.momentum(0.1, gamma=0.0), bt.adam(b1=0.0, b2=0.0, eps=0.0)
  bt.reduce_on_plateau(patience=0, cooldown=0, threshold=0.0)
  bt.EarlyStopping(patience=0), bt.exponential_decay(0.1, gamma=1.0)
  bt.accumulate(bt.sgd(0.1), np.int64(4)), bt.sgd(jnp.asarray(0.1)), bt.sgd(np.float32(0.1))


def test_traced_hyperparameters_are_not_inspected():
  @jax.jit
  def build_and_step(lr, gamma):
    opt = bt.momentum(lr, gamma=gamma)
    first, state = opt.update(jnp.ones(2), opt.init(jnp.zeros(2)))
    second, _ = opt.update(jnp.ones(2), state)  # v = gamma v + lr g: the traced gamma is used
    return first, second
  first, second = build_and_step(0.5, 0.9)
  np.testing.assert_allclose(first, [-0.5, -0.5], rtol=1e-6)
  np.testing.assert_allclose(second, [-(0.9 * 0.5 + 0.5)] * 2, rtol=1e-6)


def test_plateau_value_must_be_a_scalar():
  plateau = bt.reduce_on_plateau()
  with pytest.raises(ValueError, match="value must be a scalar"):
    plateau.update(jnp.zeros(2), plateau.init(jnp.zeros(2)), value=jnp.ones(2))


def test_early_stopping_metric_must_be_a_scalar():
  stopper = bt.EarlyStopping(patience=2)
  with pytest.raises(ValueError, match="metric must be a scalar"):
    stopper.update(stopper.init(), jnp.ones(2))


def test_l1_without_params_names_the_missing_argument():
  opt = bt.l1(0.1)
  with pytest.raises(ValueError, match="params"):
    opt.update(jnp.ones(2), opt.init(jnp.zeros(2)))


def test_inject_hyperparams_still_validates_its_initial_values():
  with pytest.raises(ValueError, match="gamma"):
    optax.inject_hyperparams(bt.momentum)(learning_rate=0.1, gamma=1.5).init(jnp.zeros(2))
