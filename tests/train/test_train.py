"""The training engine: NaN guard, determinism, plateau and early stopping in fit, resume
from a checkpoint to the same result, accumulation in the loop, masked evaluation."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import bigtune_jax as bt
from bigtune_jax import data
from bigtune_jax import models
from bigtune_jax import train
from tests.utils import assert_trees_close


@pytest.fixture(scope="module")
def splits():
  return data.load_dataset("digits", seed=0)


def setup(splits, tx=None, hidden=(32,)):
  model = models.MLP(hidden=hidden, num_classes=10)
  params = train.init_params(model, jnp.asarray(splits["train"]["image"][:1]), seed=0)
  state = train.create_train_state(model, params, tx or bt.sgd(0.1))
  return model, state, train.classification_loss(model)


def config(**overrides):
  return train.FitConfig(**{"steps": 40, "batch_size": 32, "eval_every": 20, "progress": False,
                            **overrides})


def test_fit_learns_and_logs(splits, tmp_path):
  _, state, loss_fn = setup(splits, tx=optax.inject_hyperparams(bt.sgd)(learning_rate=0.1))
  result = train.fit(state, loss_fn, splits["train"], splits["validation"],
                     config=config(), workdir=str(tmp_path))
  assert int(result.state.step) == 40 and [r["step"] for r in result.history] == [20, 40]
  assert result.history[-1]["val_accuracy"] > 0.5
  assert result.history[-1]["train_loss"] < result.history[0]["train_loss"]
  assert result.history[-1]["lr"] == pytest.approx(0.1)
  rows = train.MetricsLog(tmp_path / "metrics.jsonl").rows()
  assert [r["step"] for r in rows] == [20, 40]
  assert (tmp_path / "loss.png").exists() and (tmp_path / "accuracy.png").exists()


def test_same_seed_same_result_and_other_seed_differs(splits):
  runs = []
  for seed in (0, 0, 1):
    _, state, loss_fn = setup(splits)
    runs.append(train.fit(state, loss_fn, splits["train"], config=config(seed=seed)).state.params)
  assert_trees_close(runs[0], runs[1], rtol=0, atol=0)
  assert not np.allclose(jax.tree.leaves(runs[0])[0], jax.tree.leaves(runs[2])[0])


def test_nan_gradient_step_is_skipped_and_counted(splits):
  model, state, loss_fn = setup(splits)
  step = jax.jit(train.make_train_step(loss_fn))
  good = next(splits["train"].batches(32))
  bad = dict(good, image=good["image"].copy())
  bad["image"][0, 0, 0, 0] = np.nan
  before = state
  state, out = step(state, bad)
  assert not bool(out["finite"]) and int(state.skipped_steps) == 1 and int(state.step) == 1
  assert_trees_close(state.params, before.params, rtol=0, atol=0)
  assert_trees_close(state.opt_state, before.opt_state, rtol=0, atol=0)
  state, out = step(state, good)
  assert bool(out["finite"]) and int(state.skipped_steps) == 1
  assert all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(state.params))


def test_fit_logs_the_mean_gradient_norm_of_the_applied_steps(splits):
  train_data = data.ArrayDataset({k: v.copy() for k, v in splits["train"].arrays.items()})
  first = next(train_data.batches(32, seed=0, epoch=0))  # the run's first batch ...
  row = int(np.flatnonzero((train_data["image"] == first["image"][0]).all(axis=(1, 2, 3)))[0])
  train_data.arrays["image"][row, 0, 0, 0] = np.nan  # ... gets a NaN: step 1 is skipped
  _, state, loss_fn = setup(splits)
  result = train.fit(state, loss_fn, train_data, config=config(monitor="train_loss"))
  _, replay, _ = setup(splits)
  step = jax.jit(train.make_train_step(loss_fn))
  norms = []
  batches = (b for epoch in range(2) for b in train_data.batches(32, seed=0, epoch=epoch))
  for batch, _ in zip(batches, range(40)):  # 40 steps run into the second epoch
    replay, out = step(replay, batch)
    norms.append(float(out["grad_norm"]) if bool(out["finite"]) else None)
  assert norms[0] is None and all(n is not None for n in norms[1:])
  assert int(result.state.skipped_steps) == 1
  logged = [r["grad_norm"] for r in result.history]
  np.testing.assert_allclose(logged, [np.mean(norms[1:20]), np.mean(norms[20:40])], rtol=1e-5)


def test_resume_from_checkpoint_reaches_the_same_result(splits, tmp_path):
  tx = optax.chain(bt.momentum(0.05, 0.9),
                  bt.reduce_on_plateau(factor=0.5, patience=0, threshold=10.0))
  kwargs = dict(early_stopping=bt.EarlyStopping(patience=50, restore_best=True))
  _, state, loss_fn = setup(splits, tx=tx)
  straight = train.fit(state, loss_fn, splits["train"], splits["validation"],
                       config=config(steps=60), workdir=str(tmp_path / "a"), **kwargs)
  assert float(straight.state.opt_state[1].scale) < 1  # the plateau acted
  _, state, loss_fn = setup(splits, tx=tx)
  train.fit(state, loss_fn, splits["train"], splits["validation"], config=config(steps=40),
            workdir=str(tmp_path / "b"), **kwargs)
  _, state, loss_fn = setup(splits, tx=tx)
  resumed = train.fit(state, loss_fn, splits["train"], splits["validation"],
                      config=config(steps=60), workdir=str(tmp_path / "b"), **kwargs)
  assert resumed.resumed_from == 40
  assert_trees_close(resumed.state.params, straight.state.params, rtol=0, atol=0)
  assert_trees_close(resumed.state.opt_state, straight.state.opt_state, rtol=0, atol=0)
  assert resumed.history == straight.history


def test_plateau_in_the_chain_reduces_the_rate_from_validation_metrics(splits):
  """Each evaluation's metric reaches the chained plateau once, on the next step: the
  rows' rates (read from the optimizer state) are the rates their steps used."""
  plateau = bt.reduce_on_plateau(factor=0.5, patience=0, threshold=10.0)  # nothing improves
  tx = optax.chain(optax.inject_hyperparams(bt.sgd)(learning_rate=0.1), plateau)
  _, state, loss_fn = setup(splits, tx=tx)
  result = train.fit(state, loss_fn, splits["train"], splits["validation"],
                     config=config(steps=60))
  assert [r["lr"] for r in result.history] == pytest.approx([0.1, 0.05, 0.025])
  # the last row's metric waits in the state for a next step (a continued run)
  assert int(result.state.opt_state[1].count) == 2 and int(result.state.metric_count) == 3
  assert float(result.state.metric) == np.float32(result.history[-1]["val_loss"])


def test_plateau_steps_equal_sgd_at_the_reduced_rate(splits):
  """After evaluation k the steps are plain SGD at 0.1 * 0.5^k: replayed step by step
  with a fresh optimizer per segment, the parameters agree."""
  plateau = bt.reduce_on_plateau(factor=0.5, patience=0, threshold=10.0)
  _, state, loss_fn = setup(splits, tx=optax.chain(bt.sgd(0.1), plateau))
  result = train.fit(state, loss_fn, splits["train"], config=config(steps=40, eval_every=20,
                                                                    monitor="train_loss"))
  _, replay, _ = setup(splits)
  batches = (b for epoch in range(2) for b in splits["train"].batches(32, seed=0, epoch=epoch))
  for rate, batch in zip([0.1] * 20 + [0.05] * 20, batches):  # 40 steps, into epoch 2
    grads = jax.grad(lambda p: loss_fn(p, batch, jax.random.key(0), True)[0])(replay.params)
    replay = replay.replace(params=jax.tree.map(lambda w, g: w - rate * g, replay.params, grads))
  assert_trees_close(result.state.params, replay.params, rtol=1e-5, atol=1e-6)


def test_early_stopping_stops_and_restores_the_best_params(splits):
  stopper = bt.EarlyStopping(patience=1, mode="max", restore_best=True)
  _, state, loss_fn = setup(splits, tx=bt.sgd(5.0))  # lr 5: unstable, accuracy drops
  result = train.fit(state, loss_fn, splits["train"], splits["validation"],
                     config=config(steps=400, eval_every=10, monitor="val_accuracy",
                                   mode="max"), early_stopping=stopper)
  assert result.stopped_early and int(result.state.step) < 400
  best = max(r["val_accuracy"] for r in result.history)
  assert_trees_close(result.state.params, result.state.best_params, rtol=0, atol=0)
  evaluated = train.evaluate(loss_fn, result.state.params, splits["validation"], 512)
  assert evaluated["accuracy"] == pytest.approx(best)


def test_accumulation_in_fit_equals_the_larger_batch_step(splits):
  """bt.accumulate(opt, 2) on batches of 16 == opt on the same 32 examples at once."""
  _, state, loss_fn = setup(splits, tx=bt.accumulate(bt.sgd(0.1), 2))
  step = jax.jit(train.make_train_step(loss_fn))
  batch = next(splits["train"].batches(32))
  half = lambda sl: {k: v[sl] for k, v in batch.items()}
  state, _ = step(state, half(slice(0, 16)))
  state, _ = step(state, half(slice(16, 32)))
  _, big, loss_fn = setup(splits, tx=bt.sgd(0.1))
  big, _ = jax.jit(train.make_train_step(loss_fn))(big, batch)
  assert_trees_close(state.params, big.params, rtol=1e-5, atol=1e-6)


def test_evaluation_counts_every_example_once_with_padding(splits):
  model, state, loss_fn = setup(splits)
  whole = train.evaluate(loss_fn, state.params, splits["test"], len(splits["test"]))
  padded = train.evaluate(loss_fn, state.params, splits["test"], 64)  # 359 = 5*64 + 39
  assert padded["loss"] == pytest.approx(whole["loss"], rel=1e-6)
  assert padded["accuracy"] == pytest.approx(whole["accuracy"])


def test_early_stopping_must_be_an_early_stopping(splits):
  _, state, loss_fn = setup(splits)
  with pytest.raises(ValueError, match="early_stopping"):
    train.fit(state, loss_fn, splits["train"], config=config(), early_stopping=5)


@pytest.mark.parametrize("field,value", [("steps", 0), ("batch_size", 0), ("eval_every", 0),
                                         ("mode", "avg"), ("keep_checkpoints", 0)])
def test_bad_fit_config_names_the_field(field, value):
  with pytest.raises(ValueError, match=field):
    config(**{field: value})


def test_init_params_compiles_once_per_model_configuration():
  from bigtune_jax.train import state as state_lib  # pylint: disable=g-import-not-at-top
  x = np.random.default_rng(0).normal(size=(1, 8, 8, 1)).astype(np.float32)
  before = state_lib._init_jit._cache_size()  # pylint: disable=protected-access
  first = train.init_params(models.MLP(hidden=(7,), num_classes=3), x, seed=0)
  again = train.init_params(models.MLP(hidden=(7,), num_classes=3), x, seed=0)
  other = train.init_params(models.MLP(hidden=(7,), num_classes=3), x, seed=1)
  assert state_lib._init_jit._cache_size() == before + 1  # pylint: disable=protected-access
  assert_trees_close(first, again, rtol=0, atol=0)
  assert not np.allclose(first["head"]["kernel"], other["head"]["kernel"])
  listed = train.init_params(models.MLP(hidden=[7], num_classes=3), x, seed=0)  # unhashable
  assert_trees_close(listed, first, rtol=0, atol=0)


def test_evaluate_is_the_one_entry_point_and_compiles_once_per_loss(splits):
  model, state, loss_fn = setup(splits)
  traces = []

  def counted(params, batch, rng, train_flag):
    traces.append(1)
    return loss_fn(params, batch, rng, train_flag)

  first = train.evaluate(counted, state.params, splits["test"], 64)
  again = train.evaluate(counted, state.params, splits["test"], 64)
  assert first == again and len(traces) == 1
  with pytest.raises(ValueError, match="loss_fn must be a bt.train loss"):
    train.evaluate(None, state.params, splits["test"], 64)
