"""benchmarks/search_quality.py: its searches keep the budget and score the winner by its
own test metric (on a tiny regression task here, fast), and its summary statistics equal
numpy's on random curves."""

import math

import jax.numpy as jnp
import numpy as np
import optax
import pytest

from bigtune_jax import data
from bigtune_jax import models
from bigtune_jax import train
from bigtune_jax import tune
from benchmarks import search_quality
from benchmarks import search_quality_methods as methods
from benchmarks import search_quality_tasks as tasks

MODEL = models.MLP(hidden=(8,), num_classes=1)
LOSS = train.regression_loss(MODEL)


def make_optimizer(h):
  return optax.sgd(h["learning_rate"], momentum=0.5)


class Regression(tasks.Task):
  """A tiny task behind the benchmark's interface: y = x w + noise, SGD's rate searched."""

  def single(self, params, seed):
    init = train.init_params(MODEL, jnp.asarray(self.splits["train"]["x"][:1]), seed)
    return train.create_train_state(MODEL, init, make_optimizer=make_optimizer,
                                    hparams={"learning_rate": params["learning_rate"]},
                                    seed=seed), LOSS

  def population_task(self, structure):
    c = self.config
    return tune.PopulationTask(MODEL, LOSS, make_optimizer, self.splits["train"],
                               self.splits["validation"], steps=c["steps"],
                               batch_size=c["batch_size"], eval_every=c["eval_every"])

  def trained(self, params, tree):
    return tree

  def test_metric(self, member):
    return train.evaluate(LOSS, member, self.splits["test"])["loss"]


@pytest.fixture
def task():
  rng = np.random.default_rng()
  x = rng.standard_normal((256, 4)).astype(np.float32)
  y = (x @ rng.standard_normal((4, 1)) + 0.1 * rng.standard_normal((256, 1))).astype(np.float32)
  splits = {name: data.ArrayDataset({"x": x[a:b], "y": y[a:b]})
            for name, (a, b) in {"train": (0, 128), "validation": (128, 192),
                                 "test": (192, 256)}.items()}
  return Regression("regression", {"steps": 12, "batch_size": 16, "eval_every": 4}, splits,
                    {"learning_rate": ("log", 1e-3, 0.3)}, "test_mse")


def check_search(result, task, budget):
  """The curve is the running best of finished trials within the budget; the winner's
  test metric is the winner's own."""
  times, values = zip(*result["curve"])
  assert all(0 <= t <= budget for t in times) and list(values) == sorted(values, reverse=True)
  assert result["best_val"] == values[-1] and math.isfinite(result["test_metric"])
  assert result["started"] >= result["finished"] + result["pruned"] >= len(values)
  assert result["member_steps"] <= result["started"] * task.config["steps"]


@pytest.mark.parametrize("method, clock", [("random", "wall"), ("optuna_median", "cpu")])
def test_one_trial_at_a_time_searches_keep_the_budget(task, method, clock):
  pytest.importorskip("optuna")
  budget = 4.0
  train.fit(*task.single({"learning_rate": 0.01}, 0), task.splits["train"],
            task.splits["validation"], config=task.fit_config(0))  # compiled before the clock
  result = methods.run_single(task, budget, seed=int(np.random.default_rng().integers(100)),
                              method=method, clock=clock)
  check_search(result, task, budget)
  assert result["elapsed_s"] >= budget and result["finished"] >= 2


def test_bt_search_keeps_the_budget_and_scores_its_winner(task):
  pytest.importorskip("optuna")
  budget = 6.0
  task.population_task({}).train({"learning_rate": [0.01] * 4}, seed=0, on_eval=None,
                                 compact=True)  # compiled before the clock
  result = methods.run_bt(task, budget, seed=0, leaders=2, size=2)
  check_search(result, task, budget)
  assert result["started"] % 4 == 0  # whole populations of leaders x size


def test_summary_statistics_equal_numpy(task):
  rng = np.random.default_rng()
  budget = 10.0
  runs = []
  for method in ("bt", "random"):
    for seed in range(3):
      times = np.sort(rng.uniform(0, budget, 4))
      curve = list(zip(times, np.minimum.accumulate(rng.uniform(1, 2, 4))))
      runs.append({"task": "t", "method": method, "seed": seed, "budget_s": budget,
                   "metric": "m", "curve": curve, "test_metric": rng.uniform(),
                   "started": 5, "finished": 4, "pruned": 1, "member_steps": 50})
  summary = search_quality.summarize(runs)
  for method in ("bt", "random"):
    group = [r for r in runs if r["method"] == method]
    for fraction in (25, 50, 100):
      at = [min([v for t, v in r["curve"] if t <= fraction / 100 * budget] or [np.inf])
            for r in group]
      assert summary["t"][method][f"best_at_{fraction}"] == np.median(at)
    tests = [r["test_metric"] for r in group]
    assert summary["t"][method]["test_median"] == np.median(tests)
    assert summary["t"][method]["test_range"] == [min(tests), max(tests)]
  rival = np.median([r["curve"][-1][1] for r in runs if r["method"] == "random"])
  reach = summary["t"]["bt_reaches_best_rival_at"]
  grid = np.linspace(0, budget, 201)
  median = [np.median([search_quality.best_at(r["curve"], t) for r in runs
                       if r["method"] == "bt"]) for t in grid]
  hits = [t / budget for t, v in zip(grid, median) if v <= rival]
  assert reach == (hits[0] if hits else None)
  assert "| bt |" in search_quality.report(summary, "cmd", "note")


def test_bad_arguments_are_refused(tmp_path):
  with pytest.raises(ValueError, match="--methods takes some of"):
    search_quality.main(["--workdir", str(tmp_path), "--methods", "hyperopt"])
  with pytest.raises(SystemExit):
    search_quality.main(["--workdir", str(tmp_path), "--tasks", "vision"])
