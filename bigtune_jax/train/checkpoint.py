"""Checkpoints of training states: Orbax's ``CheckpointManager`` behind a small, strict API.

Choices, and why:

* **Async by default.** ``save`` returns once the arrays are copied to host memory; Orbax
  writes them in a background thread, so the caller may donate or overwrite the state at
  once. ``wait()`` (also called by ``restore`` and ``close``) blocks until the write is
  committed. A save waits for the previous one to finish first. (Not with several CPU
  devices in one process, e.g. fake devices in tests: there a background write beside a
  running step can deadlock XLA's CPU collectives, so saves are synchronous.)
* **Preservation policy, not ``max_to_keep``** (deprecated in Orbax): a checkpoint is kept
  if it is one of the ``keep_last`` latest OR one of the ``keep_best`` best by
  ``best_metric`` (``AnyPreservationPolicy([LatestN, BestN])``). A checkpoint saved
  without metrics, or whose metric is NaN, never counts as best.
* **Steps only move forward; nothing is overwritten.** ``save(step)`` with ``step`` at or
  below ``latest_step()`` writes nothing, logs a warning and returns ``False`` (Orbax's rule).
* **Restore through an abstract target.** Every leaf of ``target`` gives the shape, dtype
  and sharding to restore into (a leaf without a sharding goes to the first local device).
  The target is checked against the checkpoint's stored metadata before anything is read,
  and the first mismatching path is named. The target's mesh need not be the one saved
  from: a state saved sharded over 8 devices restores onto 1 or 4 given their shardings
  (``abstract_like(state, bt.train.state_sharding(state, mesh))``). On many hosts every
  process calls ``save`` and ``restore`` on a shared directory; each writes its own shards.
* **Atomic commits.** Orbax writes ``DIR/<step>.orbax-checkpoint-tmp*`` and renames it to
  ``DIR/<step>`` once complete, so a save killed midway leaves a tmp directory that is
  never listed nor restored (and is replaced if the same step is saved again).
* **A damaged checkpoint is refused, not skipped.** One that cannot be read (an overwritten
  ``manifest.ocdbt``, truncated arrays, lost metadata) raises a ``ValueError`` naming its
  directory, saying it is damaged and naming the previous step; ``restore`` never falls
  back to an older checkpoint by itself, since a resumed run would then silently repeat
  steps. Deleting the damaged directory resumes from the previous one.

On disk (Orbax's layout): ``DIR/<step>/default/`` holds the state (``_METADATA``: the tree
of shapes and dtypes; ``manifest.ocdbt`` and ``d/``: the arrays, OCDBT/zarr);
``DIR/<step>/metrics/metrics`` the metrics as JSON; ``DIR/<step>/_CHECKPOINT_METADATA``
the commit time.

Python scalars and NumPy arrays in the state are saved as JAX arrays (so they restore as
arrays); static fields of a ``flax.struct.PyTreeNode`` (``apply_fn``, ``tx``) are not leaves
and come from the target.
"""

import logging
import math
import operator
import os
from collections.abc import Callable
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as policies

from bigtune_jax import validation
from bigtune_jax.train import distributed
from bigtune_jax.tree_paths import path_name

ITEM = "default"  # Orbax's name for the single item of a CheckpointManager
_OCDBT_MAGIC = bytes.fromhex("0cdb3a2a")  # the first bytes of every OCDBT manifest


def _first_local_device_sharding():
  return jax.sharding.SingleDeviceSharding(jax.local_devices()[0])


def _abstract_leaf(x) -> jax.ShapeDtypeStruct:
  if isinstance(x, jax.ShapeDtypeStruct):
    if x.sharding is not None:
      return x
    return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=_first_local_device_sharding(),
                                weak_type=x.weak_type)
  if isinstance(x, jax.Array):
    return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding)
  x = jax.eval_shape(jnp.asarray, x)  # the dtype jnp.asarray(x) gives, without a copy
  return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=_first_local_device_sharding())


def abstract_like(tree, shardings=None):
  """``tree`` with every leaf replaced by a ``jax.ShapeDtypeStruct`` carrying its sharding.

  Leaves may be ``jax.Array`` (their own sharding), NumPy arrays or Python scalars (the
  dtype ``jnp.asarray`` would give, on the first local device), or ``ShapeDtypeStruct``
  (kept; given the first local device when they have no sharding).

  ``shardings``, a tree of ``jax.sharding.Sharding`` in ``tree``'s structure (e.g.
  ``bt.train.state_sharding(state, mesh)``), overrides them: restoring into that target
  puts each array on its new mesh, whatever mesh the checkpoint was saved from (Orbax
  reads just the slices each device needs).
  """
  if shardings is None:
    return jax.tree.map(_abstract_leaf, tree)
  leaves, treedef = jax.tree.flatten(tree)
  sharding_leaves = jax.tree.leaves(shardings)  # static fields (e.g. a state's tx) may differ
  if len(sharding_leaves) != len(leaves):
    raise ValueError(f"shardings has {len(sharding_leaves)} leaves, the tree {len(leaves)}: "
                     "give one sharding per array, in the tree's structure")
  def with_sharding(x, sharding):
    x = _abstract_leaf(x)
    return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding, weak_type=x.weak_type)
  return treedef.unflatten(map(with_sharding, leaves, sharding_leaves))


def _as_array(x):
  return x if isinstance(x, jax.Array) else jnp.asarray(x)


def _describe(shape, dtype) -> str:
  return f"{tuple(shape)} {np.dtype(dtype).name}"


def first_mismatch(stored_tree, abstract_target) -> str | None:
  """The first path where ``abstract_target`` differs from the stored metadata, or None."""
  stored = {path_name(p): leaf
            for p, leaf in jax.tree_util.tree_flatten_with_path(stored_tree)[0]}
  seen = set()
  for path, leaf in jax.tree_util.tree_flatten_with_path(abstract_target)[0]:
    name = path_name(path)
    seen.add(name)
    if jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
      leaf = jax.eval_shape(jax.random.key_data, leaf)  # typed keys are stored as their data
    if name not in stored:
      return f"{name}: in the target, not in the checkpoint"
    meta = stored[name]
    if not hasattr(meta, "shape") or not hasattr(meta, "dtype"):
      continue  # not an array (Orbax stores e.g. strings too): nothing to compare
    if tuple(meta.shape) != tuple(leaf.shape) or np.dtype(meta.dtype) != np.dtype(leaf.dtype):
      return (f"{name}: stored {_describe(meta.shape, meta.dtype)}, "
              f"target {_describe(leaf.shape, leaf.dtype)}")
  extra = [name for name in stored if name not in seen]
  return f"{extra[0]}: in the checkpoint, not in the target" if extra else None


def _stored_params(tree):
  """``(parameters, where)``: a training state's ``params`` (``("params",)``), else the
  whole tree (``()``)."""
  if isinstance(tree, dict) and "params" in tree and "opt_state" in tree:
    return tree["params"], ("params",)
  return tree, ()


def _check_directory(path: Path) -> None:
  """Raises ValueError unless ``path`` is, or can be created as, a writable directory."""
  if path.exists() and not path.is_dir():
    raise ValueError(f"checkpoint directory {path} exists and is not a directory")
  existing = path
  while not existing.exists():  # the directory is created by the first save
    existing = existing.parent
  if not existing.is_dir():
    raise ValueError(f"checkpoint directory {path}: {existing} is not a directory")
  if not os.access(existing, os.W_OK | os.X_OK):
    raise ValueError(f"checkpoint directory {path}: {existing} is not writable")


def _resolve_async(async_save: bool | None) -> bool:
  if async_save is not None:
    return bool(async_save)
  return not distributed.cpu_collectives_need_sync()


class Checkpointer:
  """Orbax CheckpointManager for training states: async saves, a preservation policy that
  keeps the last ``keep_last`` checkpoints and the ``keep_best`` best by a metric, restore
  through an abstract target so shardings are explicit.

  Args:
    directory: where the step directories live; created by the first save.
    keep_last: how many of the latest checkpoints to keep (>= 1).
    keep_best: how many of the best checkpoints by ``best_metric`` to keep besides (>= 0);
      None (default): 1 with a ``best_metric``, else 0.
    best_metric: the key of the ``metrics`` dict that ranks checkpoints (e.g. ``"val_loss"``);
      required when ``keep_best > 0``.
    mode: ``"min"`` (a lower ``best_metric`` is better) or ``"max"``.
    async_save: write in a background thread (see ``wait``); None (default): yes, except
      where ``distributed.cpu_collectives_need_sync()`` (several CPU devices in this process,
      whose collectives can deadlock beside a background write): there saves finish
      before ``save`` returns.
    read_only: only read (``restore``, ``restore_params``): the directory must exist and
      need not be writable; ``save`` is refused.

  Example::

    with Checkpointer(workdir / "checkpoints", best_metric="val_loss") as ckpt:
      ckpt.save(int(state.step), state, {"val_loss": 0.31})
      state = ckpt.restore(state)  # the latest; static fields come from `state`
  """

  def __init__(self, directory: str | os.PathLike, *, keep_last: int = 2,
               keep_best: int | None = None,
               best_metric: str | None = None, mode: str = "min",
               async_save: bool | None = None, read_only: bool = False):
    keep_last = validation.check_int("keep_last", keep_last, 1)
    if keep_best is None:
      keep_best = 0 if best_metric is None else 1
    keep_best = validation.check_int("keep_best", keep_best, 0)
    validation.check_choice("mode", mode, ("min", "max"))
    if keep_best > 0 and best_metric is None:
      raise ValueError(f"keep_best={keep_best} needs best_metric (the metric that ranks "
                       "checkpoints), got best_metric=None; or set keep_best=0")
    self.directory = Path(directory).absolute()
    if not isinstance(read_only, bool):
      raise ValueError(f"read_only must be True or False, got {read_only!r}")
    self.read_only = read_only
    if read_only and not self.directory.is_dir():
      raise FileNotFoundError(f"no checkpoint directory at {self.directory}")
    if not read_only:
      _check_directory(self.directory)
    self.best_metric = best_metric
    self.mode = mode
    kept = [policies.LatestN(n=keep_last)]
    if keep_best > 0:
      kept.append(policies.BestN(get_metric_fn=self._rank, reverse=mode == "min",
                                 n=keep_best, keep_checkpoints_without_metrics=False))
    options = ocp.CheckpointManagerOptions(
        preservation_policy=policies.AnyPreservationPolicy(kept),
        # Orbax writes metrics only when a best_fn is set; ours also ranks best_step().
        best_fn=self._rank, best_mode=mode,
        enable_async_checkpointing=_resolve_async(async_save), create=False,
        read_only=read_only)
    registry = ocp.handlers.create_default_handler_registry(
        **{ITEM: ocp.StandardCheckpointHandler()})
    try:
      self._manager = ocp.CheckpointManager(self.directory, options=options,
                                            handler_registry=registry)
    except Exception as err:  # e.g. an unreadable metrics file of an existing step
      raise ValueError(f"cannot read the checkpoints in {self.directory}: {err}") from err

  def _rank(self, metrics) -> float:
    """The metric value Orbax ranks checkpoints by; a NaN or missing value ranks worst."""
    value = float(metrics.get(self.best_metric, math.nan)) if self.best_metric else 0.0
    if math.isnan(value):
      return math.inf if self.mode == "min" else -math.inf
    return value

  def save(self, step: int, state, metrics: dict[str, float] | None = None) -> bool:
    """Saves ``state`` as checkpoint ``step`` (in the background when ``async_save``).

    ``metrics`` (name -> number) are stored with it and rank it for ``keep_best`` and
    ``best_step``. Returns ``False`` and writes nothing when ``step <= latest_step()``.
    """
    if self.read_only:
      raise ValueError(f"this Checkpointer of {self.directory} is read_only: nothing is saved")
    given = step
    try:
      step = None if isinstance(step, bool) else operator.index(step)  # int, NumPy or JAX scalar
    except TypeError:
      step = None
    if step is None or step < 0:
      raise ValueError(f"step must be an integer >= 0, got {given!r}")
    if metrics is not None:
      try:
        metrics = {str(k): float(v) for k, v in metrics.items()}
      except (AttributeError, TypeError, ValueError) as err:
        raise ValueError(f"metrics must map names to numbers, got {metrics!r}") from err
      if self.best_metric is not None and self.best_metric not in metrics:
        raise ValueError(f"metrics lack best_metric {self.best_metric!r}: got {sorted(metrics)}")
    latest = self.latest_step()
    if latest is not None and step <= latest:
      logging.warning("Checkpointer: not saving step %d in %s: checkpoints go forward and "
                      "the latest is step %d", step, self.directory, latest)
      return False
    if metrics is None and self.best_metric is None:
      metrics = {}  # Orbax warns of a missing tracked metric on every save otherwise
    state = jax.tree.map(_as_array, state)
    return self._manager.save(step, args=ocp.args.StandardSave(state), metrics=metrics)

  def wait(self) -> None:
    """Blocks until the pending async save, if any, is committed to disk."""
    self._manager.wait_until_finished()

  def all_steps(self) -> list[int]:
    """Steps of the kept checkpoints, ascending (a pending async save included)."""
    return sorted(self._manager.all_steps())

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def best_step(self) -> int | None:
    """The kept step with the best ``best_metric``; None without a metric or metrics."""
    if self.best_metric is None:
      return None
    return self._manager.best_step()  # ranks by self._rank (a pending async save included)

  def _step_path(self, step: int) -> Path:
    return self.directory / str(step)

  def _existing_step(self, step: int | None) -> int:
    """``step``, or the latest when None; FileNotFoundError naming the available ones."""
    self.wait()
    steps = self.all_steps()
    if step is None and steps:
      step = steps[-1]
    if step is None or step not in steps:
      wanted = "no checkpoint" if step is None else f"no checkpoint for step {step}"
      raise FileNotFoundError(f"{wanted} in {self.directory}; available steps: {steps}")
    return step

  def _damaged(self, step: int, what: str, error: Exception | str) -> ValueError:
    """The error for an unreadable checkpoint ``step``: its directory, that it is damaged,
    the first line of the cause, and the way out. Nothing falls back to an older checkpoint
    behind the caller's back (a resumed run would silently redo steps): deleting the
    damaged directory is the user's decision, and the message names the step it gives."""
    cause = str(error).splitlines()[0] if str(error) else type(error).__name__
    if len(cause) > 300:
      cause = cause[:300] + " ..."
    older = [s for s in self.all_steps() if s < step]
    way_out = (f"delete {self._step_path(step)} to resume from the previous checkpoint, "
               f"step {older[-1]}" if older else
               f"delete {self._step_path(step)} (no older checkpoint) to start afresh")
    return ValueError(f"corrupt checkpoint {self._step_path(step)}: it is damaged, cannot "
                      f"read its {what} ({cause}); {way_out}")

  def _check_manifest(self, step: int) -> None:
    """The OCDBT manifest starts with its magic bytes (tensorstore's format: 0x0cdb3a2a).
    Checked here because Orbax, given an overwritten manifest, fails with tensorstore
    callbacks into a closed event loop ("RuntimeError: Event loop is closed" printed at
    exit) instead of naming the file."""
    manifest = self._step_path(step) / ITEM / "manifest.ocdbt"
    try:
      with open(manifest, "rb") as f:
        head = f.read(4)
    except FileNotFoundError:
      return  # not an OCDBT checkpoint, or the metadata check below names it
    except OSError as err:
      raise self._damaged(step, "manifest", err) from err
    if head != _OCDBT_MAGIC:
      raise self._damaged(step, "manifest", f"{manifest} does not start with the OCDBT "
                          f"magic bytes {_OCDBT_MAGIC.hex()}, but {head.hex() or 'nothing'}")

  def _stored(self, step: int):
    """The stored tree's metadata (shapes and dtypes) of checkpoint ``step``."""
    self._check_manifest(step)
    try:
      metadata = self._manager.item_metadata(step)
      stored = getattr(metadata, "tree", metadata)  # TreeMetadata in recent Orbax
      if stored is None:
        raise ValueError("no item metadata")
    except Exception as err:
      raise self._damaged(step, "metadata", err) from err
    return stored

  def restore(self, target, step: int | None = None):
    """The checkpoint at ``step`` (the latest when None), restored into ``target``'s form.

    ``target`` is a pytree of ``jax.ShapeDtypeStruct`` (e.g. ``jax.eval_shape`` of the
    state's init, or :func:`abstract_like`) or of concrete arrays: each leaf's shape, dtype
    and sharding say how to restore it. Returns a pytree of ``target``'s structure.

    Raises:
      FileNotFoundError: no checkpoint at ``step`` (the available steps are named).
      ValueError: the target does not match the checkpoint (the first differing path is
        named), or the checkpoint is unreadable (its path is named).
    """
    step = self._existing_step(step)
    path = self._step_path(step)
    abstract = abstract_like(target)
    mismatch = first_mismatch(self._stored(step), abstract)
    if mismatch is not None:
      raise ValueError(f"checkpoint {path} does not fit the target: {mismatch}")
    try:
      restored = self._manager.restore(step, args=ocp.args.StandardRestore(abstract))
    except Exception as err:
      raise self._damaged(step, "arrays", f"{type(err).__name__}: {err}") from err
    return restored  # the abstract target's tree: target's structure and static fields

  def param_metadata(self, step: int | None = None) -> dict:
    """``{path: metadata}`` of the stored parameters: a training state's ``params``, or the
    whole tree when the checkpoint holds bare parameters."""
    stored, _ = _stored_params(self._stored(self._existing_step(step)))
    return {path_name(p): leaf for p, leaf in jax.tree_util.tree_flatten_with_path(stored)[0]}

  def restore_params(self, target, *, step: int | None = None,
                     skip: Callable[[str], bool] = lambda path: False):
    """``target``'s parameters with every entry that ``skip(path)`` does not name read from
    the checkpoint's parameters (an Orbax partial restore: the optimizer state, whatever
    optimizer wrote it, is never read); skipped entries keep ``target``'s values.

    The kept entries are checked against the stored metadata before anything is read (the
    first mismatching path is named); a skipped entry must be an array in ``target``.
    Returns a tree of ``target``'s structure (copies: ``fit`` may donate it).
    """
    step = self._existing_step(step)
    path = self._step_path(step)
    stored, prefix = _stored_params(self._stored(step))
    initial = {path_name(p): leaf for p, leaf in jax.tree_util.tree_leaves_with_path(target)}
    wanted = {path_name(p): leaf for p, leaf in
              jax.tree_util.tree_leaves_with_path(abstract_like(target))}
    stored_flat = {path_name(p): leaf for p, leaf in
                   jax.tree_util.tree_flatten_with_path(stored)[0]}
    kept = {name: leaf for name, leaf in wanted.items() if not skip(name)}
    mismatch = first_mismatch({name: meta for name, meta in stored_flat.items()
                               if not skip(name)}, kept)
    if mismatch is not None:
      raise ValueError(f"checkpoint {path} does not fit the target: {mismatch}")
    for name, leaf in initial.items():
      if skip(name) and isinstance(leaf, jax.ShapeDtypeStruct):
        raise ValueError(f"target: skipped entry {name!r} needs an initial value (an array), "
                         f"got {leaf!r}")
    restored = {}
    if kept:
      restored = self._partial_restore(step, kept, prefix)

    def value(key_path, leaf):
      name = path_name(key_path)
      return restored[name] if name in restored else jnp.copy(leaf)  # a copy: fit donates

    return jax.tree_util.tree_map_with_path(value, target)

  def _partial_restore(self, step: int, kept: dict, prefix: tuple[str, ...]) -> dict:
    """The ``kept`` entries (path -> abstract leaf) of checkpoint ``step``, read alone."""
    item = traverse_util.unflatten_dict(
        {tuple(prefix) + tuple(name.split("/")): leaf for name, leaf in kept.items()})
    args = ocp.args.PyTreeRestore(item=item, partial_restore=True,
                                  restore_args=ocp.checkpoint_utils.construct_restore_args(item))
    options = ocp.CheckpointManagerOptions(create=False, read_only=True)
    try:  # the PyTree handler reads what the Standard one wrote, a subset of it
      with ocp.CheckpointManager(self.directory, options=options,
                                 item_handlers={ITEM: ocp.PyTreeCheckpointHandler()}) as reader:
        restored = reader.restore(step, args=ocp.args.Composite(**{ITEM: args}))[ITEM]
    except Exception as err:
      raise self._damaged(step, "arrays", f"{type(err).__name__}: {err}") from err
    for key in prefix:
      restored = restored[key]
    return {path_name(p): leaf for p, leaf in jax.tree_util.tree_leaves_with_path(restored)}

  def close(self) -> None:
    """Waits for pending saves and deletions, then releases Orbax's resources."""
    self._manager.close()

  def __enter__(self) -> "Checkpointer":
    return self

  def __exit__(self, *exc_info) -> None:
    self.close()
