"""The fit loop: steps, periodic evaluation, early stopping, checkpoints and automatic
resume, metrics and plots (seed 000 §3.4, seed 004 §4.2-4.3).

``fit`` trains ``config.steps`` steps (micro-batches) of ``config.batch_size`` examples in
the deterministic order of ``ArrayDataset.batches`` (epoch ``e`` shuffled by
``(seed, e)``). Every ``eval_every`` steps (None: once per epoch) and at the last step it
evaluates on the validation set and then, in this order:

1. appends a row to ``workdir/metrics.jsonl``: ``step``, ``epoch``, ``train_loss`` (mean
   over the steps since the last row), ``val_loss`` / ``val_accuracy``, ``lr`` (the rate
   the row's last step used, read from the optimizer state: the ``learning_rate`` of an
   ``optax.inject_hyperparams`` in it, times the scale of any ``bt.reduce_on_plateau``;
   absent when there is none), ``grad_norm`` (mean global gradient norm of the applied
   steps since the last row), ``skipped_steps``;
2. stores the monitored metric in the state (``state.metric``, ``state.metric_count``),
   where the next train step hands it to the optimizer (``value=``), so a
   ``bt.reduce_on_plateau`` chained into it scales the updates from the next step on; and
   feeds it to ``early_stopping`` (keeping a copy of the best parameters if it restores
   them);
3. saves a checkpoint of the whole ``TrainState`` (every ``checkpoint_every_evals`` rows).

Between 2 and the writes of 1 and 3 it hands the row to ``on_eval(step, row)`` (report,
prune, stop, as the population runner's ``on_eval``): True makes this row the run's last
(checkpointed); an exception (a pruned trial) is raised on after the row is written and
checkpointed. The jitted programs are kept for the run's structure (the ``loss_fn``
object, the mesh, the state's shardings and static fields: model and ``tx``), so a later
``fit`` of the same structure compiles nothing; traced hyperparameters
(``create_train_state(make_optimizer=..., hparams=...)``) make every trial of a model one
structure.

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

import collections
import contextlib
import dataclasses
import math
import os
import time
import weakref
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from bigtune_jax import control
from bigtune_jax import validation
from bigtune_jax.data.pipeline import ArrayDataset
from bigtune_jax.train import checkpoint as checkpoint_lib
from bigtune_jax.train import data_checks
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
  eval_every: int | None = None  # steps between evaluations; None: once per epoch
  eval_batch_size: int = 512
  seed: int = 0  # data order
  monitor: str = "val_loss"  # metric fed to the optimizer / early stopping ("train_loss" w/o val)
  mode: str = "min"  # "min" or "max": which way `monitor` improves (the best checkpoint)
  checkpoint_every_evals: int = 1
  keep_checkpoints: int = 2  # the latest N are kept, plus the best by `monitor`
  progress: bool = True  # tqdm bar with loss and lr
  mesh: sharding_lib.MeshConfig | None = None  # None: every device, data-parallel
  donate: bool = False  # True: train in the caller's buffers (no copy; they are deleted)

  def __post_init__(self):
    validation.check_int("steps", self.steps, 1)
    validation.check_int("batch_size", self.batch_size, 1)
    validation.check_eval_every(self.eval_every)
    validation.check_int("eval_batch_size", self.eval_batch_size, 1)
    validation.check_int("seed", self.seed, 0)
    validation.check_choice("mode", self.mode, ("min", "max"))
    validation.check_int("checkpoint_every_evals", self.checkpoint_every_evals, 1)
    validation.check_int("keep_checkpoints", self.keep_checkpoints, 1)
    if not isinstance(self.donate, bool):
      raise ValueError(f"donate must be True or False, got {self.donate!r}")
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
  data_checks.check_data(loss_fn, params, {"evaluate's dataset": dataset})
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
  return {name: float(mean) for name, mean in step_lib.mean_metrics(sums).items()}


def _mean_finite(values) -> float:
  """The mean of the finite values (the steps that were applied); NaN when none was."""
  values = np.asarray(values, np.float64)
  values = values[np.isfinite(values)]
  return float(values.mean()) if values.size else math.nan


def _learning_rate(opt_state) -> float | None:
  """The rate the last update used, read from the optimizer state: the ``learning_rate``
  hyperparameter of the first ``optax.inject_hyperparams`` state in it (which holds the
  value of the last update), times the scale of every ``bt.reduce_on_plateau`` state.
  None without the former."""
  plateau = lambda x: isinstance(x, control.ReduceOnPlateauState)  # noqa: E731
  injected = lambda x: isinstance(getattr(x, "hyperparams", None), dict)  # noqa: E731
  rate, scale = None, 1.0
  for x in jax.tree.leaves(opt_state, is_leaf=lambda x: plateau(x) or injected(x)):
    if plateau(x):
      scale *= float(x.scale)
    elif injected(x) and rate is None and "learning_rate" in x.hyperparams:
      rate = float(x.hyperparams["learning_rate"])
  return None if rate is None else rate * scale


def _kept(best_params) -> bool:
  return not (isinstance(best_params, tuple) and not best_params)  # () means "not kept"


def _with_early_stopping(state: TrainState, early_stopping) -> TrainState:
  """``state`` carrying ``early_stopping``'s state (and a copy of the parameters when it
  restores the best ones), unless it carries one already (a continued run)."""
  if early_stopping is None or isinstance(state.early_stopping, control.EarlyStoppingState):
    return state
  best = jax.tree.map(jnp.copy, state.params) if early_stopping.restore_best else ()
  return state.replace(early_stopping=early_stopping.init(jnp.float32), best_params=best)


def _check_monitor(monitor, loss_fn, state, val_data) -> None:
  """The monitored metric is one the run writes: the validation metrics' names come from
  the loss's sums, read by ``jax.eval_shape`` (no work is done)."""
  names = {"train_loss", "grad_norm", "skipped_steps", "epoch"}
  if _learning_rate(state.opt_state) is not None:
    names.add("lr")
  if val_data is not None:
    names.add("val_loss")
  if monitor in names:
    return  # no need to trace the loss
  if val_data is not None:
    sums = data_checks.check_params_fit(loss_fn, state.params, val_data,
                                        "the validation split")
    names |= {"val_loss"} | ({"val_accuracy"} if "correct" in sums else set())
  if monitor not in names:
    raise ValueError(f"monitor {monitor!r} is not a metric this run writes; it writes "
                     f"{sorted(names)}")


def _check_fit(state, loss_fn, train_data, val_data, config, early_stopping) -> str:
  """Every argument of ``fit`` checked before any work; returns the monitored metric."""
  if early_stopping is not None and not isinstance(early_stopping, control.EarlyStopping):
    raise ValueError(f"early_stopping must be a bt.EarlyStopping or None, got "
                     f"{early_stopping!r}")
  if val_data is not None and len(val_data) == 0:
    raise ValueError("val_data has no examples (a validation_fraction of 0?); pass "
                     "val_data=None to train without validation")
  monitor = config.monitor if val_data is not None else "train_loss"
  data_checks.check_data(loss_fn, state.params,
                         {"the train split": train_data, "the validation split": val_data})
  data_checks.check_params_fit(loss_fn, state.params, train_data, "the train split")
  _check_monitor(monitor, loss_fn, state, val_data)
  if train_data.steps_per_epoch(config.batch_size) < 1:
    raise ValueError(f"batch_size {config.batch_size} is larger than the training set "
                     f"({len(train_data)} examples)")
  return monitor


def _placement(state: TrainState, config: FitConfig):
  """The run's mesh and the shardings of ``state`` on it (checked against the batch)."""
  if config.mesh is None:
    mesh, rules = sharding_lib.default_mesh(config.batch_size), sharding_lib.LOGICAL_RULES
  else:
    mesh, rules = config.mesh.make_mesh(), config.mesh.rules
  shards = math.lcm(sharding_lib.batch_shards(mesh), jax.process_count())
  if config.batch_size % shards:
    raise ValueError(f"batch_size {config.batch_size} must be a multiple of {shards}, the "
                     f"batch shards of the mesh {dict(mesh.shape)} (data * fsdp) and hosts")
  return mesh, sharding_lib.state_sharding(state, mesh, rules)


@dataclasses.dataclass(frozen=True)
class _Programs:
  """The jitted pieces of one run, built for its mesh and state shardings."""
  mesh: jax.sharding.Mesh
  train_step: Callable  # (state, global batch) -> (state, metrics); donates the state
  eval_step: Callable  # (params, global batch) -> sums
  store_metric: Callable  # (metric_count, value) -> (metric, metric_count + 1)
  update_stopper: Callable | None  # EarlyStopping.update
  keep_best: Callable  # EarlyStopping.select_best; donates the old copy

  @classmethod
  def cached(cls, loss_fn: LossFn, mesh, shardings, early_stopping) -> "_Programs":
    """The programs of an earlier run of the same structure (``loss_fn`` object, mesh,
    state shardings and static fields, which hold ``tx`` and the model's ``apply``, and
    early stopping), else new ones: a second trial of a structure does not compile."""
    key = (loss_fn, mesh, jax.tree.structure(shardings), tuple(jax.tree.leaves(shardings)),
           early_stopping)
    try:
      programs = _PROGRAMS.pop(key, None) or cls.build(loss_fn, mesh, shardings, early_stopping)
    except TypeError:  # an unhashable part: built for this run only
      return cls.build(loss_fn, mesh, shardings, early_stopping)
    _PROGRAMS[key] = programs  # the most recent last
    while len(_PROGRAMS) > _KEPT_PROGRAMS:
      _PROGRAMS.popitem(last=False)
    return programs

  @classmethod
  def build(cls, loss_fn: LossFn, mesh, shardings, early_stopping) -> "_Programs":
    scalars = (shardings.metric, shardings.metric_count)
    return cls(
        mesh=mesh, train_step=sharding_lib.jit_train_step(loss_fn, shardings, mesh),
        eval_step=sharding_lib.jit_eval_step(loss_fn, shardings.params, mesh),
        store_metric=jax.jit(lambda n, v: (jnp.asarray(v, jnp.float32), n + 1),
                             out_shardings=scalars),
        update_stopper=jax.jit(early_stopping.update) if early_stopping else None,
        keep_best=jax.jit(control.EarlyStopping.select_best,
                          out_shardings=shardings.best_params, donate_argnums=1))

  def train(self, state: TrainState, batch: dict):
    state, out = self.train_step(state, distributed.global_batch(batch, self.mesh))
    if distributed.cpu_collectives_need_sync():
      jax.block_until_ready(out)
    return state, out


_KEPT_PROGRAMS = 16  # structures whose compiled programs stay in memory (least recent dropped)
_PROGRAMS: "collections.OrderedDict[tuple, _Programs]" = collections.OrderedDict()


class _RunFiles:
  """What one ``fit`` writes (nothing without a workdir; only process 0 writes the log,
  the plots and the bar): the lock, the metrics log, the checkpoints, the progress bar.
  Use :func:`_run_files`, which closes them also when training fails."""

  def __init__(self, workdir: str | None, config: FitConfig, monitor: str):
    self.workdir, self.config, self.monitor = workdir, config, monitor
    self.primary = distributed.is_primary()
    self.lock = self.log = self.checkpoints = self.bar = None

  def open(self) -> None:
    if self.workdir is None:
      return
    if self.primary:
      lock = workdir_lib.WorkdirLock(self.workdir)
      lock.acquire()  # before anything is written: one run per workdir
      self.lock = lock  # released on close only once held
    self.log = metrics_lib.MetricsLog(os.path.join(self.workdir, "metrics.jsonl"))
    self.checkpoints = checkpoint_lib.Checkpointer(
        os.path.join(os.path.abspath(self.workdir), "checkpoints"),
        keep_last=self.config.keep_checkpoints, keep_best=1, best_metric=self.monitor,
        mode=self.config.mode)

  def resume(self, state: TrainState, shardings):
    """``(state, resumed_from, history)``: the latest checkpoint restored onto
    ``shardings`` (without one, ``state`` placed on them), its step (or None) and the
    metrics rows up to it; the rows a dead run wrote after it are dropped."""
    resumed_from = self.checkpoints.latest_step() if self.checkpoints else None
    if resumed_from is None:  # a copy unless donated: the caller's arrays stay usable
      state = jax.device_put(state, shardings, donate=self.config.donate,
                             may_alias=None if self.config.donate else False)
    else:
      state = self.checkpoints.restore(checkpoint_lib.abstract_like(state, shardings),
                                       step=resumed_from)
    step = int(state.step)
    self.bar = metrics_lib.Progress(self.config.steps, initial=step,
                                    enabled=self.config.progress and self.primary)
    if self.log is None:
      return state, resumed_from, []
    if self.primary:
      self.log.truncate_after(0 if resumed_from is None else resumed_from)
    return state, resumed_from, [r for r in self.log.rows() if r["step"] <= step]

  def progress(self, steps: int = 1, **shown) -> None:
    self.bar.update(steps, **shown)

  def record(self, state: TrainState, history: list[dict], final: bool) -> None:
    """The newest row of ``history`` to the log and the bar, then a checkpoint of
    ``state`` every ``checkpoint_every_evals`` rows and at the ``final`` one."""
    row = history[-1]
    self.progress(0, loss=row["train_loss"], **({"lr": row["lr"]} if "lr" in row else {}))
    if self.log is not None and self.primary:
      self.log.append(row["step"], **{k: v for k, v in row.items() if k != "step"})
    if self.checkpoints is not None and (
        len(history) % self.config.checkpoint_every_evals == 0 or final):
      self.checkpoints.save(row["step"], state, {self.monitor: row[self.monitor]})

  def plot(self, history: list[dict]) -> None:
    if self.workdir is not None and history and self.primary:
      metrics_lib.plot_metrics(history, self.workdir)

  def close(self) -> None:
    if self.bar is not None:
      self.bar.close()
    if self.checkpoints is not None:
      self.checkpoints.wait()
      self.checkpoints.close()
    if self.lock is not None:
      self.lock.release()


@contextlib.contextmanager
def _run_files(workdir: str | None, config: FitConfig, monitor: str):
  files = _RunFiles(workdir, config, monitor)
  try:
    files.open()
    yield files
  finally:
    files.close()


def _evaluation_row(programs: _Programs, state: TrainState, epoch: int, losses: list,
                    grad_norms: list, val_data: ArrayDataset | None, config: FitConfig) -> dict:
  """The metrics of the steps since the last row (``losses``, ``grad_norms``: their
  outputs, still on the device) and of ``state`` on the validation set."""
  row = {"epoch": epoch, "train_loss": float(sum(jax.device_get(losses), np.float32(0))) / len(losses),
         "grad_norm": _mean_finite(jax.device_get(grad_norms)),
         "skipped_steps": int(state.skipped_steps)}
  if val_data is not None:
    metrics = _evaluate_with(programs.eval_step, state.params, val_data,
                             config.eval_batch_size, programs.mesh)
    row.update({f"val_{k}": v for k, v in metrics.items()})
  lr = _learning_rate(state.opt_state)
  if lr is not None:
    row["lr"] = lr
  return row


def _feed_metric(programs: _Programs, state: TrainState, value: np.float32,
                 early_stopping) -> tuple[TrainState, bool]:
  """``state`` after an evaluation whose monitored metric is ``value``: stored for the
  optimizer's next update (``value=``), fed to the early stopping (which keeps the best
  parameters). Returns the state and whether to stop."""
  metric, count = programs.store_metric(state.metric_count, value)
  state = state.replace(metric=metric, metric_count=count)
  if early_stopping is None:
    return state, False
  state = state.replace(early_stopping=programs.update_stopper(state.early_stopping, value))
  if _kept(state.best_params):
    state = state.replace(best_params=programs.keep_best(state.early_stopping,
                                                         state.best_params, state.params))
  return state, bool(state.early_stopping.should_stop)


def _check_on_eval(on_eval) -> None:
  if on_eval is not None and not callable(on_eval):
    raise ValueError(f"on_eval must be a callable (step, row) -> bool | None, or None; got "
                     f"{on_eval!r}")


def _ask_on_eval(on_eval, step: int, row: dict, files: "_RunFiles", state: TrainState,
                 history: list[dict]) -> bool:
  """``on_eval(step, row)`` (a copy of the row); whether it asks to stop. When it raises
  (``TrialPruned``), the row is logged and checkpointed and its files closed before the
  exception goes on, as at a run's last evaluation."""
  if on_eval is None:
    return False
  try:
    stop = on_eval(step, dict(row))
    if stop is not None and not isinstance(stop, (bool, np.bool_)):
      raise ValueError(f"on_eval must return True (stop), False or None, got {stop!r}")
  except Exception:
    files.record(state, history, final=True)
    raise
  return bool(stop)


def fit(state: TrainState, loss_fn: LossFn, train_data: ArrayDataset,
        val_data: ArrayDataset | None = None, *, config: FitConfig, workdir: str | None = None,
        early_stopping: control.EarlyStopping | None = None,
        on_eval: Callable[[int, dict], bool | None] | None = None) -> FitResult:
  """Trains ``state`` (see the module docstring); resumes from ``workdir`` if it has a
  checkpoint. ``early_stopping`` is fed the monitored metric at each evaluation; a
  ``bt.reduce_on_plateau`` goes into the optimizer's chain.

  The train step donates its buffers, and ``fit`` trains a copy of ``state``: the
  caller's ``state`` and the parameters it was made from stay usable after ``fit``
  (e.g. to compare before and after). ``FitConfig(donate=True)`` trains in the caller's
  buffers instead, saving one copy of the state's memory (for a model that barely fits);
  those arrays are then deleted, and using them raises JAX's "Array has been deleted".

  ``on_eval(step, row)`` is called after each evaluation with the metrics row (the
  contract of ``bt.tune.train_population``'s ``on_eval``, for one model): to report a
  trial to a searcher, prune it, or stop. Returning True stops the run there
  (``stopped_early``; the row is its last, checkpointed); an exception it raises (e.g.
  ``bt.tune.TrialPruned`` / ``optuna.TrialPruned``) propagates once the row is logged,
  checkpointed and the workdir released. Compiled programs are reused by a later run of
  the same structure (the same ``loss_fn`` object, mesh and static fields of the state:
  with ``create_train_state(make_optimizer=..., hparams=...)`` every trial of a model)."""
  start_time = time.time()
  _check_on_eval(on_eval)
  monitor = _check_fit(state, loss_fn, train_data, val_data, config, early_stopping)
  state = _with_early_stopping(state, early_stopping)
  mesh, shardings = _placement(state, config)
  steps_per_epoch = train_data.steps_per_epoch(config.batch_size)
  eval_every = config.eval_every or steps_per_epoch
  with _run_files(workdir, config, monitor) as files:
    state, resumed_from, history = files.resume(state, shardings)
    programs = _Programs.cached(loss_fn, mesh, shardings, early_stopping)
    step = int(state.step)
    stopped = bool(early_stopping and state.early_stopping.should_stop)
    losses, grad_norms = [], []  # this row's step metrics, on the device until it is written
    while step < config.steps and not stopped:
      epoch, offset = divmod(step, steps_per_epoch)
      for batch in train_data.batches(config.batch_size, seed=config.seed, epoch=epoch,
                                      start_step=offset):
        state, out = programs.train(state, batch)
        losses.append(out["loss"])
        grad_norms.append(out["grad_norm"])
        step += 1
        files.progress()
        if step % eval_every and step < config.steps:
          continue
        row = _evaluation_row(programs, state, epoch, losses, grad_norms, val_data, config)
        losses, grad_norms = [], []
        state, stopped = _feed_metric(programs, state, np.float32(row[monitor]), early_stopping)
        history.append({"step": step, **row})
        stopped = _ask_on_eval(on_eval, step, history[-1], files, state, history) or stopped
        files.record(state, history, final=stopped or step >= config.steps)
        if stopped or step >= config.steps:
          break
    files.plot(history)
  if _kept(state.best_params) and early_stopping is not None:
    state = state.replace(params=state.best_params)
  return FitResult(state=state, history=history, stopped_early=stopped,
                   resumed_from=resumed_from, wall_s=time.time() - start_time)
