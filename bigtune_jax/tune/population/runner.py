"""ONE population runner: N members trained in one compiled program, evaluated every
``eval_every`` steps (seed 003 §3.1; Jaderberg et al., 2017, arXiv:1711.09846).

What varies is the members' *kind* (``population.members``): whole models, or LoRA adapters
over one frozen base. Every run is the same loop over intervals: train (``programs.train``:
``jax.vmap`` over the members inside a ``lax.scan`` over the steps), evaluate, then

* **on_eval** (report / prune / stop): ``on_eval(step, metrics)`` receives every member's
  ``val_loss`` (and ``val_accuracy`` for a classifier), NaN for members no longer trained,
  and may return a bool mask (N,) of members to stop;
* **compaction** (``compact=True``): stopped members leave the program, their state kept
  aside, so the next interval runs a smaller program (compiled once per size) and costs
  only the survivors' member-steps; ``compact=False`` keeps them and freezes them by a
  select (the same results, full cost, one program size);
* **exploit / explore** (``explore``; PBT, ``population.exploration``): after each
  evaluation but the last, the program's members are ranked and the bottom ones copy a top
  one's state and perturb its hyperparameters.

Member :math:`i` takes exactly the steps it would take trained alone (``bt.train.fit`` /
a plain loop over ``make_train_step`` with ``FitConfig(seed=seed)``): the same batches, its
own seed, its own hyperparameters. The slots of a program are a plain index array
(``_Population.slots``), so padding to fixed sizes or refilling freed slots is a change to
that bookkeeping, not to the programs.
"""

from collections.abc import Callable, Mapping, Sequence
import dataclasses
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from bigtune_jax import validation
from bigtune_jax.tune.population import members as members_lib
from bigtune_jax.tune.population import programs
from bigtune_jax.tune.population.data import model_input

OnEval = Callable[[int, dict], Any]


@dataclasses.dataclass
class PopulationResult:
  """What every population run returns; arrays have a leading axis N (members)."""
  params: Any  # (N, ...) each leaf: the trained trees (a stopped member's as it stopped)
  hparams: dict[str, np.ndarray]  # (N,) each: the values in effect at the end
  history: list[dict]  # per evaluation: step, train_loss, val_loss (, val_accuracy) (N,)
  #   each, NaN for a member not trained in that interval; PBT adds hparams and source
  final: dict[str, np.ndarray]  # each member's last evaluation: val_loss (, val_accuracy)
  steps: int  # steps of the longest-running member
  wall_s: float
  stopped: np.ndarray  # (N,) bool: stopped by on_eval
  member_steps: int = 0  # member-steps computed (a masked, stopped member still counts)
  program_sizes: list[int] = dataclasses.field(default_factory=list)  # members per interval
  kind: Any = dataclasses.field(default=None, repr=False)  # members.WholeModels | AdapterMembers

  def member(self, i: int):
    """Member ``i``: its parameters (whole models), or its ``finetune.Adapters`` sliced to
    its own rank with its own alpha (adapter populations)."""
    n = len(self.stopped)
    if not isinstance(i, (int, np.integer)) or not 0 <= i < n:
      raise ValueError(f"member index must be an integer in [0, {n}), got {i!r}")
    params = jax.tree.map(lambda x: x[i], self.params)
    return self.kind.member(params, {k: v[i] for k, v in self.hparams.items()})

  @property
  def lora_params(self):
    """The stacked adapters of an adapter population (its ``params``; the older name)."""
    return self.params


AdapterPopulationResult = PopulationResult  # the adapter runs' result before one runner


class _Population:
  """The members in the program (``slots``: the member in each slot) and those that left."""

  def __init__(self, states, values: Mapping[str, np.ndarray]):
    n = len(next(iter(values.values())))
    self.states, self.slots, self.active = states, np.arange(n), np.ones(n, bool)
    self.hp = {name: jnp.asarray(v) for name, v in values.items()}
    self.values = {name: v.copy() for name, v in values.items()}  # all N, on the host
    self.parked: dict[int, Any] = {}  # stopped members' parameters, by member
    self.final: dict[str, np.ndarray] = {}

  def live(self):
    """The program's active mask, None while every slot trains (no per-step select)."""
    return None if self.active[self.slots].all() else jnp.asarray(self.active[self.slots])

  def record(self, step: int, train_loss, sums) -> dict:
    """A history row over all N members (NaN where a member did not train)."""
    n, trained = len(self.active), self.active[self.slots]
    row = {"step": step, "train_loss": np.full(n, np.nan)}
    row["train_loss"][self.slots[trained]] = np.asarray(train_loss)[trained]
    for name, value in programs.mean_metrics(sums).items():
      row[name] = np.full(n, np.nan)
      row[name][self.slots[trained]] = value[trained]
      self.final.setdefault(name, np.full(n, np.nan))[self.slots[trained]] = value[trained]
    return row

  def stop(self, mask) -> None:
    if mask is not None:
      self.active &= ~np.asarray(mask, bool).reshape(len(self.active))

  def compact(self) -> np.ndarray | None:
    """Stopped members leave the program (their parameters kept aside); returns the kept
    slots' positions, or None when nothing changed."""
    keep = self.active[self.slots]
    if keep.all() or not keep.any():
      return None
    for j in np.flatnonzero(~keep):
      self.parked[int(self.slots[j])] = jax.tree.map(lambda x, j=j: x[j], self.states.params)
    take = np.flatnonzero(keep)
    self.states = jax.tree.map(lambda x: x[take], self.states)
    self.hp = {name: h[take] for name, h in self.hp.items()}
    self.slots = self.slots[keep]
    return take

  def explore(self, explore, sums, key) -> np.ndarray:
    """Exploit / explore over the program's members; returns each member's source."""
    self.states, self.hp, source = explore(self.states, self.hp, sums, key)
    for name, h in self.hp.items():
      self.values[name][self.slots] = np.asarray(h)
    members = np.arange(len(self.active))
    members[self.slots] = self.slots[np.asarray(source)]
    return members

  def params(self):
    """All N members' parameters, stacked."""
    if not self.parked:
      return self.states.params
    members = dict(self.parked)
    for j, i in enumerate(self.slots):
      members[int(i)] = jax.tree.map(lambda x, j=j: x[j], self.states.params)
    return jax.tree.map(lambda *xs: jnp.stack(xs), *[members[i] for i in range(len(members))])


@dataclasses.dataclass(frozen=True)
class _Settings:
  """A run's fixed settings (checked), shared by its intervals."""
  kind: Any
  make_optimizer: Callable
  shared: Any
  member_chunk: int | None
  on_eval: OnEval | None
  compact: bool
  explore: Any


def _interval(run: _Settings, pop: _Population, data, step: int, count: int,
              key, last: bool) -> dict:
  """Trains ``count`` steps from ``step``, evaluates, then on_eval, compaction and
  exploit / explore; returns the history row."""
  prog = programs.jitted()
  chunk = programs.choose_chunk(pop.states.params, run.member_chunk)
  pop.states, train_loss = prog.train(run.kind, run.make_optimizer, pop.states, pop.hp,
                                      pop.live(), data.train,
                                      jnp.asarray(data.rows(step, count)), chunk=chunk,
                                      shared=run.shared)
  sums = prog.evaluate(run.kind, pop.states.params, pop.hp, data.val, shared=run.shared)
  row = pop.record(step + count, train_loss, sums)
  if run.on_eval is not None:
    metrics = {k: v.copy() for k, v in row.items() if k.startswith("val_")}
    pop.stop(run.on_eval(step + count, metrics))
  kept = pop.compact() if run.compact else None
  if run.explore is not None:
    if kept is not None:
      sums = jax.tree.map(lambda x: x[kept], sums)
    source = (pop.explore(run.explore, sums, key) if not last and pop.active.any()
              else np.arange(len(pop.active)))
    row.update(hparams={k: v.copy() for k, v in pop.values.items()}, source=source)
  return row


def run_population(kind, make_optimizer: members_lib.MakeOptimizer,
                   hparams: Mapping[str, Sequence[float] | np.ndarray], train_data, val_data,
                   *, steps: int, batch_size: int, eval_every: int | None = None,
                   seed: int = 0, member_seeds: Sequence[int] | None = None,
                   on_eval: OnEval | None = None, compact: bool = True, explore=None,
                   shared=None, eval_batch_size: int = 512, input_key: str | None = None,
                   member_chunk: int | None = None) -> PopulationResult:
  """The one runner (module docstring); ``kind``: ``members.WholeModels`` or
  ``members.AdapterMembers``, ``shared`` the latter's frozen base; ``explore``: PBT's
  exploit / explore (``exploration.Exploration``). Other arguments as :func:`train_population`.
  Every argument is checked, naming it, before any work."""
  start_time = time.time()
  values, n = members_lib.check_hparams(hparams)
  kind.check(values, shared)
  members_lib.check_member_optimizers(make_optimizer, values, n)
  seeds = members_lib.check_seeds(member_seeds, seed, n)
  programs.check_member_chunk(member_chunk, n)
  validation.check_int("steps", steps, 1)
  validation.check_eval_every(eval_every)
  if not isinstance(compact, bool) or (explore is not None and not compact):
    raise ValueError(f"compact must be True or False (True with exploit / explore), got "
                     f"{compact!r}")
  data = members_lib.load_data(kind, train_data, val_data, batch_size, seed, eval_batch_size)
  eval_every = eval_every or data.steps_per_epoch
  pop = _Population(members_lib.init_states(kind, make_optimizer, values, seeds,
                                            model_input(data.sample, input_key), shared),
                    values)
  run = _Settings(kind, make_optimizer, shared, member_chunk, on_eval, compact, explore)
  rng, history, sizes, step, member_steps = jax.random.key(seed), [], [], 0, 0
  while step < steps and pop.active.any():
    count = min(eval_every, steps - step)
    rng, key = jax.random.split(rng)
    sizes.append(len(pop.slots))
    member_steps += count * len(pop.slots)
    history.append(_interval(run, pop, data, step, count, key, step + count >= steps))
    step += count
  return PopulationResult(
      params=pop.params(), hparams=pop.values, history=history, final=pop.final, steps=step,
      wall_s=time.time() - start_time, stopped=~pop.active, member_steps=member_steps,
      program_sizes=sizes, kind=kind)
