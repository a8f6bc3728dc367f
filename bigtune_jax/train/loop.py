"""The fit loop: steps, periodic evaluation, plateau and early stopping, checkpoints and
automatic resume, metrics and plots (seed 000 §3.4, seed 004 §4.2-4.3).

``fit`` trains ``config.steps`` steps (micro-batches) of ``config.batch_size`` examples in
the deterministic order of ``ArrayDataset.batches`` (epoch ``e`` shuffled by
``(seed, e)``). Every ``eval_every`` steps and at the last step it evaluates on the
validation set and then, in this order:

1. appends a row to ``workdir/metrics.jsonl``: ``step``, ``epoch``, ``train_loss`` (mean
   over the steps since the last row), ``val_loss`` / ``val_accuracy``, ``lr`` (the rate
   in effect from this row on: ``FitConfig.learning_rate`` at this step, times the plateau
   scale before this row's metric is fed to it), ``grad_norm`` (mean global gradient norm
   of the applied steps since the last row), ``skipped_steps``;
2. feeds the monitored metric to ``reduce_on_plateau`` (its scale multiplies the updates
   from the next step on) and to ``EarlyStopping`` (keeping a copy of the best parameters);
3. saves a checkpoint of the whole ``TrainState`` (every ``checkpoint_every_evals`` rows).

A checkpoint is only ever taken at an evaluation, so everything between two of them is a
pure function of the checkpoint: a run that is killed and started again on the same
workdir restores the latest checkpoint, drops the metrics rows written after it (all rows
when it died before its first checkpoint committed), and continues to exactly the same
result as an uninterrupted run (bit for bit on CPU). One run writes to a workdir at a
time: ``fit`` holds ``workdir/.lock`` (``workdir.py``) and refuses a second live run.
When early stopping fires, training ends and, if best parameters were kept, they are put
back into the returned state.

**Devices** (``sharding.py``): ``FitConfig.mesh`` shapes the device mesh (``None``: every
device, data-parallel); the state is placed by ``state_sharding`` (or restored straight
onto the mesh, whatever mesh the checkpoint came from), each batch is split by rows over
the ``data`` and ``fsdp`` axes, and the one train step is jitted with those shardings. On
many hosts (``distributed.py``) each host loads its rows of every batch, and only process 0
writes the metrics log, the plots and the progress bar; all of them write checkpoints.
"""

import dataclasses
import math
import os
import time
import weakref
from collections.abc import Callable

import jax
import numpy as np

from bigtune_jax import control
from bigtune_jax import validation
from bigtune_jax.data.pipeline import ArrayDataset
from bigtune_jax.train import checkpoint as checkpoint_lib
from bigtune_jax.train import distributed
from bigtune_jax.train import metrics as metrics_lib
from bigtune_jax.train import sharding as sharding_lib
from bigtune_jax.train import step as step_lib
from bigtune_jax.train import workdir as workdir_lib
from bigtune_jax.train.state import TrainState
from bigtune_jax.train.step import LossFn


@dataclasses.dataclass(frozen=True)
class FitConfig:
  """How ``fit`` trains; checked at construction."""
  steps: int  # training steps (micro-batches) in all
  batch_size: int  # global batch per step
  eval_every: int = 0  # steps between evaluations; 0: once per epoch
  eval_batch_size: int = 512
  seed: int = 0  # data order
  monitor: str = "val_loss"  # metric fed to plateau / early stopping ("train_loss" w/o val)
  mode: str = "min"  # "min" or "max": which way `monitor` improves
  checkpoint_every_evals: int = 1
  keep_checkpoints: int = 2  # the latest N are kept, plus the best by `monitor`
  learning_rate: float | Callable | None = None  # for the logs: a number or schedule(step)
  progress: bool = True  # tqdm bar with loss and lr
  mesh: sharding_lib.MeshConfig | None = None  # None: every device, data-parallel

  def __post_init__(self):
    validation.check_int("steps", self.steps, 1)
    validation.check_int("batch_size", self.batch_size, 1)
    validation.check_int("eval_every", self.eval_every, 0)
    validation.check_int("eval_batch_size", self.eval_batch_size, 1)
    validation.check_int("seed", self.seed, 0)
    validation.check_choice("mode", self.mode, ("min", "max"))
    validation.check_int("checkpoint_every_evals", self.checkpoint_every_evals, 1)
    validation.check_int("keep_checkpoints", self.keep_checkpoints, 1)
    rate = self.learning_rate
    if not (rate is None or callable(rate) or (isinstance(rate, (int, float, np.number))
                                               and not isinstance(rate, bool)
                                               and math.isfinite(rate))):
      raise ValueError(f"learning_rate must be a finite number, a schedule step -> rate, or "
                       f"None, got {rate!r}")
    if self.mesh is not None and not isinstance(self.mesh, sharding_lib.MeshConfig):
      raise ValueError(f"mesh must be a bt.train.MeshConfig or None, got {self.mesh!r}")


@dataclasses.dataclass
class FitResult:
  state: TrainState  # best parameters put back if early stopping kept them
  history: list[dict]  # the metrics rows, also in workdir/metrics.jsonl
  stopped_early: bool
  resumed_from: int | None  # step of the checkpoint the run started from
  wall_s: float


def _eval_batches(dataset: ArrayDataset, batch_size: int, mesh):
  batch_size = min(batch_size, max(len(dataset), 1))
  if mesh is None:  # every host feeds whole batches
    yield from dataset.batches(batch_size, shuffle=False, remainder="pad", process_index=0,
                               process_count=1)
    return
  multiple = math.lcm(sharding_lib.batch_shards(mesh), jax.process_count())
  batch_size = -(-batch_size // multiple) * multiple  # padded rows are masked out
  for batch in dataset.batches(batch_size, shuffle=False, remainder="pad"):
    yield distributed.global_batch(batch, mesh)


def evaluate(loss_fn: LossFn, params, dataset: ArrayDataset, batch_size: int = 512, *,
             mesh: jax.sharding.Mesh | None = None) -> dict:
  """Mean loss (and accuracy) of ``params`` under ``loss_fn`` (a ``bt.train`` loss) over
  every example of ``dataset`` exactly once: ``{"loss": ..., "accuracy": ...}``.

  The evaluation's one entry point. Its jitted step is built once per ``loss_fn`` (and mesh
  and parameter shardings) and reused by later calls. With a ``mesh`` (by default the one
  ``params`` are placed on, if any) each batch is split by rows over it, each host loading
  its own rows.
  """
  validation.check_int("batch_size", batch_size, 1)
  if len(dataset) == 0:
    raise ValueError("evaluate: the dataset has no examples (an empty split, e.g. "
                     "validation_fraction=0?); there is nothing to evaluate")
  if not callable(loss_fn):
    raise ValueError(f"loss_fn must be a bt.train loss (params, batch, rng, train) -> "
                     f"(loss, sums), got {loss_fn!r}")
  mesh = mesh if mesh is not None else sharding_lib.mesh_of(params)
  return _evaluate_with(_cached_eval_step(loss_fn, params, mesh), params, dataset,
                        batch_size, mesh)


_EVAL_STEPS: "weakref.WeakKeyDictionary[Callable, dict]" = weakref.WeakKeyDictionary()


def _cached_eval_step(loss_fn: LossFn, params, mesh) -> Callable:
  """The jitted eval step of ``loss_fn`` for ``params``' placement, built on first use."""
  key = None
  if mesh is not None:
    shardings = jax.tree.map(lambda x: x.sharding, params)
    key = (mesh, jax.tree.structure(shardings), tuple(jax.tree.leaves(shardings)))
  try:
    steps = _EVAL_STEPS.setdefault(loss_fn, {})
  except TypeError:  # not weakly referable: built for this call only
    steps = {}
  if key not in steps:
    steps[key] = (jax.jit(step_lib.make_eval_step(loss_fn)) if mesh is None else
                  sharding_lib.jit_eval_step(loss_fn, shardings, mesh))
  return steps[key]


def _evaluate_with(eval_step: Callable, params, dataset: ArrayDataset, batch_size: int,
                   mesh) -> dict:
  """:func:`evaluate` with a given jitted ``eval_step`` (``fit``'s own)."""
  wait_each_batch = distributed.cpu_collectives_need_sync()
  outs = []  # every batch is dispatched before the first result is read
  for batch in _eval_batches(dataset, batch_size, mesh):
    outs.append(eval_step(params, batch))
    if wait_each_batch:
      jax.block_until_ready(outs[-1])
  sums = None
  for out in jax.device_get(outs):  # added up on the host in float32, in batch order
    sums = out if sums is None else jax.tree.map(np.add, sums, out)
  result = {"loss": float(sums["loss_sum"] / sums["count"])}
  if "correct" in sums:
    result["accuracy"] = float(sums["correct"] / sums["count"])
  return result


def _mean_finite(values) -> float:
  """The mean of the finite values (the steps that were applied); NaN when none was."""
  values = np.asarray(values, np.float64)
  values = values[np.isfinite(values)]
  return float(values.mean()) if values.size else math.nan


def _learning_rate(schedule, state: TrainState) -> float | None:
  """The rate the next update will use: ``schedule(step)`` (optax evaluates a schedule at
  the number of updates done) times the plateau scale."""
  if schedule is None:
    return None
  lr = float(schedule(state.step)) if callable(schedule) else float(schedule)
  if isinstance(state.plateau, control.ReduceOnPlateauState):
    lr *= float(state.plateau.scale)
  return lr


def _kept(best_params) -> bool:
  return not (isinstance(best_params, tuple) and not best_params)  # () means "not kept"


def _check_controls(state, plateau, early_stopping):
  if (plateau is None) != (not isinstance(state.plateau, control.ReduceOnPlateauState)):
    raise ValueError("plateau must be given to both create_train_state and fit (or neither)")
  if (early_stopping is None) != (not isinstance(state.early_stopping,
                                                 control.EarlyStoppingState)):
    raise ValueError("early_stopping must be given to both create_train_state and fit "
                     "(or neither)")


def _check_monitor(monitor, loss_fn, state, val_data, config) -> None:
  """The monitored metric is one the run writes: the validation metrics' names come from
  the loss's sums, read by ``jax.eval_shape`` (no work is done)."""
  names = {"train_loss", "grad_norm", "skipped_steps", "epoch"}
  if config.learning_rate is not None:
    names.add("lr")
  if val_data is not None:
    names.add("val_loss")
  if monitor in names:
    return  # no need to trace the loss
  if val_data is not None:
    batch = next(val_data.batches(jax.process_count(), shuffle=False, remainder="pad"))
    sums = jax.eval_shape(lambda p, b: loss_fn(p, b, jax.random.key(0), False)[1],
                          state.params, batch)
    names |= {"val_loss"} | ({"val_accuracy"} if "correct" in sums else set())
  if monitor not in names:
    raise ValueError(f"monitor {monitor!r} is not a metric this run writes; it writes "
                     f"{sorted(names)}")


def fit(state: TrainState, loss_fn: LossFn, train_data: ArrayDataset,
        val_data: ArrayDataset | None = None, *, config: FitConfig, workdir: str | None = None,
        plateau=None, early_stopping: control.EarlyStopping | None = None) -> FitResult:
  """Trains ``state`` (see the module docstring); resumes from ``workdir`` if it has a
  checkpoint. ``plateau`` / ``early_stopping`` are the objects whose states
  ``create_train_state`` put into ``state``. The train step donates the state's buffers,
  so ``state`` (and the parameters it was made from) cannot be used after a fresh start:
  pass a copy (``jax.tree.map(jnp.copy, params)``) to keep them."""
  start_time = time.time()
  _check_controls(state, plateau, early_stopping)
  if val_data is not None and len(val_data) == 0:
    raise ValueError("val_data has no examples (a validation_fraction of 0?); pass "
                     "val_data=None to train without validation")
  _check_monitor(config.monitor if val_data is not None else "train_loss", loss_fn, state,
                 val_data, config)
  check_data = getattr(loss_fn, "check_data", None)  # e.g. classification labels in range
  if check_data is not None:
    check_data(state.params, train_data, val_data)
  steps_per_epoch = train_data.steps_per_epoch(config.batch_size)
  if steps_per_epoch < 1:
    raise ValueError(f"batch_size {config.batch_size} is larger than the training set "
                     f"({len(train_data)} examples)")
  if config.mesh is None:
    mesh, rules = sharding_lib.default_mesh(config.batch_size), sharding_lib.LOGICAL_RULES
  else:
    mesh, rules = config.mesh.make_mesh(), config.mesh.rules
  shards = math.lcm(sharding_lib.batch_shards(mesh), jax.process_count())
  if config.batch_size % shards:
    raise ValueError(f"batch_size {config.batch_size} must be a multiple of {shards}, the "
                     f"batch shards of the mesh {dict(mesh.shape)} (data * fsdp) and hosts")
  shardings = sharding_lib.state_sharding(state, mesh, rules)
  primary = distributed.is_primary()
  monitor = config.monitor if val_data is not None else "train_loss"
  eval_every = config.eval_every or steps_per_epoch

  lock = workdir_lib.WorkdirLock(workdir) if workdir is not None and primary else None
  if lock is not None:
    lock.acquire()  # before anything is written: one run per workdir
  checkpoints = bar = None
  try:
    log = None
    resumed_from = None
    if workdir is not None:
      log = metrics_lib.MetricsLog(os.path.join(workdir, "metrics.jsonl"))
      checkpoints = checkpoint_lib.Checkpointer(
          os.path.join(os.path.abspath(workdir), "checkpoints"),
          keep_last=config.keep_checkpoints, keep_best=1, best_metric=monitor,
          mode=config.mode)
      resumed_from = checkpoints.latest_step()
      if resumed_from is not None:
        state = checkpoints.restore(checkpoint_lib.abstract_like(state, shardings),
                                    step=resumed_from)
      if primary:  # rows after the checkpoint (all of them without one) belong to a dead run
        log.truncate_after(0 if resumed_from is None else resumed_from)
    if resumed_from is None:
      state = jax.device_put(state, shardings)

    train_step = sharding_lib.jit_train_step(loss_fn, shardings, mesh)
    eval_step = sharding_lib.jit_eval_step(loss_fn, shardings.params, mesh)
    update_plateau = jax.jit(lambda s, v: plateau.update((), s, value=v)[1]) if plateau else None
    update_stopper = jax.jit(early_stopping.update) if early_stopping else None
    keep_best = jax.jit(control.EarlyStopping.select_best, out_shardings=shardings.best_params,
                        donate_argnums=1)  # the old copy is replaced: no second one per eval
    schedule = config.learning_rate
    schedule = jax.jit(schedule) if callable(schedule) else schedule  # one compile, any step

    step = int(state.step)
    stopped = bool(early_stopping and state.early_stopping.should_stop)
    history = [r for r in log.rows() if r["step"] <= step] if log is not None else []
    wait_each_step = distributed.cpu_collectives_need_sync()
    losses, grad_norms = [], []  # this row's step metrics, on the device until it is written
    bar = metrics_lib.Progress(config.steps, initial=step, enabled=config.progress and primary)
    while step < config.steps and not stopped:
      epoch, offset = divmod(step, steps_per_epoch)
      for batch in train_data.batches(config.batch_size, seed=config.seed, epoch=epoch,
                                      start_step=offset):
        state, out = train_step(state, distributed.global_batch(batch, mesh))
        if wait_each_step:
          jax.block_until_ready(out)
        losses.append(out["loss"])
        grad_norms.append(out["grad_norm"])
        step += 1
        bar.update(1)
        if step % eval_every and step < config.steps:
          continue
        row = {"epoch": epoch, "train_loss": float(sum(jax.device_get(losses), np.float32(0)))
                                              / len(losses),
               "grad_norm": _mean_finite(jax.device_get(grad_norms)),
               "skipped_steps": int(state.skipped_steps)}
        losses, grad_norms = [], []
        if val_data is not None:
          row.update({f"val_{k}": v for k, v in _evaluate_with(
              eval_step, state.params, val_data, config.eval_batch_size, mesh).items()})
        lr = _learning_rate(schedule, state)
        if lr is not None:
          row["lr"] = lr
        if monitor not in row:
          raise ValueError(f"monitor {monitor!r} is not among the metrics {sorted(row)}")
        value = np.float32(row[monitor])
        if plateau is not None:
          state = state.replace(plateau=update_plateau(state.plateau, value))
        if early_stopping is not None:
          state = state.replace(early_stopping=update_stopper(state.early_stopping, value))
          if _kept(state.best_params):
            state = state.replace(best_params=keep_best(state.early_stopping, state.best_params,
                                                        state.params))
          stopped = bool(state.early_stopping.should_stop)
        history.append({"step": step, **row})
        bar.update(0, loss=row["train_loss"], **({"lr": lr} if lr is not None else {}))
        if log is not None and primary:
          log.append(step, **row)
        evals_done = len(history)
        if checkpoints is not None and (evals_done % config.checkpoint_every_evals == 0
                                        or step >= config.steps or stopped):
          checkpoints.save(step, state, {monitor: row[monitor]})
        if stopped or step >= config.steps:
          break
    if workdir is not None and history and primary:
      metrics_lib.plot_metrics(history, workdir)
  finally:
    if bar is not None:
      bar.close()
    if checkpoints is not None:
      checkpoints.wait()
      checkpoints.close()
    if lock is not None:
      lock.release()

  if _kept(state.best_params) and early_stopping is not None:
    state = state.replace(params=state.best_params)
  return FitResult(state=state, history=history, stopped_early=stopped,
                   resumed_from=resumed_from, wall_s=time.time() - start_time)

