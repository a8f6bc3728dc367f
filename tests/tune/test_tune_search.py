"""Search spaces, grid / random / Optuna search, pruning, storage and resume (seed 003 §3)."""

import itertools
import math
import os
import signal
import subprocess
import sys
import time
import warnings

import numpy as np
import pytest

from bigtune_jax import tune

optuna = pytest.importorskip("optuna")
optuna.logging.set_verbosity(optuna.logging.WARNING)
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def mixed_space():
  return tune.Space({
      "learning_rate": tune.LogUniform(1e-4, 1.0),
      "momentum": tune.Uniform(0.0, 0.99),
      "layers": tune.Int(1, 3),
      "optimizer": tune.Choice(["sgd", "adam"]),
      "b1": tune.Conditional("optimizer", ("adam",), tune.Uniform(0.8, 0.99)),
      "hidden": tune.Choice([(64,), (128, 128)]),  # values optuna cannot store itself
  })


# --- the space ------------------------------------------------------------------------------

def test_grid_enumerates_exactly_the_product():
  space = tune.Space({"lr": tune.LogUniform(1e-3, 1e-1), "m": tune.Uniform(0.5, 0.9),
                      "layers": tune.Int(2, 6, step=2), "act": tune.Choice(["relu", "tanh"])})
  search = tune.GridSearch(space, points_per_axis=4)
  trials = search.ask(20) + search.ask(1000)
  assert search.exhausted and search.ask(5) == []
  got = [tuple(t.params[k] for k in space.names) for t in trials]
  want = list(itertools.product(np.geomspace(1e-3, 1e-1, 4), np.linspace(0.5, 0.9, 4),
                                [2, 4, 6], ["relu", "tanh"]))
  assert len(got) == len(want) == 4 * 4 * 3 * 2
  np.testing.assert_allclose([g[:3] for g in got], [w[:3] for w in want], rtol=1e-12)
  assert [g[3] for g in got] == [w[3] for w in want]
  assert [t.number for t in trials] == list(range(len(want)))


def test_grid_expands_a_conditional_axis_only_where_active():
  configs = tune.GridSearch(mixed_space(), points_per_axis=3).points
  # lr 3 x momentum 3 x layers 3 x (sgd + adam with 3 b1) x 2 hidden
  assert len(configs) == 3 * 3 * 3 * (1 + 3) * 2
  assert all(("b1" in c) == (c["optimizer"] == "adam") for c in configs)
  assert len({tuple(sorted(c.items())) for c in configs}) == len(configs)
  assert tune.Space({"n": tune.Int(1, 1024, log=True)}).grid(4) == [
      {"n": 1}, {"n": 10}, {"n": 102}, {"n": 1024}]


def test_random_search_is_seeded_and_respects_bounds_and_scales():
  space = tune.Space({"lr": tune.LogUniform(1e-5, 1e-1), "u": tune.Uniform(-2.0, 3.0),
                      "k": tune.Int(1, 3), "n": tune.Int(1, 1000, log=True),
                      "c": tune.Choice(["a", "b", "c", "d"])})
  first = [t.params for t in tune.RandomSearch(space, seed=7).ask(2000)]
  again = [t.params for t in tune.RandomSearch(space, seed=7).ask(2000)]
  other = [t.params for t in tune.RandomSearch(space, seed=8).ask(2000)]
  assert first == again and first != other
  for config in first:
    space.validate(config)
  lr, u, k, n = (np.array([c[name] for c in first]) for name in "lr u k n".split())
  # The median of a log-uniform on [1e-5, 1e-1] is 1e-3; of the uniform, 0.5. The sample
  # median of 2000 draws has a standard error of ~1.1 % of the range.
  assert abs(np.median(np.log10(lr)) + 3.0) < 0.15
  assert abs(np.median(u) - 0.5) < 0.3
  assert set(k) == {1, 2, 3} and set(np.unique(n)) <= set(range(1, 1001))
  # optuna's log-int rule draws log-uniformly on [0.5, 1000.5]: median sqrt(0.5 * 1000.5)
  assert abs(np.log10(np.median(n)) - np.log10(np.sqrt(0.5 * 1000.5))) < 0.1
  counts = np.unique([c["c"] for c in first], return_counts=True)[1]
  assert counts.min() > 400  # 500 expected each


def test_conditional_parameters_present_only_when_active():
  space = tune.strategy_space()  # conditionals two levels deep (schedule under lr_adaptation)
  for config in (*[space.sample(s) for s in range(300)],
                 *[t.params for t in tune.OptunaSearch(space, seed=1).ask(40)]):
    assert space.validate(config) == config
    assert ("momentum" in config) == (config["optimizer"] == "momentum")
    assert ("schedule" in config) == (config["lr_adaptation"] == "schedule")
    assert ("num_decays" in config) == (config.get("schedule") == "step")
  assert set(mixed_space().continuous_names) == {"learning_rate", "momentum", "b1"}
  continuous, rest = mixed_space().partition({"learning_rate": 0.1, "momentum": 0.5,
                                              "layers": 2, "optimizer": "sgd", "hidden": (64,)})
  assert continuous == {"learning_rate": 0.1, "momentum": 0.5}
  assert rest == {"layers": 2, "optimizer": "sgd", "hidden": (64,)}


@pytest.mark.parametrize("distributions, match", [
    ({}, "non-empty"),
    ({"lr": tune.Uniform(1.0, 1.0)}, r"space\['lr'\].*low < high"),
    ({"lr": tune.LogUniform(0.0, 1.0)}, r"space\['lr'\].*low > 0"),
    ({"lr": tune.Uniform(0.0, math.inf)}, r"space\['lr'\]"),
    ({"n": tune.Int(1, 4, step=2)}, r"space\['n'\].*step"),
    ({"n": tune.Int(0, 8, log=True)}, r"space\['n'\].*log=True"),
    ({"c": tune.Choice([])}, r"space\['c'\].*non-empty"),
    ({"c": tune.Choice(["a", "a"])}, r"space\['c'\].*distinct"),
    ({"x": (0, 1)}, r"space\['x'\] must be"),
    ({"b1": tune.Conditional("opt", ("adam",), tune.Uniform(0.8, 0.9))}, "parent 'opt'"),
    ({"x": tune.Uniform(0, 1), "y": tune.Conditional("x", (0.5,), tune.Uniform(0, 1))},
     "must be an Int or Choice"),
    ({"opt": tune.Choice(["sgd"]), "b1": tune.Conditional("opt", ("adam",), tune.Uniform(0, 1))},
     "'adam' is not a value of 'opt'"),
])
def test_invalid_spaces_raise_naming_the_field(distributions, match):
  with pytest.raises(ValueError, match=match):
    tune.Space(distributions)


@pytest.mark.parametrize("config, match", [
    ({"learning_rate": 0.1, "momentum": 0.5, "layers": 2, "optimizer": "sgd", "hidden": (64,),
      "lerning_rate": 0.1}, "unknown hyperparameter 'lerning_rate'"),
    ({"learning_rate": 0.1, "layers": 2, "optimizer": "sgd", "hidden": (64,)}, "missing.*momentum"),
    ({"learning_rate": 0.1, "momentum": 0.5, "layers": 2, "optimizer": "sgd", "hidden": (64,),
      "b1": 0.9}, "'b1' is only used when 'optimizer'"),
    ({"learning_rate": 2.0, "momentum": 0.5, "layers": 2, "optimizer": "sgd", "hidden": (64,)},
     "'learning_rate' must be in LogUniform"),
    ({"learning_rate": 0.1, "momentum": 0.5, "layers": 2.0, "optimizer": "sgd", "hidden": (64,)},
     "'layers' must be in Int"),
    ({"learning_rate": 0.1, "momentum": 0.5, "layers": 2, "optimizer": "sgd", "hidden": (32,)},
     "'hidden' must be in Choice"),
])
def test_validate_names_the_bad_hyperparameter(config, match):
  with pytest.raises(ValueError, match=match):
    mixed_space().validate(config)


# --- the ask / report / tell protocol --------------------------------------------------------

def test_tell_records_results_best_and_pruned_values():
  search = tune.RandomSearch(mixed_space(), seed=0, mode="min")
  a, b, c, d = search.ask(4)
  search.tell(b, 0.3)
  search.tell(a, 0.7)
  search.report(c, 0, 0.9)
  assert search.report(c, 1, 0.8) is False  # random search never prunes
  search.tell(c, None, state="pruned")
  with pytest.warns(UserWarning, match="not finite"):
    search.tell(d, math.nan)  # a diverged run: failed, not a result
  assert [(r.number, r.value, r.state) for r in search.results] == [
      (0, 0.7, "complete"), (1, 0.3, "complete"), (2, 0.8, "pruned")]
  assert search.best.number == 1
  with pytest.raises(ValueError, match="running Trial"):
    search.tell(a, 0.1)
  (e,) = search.ask()
  with pytest.raises(ValueError, match="value must be a number"):
    search.tell(e, None)
  with pytest.raises(ValueError, match="state must be one of"):
    search.tell(e, 1.0, state="done")


def test_run_counts_finished_trials_and_handles_pruning():
  search = tune.OptunaSearch(tune.Space({"x": tune.Uniform(-1.0, 1.0)}), seed=0)

  def objective(trial):
    if trial.params["x"] < -0.5:
      raise tune.TrialPruned()
    return -(trial.params["x"] - 0.25) ** 2

  best = search.run(objective, n_trials=15)
  assert len(search.results) == 15 and best == search.best and best.state == "complete"
  assert all((r.state == "pruned") == (r.params["x"] < -0.5) for r in search.results)


def test_tpe_beats_random_search_at_equal_budget():
  space = tune.Space({"learning_rate": tune.LogUniform(1e-4, 1.0),
                      "momentum": tune.Uniform(0.0, 0.99),
                      "weight_decay": tune.LogUniform(1e-6, 1e-1),
                      "layers": tune.Int(1, 4),
                      "activation": tune.Choice(["relu", "tanh", "gelu"])})

  def regret(p):  # 0 at lr=10^-1.5, momentum 0.9, wd 1e-4, 2 layers, gelu
    return ((math.log10(p["learning_rate"]) + 1.5) ** 2 + 4 * (p["momentum"] - 0.9) ** 2
            + 0.25 * (math.log10(p["weight_decay"]) + 4) ** 2 + 0.3 * abs(p["layers"] - 2)
            + 0.3 * (p["activation"] != "gelu"))

  best = {}
  for sampler in ("tpe", "random"):
    best[sampler] = np.array([
        tune.OptunaSearch(space, seed=seed, sampler=sampler, mode="min").run(
            lambda t: regret(t.params), n_trials=40).value for seed in range(5)])
  best["ours"] = np.array([tune.RandomSearch(space, seed=s, mode="min").run(
      lambda t: regret(t.params), n_trials=40).value for s in range(5)])
  assert np.mean(best["tpe"]) < 0.5 * np.mean(best["random"])
  assert np.mean(best["tpe"]) < 0.5 * np.mean(best["ours"])
  assert np.sum(best["tpe"] < best["random"]) >= 4


@pytest.mark.parametrize("pruner", ["median", "hyperband"])
def test_pruner_stops_a_clearly_bad_trial(pruner):
  search = tune.OptunaSearch(tune.Space({"x": tune.Uniform(0.0, 1.0)}), seed=0, pruner=pruner)
  rng = np.random.default_rng(0)
  for trial in search.ask(12):  # good trials: validation accuracy 0.8-0.9 over 10 evaluations
    for step in range(10):
      search.report(trial, step, 0.8 + 0.1 * rng.random())
    search.tell(trial, 0.9)
  pruned_at = []
  for trial in search.ask(6):  # clearly bad: 0.05 at every evaluation
    pruned_at.append(next((s for s in range(10) if search.report(trial, s, 0.05)), None))
    search.tell(trial, None, state="pruned")
  assert None not in pruned_at
  assert min(pruned_at) <= (0 if pruner == "median" else 3)
  assert [r.state for r in search.results[12:]] == ["pruned"] * 6
  assert all(r.value == 0.05 for r in search.results[12:])
  unpruned = tune.OptunaSearch(tune.Space({"x": tune.Uniform(0.0, 1.0)}), seed=0)
  (trial,) = unpruned.ask()
  assert unpruned.report(trial, 0, 0.0) is False


# --- storage, resume, errors -----------------------------------------------------------------

WORKER = """
import sys, time
from bigtune_jax import tune
storage, budget, hang_at = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
space = tune.Space({"x": tune.Uniform(-1.0, 1.0), "k": tune.Int(0, 3)})
search = tune.OptunaSearch(space, seed=0, storage=storage, study_name="resume",
                           heartbeat_interval=1, grace_period=2)
def objective(trial):
  time.sleep(60 if trial.number == hang_at else 0.05)
  return -(trial.params["x"] - 0.3) ** 2 - trial.params["k"]
search.run(objective, n_trials=budget)
"""


def _trials(storage):
  try:
    with warnings.catch_warnings():
      warnings.simplefilter("ignore")
      return optuna.load_study(study_name="resume", storage=storage).get_trials(deepcopy=True)
  except KeyError:  # not created yet
    return []


@pytest.mark.parametrize("kind", ["journal", "sqlite"])
def test_study_resumes_after_its_worker_is_killed(tmp_path, kind):
  url = (f"journal:{tmp_path}/study.log" if kind == "journal" else f"sqlite:///{tmp_path}/s.db")
  budget, hang_at = 10, 5
  env = dict(os.environ, PYTHONPATH=REPO)
  worker = subprocess.Popen([sys.executable, "-c", WORKER, url, str(budget), str(hang_at)],
                            env=env)
  storage = tune.search.optuna_search.open_storage(url, heartbeat_interval=1, grace_period=2)
  deadline = time.time() + 60
  while time.time() < deadline and worker.poll() is None and not any(
      t.number == hang_at and len(t.params) == 2 for t in _trials(storage)):
    time.sleep(0.05)
  # In the middle of trial `hang_at`, after its last write (a worker killed while holding
  # the journal's file lock delays the others by the lock's 30 s grace period).
  time.sleep(0.2)
  worker.send_signal(signal.SIGKILL)
  assert worker.wait() == -signal.SIGKILL
  before = _trials(storage)
  finished = {t.number: (t.params, t.value) for t in before if t.state.name == "COMPLETE"}
  assert sorted(finished) == list(range(hang_at))
  assert before[hang_at].state.name == "RUNNING"
  time.sleep(2.0)  # let its last heartbeat age past grace_period (2 s; sqlite: 1 s resolution)

  subprocess.run([sys.executable, "-c", WORKER, url, str(budget), "-1"], env=env, check=True,
                 timeout=120)
  after = _trials(storage)
  for number, (params, value) in finished.items():  # no finished trial lost or changed
    assert (after[number].params, after[number].value) == (params, value)
  assert sum(t.state.name == "COMPLETE" for t in after) == budget
  resumed = tune.OptunaSearch(tune.Space({"x": tune.Uniform(-1.0, 1.0), "k": tune.Int(0, 3)}),
                              storage=url, study_name="resume")
  assert len(resumed.results) == budget
  # Both storages keep heartbeats: the dead trial is failed and its parameters run once more.
  assert after[hang_at].state.name == "FAIL"
  assert not [t for t in after if t.state.name == "RUNNING"]
  with warnings.catch_warnings():
    warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
    retried = optuna.storages.RetryHeartbeatStaleTrialCallback.retried_trial_number
    retries = [t for t in after if t.state.name == "COMPLETE" and retried(t) == hang_at]
  assert [t.params for t in retries] == [after[hang_at].params]


def test_unreachable_storage_and_bad_names_raise_before_any_work(tmp_path):
  space = tune.Space({"x": tune.Uniform(0.0, 1.0)})
  start = time.time()
  with pytest.raises(ValueError, match=r"storage 'postgresql://nobody@127.0.0.1:1/x' cannot"):
    tune.OptunaSearch(space, storage="postgresql://nobody@127.0.0.1:1/x", connect_timeout=2)
  with pytest.raises(ValueError, match=r"'mysql://a:\*\*\*@127.0.0.1:1/x' cannot"):  # no password
    tune.OptunaSearch(space, storage="mysql://a:secret@127.0.0.1:1/x", connect_timeout=2)
  assert time.time() - start < 10
  for storage, match in [(f"sqlite:///{tmp_path}/missing/s.db", "cannot be opened"),
                         (f"journal:{tmp_path}/missing/s.log", "folder must exist"),
                         ("study.db", "storage must be None, 'journal:"), (3, "storage must be")]:
    with pytest.raises(ValueError, match=match):
      tune.OptunaSearch(space, storage=storage)
  for kwargs, match in [({"sampler": "cmaes"}, "sampler must be one of 'tpe', 'random'"),
                        ({"pruner": "asha"}, "pruner must be one of"),
                        ({"mode": "up"}, "mode must be one of"), ({"seed": -1}, "seed"),
                        ({"heartbeat_interval": 0}, "heartbeat_interval")]:
    with pytest.raises(ValueError, match=match):
      tune.OptunaSearch(space, storage=f"sqlite:///{tmp_path}/never.db", **kwargs)
  assert not os.path.exists(f"{tmp_path}/never.db")  # nothing written
  tune.OptunaSearch(space, storage=f"journal:{tmp_path}/j.log", study_name="s").run(
      lambda t: t.params["x"], 2)
  with pytest.raises(ValueError, match="mode='min' differs from the stored study"):
    tune.OptunaSearch(space, storage=f"journal:{tmp_path}/j.log", study_name="s",
                      mode="min")
  with pytest.raises(ValueError, match="points_per_axis"):
    tune.GridSearch(space, points_per_axis=0)
  with pytest.raises(ValueError, match="space must be a bigtune_jax.tune.Space"):
    tune.RandomSearch({"x": tune.Uniform(0.0, 1.0)})


def test_tune_imports_without_optuna():
  code = ("import sys; sys.modules['optuna'] = None\n"
          "from bigtune_jax import tune\n"
          "print(tune.RandomSearch(tune.structure_space(), seed=0).ask(1)[0].params)")
  out = subprocess.run([sys.executable, "-c", code], env=dict(os.environ, PYTHONPATH=REPO),
                       capture_output=True, text=True, check=True)
  assert "layers" in out.stdout


def _population_space():
  return tune.Space({"learning_rate": tune.LogUniform(1e-4, 1e-1),
                     "momentum": tune.Uniform(0.0, 0.9),
                     "width": tune.Choice([16, 32, 64]),
                     "shape": tune.Choice([(8,), (8, 8), (16, 4)]),  # stored by index
                     "layers": tune.Int(1, 4)})


def _discrete(space, trial):
  return space.partition(trial.params)[1]


def test_optuna_ask_populations_pins_the_leaders_discrete_values():
  space = _population_space()
  searcher = tune.OptunaSearch(space, seed=3)
  groups = searcher.ask_populations(4, 5)
  trials = [t for group in groups for t in group]
  assert sorted(t.number for t in trials) == list(range(20))
  for group in groups:  # each a whole number of populations with one set of discrete values
    assert len(group) % 5 == 0
    assert all(_discrete(space, t) == _discrete(space, group[0]) for t in group)
    rates = {t.params["learning_rate"] for t in group}
    assert len(rates) == len(group)  # the continuous values are TPE's own, all different
  for trial in trials:
    space.validate(trial.params)
  for t in trials:  # a pinned tuple choice comes back as the tuple, not as its index
    searcher.tell(t, float(t.params["momentum"]))
  assert {type(r.params["shape"]) for r in searcher.results} == {tuple}


def test_random_ask_populations_pins_and_a_grid_groups_as_it_comes():
  space = _population_space()
  searcher = tune.RandomSearch(space, seed=0)
  groups = searcher.ask_populations(3, 4)
  assert sum(len(g) for g in groups) == 12 and all(len(g) % 4 == 0 for g in groups)
  for group in groups:
    assert all(_discrete(space, t) == _discrete(space, group[0]) for t in group)
    assert len({t.params["momentum"] for t in group}) == len(group)  # drawn afresh
  assert [t.params for t in tune.RandomSearch(space, seed=0).ask(2)] == [
      t.params for t in tune.RandomSearch(space, seed=0).ask(2)]  # still seeded
  grid = tune.GridSearch(tune.Space({"lr": tune.Uniform(0.1, 0.3), "width": tune.Choice([1, 2])}),
                         points_per_axis=3)
  groups = grid.ask_populations(2, 3)  # the first 2 + 2 x 2 points, grouped by width
  assert [[t.params["width"] for t in g] for g in groups] == [[1, 1, 1], [2, 2, 2]]
  with pytest.raises(ValueError, match="size"):
    searcher.ask_populations(2, 0)


def test_space_sample_keeps_fixed_values_and_their_conditionals():
  space = tune.Space({"optimizer": tune.Choice(["sgd", "adam"]),
                      "b1": tune.Conditional("optimizer", ("adam",), tune.Uniform(0.8, 0.99)),
                      "learning_rate": tune.LogUniform(1e-4, 1.0)})
  for seed in range(10):
    config = space.sample(seed, fixed={"optimizer": "adam"})
    assert config["optimizer"] == "adam" and 0.8 <= config["b1"] <= 0.99
    assert space.validate(config) == config
    assert "b1" not in space.sample(seed, fixed={"optimizer": "sgd"})


@pytest.mark.parametrize("make", [lambda s: tune.OptunaSearch(s, seed=5),
                                  lambda s: tune.RandomSearch(s, seed=5)])
def test_ask_populations_by_pins_only_those_axes(make):
  """``by``: the followers keep the leader's values of those axes only; the other discrete
  axes (e.g. a LoRA rank masked inside one program) are proposed for each trial."""
  space = _population_space()
  searcher = make(space)
  groups = searcher.ask_populations(2, 6, by=("shape",))
  assert sum(len(g) for g in groups) == 12
  for group in groups:
    assert len({t.params["shape"] for t in group}) == 1 and len(group) % 6 == 0
  layers = {t.params["layers"] for g in groups for t in g}
  assert len(layers) > 1  # not pinned: 12 draws of 4 values
  with pytest.raises(ValueError, match="by must be None or names"):
    searcher.ask_populations(1, 2, by=("depth",))
