"""Model-based search with Optuna: TPE sampling and pruning of bad trials (seed 003 §3.1;
Bergstra et al., NeurIPS 2011; Akiba et al., KDD 2019), behind the ask/report/tell
protocol of :class:`~bigtune_jax.tune.search.Searcher`.

TPE splits the finished trials at the :math:`\\gamma`-quantile of their values into a
good set and a bad set, fits Parzen densities :math:`l(x)` and :math:`g(x)` to each and
proposes the candidate maximizing :math:`l(x) / g(x)` (the expected improvement). The
median pruner stops a trial whose intermediate value at step :math:`t` is worse than the
median of the other trials at :math:`t`; Hyperband runs successive halving in several
brackets (Li et al., JMLR 2018).

The study lives where ``storage`` says (:mod:`bigtune_jax.tune.search.storage`): memory, a
journal file, or a database server that many workers share. Optuna records heartbeats
only inside ``Study.optimize``; here ``ask`` starts a daemon thread per trial that records
them until ``tell``, and fails stale trials (a dead worker's) before asking, so that their
parameters run once more. A study with the same ``study_name`` and ``storage`` resumes:
its finished trials, from every worker, are kept and count towards a budget. The study
stores its direction and search space; a searcher with another one is refused by name.
Optuna is imported here only, when a search is created.
"""

from collections.abc import Mapping
import math
import threading
import time
from typing import Any
import warnings

import numpy as np

from bigtune_jax import validation
from bigtune_jax.tune.search.searchers import Searcher
from bigtune_jax.tune.search.searchers import Trial
from bigtune_jax.tune.search.searchers import TrialResult
from bigtune_jax.tune.search.space import Choice
from bigtune_jax.tune.search.space import Int
from bigtune_jax.tune.search.space import LogUniform
from bigtune_jax.tune.search.space import Space
from bigtune_jax.tune.search.storage import open_storage  # noqa: F401  (public here too)
from bigtune_jax.tune.search.storage import quietly

SAMPLERS = ("tpe", "random")
PRUNERS = (None, "none", "median", "hyperband")
_OPTUNA_CATEGORICAL = (type(None), bool, int, float, str)  # what suggest_categorical stores
SPACE_ATTR = "bigtune:space"  # the study's user attribute holding its search space


def _check_space(study, space: Space, study_name: str) -> None:
  """Stores the space in a new study; refuses a stored study whose space differs, naming
  the axes (its trials' parameters would not mean what this search means)."""
  here = {name: repr(space.distributions[name]) for name in space.names}
  stored = study.user_attrs.get(SPACE_ATTR)
  if stored is None:
    study.set_user_attr(SPACE_ATTR, here)
    return
  differ = sorted(n for n in set(here) | set(stored) if here.get(n) != stored.get(n))
  if differ:
    name = differ[0]
    raise ValueError(
        f"study {study_name!r} was stored with another search space: axes {differ} differ "
        f"(e.g. {name!r} is {stored.get(name, 'absent')} there, {here.get(name, 'absent')} "
        "here); pass another study_name or storage")


def _make_sampler(sampler: Any, seed: int | None):
  import optuna  # pylint: disable=g-import-not-at-top
  if isinstance(sampler, optuna.samplers.BaseSampler):
    return sampler
  if sampler == "random":
    return optuna.samplers.RandomSampler(seed=seed)
  # Multivariate TPE models the axes jointly; group=True fits one model per conditional
  # sub-space (the hyperparameters that appear together).
  return quietly(lambda: optuna.samplers.TPESampler(seed=seed, multivariate=True, group=True))


def _make_pruner(pruner: Any):
  import optuna  # pylint: disable=g-import-not-at-top
  if isinstance(pruner, optuna.pruners.BasePruner):
    return pruner
  if pruner == "median":
    return optuna.pruners.MedianPruner()
  if pruner == "hyperband":
    return optuna.pruners.HyperbandPruner()
  return optuna.pruners.NopPruner()


def _existing_trials(storage, study_name: str) -> int:
  """How many trials a stored study already has (0 when there is none)."""
  import optuna  # pylint: disable=g-import-not-at-top
  if storage is None or study_name not in optuna.study.get_all_study_names(storage):
    return 0
  return len(optuna.load_study(study_name=study_name, storage=storage).trials)


class OptunaSearch(Searcher):
  """TPE (or random) sampling and median / Hyperband pruning with an Optuna study.

  Args:
    space: the search space.
    seed: sampler seed (int >= 0; ``None`` unseeded). A resumed study reseeds with
      ``(seed, trials so far)``, so it does not repeat the first run's proposals; give
      concurrent workers different seeds.
    sampler: ``"tpe"``, ``"random"`` or an ``optuna.samplers.BaseSampler``.
    pruner: ``None``, ``"median"``, ``"hyperband"`` or an ``optuna.pruners.BasePruner``.
    storage: ``None`` (memory), ``"journal:/path/file.log"``, an RDB URL or an optuna
      storage.
    study_name: the study to create, or to resume when it exists in ``storage``.
    mode: ``"max"`` or ``"min"`` (the study's ``"maximize"`` / ``"minimize"``).
    heartbeat_interval: seconds between heartbeats of a running trial (RDB storage).
    grace_period: seconds without heartbeat before a trial is failed (default: twice
      ``heartbeat_interval``).
    connect_timeout: seconds to wait for an RDB server before giving up.

  Raises:
    ValueError: before any work, for bad names or an unreachable storage.
  """

  def __init__(self, space: Space, seed: int | None = 0, sampler: Any = "tpe",
               pruner: Any = None, storage: Any = None, study_name: str = "bigtune",
               mode: str = "max", heartbeat_interval: int = 60,
               grace_period: int | None = None, connect_timeout: int = 10):
    super().__init__(space, mode)
    direction = {"max": "maximize", "min": "minimize"}[mode]  # Optuna's words, here only
    import optuna  # pylint: disable=g-import-not-at-top
    if seed is not None:
      validation.check_int("seed", seed, 0)
    if not isinstance(sampler, optuna.samplers.BaseSampler):
      validation.check_choice("sampler", sampler, SAMPLERS)
    if not isinstance(pruner, optuna.pruners.BasePruner):
      validation.check_choice("pruner", pruner, PRUNERS)
    if not isinstance(study_name, str) or not study_name:
      raise ValueError(f"study_name must be a non-empty string, got {study_name!r}")
    validation.check_int("heartbeat_interval", heartbeat_interval, 1)
    if grace_period is not None:
      validation.check_int("grace_period", grace_period, 1)
    validation.check_int("connect_timeout", connect_timeout, 1)
    storage = open_storage(storage, heartbeat_interval=heartbeat_interval,
                           grace_period=grace_period, connect_timeout=connect_timeout)
    done = _existing_trials(storage, study_name)
    if seed is not None and done:
      seed = int(np.random.SeedSequence([seed, done]).generate_state(1)[0])
    self.study = optuna.create_study(
        storage=storage, sampler=_make_sampler(sampler, seed), pruner=_make_pruner(pruner),
        study_name=study_name, direction=direction, load_if_exists=True)
    if self.study.direction.name.lower() != direction:
      raise ValueError(f"mode={mode!r} differs from the stored study {study_name!r} "
                       f"({self.study.direction.name.lower()})")
    _check_space(self.study, space, study_name)
    # Choices whose values Optuna cannot store (tuples, objects) are stored as indices.
    self._by_index = {name for name in space.names if isinstance(space.base(name), Choice) and
                      not all(type(v) in _OPTUNA_CATEGORICAL for v in space.base(name).values)}
    self._optuna_trials: dict[int, Any] = {}
    self._heartbeats: dict[int, threading.Event] = {}
    self._pinned: dict[str, Any] | None = None

  def _suggest(self, optuna_trial, name: str) -> Any:
    dist = self.space.base(name)
    if isinstance(dist, Choice):
      if name in self._by_index:
        return dist.values[optuna_trial.suggest_categorical(name, list(range(len(dist.values))))]
      return optuna_trial.suggest_categorical(name, list(dist.values))
    if isinstance(dist, Int):
      return optuna_trial.suggest_int(name, dist.low, dist.high, step=dist.step, log=dist.log)
    return optuna_trial.suggest_float(name, dist.low, dist.high, log=isinstance(dist, LogUniform))

  def _decode(self, params: Mapping[str, Any]) -> dict[str, Any]:
    return {name: self.space.base(name).values[params[name]] if name in self._by_index
            else params[name] for name in self.space.names if name in params}

  def _start_heartbeat(self, optuna_trial) -> None:
    import optuna  # pylint: disable=g-import-not-at-top
    storage = self.study._storage  # pylint: disable=protected-access
    interval = getattr(storage, "get_heartbeat_interval", lambda: None)()
    if interval is None:
      return
    stop = threading.Event()
    trial_id = optuna_trial._trial_id  # pylint: disable=protected-access
    storage.record_heartbeat(trial_id)  # before ask returns: a trial without one never goes stale

    def beat():
      while not stop.wait(interval):
        try:
          storage.record_heartbeat(trial_id)
        except optuna.exceptions.UpdateFinishedTrialError:  # told between wait and write
          return

    threading.Thread(target=beat, daemon=True, name=f"heartbeat-{trial_id}").start()
    self._heartbeats[optuna_trial.number] = stop

  def _pin(self, fixed: Mapping[str, Any]) -> None:
    """Pins ``fixed`` for this searcher's next ``ask``: Optuna suggests those values, TPE
    the rest."""
    self._pinned = {name: self.space.base(name).values.index(value)
                    if name in self._by_index else value for name, value in fixed.items()}

  def _ask_pinned(self, fixed: Mapping[str, Any]):
    """``study.enqueue_trial(fixed)`` then ``study.ask()``, made one step: the trial is
    created RUNNING, so no other worker's ``ask`` pops it from the shared queue (Optuna's
    ``Study.ask`` body, on a trial of our own; proposals as enqueue-then-ask)."""
    import optuna  # pylint: disable=g-import-not-at-top
    study = self.study
    template = optuna.trial.create_trial(state=optuna.trial.TrialState.RUNNING,
                                         system_attrs={"fixed_params": dict(fixed)})
    study._thread_local.cached_all_trials = None  # pylint: disable=protected-access
    trial_id = study._storage.create_new_trial(  # pylint: disable=protected-access
        study._study_id, template_trial=template)  # pylint: disable=protected-access
    return optuna.Trial(study, trial_id)

  def ask(self, n: int = 1) -> list[Trial]:
    """``n`` new trials; a re-queued trial of a dead worker comes first (unless pinned)."""
    validation.check_int("n", n, 1)
    import optuna  # pylint: disable=g-import-not-at-top
    quietly(lambda: optuna.storages.fail_stale_trials(self.study))
    trials = []
    for _ in range(n):
      pinned, self._pinned = self._pinned, None
      optuna_trial = (self._ask_pinned(pinned) if pinned is not None else
                      quietly(self.study.ask))
      params = {}
      for name in self.space.names:
        if self.space.is_active(name, params):
          params[name] = self._suggest(optuna_trial, name)
      trial = Trial(optuna_trial.number, params)
      self._pending[trial.number] = trial
      self._optuna_trials[trial.number] = optuna_trial
      self._start_heartbeat(optuna_trial)
      trials.append(trial)
    return trials

  def report(self, trial: Trial, step: int, value: float) -> bool:
    """Records an intermediate validation metric; True means the pruner says stop (or the
    trial was failed meanwhile: see :meth:`tell`)."""
    import optuna  # pylint: disable=g-import-not-at-top
    self._check_pending(trial)
    validation.check_int("step", step, 0)
    optuna_trial = self._optuna_trials[trial.number]
    try:
      optuna_trial.report(float(value), int(step))
    except optuna.exceptions.UpdateFinishedTrialError:
      return True  # failed as stale by another worker: training it on is wasted
    return bool(optuna_trial.should_prune())

  def tell(self, trial: Trial, value: float | None, state: str = "complete",
           attrs: Mapping[str, float | str] | None = None) -> None:
    """Finishes a trial in the study: ``"complete"`` with its value, or ``"pruned"`` /
    ``"failed"`` with ``None``. ``attrs`` (numbers or strings, e.g. a second metric) are
    stored with it (Optuna user attributes), for every worker to read in :attr:`records`.

    A trial whose heartbeats stopped reaching the storage for ``grace_period`` seconds (an
    overloaded or partitioned worker) may have been failed by another worker, and its
    parameters queued again: its result is then dropped with a warning."""
    import optuna  # pylint: disable=g-import-not-at-top
    self._check_pending(trial)
    state = self._final_state(value, state)
    for key, item in (attrs or {}).items():
      if not isinstance(key, str) or not isinstance(item, (int, float, str)):
        raise ValueError(f"attrs must map names to numbers or strings, got {key!r}: {item!r}")
    stop = self._heartbeats.pop(trial.number, None)
    if stop is not None:
      stop.set()
    optuna_trial = self._optuna_trials.pop(trial.number)
    del self._pending[trial.number]
    optuna_state = {"complete": optuna.trial.TrialState.COMPLETE,
                    "pruned": optuna.trial.TrialState.PRUNED,
                    "failed": optuna.trial.TrialState.FAIL}[state]
    try:
      for key, item in (attrs or {}).items():
        optuna_trial.set_user_attr(key, item)
      self.study.tell(optuna_trial, float(value) if state == "complete" else None,
                      state=optuna_state)
    except optuna.exceptions.UpdateFinishedTrialError:
      warnings.warn(f"trial {trial.number} was failed by another worker (no heartbeat for "
                    "grace_period seconds) and queued again; its result is dropped",
                    stacklevel=2)

  @property
  def results(self) -> list[TrialResult]:
    """Finished (complete and pruned) trials of the whole study, from every worker and
    every earlier run on the same storage, in trial-number order."""
    import optuna  # pylint: disable=g-import-not-at-top
    states = {optuna.trial.TrialState.COMPLETE: "complete",
              optuna.trial.TrialState.PRUNED: "pruned"}
    finished = self.study.get_trials(deepcopy=False, states=tuple(states))
    return [TrialResult(t.number, self._decode(t.params),
                        None if t.value is None or not math.isfinite(t.value) else t.value,
                        states[t.state]) for t in sorted(finished, key=lambda t: t.number)]

  @property
  def records(self) -> list[dict[str, Any]]:
    """The finished trials of :attr:`results`, each one dict: ``number``, its parameters,
    ``value``, ``state`` and the ``attrs`` told with it (from whichever worker ran it)."""
    attrs = {t.number: t.user_attrs for t in self.study.get_trials(deepcopy=False)}
    return [{"number": r.number, **r.params, "value": r.value, "state": r.state,
             **attrs[r.number]} for r in self.results]

  def progress(self) -> dict[str, int]:
    """The study's trials by state (``complete``, ``pruned``, ``failed``, ``running``,
    ``waiting``: re-queued, not yet asked), after failing the running trials whose worker
    stopped beating (their parameters are then waiting)."""
    import optuna  # pylint: disable=g-import-not-at-top
    quietly(lambda: optuna.storages.fail_stale_trials(self.study))
    counts = dict.fromkeys(("complete", "pruned", "failed", "running", "waiting"), 0)
    for t in self.study.get_trials(deepcopy=False):
      counts[{"fail": "failed"}.get(t.state.name.lower(), t.state.name.lower())] += 1
    return counts
