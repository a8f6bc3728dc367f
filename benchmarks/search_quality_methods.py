"""The searches of ``benchmarks/search_quality.py``, each run against one wall-clock budget
whose clock starts before the first compilation (and before Ray starts):

* ``bt``: the library's recommended search, its one call ``bt.tune.search_populations``
  with ``bt.tune.OptunaSearch`` (TPE, median pruner): populations asked by structure (their
  continuous values proposed by TPE), each trained as one program (``train_population`` /
  ``train_adapter_population``, pruned members compacted away) and reported at every
  evaluation;
* ``optuna_median`` / ``optuna_hyperband``: what an Optuna user writes: TPE with that
  pruner, one trial at a time, each through ``bt.train.fit`` with ``on_eval`` reporting
  and raising ``TrialPruned`` (traced hyperparameters: one compiled step per structure);
* ``random``: seeded random search, one trial at a time through ``fit``, never pruned;
* ``ray``: Ray Tune's ``ASHAScheduler`` with its ``OptunaSearch`` searcher, concurrency =
  CPU cores, each trial ``fit`` in a Ray worker reporting each evaluation.

A trial counts when it finished all its steps within the budget; the best-so-far curve is
the best final validation loss of the finished trials against the second it finished, and
the winner is the trial that set its last point. Its test metric is measured after the
clock stops (in a Ray worker, when the trial finishes).
"""

import os
import time

import numpy as np

from bigtune_jax import train
from bigtune_jax import tune
from benchmarks import search_quality_tasks as tasks


CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}


class Record:
  """The clock and the counts of one search. ``clock="cpu"`` counts this process's CPU
  seconds (all its threads) instead of wall seconds: a measure that a machine shared with
  other work disturbs far less (not for Ray, whose work runs in other processes)."""

  def __init__(self, budget_s: float, clock: str = "wall"):
    self.clock = CLOCKS[clock]
    self.budget_s, self.start = budget_s, self.clock()
    self.curve: list[tuple[float, float]] = []  # (seconds, best final val so far)
    self.counts = {"started": 0, "finished": 0, "pruned": 0, "member_steps": 0}
    self.best_val, self.best_member = np.inf, None

  def elapsed(self) -> float:
    return self.clock() - self.start

  def over(self) -> bool:
    return self.elapsed() >= self.budget_s

  def finished(self, val: float, member) -> None:
    """A trial finished all its steps with validation loss ``val`` (not counted after the
    budget); ``member()`` gives what the task's test metric takes."""
    seconds = self.elapsed()
    if seconds > self.budget_s or not np.isfinite(val):
      return
    self.counts["finished"] += 1
    if val < self.best_val:
      self.best_val, self.best_member = float(val), member()
      self.curve.append((seconds, self.best_val))

  def result(self, task: tasks.Task) -> dict:
    test = None if self.best_member is None else task.test_metric(self.best_member)
    return {"curve": self.curve, **self.counts, "best_val": self.best_val,
            "test_metric": test, "elapsed_s": self.elapsed()}


def run_bt(task: tasks.Task, budget_s: float, seed: int, leaders: int, size: int,
           clock: str = "wall", refill: int | None = None) -> dict:
  """``bt.tune.search_populations`` for ``budget_s`` seconds of ``clock``: populations of
  ``size`` trials of one structure, ``leaders`` a round (a task without structure: one
  population of ``leaders * size`` a round); ``refill``: each program runs ``refill *
  size`` trials, freed slots taking new proposals (a task without structure: one program
  refilled for the whole budget)."""
  searcher = tune.OptunaSearch(tasks.bt_space(task), seed=seed, pruner="median", mode="min")
  if not task.structure:
    leaders, size = 1, leaders * size
  program_trials = None
  if refill:
    program_trials = refill * size if task.structure else 10**6
  result = tune.search_populations(searcher, task.population_task, size=size,
                                   seconds=budget_s, leaders=leaders, seed=seed,
                                   clock=CLOCKS[clock], program_trials=program_trials)
  curve, best = result.curve(), result.best_trial
  states = [row["state"] for row in result.trials]
  test = None if best is None else task.test_metric(task.trained(best["params"],
                                                                 result.best_member))
  return {"curve": curve, "started": len(states), "finished": states.count("complete"),
          "pruned": states.count("pruned"), "member_steps": result.member_steps,
          "best_val": curve[-1][1] if curve else np.inf, "test_metric": test,
          "elapsed_s": result.wall_s}


def _run_trial(task, searcher, record: Record, seed: int) -> None:
  """One trial through ``fit``, reported at each evaluation (pruned by raising)."""
  trial = searcher.ask(1)[0]
  record.counts["started"] += 1
  state, loss_fn = task.single(trial.params, seed)
  last = [0]

  def on_eval(step, row):
    last[0] = step
    if searcher.report(trial, step, row["val_loss"]):
      raise tune.TrialPruned(f"trial {trial.number} at step {step}")
    return record.over()

  try:
    result = train.fit(state, loss_fn, task.splits["train"], task.splits["validation"],
                       config=task.fit_config(seed), on_eval=on_eval)
  except tune.TrialPruned:
    searcher.tell(trial, None, state="pruned")
    record.counts["pruned"] += 1
    record.counts["member_steps"] += last[0]
    return
  record.counts["member_steps"] += int(result.state.step)
  value = result.history[-1]["val_loss"]
  if result.stopped_early or not np.isfinite(value):  # cut by the budget, or diverged
    searcher.tell(trial, None, state="pruned" if result.stopped_early else "failed")
    return
  searcher.tell(trial, float(value))
  record.finished(float(value), lambda: task.trained(trial.params, result.state.params))


def run_single(task: tasks.Task, budget_s: float, seed: int, method: str,
               clock: str = "wall") -> dict:
  record = Record(budget_s, clock)
  space = tasks.bt_space(task)
  if method == "random":
    searcher = tune.RandomSearch(space, seed=seed, mode="min")
  else:
    searcher = tune.OptunaSearch(space, seed=seed, pruner=method.split("_")[1], mode="min")
  while not record.over():
    _run_trial(task, searcher, record, seed)
  return record.result(task)


def _ray_trial(params, *, task_name, task_config, workdir, seed, start):
  """A Ray Tune function trainable: ``fit`` reporting each evaluation; the last report
  (all steps done) carries the test metric."""
  from ray import tune as ray_tune  # pylint: disable=g-import-not-at-top
  task = tasks.build(task_name, task_config, workdir)
  state, loss_fn = task.single(params, seed)
  steps = task.config["steps"]

  def on_eval(step, row):
    if step < steps:
      ray_tune.report({"val_loss": row["val_loss"], "step": step, "t": time.time() - start})

  result = train.fit(state, loss_fn, task.splits["train"], task.splits["validation"],
                     config=task.fit_config(seed), on_eval=on_eval)
  test = task.test_metric(task.trained(params, result.state.params))
  ray_tune.report({"val_loss": result.history[-1]["val_loss"], "step": steps,
                   "t": time.time() - start, "test": test})


def _ray_space(task):
  from ray import tune as ray_tune  # pylint: disable=g-import-not-at-top
  make = {"log": ray_tune.loguniform, "uniform": ray_tune.uniform}
  return {name: ray_tune.choice(list(spec[1])) if spec[0] == "choice"
          else make[spec[0]](spec[1], spec[2]) for name, spec in task.space.items()}


def run_ray(task: tasks.Task, budget_s: float, seed: int, workdir: str) -> dict:
  """Ray Tune ASHA + OptunaSearch; the clock includes starting Ray."""
  start, began = time.time(), time.perf_counter()
  import optuna  # pylint: disable=g-import-not-at-top
  import ray  # pylint: disable=g-import-not-at-top
  from ray import tune as ray_tune  # pylint: disable=g-import-not-at-top
  from ray.tune.schedulers import ASHAScheduler  # pylint: disable=g-import-not-at-top
  from ray.tune.search.optuna import OptunaSearch  # pylint: disable=g-import-not-at-top
  cores = os.cpu_count() or 1
  ray.init(num_cpus=cores, include_dashboard=False, log_to_driver=False,
           configure_logging=False)
  try:
    c = task.config
    trainable = ray_tune.with_parameters(
        _ray_trial, task_name=task.name, task_config=c, workdir=workdir, seed=seed, start=start)
    tuner = ray_tune.Tuner(
        ray_tune.with_resources(trainable, {"cpu": 1}),
        tune_config=ray_tune.TuneConfig(
            metric="val_loss", mode="min", num_samples=-1, max_concurrent_trials=cores,
            reuse_actors=True, time_budget_s=max(budget_s - (time.perf_counter() - began), 1),
            search_alg=OptunaSearch(_ray_space(task), metric="val_loss", mode="min",
                                    sampler=optuna.samplers.TPESampler(seed=seed)),
            scheduler=ASHAScheduler(time_attr="step", max_t=c["steps"],
                                    grace_period=c["eval_every"], reduction_factor=3)),
        run_config=ray_tune.RunConfig(storage_path=os.path.abspath(os.path.join(
            workdir, "ray")), name=f"{task.name}_{seed}_{int(start)}", verbose=0))
    results = tuner.fit()
  finally:
    elapsed = time.perf_counter() - began
    ray.shutdown()
  return _ray_record(results, task, budget_s, elapsed)


def _ray_record(results, task, budget_s: float, elapsed: float) -> dict:
  """The counts and the best-so-far curve of a Ray Tune run's last reports."""
  steps = task.config["steps"]
  done, counts = [], {"started": 0, "finished": 0, "pruned": 0, "member_steps": 0}
  for result in results:
    metrics = result.metrics or {}
    counts["started"] += 1
    counts["member_steps"] += int(metrics.get("step", 0))
    if metrics.get("step") == steps and "test" in metrics and metrics["t"] <= budget_s:
      done.append((metrics["t"], metrics["val_loss"], metrics["test"]))
    elif metrics.get("step", 0) < steps:
      counts["pruned"] += 1  # by ASHA, or cut by the budget
  curve, best, test = [], np.inf, None
  for seconds, val, trial_test in sorted(done):
    counts["finished"] += 1
    if np.isfinite(val) and val < best:
      best, test = float(val), float(trial_test)
      curve.append((float(seconds), best))
  return {"curve": curve, **counts, "best_val": best, "test_metric": test,
          "elapsed_s": elapsed}
