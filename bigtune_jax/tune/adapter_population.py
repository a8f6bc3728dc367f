"""Adapter populations: N LoRA adapters, each with its own hyperparameters, trained in one
compiled program over one shared copy of a frozen pretrained model (seed 001 §6.4, the
fine-tuning hyperparameters; seed 003 §3.1, many trials at once).

Member :math:`i` has adapters :math:`\\theta^i` (``finetune.LoRA``), an optimizer state
:math:`s^i` and hyperparameters :math:`h^i`; the base :math:`W` is one array per weight,
broadcast to every member (``jax.vmap`` over :math:`(\\theta, s, h)` only):

.. math::
  (u^i, s^i_{t+1}) = tx(h^i)\\big(\\nabla_\\theta \\ell(W, \\theta^i_t; \\alpha^i, r^i;
  B_t), s^i_t, \\theta^i_t\\big), \\qquad \\theta^i_{t+1} = \\theta^i_t + u^i

``hparams`` may hold ``alpha`` (the LoRA scale's numerator) and ``rank`` (an integer at most
the ``LoRA``'s stored rank: the adapters keep ``r_max`` columns and member :math:`i` masks
all but its first :math:`r^i`, so different ranks share one program); every entry reaches
``make_optimizer(h)`` (learning rate, weight decay, warmup, ...). Member :math:`i` takes
exactly the steps its adapter would take trained alone (``LoRA.loss`` with its alpha and
rank, the same batches, ``train.make_train_step``).

**Pruning frees compute.** ``on_eval(step, {"val_loss": (N,)})`` may return members to stop
(Optuna's median or Hyperband pruner through ``OptunaSearch.report``). With
``compact=True`` the population is then gathered down to its survivors: the next interval
runs a smaller program (compiled once per size) and costs only the survivors'
member-steps. ``compact=False`` keeps every member in the program and freezes the
stopped ones by a select (what ``tune.train_population`` does): the same results, full cost.
"""

from collections.abc import Callable, Mapping, Sequence
import dataclasses
import functools
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from bigtune_jax.data.pipeline import ArrayDataset
from bigtune_jax.finetune.adapters import LoRA
from bigtune_jax.train.state import create_train_state
from bigtune_jax.train.step import LossFn
from bigtune_jax import validation
from bigtune_jax.tune import population


@dataclasses.dataclass
class AdapterPopulationResult:
  """What :func:`train_adapter_population` returns; arrays have a leading axis N."""
  lora_params: Any  # (N, ...) each leaf: the adapters, a stopped member's as it stopped
  hparams: dict[str, np.ndarray]  # (N,) each
  history: list[dict]  # per evaluation: step, train_loss, val_loss (N,); NaN: not trained
  final: dict[str, np.ndarray]  # val_loss (N,): each member's last evaluation
  steps: int  # steps of the longest-running member
  member_steps: int  # member-steps computed (a masked, stopped member still counts)
  program_sizes: list[int]  # the members in the program of each interval
  stopped: np.ndarray  # (N,) bool: stopped by on_eval
  wall_s: float

  def member(self, i: int):
    """Member ``i``'s adapters (one tree without the member axis)."""
    return jax.tree.map(lambda x: x[i], self.lora_params)


@functools.cache
def member_loss(lora: LoRA, loss_fn: LossFn) -> Callable:
  """``(base, h) -> LoRA.loss(loss_fn, base, alpha=h["alpha"], rank=h["rank"])``, one object
  per ``(lora, loss_fn)`` so the jitted population programs are reused across calls."""

  def make(base, hp):
    return lora.loss(loss_fn, base, alpha=hp.get("alpha"), rank=hp.get("rank"))

  return make


def check_adapter_hparams(lora: LoRA, values: Mapping[str, np.ndarray]) -> None:
  """``alpha`` > 0 and integral ``rank`` in ``[1, lora.rank]``, named, on the host."""
  if "alpha" in values and not (values["alpha"] > 0).all():
    raise ValueError(f"hparams['alpha'] must be > 0 for every member, got {values['alpha']}")
  if "rank" in values:
    rank = values["rank"]
    if not (np.all(rank == np.round(rank)) and rank.min() >= 1 and rank.max() <= lora.rank):
      raise ValueError(f"hparams['rank'] must be integers in [1, {lora.rank}] (the LoRA's "
                       f"stored rank), got {rank}")


def init_states(lora: LoRA, make_optimizer, base, hparams, seeds: np.ndarray):
  """Stacked train states of the members' adapters (``tx=None``, rebuilt each step)."""
  keys = [int(s) for s in np.atleast_1d(seeds)]
  adapters = [lora.init(jax.random.key(s), base) for s in keys]

  def state(hp, lora_params, seed):
    return create_train_state(lora.model, lora_params, make_optimizer(hp),
                              seed=seed).replace(tx=None)

  if seeds.ndim == 0:
    return jax.jit(jax.vmap(state, in_axes=(0, None, None)))(hparams, adapters[0],
                                                              jnp.asarray(seeds))
  stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *adapters)
  return jax.jit(jax.vmap(state))(hparams, stacked, jnp.asarray(seeds))


def as_arrays(dataset, name: str) -> ArrayDataset:
  """``dataset`` as arrays the device holds: token blocks become inputs/targets."""
  if hasattr(dataset, "materialize"):
    return dataset.materialize()
  if not isinstance(dataset, ArrayDataset):
    raise ValueError(f"{name} must be a bigtune_jax.data.ArrayDataset or TokenBlocks, got "
                     f"{dataset!r}")
  return dataset


def train_adapter_population(lora: LoRA, loss_fn: LossFn, params,
                             make_optimizer: population.MakeOptimizer,
                             hparams: Mapping[str, Sequence[float] | np.ndarray],
                             train_data, val_data, *, steps: int, batch_size: int,
                             eval_every: int | None = None, seed: int = 0,
                             member_seeds: Sequence[int] | None = None,
                             on_eval: Callable[[int, dict], Any] | None = None,
                             compact: bool = True,
                             eval_batch_size: int = 64) -> AdapterPopulationResult:
  """Trains N adapters of ``lora`` on the frozen ``params`` at once (module docstring).

  Args:
    lora: the ``finetune.LoRA`` (model, targets, stored rank, default alpha, dropout).
    loss_fn: a ``bt.train`` loss of ``lora.model`` (``language_model_loss(model)``).
    params: the pretrained parameters, frozen and shared by all members.
    make_optimizer: ``hparams_i -> optax transform``, called with traced scalars.
    hparams: ``{name: N values}``; ``alpha`` and ``rank`` set each member's adapter.
    train_data, val_data: ``ArrayDataset`` s or ``TokenBlocks`` (held on the device).
    steps, batch_size, eval_every, seed, member_seeds, eval_batch_size: as
      ``tune.train_population`` (every member sees the same batches).
    on_eval: ``on_eval(step, {"val_loss": (N,)})`` after each evaluation (NaN for stopped
      members); may return a bool mask (N,) of members to stop.
    compact: after a stop, run the survivors in a smaller program (True) or keep them all
      and mask the stopped ones (False).

  Raises:
    ValueError: naming the argument, before any work.
  """
  start_time = time.time()
  if not isinstance(lora, LoRA):
    raise ValueError(f"lora must be a bigtune_jax.finetune.LoRA, got {lora!r}")
  values, n = population.check_hparams(hparams)
  check_adapter_hparams(lora, values)
  population.check_member_optimizers(make_optimizer, values, n)
  seeds = population.check_seeds(member_seeds, seed, n)
  validation.check_int("steps", steps, 1)
  validation.check_eval_every(eval_every)
  if not isinstance(compact, bool):
    raise ValueError(f"compact must be True or False, got {compact!r}")
  lora.layers(params)  # targets and rank against the model, before any work
  data = population.PopulationData(as_arrays(train_data, "train_data"),
                                   as_arrays(val_data, "val_data"), batch_size, seed,
                                   eval_batch_size)
  eval_every = eval_every or data.steps_per_epoch
  make_loss = member_loss(lora, loss_fn)
  programs = population.jitted()
  hp = {name: jnp.asarray(v) for name, v in values.items()}
  states = init_states(lora, make_optimizer, params, hp, seeds)
  slots = np.arange(n)  # the member in each slot of the program
  active = np.ones(n, bool)
  stopped_params: dict[int, Any] = {}
  last_val = np.full(n, np.nan)
  history, sizes, step, member_steps = [], [], 0, 0
  while step < steps and active.any():
    count = min(eval_every, steps - step)
    live = None if active[slots].all() else jnp.asarray(active[slots])
    states, train_loss = programs.train(make_loss, make_optimizer, states, hp, live,
                                        data.train, jnp.asarray(data.rows(step, count)),
                                        chunk=None, frozen=params)
    step += count
    member_steps += count * len(slots)
    sizes.append(len(slots))
    sums = programs.evaluate(make_loss, states.params, data.val, frozen=params, hparams=hp)
    row = {"step": step, "train_loss": np.full(n, np.nan), "val_loss": np.full(n, np.nan)}
    trained = active[slots]
    row["train_loss"][slots[trained]] = np.asarray(train_loss)[trained]
    row["val_loss"][slots[trained]] = population.mean_metrics(sums)["val_loss"][trained]
    last_val[slots[trained]] = row["val_loss"][slots[trained]]
    history.append(row)
    if on_eval is not None:
      stop = on_eval(step, {"val_loss": row["val_loss"].copy()})
      if stop is not None:
        active &= ~np.asarray(stop, bool).reshape(n)
    if compact and active.any() and not active[slots].all():
      states, hp, slots = _compact(states, hp, slots, active[slots], stopped_params)
  lora_params = _gather(jax.device_get(states.params), slots, stopped_params, n)
  return AdapterPopulationResult(
      lora_params=lora_params, hparams=values, history=history, final={"val_loss": last_val},
      steps=step, member_steps=member_steps, program_sizes=sizes, stopped=~active,
      wall_s=time.time() - start_time)


def _compact(states, hp, slots: np.ndarray, keep: np.ndarray, stopped_params: dict):
  """The program's members where ``keep``: the others' adapters go to ``stopped_params``
  (on the host, by member index) and their slots leave the states, ``hp`` and ``slots``."""
  for j in np.flatnonzero(~keep):
    stopped_params[int(slots[j])] = jax.device_get(
        jax.tree.map(lambda x, j=j: x[j], states.params))
  take = jnp.asarray(np.flatnonzero(keep))
  states = jax.tree.map(lambda x: x[take], states)
  return states, {name: h[take] for name, h in hp.items()}, slots[keep]


def _gather(params, slots: np.ndarray, stopped: Mapping[int, Any], n: int):
  """All N members' adapters ``(N, ...)`` from the program's slots and the stopped ones."""
  members = dict(stopped)
  for j, i in enumerate(slots):
    members[int(i)] = jax.tree.map(lambda x, j=j: x[j], params)
  return jax.tree.map(lambda *xs: np.stack(xs), *[members[i] for i in range(n)])
