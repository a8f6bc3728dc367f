"""PBT: the exploit / explore step against a NumPy transcription of Ray Tune's rules, and
PBT against no PBT on a population whose learning rates are mostly too small."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import bigtune_jax as bt
from bigtune_jax import data
from bigtune_jax import models
from bigtune_jax import train
from bigtune_jax.tune import population
from bigtune_jax.tune.population.exploration import Exploration
from bigtune_jax.tune.population.exploration import exploit_and_explore
from bigtune_jax.tune.population.exploration import explore_draws
from bigtune_jax.tune.population.exploration import pbt
from bigtune_jax.tune.population.exploration import quantile_size
from bigtune_jax.tune.population.members import WholeModels
from bigtune_jax.tune.population.runner import run_population
from bigtune_jax.tune.search.space import Choice
from bigtune_jax.tune.search.space import LogUniform
from bigtune_jax.tune.search.space import Uniform

MUTATIONS = {"learning_rate": LogUniform(1e-4, 1.0), "momentum": Uniform(0.0, 0.99)}


def ray_quantiles(order, fraction):
  """Ray's PopulationBasedTraining._quantiles on trials already sorted by score."""
  if len(order) <= 1:
    return [], []
  num = int(math.ceil(len(order) * fraction))
  if num > len(order) / 2:
    num = int(math.floor(len(order) / 2))
  return order[:num], order[len(order) - num:]


def numpy_exploit_explore(members, hparams, scores, draws, fraction, probability, factors,
                          mode):
  """Ray's synchronous PBT step in NumPy (float64), with the given random draws."""
  key = [-math.inf if math.isnan(s) else (s if mode == "max" else -s) for s in scores]
  order = sorted(range(len(scores)), key=lambda i: key[i])  # Python's sort is stable
  bottom, top = ray_quantiles(order, fraction)
  source = np.arange(len(scores))
  new = {k: np.array(v, np.float64) for k, v in hparams.items()}
  for member in bottom:
    donor = top[draws["donor"][member]]
    source[member] = donor
    for name in hparams:  # the clone takes the donor's whole config ...
      new[name][member] = hparams[name][donor]
    for j, (name, dist) in enumerate(MUTATIONS.items()):  # ... and explores the mutations
      if draws["resample"][member, j] < probability:
        u = draws["fresh"][member, j]
        if isinstance(dist, LogUniform):
          value = math.exp(math.log(dist.low) + u * (math.log(dist.high) - math.log(dist.low)))
        else:
          value = dist.low + u * (dist.high - dist.low)
      else:
        value = hparams[name][donor] * factors[draws["factor"][member, j]]
        value = min(max(value, dist.low), dist.high)
      new[name][member] = value
  return {k: np.asarray(v)[source] for k, v in members.items()}, new, source


@pytest.mark.parametrize("n, fraction, mode", [(10, 0.25, "max"), (7, 0.5, "min"),
                                               (2, 0.25, "min")])
def test_exploit_explore_matches_numpy_transcription(n, fraction, mode):
  rng = np.random.default_rng(n)
  probability, factors = 0.3, (0.8, 1.2)
  step = jax.jit(lambda m, h, s, k: exploit_and_explore(
      m, h, s, k, mutations=MUTATIONS, quantile_fraction=fraction,
      resample_probability=probability, perturbation_factors=factors, mode=mode))
  for trial in range(5):
    scores = np.round(rng.uniform(size=n), 1)  # rounded: ties exercise the stable sort
    scores[rng.integers(n)] = np.nan  # a diverged member ranks worst
    members = {"w": rng.standard_normal((n, 3, 2)).astype(np.float32),
               "opt": rng.standard_normal((n, 4)).astype(np.float32)}
    hparams = {"learning_rate": np.exp(rng.uniform(np.log(1e-4), 0, n)).astype(np.float32),
               "momentum": rng.uniform(0.5, 0.99, n).astype(np.float32),
               "weight_decay": rng.uniform(0, 1e-3, n).astype(np.float32)}
    key = jax.random.key(trial)
    got_members, got_hparams, got_source = step(members, hparams, jnp.asarray(scores), key)
    draws = jax.device_get(explore_draws(key, n, len(MUTATIONS),
                                             quantile_size(n, fraction), len(factors)))
    want_members, want_hparams, want_source = numpy_exploit_explore(
        members, hparams, scores, draws, fraction, probability, factors, mode)
    np.testing.assert_array_equal(got_source, want_source)
    for name in members:
      np.testing.assert_array_equal(got_members[name], want_members[name])
    for name in hparams:
      np.testing.assert_allclose(got_hparams[name], want_hparams[name], rtol=1e-6)
    assert (got_source != np.arange(n)).sum() == quantile_size(n, fraction)


def test_quantile_size_is_rays_rule():
  assert [quantile_size(n, 0.25) for n in (1, 2, 3, 4, 5, 8, 10, 64)] == [
      0, 1, 1, 1, 2, 2, 3, 16]
  assert [quantile_size(n, 0.5) for n in (2, 5, 7)] == [1, 2, 3]
  assert quantile_size(8, 0.0) == 0


def test_explore_draws_frequencies():
  n, quantile = 4000, 3
  draws = jax.device_get(explore_draws(jax.random.key(0), n, 2, quantile, 2))
  assert abs((draws["resample"] < 0.25).mean() - 0.25) < 0.02
  assert set(np.unique(draws["donor"])) == {0, 1, 2}
  assert abs(draws["factor"].mean() - 0.5) < 0.02


def test_pbt_beats_no_pbt_when_most_learning_rates_are_bad():
  splits = data.load_dataset("digits", seed=0)
  model = models.MLP(hidden=(16,), num_classes=10)
  loss_fn = train.classification_loss(model)
  traces = []

  def make_optimizer(h):
    if isinstance(h["learning_rate"], jax.core.Tracer):  # not the host's check of each member
      traces.append(1)
    return bt.momentum(h["learning_rate"], h["momentum"])

  rng = np.random.default_rng(0)
  n = 8
  hparams = {"learning_rate": np.exp(rng.uniform(np.log(1e-4), np.log(3e-3), n)),
             "momentum": rng.uniform(0.0, 0.9, n)}
  hparams["learning_rate"][3] = 0.05  # one good member
  kwargs = dict(steps=200, batch_size=64, seed=0)
  plain = population.train_population(model, loss_fn, make_optimizer, hparams,
                                      splits["train"], splits["validation"], **kwargs)
  result = pbt(model, loss_fn, make_optimizer, hparams, MUTATIONS, splits["train"],
                   splits["validation"], perturbation_interval=25, **kwargs)
  assert result.steps == 200 and len(result.history) == 8
  assert (result.history[-1]["source"] == np.arange(n)).all()  # no perturbation at the end
  copied = sum((row["source"] != np.arange(n)).sum() for row in result.history)
  assert copied == 7 * quantile_size(n, 0.25)
  assert result.final["val_accuracy"].mean() > plain.final["val_accuracy"].mean() + 0.3
  assert result.final["val_accuracy"].max() >= plain.final["val_accuracy"].max() - 0.03
  assert (result.hparams["learning_rate"] >= 1e-4).all()
  jax.tree.map(np.testing.assert_array_equal, result.member(3),
               jax.tree.map(lambda x: x[3], result.params))  # whole models: the slice
  traced = len(traces)
  again = pbt(model, loss_fn, make_optimizer, {k: v * 1.1 for k, v in hparams.items()},
                  MUTATIONS, splits["train"], splits["validation"], perturbation_interval=25,
                  **kwargs)
  assert len(traces) == traced  # other values, same program: no recompilation
  assert not np.allclose(again.final["val_loss"], result.final["val_loss"])
  chunked = pbt(model, loss_fn, make_optimizer, hparams, MUTATIONS, splits["train"],
                splits["validation"], perturbation_interval=25, member_chunk=2, **kwargs)
  np.testing.assert_allclose(chunked.final["val_loss"], result.final["val_loss"], rtol=1e-4)
  np.testing.assert_array_equal(chunked.hparams["learning_rate"], result.hparams["learning_rate"])


def test_pbt_bad_arguments():
  splits = data.load_dataset("digits", seed=0)
  model = models.MLP(hidden=(4,), num_classes=10)
  args = (model, train.classification_loss(model), lambda h: bt.sgd(h["learning_rate"]),
          {"learning_rate": [0.1, 0.2]})
  kwargs = dict(steps=4, batch_size=8, perturbation_interval=2)
  for mutations, extra, match in [
      ({"lr": LogUniform(1e-3, 1.0)}, {}, "unknown hyperparameter"),
      ({"learning_rate": Choice([0.1, 0.2])}, {}, "Uniform or LogUniform"),
      (MUTATIONS | {}, {}, r"mutations\['momentum'\]: unknown"),
      ({"learning_rate": LogUniform(1e-3, 1.0)}, {"quantile_fraction": 0.6}, "quantile_fraction"),
      ({"learning_rate": LogUniform(1e-3, 1.0)}, {"perturbation_factors": ()}, "perturbation"),
      ({"learning_rate": LogUniform(1e-3, 1.0)}, {"metric": "accuracy"}, "metric"),
      ({"learning_rate": LogUniform(1e-3, 1.0)}, {"member_chunk": 3}, "member_chunk"),
  ]:
    with pytest.raises(ValueError, match=match):
      pbt(*args, mutations, splits["train"], splits["validation"], **kwargs, **extra)


def test_the_runner_combines_stops_compaction_and_exploration():
  """One runner, every option at once: member 0 stops at the first evaluation and leaves
  the program; the three left rank and exploit among themselves only."""
  splits = data.load_dataset("digits", seed=0)
  model = models.MLP(hidden=(8,), num_classes=10)
  loss_fn = train.classification_loss(model)
  make = lambda h: bt.momentum(h["learning_rate"], h["momentum"])
  rates = np.float32(np.exp(np.random.default_rng(9).uniform(np.log(1e-4), np.log(3e-2), 4)))
  hparams = {"learning_rate": rates, "momentum": np.full(4, 0.5, np.float32)}
  settings = Exploration("val_accuracy", (("learning_rate", LogUniform(1e-4, 1.0)),), 0.25,
                         0.0, (0.8, 1.2), "max")
  result = run_population(
      WholeModels(model, loss_fn), make, hparams, splits["train"], splits["validation"],
      steps=30, batch_size=32, eval_every=10, explore=settings,
      on_eval=lambda step, metrics: np.arange(4) == 0 if step == 10 else None)
  assert result.program_sizes == [4, 3, 3] and result.member_steps == 40 + 2 * 30
  np.testing.assert_array_equal(result.stopped, [True, False, False, False])
  first = result.history[0]
  assert first["source"][0] == 0 and result.hparams["learning_rate"][0] == rates[0]
  copied = np.flatnonzero(first["source"] != np.arange(4))
  assert len(copied) == quantile_size(3, 0.25) and 0 not in first["source"][1:]
  worst = 1 + np.argsort(-first["val_accuracy"][1:], stable=True)[-1]  # of the three
  np.testing.assert_array_equal(copied, [worst])
  assert np.isnan(result.history[1]["val_accuracy"][0])
  assert (result.history[-1]["source"] == np.arange(4)).all()  # none after the last
