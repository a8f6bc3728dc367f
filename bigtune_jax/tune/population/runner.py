"""ONE population runner: N members trained in one compiled program, evaluated every
``eval_every`` steps (seed 003 §3.1; Jaderberg et al., 2017, arXiv:1711.09846).

What varies is the members' *kind* (``population.members``): whole models, or LoRA adapters
over one frozen base. Every run is the same loop over intervals: train (``programs.train``:
``jax.vmap`` over the members inside a ``lax.scan`` over the steps), evaluate, then

* **on_eval** (report / prune / stop): ``on_eval(step, metrics)`` receives every member's
  ``val_loss`` (and ``val_accuracy`` for a classifier) and own ``member_step``, (M,) each
  over the members started so far, NaN for members not trained in the interval, and may
  return a bool mask (M,) of members to stop;
* **compaction** (``compact=True``): stopped members leave the program, their state kept
  aside, so the next interval runs a smaller program (compiled once per size) and costs
  only the survivors' member-steps; ``compact=False`` keeps them and freezes them by a
  select (the same results, full cost, one program size);
* **exploit / explore** (``explore``; PBT, ``population.exploration``): after each
  evaluation but the last, the program's members are ranked and the bottom ones copy a top
  one's state and perturb its hyperparameters;
* **refill** (``refill``; successive halving / ASHA inside one program,
  ``population.refill``): members stopped or done with their ``steps`` leave their slots,
  and ``refill(step, free)``'s new members take them at their own step 0. The program keeps
  its N slots and one interval length for the whole run (an empty slot, or one whose member
  ends inside an interval, is masked): its train, eval and init programs compile once,
  whatever the number of members that pass through. The run ends when no slot trains and
  refill gives nothing.

Member :math:`i` takes exactly the steps it would take trained alone (``bt.train.fit`` /
a plain loop over ``make_train_step`` with ``FitConfig(seed=seed)``): the same batches, its
own seed, its own hyperparameters; a refilled member the batches of its own steps. The
slots of a program are a plain index array (``slots.Population``).
"""

from collections.abc import Callable, Mapping, Sequence
import dataclasses
import time
from typing import Any

import jax
import numpy as np

from bigtune_jax import validation
from bigtune_jax.tune.population import members as members_lib
from bigtune_jax.tune.population import programs
from bigtune_jax.tune.population import refill as refill_lib
from bigtune_jax.tune.population import slots
from bigtune_jax.tune.population.data import model_input

OnEval = Callable[[int, dict], Any]


@dataclasses.dataclass
class PopulationResult:
  """What every population run returns; arrays have a leading axis M: every member the run
  started, in the order they started (M = N without refill)."""
  params: Any  # (M, ...) each leaf: the trained trees (a stopped member's as it stopped)
  hparams: dict[str, np.ndarray]  # (M,) each: the values in effect at the end
  history: list[dict]  # per evaluation: step (the program's), member_step (each member's
  #   own), train_loss, val_loss (, val_accuracy): (M,) each, NaN for a member not trained
  #   in that interval (not started yet, or gone); PBT adds hparams and source
  final: dict[str, np.ndarray]  # each member's last evaluation: val_loss (, val_accuracy)
  steps: int  # steps of the longest-running member
  wall_s: float
  stopped: np.ndarray  # (M,) bool: stopped by on_eval
  member_steps: int = 0  # member-steps computed (a masked slot still counts)
  program_sizes: list[int] = dataclasses.field(default_factory=list)  # slots per interval
  kind: Any = dataclasses.field(default=None, repr=False)  # members.WholeModels | AdapterMembers
  started: np.ndarray | None = None  # (M,) the program's step each member started at
  trained: np.ndarray | None = None  # (M,) the steps each member trained

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
  refill: Any
  steps: int
  seed: int
  sample: Any  # the model input of one example (to initialize a member)


def _interval(run: _Settings, pop: slots.Population, data, step: int, count: int,
              key, last: bool) -> dict:
  """Trains ``count`` steps from the program's ``step``, evaluates, then on_eval, and
  compaction and exploit / explore, or refill; returns the history row."""
  prog = programs.jitted()
  chunk = programs.choose_chunk(pop.states.params, run.member_chunk)
  rows, live = pop.interval(data, step, count, run.steps)
  pop.states, train_loss = prog.train(run.kind, run.make_optimizer, pop.states, pop.hp, live,
                                      data.train, rows, chunk=chunk, shared=run.shared)
  sums = prog.evaluate(run.kind, pop.states.params, pop.hp, data.val, shared=run.shared)
  row = pop.record(step + count, train_loss, sums)
  if run.on_eval is not None:
    metrics = {k: v.copy() for k, v in row.items() if k.startswith("val_")}
    pop.stop(run.on_eval(step + count, metrics | {"member_step": row["member_step"].copy()}))
  if run.refill is not None:
    _refill(run, pop, step + count)
    return row
  kept = pop.compact() if run.compact else None
  if run.explore is not None:
    if kept is not None:
      sums = jax.tree.map(lambda x: x[kept], sums)
    source = (pop.explore(run.explore, sums, key) if not last and pop.active.any()
              else np.arange(pop.size))
    row.update(hparams={k: v.copy() for k, v in pop.values.items()}, source=source)
  return row


def _refill(run: _Settings, pop: slots.Population, step: int) -> None:
  """Members stopped or done leave their slots; ``refill``'s new members take them."""
  free = pop.free(run.steps)
  if not free:
    return
  new = refill_lib.new_members(run.refill(step, free), step, free, list(pop.values),
                               run.seed, run.kind, run.shared, run.make_optimizer)
  if new is not None:
    values, seeds = new
    states = members_lib.member_states(run.kind, run.make_optimizer, values, seeds,
                                       run.sample, run.shared)
    pop.fill(states, values, seeds, step)


def run_population(kind, make_optimizer: members_lib.MakeOptimizer,
                   hparams: Mapping[str, Sequence[float] | np.ndarray], train_data, val_data,
                   *, steps: int, batch_size: int, eval_every: int | None = None,
                   seed: int = 0, member_seeds: Sequence[int] | None = None,
                   on_eval: OnEval | None = None, compact: bool = True, explore=None,
                   shared=None, eval_batch_size: int = 512, input_key: str | None = None,
                   member_chunk: int | None = None,
                   refill: refill_lib.RefillFn | None = None) -> PopulationResult:
  """The one runner (module docstring); ``kind``: ``members.WholeModels`` or
  ``members.AdapterMembers``, ``shared`` the latter's frozen base; ``explore``: PBT's
  exploit / explore (``exploration.Exploration``); ``refill``: new members for freed slots
  (``population.refill``; the program keeps its N slots, ``compact`` has no effect). Other
  arguments as :func:`train_population`. Every argument is checked, naming it, before any
  work."""
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
  refill_lib.check_callable(refill, explore)
  data = members_lib.load_data(kind, train_data, val_data, batch_size, seed, eval_batch_size)
  eval_every = eval_every or data.steps_per_epoch
  run = _Settings(kind, make_optimizer, shared, member_chunk, on_eval, compact, explore,
                  refill, steps, seed, model_input(data.sample, input_key))
  pop = slots.Population(members_lib.init_states(kind, make_optimizer, values, seeds,
                                                 run.sample, shared),
                         values, seeds, own_rows=refill is not None)
  rng, history, sizes, step, member_steps = jax.random.key(seed), [], [], 0, 0
  while pop.training(steps):
    # with refill, every interval has one length: one program for the whole run
    count = eval_every if refill is not None else min(eval_every, steps - step)
    key = None
    if explore is not None:  # PBT's draws (a compiled split: only where they are used)
      rng, key = jax.random.split(rng)
    sizes.append(len(pop.slots))
    member_steps += count * len(pop.slots)
    history.append(_interval(run, pop, data, step, count, key, step + count >= steps))
    step += count
  return PopulationResult(
      params=pop.params(), hparams=pop.values, history=pop.pad(history), final=pop.final,
      steps=int(pop.done.max()), wall_s=time.time() - start_time, stopped=pop.stopped,
      member_steps=member_steps, program_sizes=sizes, kind=kind, started=pop.started,
      trained=pop.done)
