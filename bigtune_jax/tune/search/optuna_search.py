"""Model-based search with Optuna: TPE sampling and pruning of bad trials (seed 003 §3.1;
Bergstra et al., NeurIPS 2011; Akiba et al., KDD 2019), behind the ask/report/tell
protocol of :class:`~bigtune_jax.tune.search.Searcher`.

TPE splits the finished trials at the :math:`\\gamma`-quantile of their values into a
good set and a bad set, fits Parzen densities :math:`l(x)` and :math:`g(x)` to each and
proposes the candidate maximizing :math:`l(x) / g(x)` (the expected improvement). The
median pruner stops a trial whose intermediate value at step :math:`t` is worse than the
median of the other trials at :math:`t`; Hyperband runs successive halving in several
brackets (Li et al., JMLR 2018).

Storage follows Optuna's guidance: in memory by default; a journal file
(``"journal:/path/file.log"``, ``JournalFileBackend``) for several processes on one
machine; an RDB URL (``"sqlite:///study.db"``, ``"postgresql://user@host/db"``) for
workers on several machines. Both persistent kinds keep heartbeats (Optuna has them for
RDBs; the journal gets the same protocol here), so that the trial of a dead worker is marked
failed and re-queued once with its parameters (``RetryHeartbeatStaleTrialCallback``)
instead of staying "running" forever. Optuna records heartbeats only inside ``Study.optimize``;
here ``ask`` starts a daemon thread per trial that records them until ``tell``, and fails
stale trials before asking. A study with the same ``study_name`` and ``storage`` resumes:
its finished trials are kept and count towards :meth:`Searcher.run`'s budget. Optuna is
imported here only, when a search is created.
"""

from collections.abc import Mapping
import math
import os
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

SAMPLERS = ("tpe", "random")
PRUNERS = (None, "none", "median", "hyperband")
_OPTUNA_CATEGORICAL = (type(None), bool, int, float, str)  # what suggest_categorical stores


def _quietly(make):
  """Calls ``make()`` hiding Optuna's ExperimentalWarning (multivariate TPE, heartbeats) and
  its warning that heartbeats need ``Study.optimize`` (this module records them itself)."""
  import optuna  # pylint: disable=g-import-not-at-top
  with warnings.catch_warnings():
    warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
    warnings.filterwarnings("ignore", "Heartbeat of storage is supposed to be used with")
    return make()


MAX_RETRY = 1  # a dead worker's trial runs once more with its parameters, then is left failed
_HEARTBEAT_ATTR = "bigtune:heartbeat"


def _journal_with_heartbeat(backend, heartbeat_interval: int, grace_period: int | None):
  """A ``JournalStorage`` with Optuna's heartbeat protocol, which Optuna gives RDBs only.

  A running trial records ``time.time()`` as a system attribute every ``heartbeat_interval``
  seconds (one journal line each); ``fail_stale_trials`` then fails the running trials whose
  last beat (or start, before the first) is older than ``grace_period`` and re-queues their
  parameters, exactly as ``RDBStorage`` does.
  """
  import optuna  # pylint: disable=g-import-not-at-top
  from optuna.storages._heartbeat import BaseHeartbeat  # pylint: disable=g-import-not-at-top

  class HeartbeatJournalStorage(optuna.storages.JournalStorage, BaseHeartbeat):
    """Journal storage whose dead workers' trials go stale instead of running forever."""

    def record_heartbeat(self, trial_id: int) -> None:
      self.set_trial_system_attr(trial_id, _HEARTBEAT_ATTR, time.time())

    def _get_stale_trial_ids(self, study_id: int) -> list[int]:
      grace = grace_period or 2 * heartbeat_interval
      now = time.time()
      running = self.get_all_trials(study_id, deepcopy=False,
                                    states=(optuna.trial.TrialState.RUNNING,))
      return [t._trial_id for t in running  # pylint: disable=protected-access
              if now - t.system_attrs.get(_HEARTBEAT_ATTR, t.datetime_start.timestamp()) > grace]

    def get_heartbeat_interval(self) -> int:
      return heartbeat_interval

    def get_heartbeat_stale_trial_callback(self):
      return optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRY)

  return _quietly(lambda: HeartbeatJournalStorage(backend))


def open_storage(storage: Any, *, heartbeat_interval: int = 60, grace_period: int | None = None,
                 connect_timeout: int = 10):
  """An Optuna storage for ``None`` (memory), ``"journal:PATH"`` or an RDB URL.

  Raises:
    ValueError: an unknown form, a journal whose folder is missing, or an RDB that cannot
      be reached within ``connect_timeout`` seconds (or whose driver is not installed).
  """
  import optuna  # pylint: disable=g-import-not-at-top
  import sqlalchemy  # pylint: disable=g-import-not-at-top
  if storage is None or isinstance(storage, optuna.storages.BaseStorage):
    return storage
  accepted = ("None, 'journal:/path/file.log', an RDB URL such as 'sqlite:///study.db' or "
              "'postgresql://user@host/db', or an optuna storage")
  if not isinstance(storage, str):
    raise ValueError(f"storage must be {accepted}; got {storage!r}")
  if storage.startswith("journal:"):
    path = os.path.abspath(os.path.expanduser(storage[len("journal:"):]))
    if not storage[len("journal:"):] or not os.path.isdir(os.path.dirname(path)):
      raise ValueError(f"storage {storage!r}: the journal file's folder must exist")
    try:
      return _journal_with_heartbeat(optuna.storages.journal.JournalFileBackend(path),
                                     heartbeat_interval, grace_period)
    except OSError as error:
      raise ValueError(f"storage {storage!r}: cannot open the journal file: {error}") from error
  try:
    url = sqlalchemy.engine.make_url(storage)
  except sqlalchemy.exc.ArgumentError as error:
    raise ValueError(f"storage must be {accepted}; got {storage!r}") from error
  shown = url.render_as_string(hide_password=True)
  connect_args = {} if url.get_backend_name() == "sqlite" else {"connect_timeout": connect_timeout}
  try:
    return _quietly(lambda: optuna.storages.RDBStorage(
        storage, engine_kwargs={"connect_args": connect_args, "pool_pre_ping": True},
        heartbeat_interval=heartbeat_interval, grace_period=grace_period,
        heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(
            max_retry=MAX_RETRY)))
  except (ImportError, sqlalchemy.exc.SQLAlchemyError, OSError) as error:
    raise ValueError(f"storage {shown!r} cannot be opened: the server is unreachable within "
                     f"connect_timeout={connect_timeout} s, or the database driver is not "
                     f"installed ({type(error).__name__}: {error})") from error


def _make_sampler(sampler: Any, seed: int | None):
  import optuna  # pylint: disable=g-import-not-at-top
  if isinstance(sampler, optuna.samplers.BaseSampler):
    return sampler
  if sampler == "random":
    return optuna.samplers.RandomSampler(seed=seed)
  # Multivariate TPE models the axes jointly; group=True fits one model per conditional
  # sub-space (the hyperparameters that appear together).
  return _quietly(lambda: optuna.samplers.TPESampler(seed=seed, multivariate=True, group=True))


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
    # Choices whose values Optuna cannot store (tuples, objects) are stored as indices.
    self._by_index = {name for name in space.names if isinstance(space.base(name), Choice) and
                      not all(type(v) in _OPTUNA_CATEGORICAL for v in space.base(name).values)}
    self._optuna_trials: dict[int, Any] = {}
    self._heartbeats: dict[int, threading.Event] = {}

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
    """Queues ``fixed`` for the next ``ask``: Optuna suggests those values, TPE the rest."""
    self.study.enqueue_trial({name: self.space.base(name).values.index(value)
                              if name in self._by_index else value
                              for name, value in fixed.items()})

  def ask(self, n: int = 1) -> list[Trial]:
    """``n`` new trials; a re-queued trial of a dead worker comes first."""
    validation.check_int("n", n, 1)
    import optuna  # pylint: disable=g-import-not-at-top
    _quietly(lambda: optuna.storages.fail_stale_trials(self.study))
    trials = []
    for _ in range(n):
      optuna_trial = _quietly(self.study.ask)
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
    """Records an intermediate validation metric; True means the pruner says stop."""
    self._check_pending(trial)
    validation.check_int("step", step, 0)
    optuna_trial = self._optuna_trials[trial.number]
    optuna_trial.report(float(value), int(step))
    return bool(optuna_trial.should_prune())

  def tell(self, trial: Trial, value: float | None, state: str = "complete") -> None:
    """Finishes a trial in the study: ``"complete"`` with its value, or ``"pruned"`` /
    ``"failed"`` with ``None``."""
    import optuna  # pylint: disable=g-import-not-at-top
    self._check_pending(trial)
    state = self._final_state(value, state)
    stop = self._heartbeats.pop(trial.number, None)
    if stop is not None:
      stop.set()
    optuna_state = {"complete": optuna.trial.TrialState.COMPLETE,
                    "pruned": optuna.trial.TrialState.PRUNED,
                    "failed": optuna.trial.TrialState.FAIL}[state]
    self.study.tell(self._optuna_trials.pop(trial.number),
                    float(value) if state == "complete" else None, state=optuna_state)
    del self._pending[trial.number]

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
