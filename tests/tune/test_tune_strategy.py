"""Training-strategy and structure search builders (seed 003 §3.2, §3.3)."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import bigtune_jax as bt
from bigtune_jax import tune
from tests.utils import assert_trees_close
from tests.utils import random_tree


def run_updates(optimizer, grads_seq, params):
  """The updates of ``optimizer`` on a sequence of gradients."""
  state = optimizer.init(params)
  update = jax.jit(optimizer.update)
  out = []
  for grads in grads_seq:
    updates, state = update(grads, state, params)
    params = optax.apply_updates(params, updates)
    out.append(updates)
  return out


def test_linear_scaling_rule():
  rng = np.random.default_rng(0)
  for _ in range(5):
    base_lr, batch, base = rng.uniform(1e-3, 1.0), int(rng.integers(1, 4096)), int(
        rng.integers(1, 1024))
    assert math.isclose(tune.scaled_learning_rate(base_lr, batch, base), base_lr * batch / base)
  # Goyal et al.: 0.1 per 256 examples -> 3.2 at 8192.
  assert math.isclose(tune.scaled_learning_rate(0.1, 8192, 256), 3.2)
  with pytest.raises(ValueError, match="base_batch_size"):
    tune.scaled_learning_rate(0.1, 32, 0)


@pytest.mark.usefixtures("x64")
def test_schedule_families_equal_the_bt_schedules_and_end_at_the_fraction():
  rng = np.random.default_rng(1)
  lr, f, total = rng.uniform(0.01, 1.0), rng.uniform(0.001, 0.5), int(rng.integers(20, 200))
  steps = np.arange(total + 1)
  cases = {
      "constant": (bt.constant(lr), lr * np.ones_like(steps, float)),
      "exponential": (bt.exponential_decay(lr, f ** (1 / total)), lr * f ** (steps / total)),
      "step": (bt.step_decay(lr, math.ceil(total / 4), f ** (1 / 3)),
               lr * (f ** (1 / 3)) ** (steps // math.ceil(total / 4))),
  }
  warmup = round(0.1 * total)
  cosine = f * lr + (lr - f * lr) * 0.5 * (1 + np.cos(np.pi * (steps - warmup) / (total - warmup)))
  cases["warmup_cosine"] = (bt.warmup_cosine_decay(lr, warmup, total, end_lr=lr * f),
                            np.where(steps < warmup, lr * steps / max(warmup, 1), cosine))
  for family, (bt_schedule, reference) in cases.items():
    ours = tune.make_schedule(family, lr, total, final_lr_fraction=f, num_decays=3,
                              warmup_fraction=0.1)
    np.testing.assert_allclose(ours(steps), bt_schedule(steps), rtol=1e-12, err_msg=family)
    np.testing.assert_allclose(ours(steps), reference, rtol=1e-10, err_msg=family)
    if family != "constant":  # every decaying family ends at lr * final_lr_fraction
      assert math.isclose(float(ours(total)), lr * f, rel_tol=1e-9), family


def test_build_strategy_equals_the_hand_built_optimizer():
  rng = np.random.default_rng(2)
  params = random_tree(rng, np.float32)
  grads = [random_tree(rng, np.float32) for _ in range(8)]
  total = 40
  config = {"learning_rate": 0.2, "batch_size": 64, "accumulation_steps": 2,
            "optimizer": "momentum", "momentum": 0.8, "schedule": "step", "num_decays": 3,
            "final_lr_fraction": 0.1, "weight_decay": 1e-3}
  strategy = tune.build_strategy(config, total_steps=total, base_batch_size=256)
  lr = 0.2 * 128 / 256  # effective batch 64 x 2
  schedule = bt.step_decay(lr, math.ceil(total / 4), 0.1 ** (1 / 3))
  expected = bt.accumulate(optax.chain(bt.l2(1e-3), bt.momentum(schedule, 0.8)), 2)
  assert_trees_close(run_updates(strategy.optimizer, grads, params),
                     run_updates(expected, grads, params), rtol=1e-6)
  assert (strategy.batch_size, strategy.accumulation_steps, strategy.effective_batch_size,
          strategy.fit_steps) == (64, 2, 128, 80)
  np.testing.assert_allclose(strategy.learning_rate(jnp.arange(total)),
                             schedule(jnp.arange(total)), rtol=1e-6)


def test_hypergradient_strategies_learn_the_rate():
  rng = np.random.default_rng(3)
  params = random_tree(rng, np.float32)
  grads = [random_tree(rng, np.float32) for _ in range(5)]
  base = {"learning_rate": 0.05, "batch_size": 256, "lr_adaptation": "hypergradient"}
  for name, expected in [("sgd", bt.hypergradient_sgd(0.05, 1e-3)),
                         ("adam", bt.hypergradient_adam(0.05, 1e-7))]:  # Baydin et al.'s betas
    strategy = tune.build_strategy({**base, "optimizer": name}, total_steps=10)
    assert_trees_close(run_updates(strategy.optimizer, grads, params),
                       run_updates(expected, grads, params), rtol=1e-6)
    assert strategy.learning_rate == 0.05
  # With the rate frozen (hyper_lr = 0), momentum-HD steps as heavy-ball momentum.
  frozen = tune.build_strategy({**base, "optimizer": "momentum", "momentum": 0.7,
                                "hyper_lr": 0.0}, total_steps=10)
  assert_trees_close(run_updates(frozen.optimizer, grads, params),
                     run_updates(bt.momentum(0.05, 0.7), grads, params), rtol=1e-5, atol=1e-7)
  learning = tune.build_strategy({**base, "optimizer": "momentum", "hyper_lr": 1e-2},
                                 total_steps=10)
  state = learning.optimizer.init(params)
  for g in grads:
    _, state = learning.optimizer.update(g, state, params)
  # NumPy float64: d_t = 0.9 d_{t-1} + g_t (optax.trace, default momentum 0.9) and
  # alpha_t = alpha_{t-1} + beta g_t . d_{t-1} (Baydin et al.), beta = 1e-2.
  alpha, d = 0.05, [np.zeros_like(x, np.float64) for x in jax.tree.leaves(params)]
  for g in grads:
    g = [np.asarray(x, np.float64) for x in jax.tree.leaves(g)]
    alpha += 1e-2 * sum(float(np.sum(a * b)) for a, b in zip(g, d))
    d = [0.9 * b + a for a, b in zip(g, d)]
  assert abs(alpha - 0.05) > 1e-3  # the rate really moved
  np.testing.assert_allclose(float(state.learning_rate), alpha, rtol=1e-5)


def test_continuous_strategy_values_may_be_traced():
  rng = np.random.default_rng(4)
  params = {"w": jnp.asarray(rng.standard_normal(3), jnp.float32)}
  grads = {"w": jnp.asarray(rng.standard_normal(3), jnp.float32)}
  rates = jnp.asarray([0.01, 0.1, 0.5])
  fractions = jnp.asarray([0.01, 0.3, 0.9])

  def first_two_updates(lr, fraction, family):
    config = {"learning_rate": lr, "batch_size": 32, "optimizer": "adam", "schedule": family,
              "final_lr_fraction": fraction, "warmup_fraction": fraction / 3}
    opt = tune.build_strategy(config, total_steps=4, base_batch_size=32).optimizer
    state = opt.init(params)
    u1, state = opt.update(grads, state, params)
    u2, _ = opt.update(grads, state, params)
    return u1["w"] + u2["w"]

  for family in ("exponential", "warmup_cosine"):
    batched = jax.jit(jax.vmap(lambda a, b: first_two_updates(a, b, family)))(rates, fractions)
    for i in range(3):
      np.testing.assert_allclose(
          batched[i], first_two_updates(float(rates[i]), float(fractions[i]), family),
          rtol=1e-5, err_msg=family)


@pytest.mark.parametrize("config, match", [
    ({"batch_size": 32}, "missing 'learning_rate'"),
    ({"learning_rate": 0.1, "batch_size": 32, "lr": 0.1}, "unknown strategy key 'lr'"),
    ({"learning_rate": -0.1, "batch_size": 32}, "learning_rate must be"),
    ({"learning_rate": 0.1, "batch_size": 0}, "batch_size must be an integer >= 1"),
    ({"learning_rate": 0.1, "batch_size": 32, "accumulation_steps": 1.5}, "accumulation_steps"),
    ({"learning_rate": 0.1, "batch_size": 32, "optimizer": "lamb"}, "optimizer must be one of"),
    ({"learning_rate": 0.1, "batch_size": 32, "schedule": "cyclic"}, "schedule must be one of"),
    ({"learning_rate": 0.1, "batch_size": 32, "lr_adaptation": "x"}, "lr_adaptation"),
    ({"learning_rate": 0.1, "batch_size": 32, "schedule": "exponential",
      "final_lr_fraction": 0.0}, r"final_lr_fraction must be in \(0.0, 1.0\]"),
    ({"learning_rate": 0.1, "batch_size": 32, "schedule": "warmup_cosine",
      "warmup_fraction": 1.0}, "warmup_fraction"),
    ({"learning_rate": 0.1, "batch_size": 32, "optimizer": "momentum", "momentum": 1.0},
     "gamma must be in"),
])
def test_build_strategy_rejects_bad_configs(config, match):
  with pytest.raises(ValueError, match=match):
    tune.build_strategy(config, total_steps=100)


def test_every_config_of_the_strategy_space_builds():
  space = tune.strategy_space()
  params = {"w": jnp.ones(4)}
  seen = set()
  for i, config in enumerate(tune.RandomSearch(space, seed=0).ask(60)):
    strategy = tune.build_strategy(config.params, total_steps=50)
    if i < 8:  # eager updates are slow: a few suffice
      updates, _ = strategy.optimizer.update({"w": jnp.ones(4)},
                                             strategy.optimizer.init(params), params)
      assert np.all(np.isfinite(updates["w"]))
    seen.add((config.params["lr_adaptation"], config.params.get("schedule")))
  assert len(seen) == 5  # hypergradient and the four schedule families


def test_structure_search_builds_mlps():
  model = tune.build_structure({"layers": 3, "hidden": 64, "activation": "tanh"}, num_classes=7)
  assert (model.hidden, model.activation, model.num_classes) == ((64, 64, 64), "tanh", 7)
  x = jnp.ones((2, 8, 8))
  variables = model.init(jax.random.key(0), x)
  assert model.apply(variables, x).shape == (2, 7)
  assert bt.models.count_params(variables) == 64 * 64 + 64 + 2 * (64 * 64 + 64) + 64 * 7 + 7
  assert tune.build_structure({"layers": 0}).hidden == ()
  space = tune.structure_space(max_layers=3, widths=(32, 64), activations=("relu", "gelu"))
  grid = tune.GridSearch(space).points
  assert len(grid) == 3 * 2 * 2
  assert {(m.hidden, m.activation) for m in map(tune.build_structure, grid)} == {
      ((w,) * n, a) for n in (1, 2, 3) for w in (32, 64) for a in ("relu", "gelu")}
  for trial in tune.RandomSearch(tune.structure_space(), seed=0).ask(10):
    assert len(tune.build_structure(trial.params).hidden) == trial.params["layers"]


@pytest.mark.parametrize("config, match", [
    ({"hidden": 64}, "missing 'layers'"),
    ({"layers": 2}, "missing 'hidden'"),
    ({"layers": -1, "hidden": 8}, "layers must be an integer >= 0"),
    ({"layers": 2, "hidden": 0}, "hidden must be an integer >= 1"),
    ({"layers": 2, "hidden": 8, "activation": "swish"}, "activation must be one of"),
    ({"layers": 2, "hidden": 8, "width": 3}, "structure key must be one of"),
])
def test_build_structure_rejects_bad_configs(config, match):
  with pytest.raises(ValueError, match=match):
    tune.build_structure(config)
