"""The library's recommended search, as one call: :func:`search_populations` (seed 003
§3.1 parameter tuning and §3.2 structure tuning, many trials at once).

The algorithm, one round after another until the budget (trials or seconds) is spent:

1. **Ask populations.** The searcher proposes ``leaders`` configurations; each is followed by
   ``size - 1`` more that keep its structure (the axes ``by``: every discrete axis by
   default), so that they differ only in what a compiled program takes as traced values
   (``Searcher.ask_populations``). With Optuna's TPE (Bergstra et al., "Algorithms for
   Hyper-Parameter Optimization", NeurIPS 2011) the followers' free values are TPE's own
   proposals given the leader's structure; with random search, fresh draws.
2. **Train each population** as one program: ``make_task(structure)`` says what trains (a
   :class:`PopulationTask`: whole models of a flax module, or LoRA adapters over a frozen
   base), and ``train_population`` / ``train_adapter_population`` train ``size`` members at
   once (a group larger than ``size`` trains in chunks of ``size``, the last one padded with
   repeats whose results are dropped, so that every population of a structure has the
   program's size).
3. **Report and prune.** After each evaluation every member's metric is reported to the
   searcher at its step; a member the searcher's pruner names (Optuna's median rule, or
   Hyperband: successive halving over brackets, Li et al., JMLR 2018) is stopped there, as
   ASHA stops a trial at a rung (Li et al., MLSys 2020) but inside the program, whose
   survivors continue (``compact``: stopped members leave the program).
4. **Tell** each trial its final value (complete), or pruned / failed; its final metrics go
   with it (an Optuna study stores them for every worker).

The budget is ``trials`` (finished trials of the whole study, every worker's and every
earlier run's counted: :func:`budget`, with the workers' ``role``) or ``seconds`` (this
call's clock, compiles included; a population running when it runs out is stopped at its
next evaluation, and its unfinished members are told pruned).

With ``program_trials`` above ``size``, a population refills (``_train_refilled``): each
member is told as soon as it is pruned or done, and its slot takes the searcher's next
proposal of the same structure at once, at its own step 0 (``run_population``'s
``refill``), so one compiled program runs successive halving over many trials, each
proposal informed by every trial told before it, and never idles nor changes size.
"""

from collections.abc import Callable, Mapping, Sequence
import dataclasses
import math
import time
from typing import Any

import numpy as np

from bigtune_jax import validation
from bigtune_jax.finetune.adapters import LoRA
from bigtune_jax.train.step import LossFn
from bigtune_jax.tune.population import train as population_train
from bigtune_jax.tune.population.members import MakeOptimizer
from bigtune_jax.tune.search.optuna_search import OptunaSearch
from bigtune_jax.tune.search.searchers import Searcher
from bigtune_jax.tune.search.searchers import Trial
from bigtune_jax.tune.search.searchers import check_axes

ROLES = ("all", "worker")  # a worker of a shared study leaves; "all" waits, then reports


@dataclasses.dataclass(frozen=True)
class PopulationTask:
  """What one structure's population trains (``make_task(structure)`` returns it).

  Attributes:
    model: a flax module (whole models), or a ``finetune.LoRA`` (adapters over
      ``base_params``, frozen and shared).
    loss_fn: the loss of the module (``bt.train.classification_loss(model)``, ...).
    make_optimizer: ``hparams -> optax transform``, called with a member's traced values.
    train_data, val_data: the splits (``ArrayDataset`` or ``TokenBlocks``).
    steps, batch_size: every member's training steps and batch.
    eval_every: steps between evaluations, the cadence of reports and pruning (None: once
      per epoch).
    base_params: the frozen base of an adapter population (None for whole models).
    hparams: the trial parameters each member gets (the optimizer's; ``alpha`` / ``rank``
      of an adapter); None: the trial's continuous ones.
    report_scale: the step reported to the searcher is ``step * report_scale`` (e.g. the
      tokens of a step, so that trials of other batch sizes compare at equal tokens).
    eval_batch_size: examples per evaluation batch (None: the trainer's default).
  """
  model: Any
  loss_fn: LossFn
  make_optimizer: MakeOptimizer
  train_data: Any
  val_data: Any
  steps: int
  batch_size: int
  eval_every: int | None = None
  base_params: Any = None
  hparams: Sequence[str] | None = None
  report_scale: int = 1
  eval_batch_size: int | None = None

  def train(self, hparams, *, seed: int, on_eval, compact: bool, refill=None):
    """``train_adapter_population`` (a LoRA) or ``train_population`` of ``hparams``."""
    kwargs = dict(steps=self.steps, batch_size=self.batch_size, eval_every=self.eval_every,
                  seed=seed, on_eval=on_eval, compact=compact, refill=refill)
    if self.eval_batch_size is not None:
      kwargs["eval_batch_size"] = self.eval_batch_size
    if isinstance(self.model, LoRA):
      return population_train.train_adapter_population(
          self.model, self.loss_fn, self.base_params, self.make_optimizer, hparams,
          self.train_data, self.val_data, **kwargs)
    return population_train.train_population(
        self.model, self.loss_fn, self.make_optimizer, hparams, self.train_data,
        self.val_data, **kwargs)


@dataclasses.dataclass
class SearchResult:
  """What :func:`search_populations` returns.

  Attributes:
    searcher: the searcher, told every trial (``searcher.best``, ``searcher.results``: the
      whole study's, other workers' and earlier runs' included).
    trials: this call's trials in the order they were told, each a dict: ``number``,
      ``params``, ``state`` (``"complete"``, ``"pruned"``, ``"failed"``, or ``"cut"``: stopped
      by the seconds budget, told pruned), ``value`` (the searched metric, last evaluated),
      ``seconds`` (since the call began, at the trial's last evaluation: when it finished
      or was pruned) and its final metrics (``val_loss``, ``val_accuracy`` ...).
    best_trial: the best complete trial of this call (by the searcher's mode), with its
      ``curve``: ``[(step, metric), ...]``; None if none completed.
    best_member: that trial's trained member (``PopulationResult.member``: parameters, or
      ``finetune.Adapters``).
    member_steps: member-steps computed (padding and masked members included).
    wall_s: seconds of the whole call.
  """
  searcher: Searcher
  trials: list[dict] = dataclasses.field(default_factory=list)
  best_trial: dict | None = None
  best_member: Any = None
  member_steps: int = 0
  wall_s: float = 0.0

  def curve(self) -> list[tuple[float, float]]:
    """The anytime curve: ``(seconds, best value so far)`` at each complete trial that
    improved on the best, in the order they finished."""
    better = (lambda a, b: a > b) if self.searcher.mode == "max" else (lambda a, b: a < b)
    points, best = [], None
    for row in sorted(self.trials, key=lambda r: r["seconds"]):
      if row["state"] == "complete" and (best is None or better(row["value"], best)):
        best = row["value"]
        points.append((row["seconds"], best))
    return points


def budget(searcher: Searcher, total: int, role: str = "all", poll_s: float = 2.0):
  """Yields how many trials to ask next, until the study holds ``total`` finished
  (complete or pruned) trials of any worker: ``total`` less the finished, running and
  waiting ones, plus the waiting ones (a dead worker's trials, queued again; ``ask`` hands
  them out first). Once the rest is in other workers' hands, a ``"worker"`` returns and
  role ``"all"`` waits for them (failing and re-running the trials of workers that die),
  so that it alone retrains the best trial and reports on the whole study. Workers asking
  at the same moment may each take the last trials: the study can end a population above
  ``total``, never below."""
  validation.check_choice("role", role, ROLES)
  while True:
    counts = (searcher.progress() if isinstance(searcher, OptunaSearch) else
              {"complete": len(searcher.results), "pruned": 0, "running": 0, "waiting": 0})
    left = total - sum(counts[k] for k in ("complete", "pruned", "running", "waiting"))
    if left > 0 or counts["waiting"]:
      yield max(left, 0) + counts["waiting"]
    elif counts["running"] and role == "all":
      time.sleep(poll_s)
    else:
      return


def _check_budget(trials: Any, seconds: Any) -> None:
  if (trials is None) == (seconds is None):
    raise ValueError(f"give exactly one budget, trials (an integer >= 1) or seconds (a "
                     f"number > 0), got trials={trials!r}, seconds={seconds!r}")
  if trials is not None:
    validation.check_int("trials", trials, 1, " (the study's finished trials)")
  elif (isinstance(seconds, bool) or not isinstance(seconds, (int, float, np.number))
        or not math.isfinite(seconds) or seconds <= 0):
    raise ValueError(f"seconds must be a finite number > 0 (the wall-clock budget), got "
                     f"{seconds!r}")


def _check_arguments(searcher, make_task, size, leaders, by, role, metric, seed, compact):
  if not isinstance(searcher, Searcher):
    raise ValueError(f"searcher must be a bigtune_jax.tune.Searcher (OptunaSearch, "
                     f"RandomSearch, GridSearch), got {searcher!r}")
  if not callable(make_task):
    raise ValueError(f"make_task must be a callable structure -> PopulationTask, got "
                     f"{make_task!r}")
  validation.check_int("size", size, 1)
  validation.check_int("leaders", leaders, 1)
  validation.check_int("seed", seed, 0)
  validation.check_choice("role", role, ROLES)
  check_axes(searcher.space, by)
  if not isinstance(metric, str) or not metric.startswith("val_"):
    raise ValueError(f"metric must be a validation metric's name (val_loss, val_accuracy), "
                     f"got {metric!r}")
  if not isinstance(compact, bool):
    raise ValueError(f"compact must be True or False, got {compact!r}")


@dataclasses.dataclass
class _Run:
  """The settings and the running state of one call."""
  searcher: Searcher
  metric: str
  seed: int
  compact: bool
  clock: Callable[[], float]
  deadline: float  # the clock's value at which the seconds budget runs out (inf: trials)
  start: float
  on_population: Callable[[list[dict]], None] | None
  result: SearchResult
  trials: int | None = None  # the trials budget (None: seconds)
  program_trials: int = 1  # trials one program runs (more than its size: refill)

  def elapsed(self) -> float:
    return self.clock() - self.start

  def over(self) -> bool:
    return self.clock() >= self.deadline

  def left(self) -> int:
    """Trials that may still be asked now: the study's budget less its finished, running
    and waiting trials (every worker's); with a seconds budget, any until it runs out."""
    if self.trials is None:
      return 0 if self.over() else self.program_trials
    searcher = self.searcher
    if isinstance(searcher, OptunaSearch):
      counts = searcher.progress()
      used = sum(counts[k] for k in ("complete", "pruned", "running", "waiting"))
    else:
      used = len(searcher.results) + searcher.running
    return max(self.trials - used, 0)


def _hparams(task: PopulationTask, run: _Run, members: Sequence[Trial]) -> dict[str, list]:
  names = task.hparams
  if names is None:
    names = [k for k in members[0].params if k in run.searcher.space.continuous_names]
  return {k: [t.params[k] for t in members] for k in names}


def _train_chunk(run: _Run, task: PopulationTask, chunk: Sequence[Trial], size: int):
  """One population: ``chunk`` padded to ``size`` with repeats, trained, reported at each
  evaluation (pruned by the searcher's answer; all stopped once the seconds run out), each
  real member told and recorded. The one place where a population trains: a runner that
  refills freed slots with new proposals replaces this function."""
  searcher, pruned, seen = run.searcher, set(), {}
  members = [chunk[i % len(chunk)] for i in range(size)]

  def on_eval(step, metrics):
    values, now = metrics[run.metric], run.elapsed()
    for i, trial in enumerate(chunk):
      if i not in pruned and math.isfinite(float(values[i])):  # NaN: stopped earlier
        seen[i] = now
        if searcher.report(trial, step * task.report_scale, float(values[i])):
          pruned.add(i)
    return [True] * size if run.over() else [i in pruned for i in range(size)]

  outcome = task.train(_hparams(task, run, members), seed=run.seed, on_eval=on_eval,
                       compact=run.compact)
  run.result.member_steps += int(outcome.member_steps)
  rows = [_tell(run, trial, outcome, i, i in pruned, seen.get(i, run.elapsed()))
          for i, trial in enumerate(chunk)]
  _keep_best(run, rows, outcome)


def _train_refilled(run: _Run, task: PopulationTask, structure, first: Sequence[Trial],
                    size: int) -> None:
  """One program of ``size`` slots for one structure, successive halving inside it (ASHA,
  Li et al., MLSys 2020): ``first`` start it (padded with repeats, stopped at their first
  evaluation); each member is reported at its own step and told as soon as it is pruned or
  has trained ``task.steps`` (so the next proposal knows it); each freed slot takes a new
  proposal of the same structure (``Searcher.ask_like``) until the program has run
  ``run.program_trials`` trials or the budget is spent."""
  members: list[Trial | None] = list(first) + [None] * (size - len(first))
  names, rows, pruned, told = list(_hparams(task, run, first)), [], set(), set()

  def on_eval(step, metrics):
    del step
    values, own, over = metrics[run.metric], metrics["member_step"], run.over()
    stop = np.array([t is None for t in members], bool)
    for i, trial in enumerate(members):
      if trial is None or i in told or not math.isfinite(float(values[i])):
        continue
      if run.searcher.report(trial, int(own[i]) * task.report_scale, float(values[i])):
        pruned.add(i)
      if i in pruned or own[i] >= task.steps:
        final = {k: float(v[i]) for k, v in metrics.items() if k.startswith("val_")}
        rows.append(_tell_final(run, trial, final, i, i in pruned, False, run.elapsed()))
        told.add(i)
      stop[i] |= i in pruned or over
    return stop

  def refill(step, free):
    del step
    started = sum(t is not None for t in members)
    count = min(free, run.program_trials - started, run.left())
    new = run.searcher.ask_like(structure, count) if count > 0 and not run.over() else []
    members.extend(new)
    return {k: [t.params[k] for t in new] for k in names} if new else None

  first_hp = _hparams(task, run, [first[i % len(first)] for i in range(size)])
  outcome = task.train(first_hp, seed=run.seed, on_eval=on_eval, compact=False,
                       refill=refill)
  run.result.member_steps += int(outcome.member_steps)
  rows += [_tell(run, t, outcome, i, i in pruned, run.elapsed())
           for i, t in enumerate(members) if t is not None and i not in told]
  _keep_best(run, rows, outcome)


def _tell(run: _Run, trial: Trial, outcome, i: int, pruned: bool, seconds: float) -> dict:
  """Tells the searcher trial ``i`` of ``outcome``; its record."""
  final = {k: float(v[i]) for k, v in outcome.final.items()}
  return _tell_final(run, trial, final, i, pruned, bool(outcome.stopped[i]), seconds)


def _tell_final(run: _Run, trial: Trial, final: Mapping[str, float], i: int, pruned: bool,
                stopped: bool, seconds: float) -> dict:
  """Tells the searcher ``trial`` with its last evaluation ``final``; its record."""
  value = final[run.metric]
  if pruned or stopped:
    state = "pruned" if pruned else "cut"
  else:
    state = "complete" if math.isfinite(value) else "failed"
  told = {"cut": "pruned"}.get(state, state)
  attrs = ({"attrs": {k: v for k, v in final.items() if math.isfinite(v)}}
           if isinstance(run.searcher, OptunaSearch) else {})
  run.searcher.tell(trial, value if told == "complete" else None, state=told, **attrs)
  return {"number": trial.number, "params": dict(trial.params), "state": state,
          "value": value, "seconds": seconds, **final, "index": i}


def _keep_best(run: _Run, rows: list[dict], outcome) -> None:
  """The best complete trial so far and its trained member."""
  sign = 1.0 if run.searcher.mode == "max" else -1.0
  for row in rows:
    i = row.pop("index")
    best = run.result.best_trial
    if row["state"] == "complete" and (best is None or
                                       sign * row["value"] > sign * best["value"]):
      run.result.best_member = outcome.member(i)
      run.result.best_trial = dict(row, curve=[
          (int(r["member_step"][i]), float(r[run.metric][i]))
          for r in outcome.history if math.isfinite(float(r[run.metric][i]))])
  run.result.trials += rows
  if run.on_population is not None:
    run.on_population(rows)


def _rounds(run: _Run, trials: int | None, role: str, leaders: int, size: int):
  """How many leaders to ask each round, until the budget."""
  if trials is not None:
    for want in budget(run.searcher, trials, role):
      yield min(leaders, -(-want // size))
  else:
    while not run.over():
      yield leaders


def _train_group(run: _Run, make_task, structure, group: Sequence[Trial], size: int) -> None:
  """A group of one structure, in populations of ``size``; trials left when the seconds
  run out are told failed (asked, never started)."""
  task = None
  for start in range(0, len(group), size):
    chunk = group[start:start + size]
    if run.over():
      for trial in chunk:
        run.searcher.tell(trial, None, state="failed")
      continue
    if task is None:
      task = make_task(structure)
      if not isinstance(task, PopulationTask):
        raise ValueError(f"make_task({structure!r}) must return a "
                         f"bigtune_jax.tune.PopulationTask, got {task!r}")
    if run.program_trials > size and run.searcher.pins:
      _train_refilled(run, task, structure, chunk, size)
    else:
      _train_chunk(run, task, chunk, size)


def search_populations(searcher: Searcher,
                       make_task: Callable[[Mapping[str, Any]], PopulationTask], *,
                       size: int, trials: int | None = None, seconds: float | None = None,
                       leaders: int = 1, by: Sequence[str] | None = None,
                       metric: str = "val_loss", seed: int = 0, compact: bool = True,
                       role: str = "all", clock: Callable[[], float] = time.perf_counter,
                       on_population: Callable[[list[dict]], None] | None = None,
                       program_trials: int | None = None) -> SearchResult:
  """Searches ``searcher``'s space with populations of ``size`` trials trained at once
  (the module docstring's algorithm) until the budget, ``trials`` or ``seconds``.

  Args:
    searcher: a ``bt.tune.Searcher`` (``OptunaSearch``: TPE or random, with its pruner;
      ``RandomSearch``; ``GridSearch``); its ``mode`` says whether ``metric`` is maximized.
    make_task: ``structure -> PopulationTask``, with ``structure`` the trials' values of the
      axes ``by``; called once per group (keep the model, loss and optimizer builder the
      same objects for a structure, so that its compiled programs are reused).
    size: members per population (one program size per structure).
    trials: the budget in finished trials of the whole study (every worker's counted).
    seconds: the budget in seconds of ``clock`` from this call's start (compiles count).
    leaders: populations asked per round.
    by: the axes that select a program (one population per value); None: every discrete
      axis. The others vary inside a population and must be in the task's ``hparams``.
    metric: the evaluated metric reported and told (``"val_loss"``, ``"val_accuracy"``).
    seed: the data order and every member's initial weights (as ``train_population``).
    compact: pruned members leave the program (a smaller program, compiled once per size)
      or stay in it masked (one program size, their steps computed for nothing).
    role: with ``trials``: ``"all"`` waits for other workers' running trials,
      ``"worker"`` returns once the rest is in their hands (:func:`budget`).
    clock: the seconds budget's clock (``time.process_time`` counts CPU seconds).
    on_population: called with each population's trial records once they are told.
    program_trials: the trials one program runs (None: ``size``). Above ``size``, a
      program refills: a member pruned or done leaves its slot at once and a new proposal
      of the program's structure takes it at its own step 0 (``run_population``'s
      ``refill``), told trials informing each proposal, so the program never idles nor
      changes size (successive halving inside one program; ``compact`` does not apply).
      A searcher that cannot pin a structure (a grid) does not refill.

  Returns:
    A :class:`SearchResult` (the searcher, this call's trial records with their times,
    the best complete trial and its trained member).

  Raises:
    ValueError: naming the argument, before any work: a budget that is not one of
      ``trials`` (an integer >= 1) and ``seconds`` (a finite number > 0), and the others.
  """
  _check_budget(trials, seconds)
  _check_arguments(searcher, make_task, size, leaders, by, role, metric, seed, compact)
  if program_trials is not None:
    validation.check_int("program_trials", program_trials, size, " (at least size)")
  start = clock()
  run = _Run(searcher, metric, seed, compact, clock,
             math.inf if seconds is None else start + seconds, start, on_population,
             SearchResult(searcher), trials, program_trials or size)
  for count in _rounds(run, trials, role, leaders, size):
    groups = searcher.ask_populations(count, size, by=by)
    if not groups:
      break  # a grid with no point left
    for group in groups:
      _train_group(run, make_task, searcher.structure_of(group[0].params, by), group, size)
  run.result.wall_s = run.elapsed()
  return run.result
