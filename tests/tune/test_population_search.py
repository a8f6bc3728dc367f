"""bt.tune.search_populations, the recommended search as one call: populations asked by
structure, trained as one program, reported and pruned at each evaluation, told, until a
budget in trials (the whole study's) or seconds; bad budgets refused before any work."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import bigtune_jax as bt
from bigtune_jax import data
from bigtune_jax import finetune
from bigtune_jax import models
from bigtune_jax import train
from bigtune_jax import tune

optuna = pytest.importorskip("optuna")

SPACE = tune.Space({"learning_rate": tune.LogUniform(1e-3, 0.3),
                    "hidden": tune.Choice([4, 8])})
STEPS, EVAL_EVERY, BATCH = 6, 2, 16


def make_optimizer(h):
  return optax.sgd(h["learning_rate"], momentum=0.5)


@pytest.fixture
def splits():
  rng = np.random.default_rng()
  x = rng.standard_normal((160, 4)).astype(np.float32)
  y = (x @ rng.standard_normal((4, 1)) + 0.1 * rng.standard_normal((160, 1))).astype(np.float32)
  return {"train": data.ArrayDataset({"x": x[:96], "y": y[:96]}),
          "validation": data.ArrayDataset({"x": x[96:], "y": y[96:]})}


def mlp_task(splits, built):
  """``structure -> PopulationTask``: an MLP of the structure's width (one object each)."""
  models_by_width = {}

  def make_task(structure):
    built.append(dict(structure))
    if structure["hidden"] not in models_by_width:
      model = models.MLP(hidden=(structure["hidden"],), num_classes=1)
      models_by_width[structure["hidden"]] = (model, train.regression_loss(model))
    model, loss_fn = models_by_width[structure["hidden"]]
    return tune.PopulationTask(model, loss_fn, make_optimizer, splits["train"],
                               splits["validation"], steps=STEPS, batch_size=BATCH,
                               eval_every=EVAL_EVERY)
  return make_task


class PruneFastRates(tune.RandomSearch):
  """Random search whose "pruner" stops every trial of rate > 0.03 at its first report."""

  def report(self, trial, step, value):
    super().report(trial, step, value)
    return trial.params["learning_rate"] > 0.03


def test_trial_budget_prunes_by_the_searchers_answer_and_members_equal_solo_runs(splits):
  built = []
  searcher = PruneFastRates(SPACE, seed=int(np.random.default_rng().integers(1 << 30)),
                            mode="min")
  result = tune.search_populations(searcher, mlp_task(splits, built), size=3, trials=7,
                                   leaders=2, seed=0)
  # 7 trials asked as populations of 3 (ceil(7 / 3) = 3 leaders, at most 2 per round).
  assert len(searcher.results) == len(result.trials) >= 7
  # told group by group: [leader 0, its followers], [leader 1, its followers] (numbers
  # 0, 2, 3, 1, 4, 5 when the two leaders' structures differ), so compare as sets
  assert sorted(r["number"] for r in result.trials) == sorted(r.number for r in searcher.results)
  assert all(set(b) == {"hidden"} for b in built)  # one task per group, by structure
  fast = [r for r in result.trials if r["params"]["learning_rate"] > 0.03]
  slow = [r for r in result.trials if r["params"]["learning_rate"] <= 0.03]
  assert all(r["state"] == "pruned" for r in fast) and all(r["state"] == "complete"
                                                           for r in slow)
  told = {r.number: r for r in searcher.results}
  for row in result.trials:
    assert told[row["number"]].state == row["state"]
    assert math.isclose(told[row["number"]].value, row["value"], rel_tol=1e-6)
  # A complete trial's value is its configuration trained alone (one member, same seed);
  # a pruned one's is its loss at the first evaluation.
  for row in result.trials:
    model = models.MLP(hidden=(row["params"]["hidden"],), num_classes=1)
    alone = tune.train_population(
        model, train.regression_loss(model), make_optimizer,
        {"learning_rate": [row["params"]["learning_rate"]]}, splits["train"],
        splits["validation"], steps=STEPS if row["state"] == "complete" else EVAL_EVERY,
        batch_size=BATCH, eval_every=EVAL_EVERY, seed=0)
    np.testing.assert_allclose(row["val_loss"], alone.final["val_loss"][0], rtol=1e-5)
  if slow:
    best = min(slow, key=lambda r: r["value"])
    assert result.best_trial["number"] == best["number"] == searcher.best.number
    assert len(result.best_trial["curve"]) == STEPS // EVAL_EVERY
    assert result.curve()[-1][1] == best["value"]
  # Every member-step of the populations, pruned members leaving the program: 3 each
  # for the first interval, then only the slow ones.
  populations = math.ceil(len(result.trials) / 3)  # groups are whole populations here
  assert result.member_steps <= populations * 3 * STEPS
  assert all(r["seconds"] <= result.wall_s for r in result.trials)


def test_optuna_tpe_with_median_pruning_shares_the_study_budget(splits, tmp_path):
  """A trial budget counts the whole study: trials another worker finished earlier count,
  so this call trains only the rest; Optuna's pruner prunes by its own rule."""
  url = f"journal:{tmp_path}/study.log"
  pruner = optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=0)
  other = tune.OptunaSearch(SPACE, seed=1, storage=url, study_name="s", mode="min")
  for trial in other.ask(3):
    other.tell(trial, 1.0)
  searcher = tune.OptunaSearch(SPACE, seed=0, pruner=pruner, storage=url, study_name="s",
                               mode="min")
  built = []
  result = tune.search_populations(searcher, mlp_task(splits, built), size=3, trials=9)
  assert len(result.trials) == 6 and len(built) == 2  # two populations of 3: 3 + 6 = 9
  states = {r.number: r.state for r in searcher.results}
  assert len(states) == 9 and all(states[r["number"]] == r["state"] for r in result.trials)
  for row in result.trials:  # the study stores each trial's final metrics
    assert searcher.study.trials[row["number"]].user_attrs["val_loss"] == pytest.approx(
        row["val_loss"])
  # Within a population the followers keep the leader's structure.
  for population in (result.trials[:3], result.trials[3:]):
    assert len({r["params"]["hidden"] for r in population}) == 1


def tiny_lora_task():
  model = models.GPT(models.GPTConfig(vocab_size=32, block_size=8, n_layer=1, n_head=2,
                                      n_embd=16, dropout=0.0))
  base = train.init_params(model, jnp.zeros((1, 8), jnp.int32), 0)
  tokens = np.random.default_rng().integers(0, 32, (48, 9)).astype(np.int32)
  train_data = data.ArrayDataset({"inputs": tokens[:32, :-1], "targets": tokens[:32, 1:]})
  val_data = data.ArrayDataset({"inputs": tokens[32:, :-1], "targets": tokens[32:, 1:]})
  loss_fn = train.language_model_loss(model)
  loras = {}

  def make_task(structure):
    key = structure["targets"]
    loras.setdefault(key, finetune.LoRA(model, targets=key, rank=4, alpha=8.0))
    return tune.PopulationTask(loras[key], loss_fn, lambda h: optax.adam(h["learning_rate"]),
                               train_data, val_data, steps=4, batch_size=8, eval_every=2,
                               base_params=base, hparams=("learning_rate", "rank"))
  return make_task


def test_seconds_budget_on_adapters_stops_at_the_deadline():
  """LoRA adapter populations over a frozen GPT, searched for 100 s of a clock that ticks
  one second per reading and jumps to 99.5 s when the second population is built: the
  first population completes; the second is stopped at its first evaluation, past the
  deadline (its members "cut", told pruned); nothing more is asked. The best member is a
  ``finetune.Adapters`` of its trial's rank (ranks vary inside one population)."""
  space = tune.Space({"learning_rate": tune.LogUniform(1e-3, 1e-1), "rank": tune.Int(1, 4),
                      "targets": tune.Choice(["c_attn"])})  # one program: compiled once
  searcher = tune.OptunaSearch(space, seed=int(np.random.default_rng().integers(1 << 30)),
                               mode="min")
  now, built, make_task = [0.0], [], tiny_lora_task()

  def clock():
    now[0] += 1.0
    return now[0]

  def jump_then_build(structure):
    built.append(structure)
    if len(built) == 2:
      now[0] = 99.5 - 1.0
    return make_task(structure)

  result = tune.search_populations(searcher, jump_then_build, size=2, seconds=100,
                                   by=("targets",), clock=clock)
  assert len(built) == 2 and result.wall_s >= 100
  assert [r["state"] for r in result.trials] == ["complete"] * 2 + ["cut"] * 2
  assert all(r["seconds"] < 100 for r in result.trials[:2])
  for population in (result.trials[:2], result.trials[2:]):  # ranks vary inside one
    assert population[0]["params"]["targets"] == population[1]["params"]["targets"]
  best = min(result.trials[:2], key=lambda r: r["value"])
  assert isinstance(result.best_member, finetune.Adapters)
  assert result.best_member.rank == best["params"]["rank"]
  assert result.best_trial["number"] == best["number"]
  told = {r.number: r.state for r in searcher.results}
  assert [told[r["number"]] for r in result.trials] == ["complete"] * 2 + ["pruned"] * 2


@pytest.mark.parametrize("budget, match", [
    ({}, "give exactly one budget"), ({"trials": 4, "seconds": 10.0}, "give exactly one"),
    ({"trials": 0}, "trials must be an integer >= 1"),
    ({"trials": 2.5}, "trials must be an integer"), ({"trials": True}, "trials must be"),
    ({"seconds": 0}, "seconds must be a finite number > 0"),
    ({"seconds": -3.0}, "seconds must be"), ({"seconds": float("nan")}, "seconds must be"),
    ({"seconds": "60"}, "seconds must be"), ({"seconds": True}, "seconds must be")])
def test_a_bad_budget_is_refused_by_name_before_any_work(budget, match, tmp_path):
  searcher = tune.OptunaSearch(SPACE, storage=f"journal:{tmp_path}/s.log", mode="min")
  with pytest.raises(ValueError, match=match):
    tune.search_populations(searcher, lambda s: pytest.fail("work began"), size=2, **budget)
  assert searcher.study.trials == []  # nothing asked


@pytest.mark.parametrize("kwargs, match", [
    ({"size": 0}, "size must be an integer >= 1"), ({"leaders": 0}, "leaders must be"),
    ({"by": "hidden"}, "by must be None or names"), ({"by": ("width",)}, "by must be"),
    ({"role": "boss"}, "role must be one of"), ({"metric": "loss"}, "metric must be"),
    ({"compact": 1}, "compact must be")])
def test_bad_arguments_are_refused_by_name(kwargs, match):
  searcher = tune.RandomSearch(SPACE, mode="min")
  with pytest.raises(ValueError, match=match):
    tune.search_populations(searcher, lambda s: None, **{"size": 2, "trials": 2, **kwargs})
  with pytest.raises(ValueError, match="searcher must be"):
    tune.search_populations(object(), lambda s: None, size=2, trials=2)
  assert searcher.results == [] and not searcher._pending  # nothing asked


def test_make_task_must_return_a_population_task(splits):
  with pytest.raises(ValueError, match=r"make_task\(\{'hidden': \d+\}\) must return"):
    tune.search_populations(tune.RandomSearch(SPACE), lambda s: (1, 2), size=2, trials=2)


def test_public_names():
  for name in ("search_populations", "PopulationTask", "SearchResult"):
    assert name in bt.tune.__all__ and getattr(bt.tune, name) is not None


def test_an_exhausted_grid_ends_the_search(splits):
  """A grid smaller than the budget: every point trains once, then the search ends."""
  grid = tune.GridSearch(tune.Space({"learning_rate": tune.Uniform(0.01, 0.1),
                                     "hidden": tune.Choice([4])}), points_per_axis=3,
                         mode="min")
  result = tune.search_populations(grid, mlp_task(splits, []), size=3, trials=10)
  assert sorted(r["params"]["learning_rate"] for r in result.trials) == pytest.approx(
      [0.01, 0.055, 0.1])


def test_refilled_programs_tell_each_trial_when_it_ends_and_keep_one_structure(splits):
  """program_trials above size: one program per structure runs that many trials, each
  told as soon as it is pruned or done (the next proposal sees it: it is asked after),
  pruned slots taken by new proposals of the same structure; every trial's value is its
  configuration trained alone; the budget in trials holds exactly."""
  told_before_ask = []

  class Watch(PruneFastRates):
    def ask(self, n=1):
      told_before_ask.append(len(self.results))
      return super().ask(n)

  searcher = Watch(SPACE, seed=int(np.random.default_rng().integers(1 << 30)), mode="min")
  built = []
  result = tune.search_populations(searcher, mlp_task(splits, built), size=2, trials=7,
                                   program_trials=5, seed=0)
  assert len(result.trials) == len(searcher.results) == 7 and searcher.running == 0
  assert len(built) == 2  # 5 trials in the first program, the 2 left in a second one
  first = sorted(result.trials, key=lambda r: r["number"])[:5]
  assert len({r["params"]["hidden"] for r in first}) == 1  # one structure per program
  assert max(told_before_ask[2:5]) >= 1  # refills were asked after trials were told
  for row in result.trials:
    pruned = row["params"]["learning_rate"] > 0.03
    assert row["state"] == ("pruned" if pruned else "complete")
    model = models.MLP(hidden=(row["params"]["hidden"],), num_classes=1)
    alone = tune.train_population(
        model, train.regression_loss(model), make_optimizer,
        {"learning_rate": [row["params"]["learning_rate"]]}, splits["train"],
        splits["validation"], steps=EVAL_EVERY if pruned else STEPS,
        batch_size=BATCH, eval_every=EVAL_EVERY, seed=0)
    np.testing.assert_allclose(row["val_loss"], alone.final["val_loss"][0], rtol=1e-5)
  # a program's compute: its slots (2) times the intervals it ran; never more than the
  # trials' own steps plus the slots a drained program leaves idle
  assert result.member_steps <= 7 * STEPS + 2 * 2 * STEPS
  complete = [r for r in result.trials if r["state"] == "complete"]
  if complete:
    assert result.best_trial["curve"][-1][0] == STEPS


def test_program_trials_below_size_is_refused_before_any_work(splits):
  searcher = tune.RandomSearch(SPACE, seed=0, mode="min")
  with pytest.raises(ValueError, match="program_trials"):
    tune.search_populations(searcher, mlp_task(splits, []), size=3, trials=4,
                            program_trials=2)
  assert searcher.running == 0 and not searcher.results
