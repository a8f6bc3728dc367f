"""fit's on_eval hook (report, prune, stop: the population runner's contract for one model)
and traced hyperparameters (create_train_state(make_optimizer=..., hparams=...)): one
compiled step serves every trial of a structure."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import bigtune_jax as bt
from bigtune_jax import data
from bigtune_jax import models
from bigtune_jax import train
from bigtune_jax import tune
from tests.utils import assert_trees_close


@pytest.fixture
def splits():
  """Fresh random regression data: y = x w + noise, 4 features."""
  rng = np.random.default_rng()
  x = rng.standard_normal((192, 4)).astype(np.float32)
  y = x @ rng.standard_normal((4, 1)).astype(np.float32) + 0.1 * rng.standard_normal(
      (192, 1)).astype(np.float32)
  return data.ArrayDataset({"x": x[:128], "y": y[:128]}), data.ArrayDataset(
      {"x": x[128:], "y": y[128:]})


MODEL = models.MLP(hidden=(8,), num_classes=1)  # one model and loss object: one structure
LOSS = train.regression_loss(MODEL)


def momentum_sgd(h):  # hparams -> optax transform; values may be traced
  return optax.sgd(h["learning_rate"], momentum=h["momentum"])


def state_of(splits, seed=0, **kwargs):
  params = train.init_params(MODEL, jnp.asarray(splits[0]["x"][:1]), seed=seed)
  return train.create_train_state(MODEL, params, **kwargs)


def config(**overrides):
  return train.FitConfig(**{"steps": 12, "batch_size": 16, "eval_every": 4, "progress": False,
                            **overrides})


def test_on_eval_sees_every_row_and_true_stops(splits, tmp_path):
  seen = []

  def on_eval(step, row):
    seen.append((step, row))
    row["val_loss"] = -1.0  # a copy: the run's own row is untouched
    return step == 8

  result = train.fit(state_of(splits, tx=optax.sgd(0.05)), LOSS, *splits, config=config(),
                     workdir=str(tmp_path), on_eval=on_eval)
  assert [s for s, _ in seen] == [4, 8] and result.stopped_early
  assert int(result.state.step) == 8 and [r["step"] for r in result.history] == [4, 8]
  assert all(r["val_loss"] > 0 for r in result.history)
  assert [r["step"] for r in train.MetricsLog(tmp_path / "metrics.jsonl").rows()] == [4, 8]
  assert train.Checkpointer(str(tmp_path / "checkpoints")).latest_step() == 8


@pytest.mark.parametrize("pruned", ["bt", "optuna"])
def test_pruning_exception_propagates_after_the_files_are_consistent(splits, tmp_path, pruned):
  optuna = pytest.importorskip("optuna")
  error = tune.TrialPruned if pruned == "bt" else optuna.TrialPruned

  def on_eval(step, row):
    if step == 8:
      raise error(f"pruned at {step}")

  with pytest.raises(error):
    train.fit(state_of(splits, tx=optax.sgd(0.05)), LOSS, *splits,
              config=config(checkpoint_every_evals=5), workdir=str(tmp_path), on_eval=on_eval)
  rows = train.MetricsLog(tmp_path / "metrics.jsonl").rows()
  assert [r["step"] for r in rows] == [4, 8]
  assert train.Checkpointer(str(tmp_path / "checkpoints")).latest_step() == 8
  # the workdir is released and resumes from the pruned row
  result = train.fit(state_of(splits, tx=optax.sgd(0.05)), LOSS, *splits,
                     config=config(checkpoint_every_evals=5), workdir=str(tmp_path))
  assert result.resumed_from == 8 and [r["step"] for r in result.history] == [4, 8, 12]


def test_bad_on_eval_is_refused_before_any_work(splits, tmp_path):
  with pytest.raises(ValueError, match="on_eval must be a callable"):
    train.fit(state_of(splits, tx=optax.sgd(0.05)), LOSS, *splits, config=config(),
              workdir=str(tmp_path), on_eval="prune")
  assert os.listdir(tmp_path) == []
  with pytest.raises(ValueError, match="on_eval must return True"):
    train.fit(state_of(splits, tx=optax.sgd(0.05)), LOSS, *splits, config=config(),
              on_eval=lambda step, row: [True])


def _count_compiles():
  """Counters of jaxpr traces and backend compiles, from jax.monitoring."""
  counts = {"trace": 0, "compile": 0}

  def listen(event, duration, **kwargs):
    del duration, kwargs
    if event.endswith("jaxpr_trace_duration"):
      counts["trace"] += 1
    elif event.endswith("backend_compile_duration"):
      counts["compile"] += 1

  jax.monitoring.register_event_duration_secs_listener(listen)
  return counts


def test_traced_hyperparameters_equal_the_plain_optimizer(splits):
  rng = np.random.default_rng()
  hparams = {"learning_rate": float(rng.uniform(0.01, 0.1)), "momentum": float(rng.uniform(0, 0.9))}
  traced = train.fit(state_of(splits, make_optimizer=momentum_sgd, hparams=hparams), LOSS,
                     *splits, config=config())
  plain = train.fit(state_of(splits, tx=momentum_sgd(hparams)), LOSS, *splits, config=config())
  assert_trees_close(traced.state.params, plain.state.params, rtol=1e-5, atol=1e-6)
  assert traced.history[-1]["lr"] == pytest.approx(hparams["learning_rate"])
  assert traced.state.opt_state.hyperparams["momentum"] == pytest.approx(hparams["momentum"])


def test_second_trial_of_a_structure_does_not_compile(splits):
  rng = np.random.default_rng()
  first = {"learning_rate": float(rng.uniform(0.01, 0.1)), "momentum": 0.5}
  train.fit(state_of(splits, make_optimizer=momentum_sgd, hparams=first), LOSS, *splits,
            config=config())
  counts = _count_compiles()
  second = {"learning_rate": first["learning_rate"] * 3, "momentum": 0.8}
  result = train.fit(state_of(splits, seed=1, make_optimizer=momentum_sgd, hparams=second),
                     LOSS, *splits, config=config())
  assert counts == {"trace": 0, "compile": 0}
  # the values were used, not the first trial's
  expected = train.fit(state_of(splits, seed=1, tx=momentum_sgd(second)), LOSS, *splits,
                       config=config())
  assert_trees_close(result.state.params, expected.state.params, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kwargs, match", [
    ({}, "either tx .* or make_optimizer"),
    ({"tx": optax.sgd(0.1), "make_optimizer": momentum_sgd,
      "hparams": {"learning_rate": 0.1}}, "not both"),
    ({"tx": optax.sgd(0.1), "hparams": {"learning_rate": 0.1}}, "hparams needs make_optimizer"),
    ({"make_optimizer": momentum_sgd, "hparams": {}}, "non-empty mapping"),
    ({"make_optimizer": momentum_sgd, "hparams": {"learning_rate": float("nan")}},
     r"hparams\['learning_rate'\] must be one finite real number"),
    ({"make_optimizer": momentum_sgd, "hparams": {"learning_rate": [0.1, 0.2]}},
     "one finite real number"),
    ({"make_optimizer": "sgd", "hparams": {"learning_rate": 0.1}}, "make_optimizer must be"),
])
def test_bad_traced_hyperparameters_are_refused(splits, kwargs, match):
  with pytest.raises(ValueError, match=match):
    state_of(splits, **kwargs)


_CACHE_RUN = """
import importlib.util, sys, jax, jax.numpy as jnp
spec = importlib.util.spec_from_file_location("compile_cache", sys.argv[3])
train = importlib.util.module_from_spec(spec)  # the module alone: a fast subprocess
spec.loader.exec_module(train)
hits = []
jax.monitoring.register_event_listener(
    lambda event, **kw: hits.append(event) if event.endswith("cache_hits") else None)
print(train.enable_compile_cache(sys.argv[1], min_compile_time_s=0))
jax.jit(lambda x: jnp.tanh(x @ x.T).sum())(jnp.ones((4, 3)) * float(sys.argv[2]))
print(len(hits))
"""


def test_compile_cache_serves_a_second_process(tmp_path):
  import subprocess
  import sys
  env = {k: v for k, v in os.environ.items() if not k.startswith("JAX_")}
  env["PYTHONPATH"] = os.getcwd()
  cache = str(tmp_path / "cache")
  module = os.path.join(os.path.dirname(train.__file__), "compile_cache.py")
  runs = [subprocess.run([sys.executable, "-c", _CACHE_RUN, cache, str(value), module], env=env,
                         capture_output=True, text=True, check=True).stdout.split()
          for value in np.random.default_rng().uniform(1, 2, 2)]
  assert [r[0] for r in runs] == [cache, cache] and os.listdir(cache)
  assert int(runs[0][1]) == 0 and int(runs[1][1]) >= 1  # compiled once, then read


def test_compile_cache_keeps_a_folder_already_chosen(tmp_path):
  chosen = jax.config.jax_compilation_cache_dir  # the suite's (conftest.py)
  assert chosen and train.enable_compile_cache(tmp_path / "other") == chosen
  assert jax.config.jax_compilation_cache_dir == chosen and not (tmp_path / "other").exists()
  with pytest.raises(ValueError, match="min_compile_time_s"):
    train.enable_compile_cache(tmp_path, min_compile_time_s=-1)
