"""Exhaustive (grid) and random search over a :class:`~bigtune_jax.tune.Space`
(seed 003 §3.1-3.3: "穷举法" and "随机搜索" for parameters, structure and training strategy).

Every searcher speaks the ask/tell protocol of Optuna's ``Study.ask`` / ``Study.tell``:

.. code-block:: python

  for trial in searcher.ask(8):                 # a batch, e.g. one vmapped population
    for step, metric in train(trial.params):
      if searcher.report(trial, step, metric):  # intermediate validation metric
        searcher.tell(trial, None, state="pruned"); break
    else:
      searcher.tell(trial, final_metric)

Grid search tries the product of the axes (continuous axes discretized); random search
draws every axis independently from a seeded generator, which beats a grid at equal
budget when few hyperparameters matter (Bergstra & Bengio, JMLR 2012). Both ignore
``report`` (they never prune); :class:`~bigtune_jax.tune.OptunaSearch` adds model-based
sampling and pruning behind the same methods. A pruned trial's value is its last reported
one, as in Optuna; a non-finite value (a diverged run) makes the trial ``"failed"``.
"""

from collections.abc import Callable, Sequence
import dataclasses
import math
from typing import Any, NamedTuple
import warnings

import numpy as np

from bigtune_jax import validation
from bigtune_jax.tune.search.space import Space

STATES = ("complete", "pruned", "failed")


@dataclasses.dataclass(frozen=True)
class Trial:
  """One configuration handed out by ``ask``: ``params`` holds the active hyperparameters."""
  number: int
  params: dict[str, Any]


class TrialResult(NamedTuple):
  """A finished trial. ``value`` is the final metric (the last reported one if pruned)."""
  number: int
  params: dict[str, Any]
  value: float | None
  state: str = "complete"


class TrialPruned(Exception):  # noqa: N818  (named as optuna.TrialPruned)
  """Raised by an objective given to :meth:`Searcher.run` to stop a trial as pruned."""


def check_axes(space: Space, by: Sequence[str] | None) -> None:
  """``by``: None, or names of ``space``'s axes (a ValueError naming it otherwise)."""
  if by is not None and (isinstance(by, str) or not set(by) <= set(space.names)):
    raise ValueError(f"by must be None or names of the search space's axes "
                     f"{list(space.names)}, got {by!r}")


class Searcher:
  """The ask/report/tell protocol and the bookkeeping shared by all searchers.

  Args:
    space: the search space.
    mode: ``"max"`` (accuracy) or ``"min"`` (loss): which value is best (the library's
      one word for it, as ``FitConfig``, ``EarlyStopping`` and ``Checkpointer`` use).
  """

  def __init__(self, space: Space, mode: str = "max"):
    if not isinstance(space, Space):
      raise ValueError(f"space must be a bigtune_jax.tune.Space, got {space!r}")
    validation.check_choice("mode", mode, ("max", "min"))
    self.space = space
    self.mode = mode
    self._pending: dict[int, Trial] = {}
    self._intermediate: dict[int, dict[int, float]] = {}
    self._finished: list[TrialResult] = []
    self._next_number = 0

  def _propose(self) -> dict[str, Any] | None:
    """The next configuration, or None when there is none left."""
    raise NotImplementedError

  def ask(self, n: int = 1) -> list[Trial]:
    """Up to ``n`` new trials (fewer when a grid runs out)."""
    validation.check_int("n", n, 1)
    trials = []
    for _ in range(n):
      params = self._propose()
      if params is None:
        break
      trial = Trial(self._next_number, params)
      self._next_number += 1
      self._pending[trial.number] = trial
      trials.append(trial)
    return trials

  def _pin(self, fixed: dict[str, Any]) -> None:
    """Asks the next proposal to keep these discrete values (a no-op where the searcher
    cannot: a grid's points are fixed)."""
    del fixed

  def structure_of(self, params: dict[str, Any],
                   by: Sequence[str] | None = None) -> dict[str, Any]:
    """The values of ``params`` on the axes ``by`` (None: every discrete axis): what
    selects a program, shared by the members of one population."""
    if by is None:
      return self.space.partition(params)[1]
    return {k: params[k] for k in by if k in params}

  def ask_like(self, structure: dict[str, Any], n: int = 1) -> list[Trial]:
    """Up to ``n`` new trials that keep ``structure``'s values (``structure_of`` a trial:
    the axes that select a program), the others proposed as usual (TPE: given every trial
    told so far); [] where the searcher cannot pin them (a grid's points are fixed) or
    has nothing left."""
    validation.check_int("n", n, 1)
    if not self.pins:
      return []
    trials = []
    for _ in range(n):
      self._pin(dict(structure))
      new = self.ask(1)
      if not new:
        break
      trials += new
    return trials

  @property
  def running(self) -> int:
    """Trials asked and not yet told."""
    return len(self._pending)

  @property
  def pins(self) -> bool:
    """Whether ``ask`` can keep pinned values (``_pin`` does something)."""
    return type(self)._pin is not Searcher._pin

  def ask_populations(self, leaders: int, size: int,
                      by: Sequence[str] | None = None) -> list[list[Trial]]:
    """``leaders`` proposals, each followed by ``size - 1`` more that keep its values of the
    axes ``by`` (None: every discrete axis) where the searcher can pin them (random search
    and Optuna), grouped by those values.

    The members of a group share what selects a program (the structure), so each group
    trains as one vmapped program (``train_population``, in chunks of ``size``); the
    other axes (continuous ones, or e.g. a LoRA rank masked inside one program) vary. A
    grid cannot pin: its points are grouped as they come.
    """
    validation.check_int("leaders", leaders, 1)
    validation.check_int("size", size, 1)
    check_axes(self.space, by)
    first = self.ask(leaders)
    trials = list(first)
    for leader in first:
      for _ in range(size - 1):
        self._pin(self.structure_of(leader.params, by))
        trials += self.ask(1)
    groups: list[tuple[dict[str, Any], list[Trial]]] = []  # values may be unhashable lists
    for trial in trials:
      fixed = self.structure_of(trial.params, by)
      group = next((members for values, members in groups if values == fixed), None)
      if group is None:
        groups.append((fixed, group := []))
      group.append(trial)
    return [members for _, members in groups]

  def _check_pending(self, trial: Trial) -> None:
    if not isinstance(trial, Trial) or self._pending.get(trial.number) is not trial:
      raise ValueError(f"trial must be a running Trial from this searcher's ask(), got "
                       f"{trial!r} (finished or unknown)")

  def report(self, trial: Trial, step: int, value: float) -> bool:
    """Records an intermediate validation metric; returns True when the trial should be
    pruned (never, for grid and random search)."""
    self._check_pending(trial)
    validation.check_int("step", step, 0)
    self._intermediate.setdefault(trial.number, {})[int(step)] = float(value)
    return False

  @staticmethod
  def _final_state(value: float | None, state: str) -> str:
    validation.check_choice("state", state, STATES)
    if state == "complete":
      if value is None:
        raise ValueError("value must be a number for state='complete', got None")
      if not math.isfinite(float(value)):
        warnings.warn(f"trial value {value!r} is not finite: the trial is marked 'failed'",
                      stacklevel=3)
        return "failed"
    elif value is not None:
      raise ValueError(f"value must be None for state={state!r}, got {value!r}")
    return state

  def tell(self, trial: Trial, value: float | None, state: str = "complete") -> None:
    """Finishes a trial: ``value`` for ``"complete"``, ``None`` for ``"pruned"``/``"failed"``."""
    self._check_pending(trial)
    state = self._final_state(value, state)
    del self._pending[trial.number]
    steps = self._intermediate.pop(trial.number, {})
    if state == "pruned":
      value = steps[max(steps)] if steps else None
    if state != "failed":
      self._finished.append(TrialResult(trial.number, trial.params,
                                        None if value is None else float(value), state))

  @property
  def results(self) -> list[TrialResult]:
    """Finished (complete and pruned) trials, in trial-number order."""
    return sorted(self._finished, key=lambda r: r.number)

  @property
  def best(self) -> TrialResult | None:
    """The best complete trial by ``mode`` (None before the first one)."""
    complete = [r for r in self.results if r.state == "complete"]
    if not complete:
      return None
    pick = max if self.mode == "max" else min
    return pick(complete, key=lambda r: r.value)

  @property
  def exhausted(self) -> bool:
    """True when ``ask`` has nothing more to give."""
    return False

  def run(self, objective: Callable[[Trial], float], n_trials: int) -> TrialResult | None:
    """Runs trials one at a time until ``n_trials`` have finished (complete or pruned,
    counting those already in the study) or the searcher is exhausted.

    ``objective(trial)`` returns the final metric; it may call ``report`` and raise
    :class:`TrialPruned`. Any other exception marks the trial failed and propagates.

    Returns:
      ``self.best``.
    """
    validation.check_int("n_trials", n_trials, 1)
    while len(self.results) < n_trials and not self.exhausted:
      trials = self.ask(1)
      if not trials:
        break
      trial = trials[0]
      try:
        value = objective(trial)
      except TrialPruned:
        self.tell(trial, None, state="pruned")
      except BaseException:
        self.tell(trial, None, state="failed")
        raise
      else:
        self.tell(trial, value)
    return self.best


class GridSearch(Searcher):
  """Every point of ``space.grid(points_per_axis)``, in order (seed 003 §3.2 "穷举法").

  Args:
    space: the search space.
    points_per_axis: points per continuous axis (and per log-scale ``Int``).
    mode: ``"max"`` or ``"min"``.
  """

  def __init__(self, space: Space, points_per_axis: int = 3, mode: str = "max"):
    super().__init__(space, mode)
    self.points = space.grid(points_per_axis)

  def _propose(self):
    if self._next_number >= len(self.points):
      return None
    return dict(self.points[self._next_number])

  @property
  def exhausted(self) -> bool:
    return self._next_number >= len(self.points)


class RandomSearch(Searcher):
  """Independent draws from the space with ``numpy.random.default_rng(seed)``: the same
  seed gives the same sequence of configurations (seed 003 §3.2 "随机搜索").

  Args:
    space: the search space.
    seed: integer seed >= 0.
    mode: ``"max"`` or ``"min"``.
  """

  def __init__(self, space: Space, seed: int = 0, mode: str = "max"):
    super().__init__(space, mode)
    validation.check_int("seed", seed, 0)
    self._rng = np.random.default_rng(seed)
    self._pinned: dict[str, Any] | None = None

  def _pin(self, fixed):
    self._pinned = dict(fixed)

  def _propose(self):
    config = self.space.sample(self._rng, fixed=self._pinned)
    self._pinned = None
    return config
