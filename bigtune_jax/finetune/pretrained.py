"""Load a pretraining run's parameters into a model with a new head (seed 001 §3.2 step 1,
"load the pretrained model", and §4.2's ``model = ...``).

A pretraining run of ``bt.train.fit`` checkpoints its whole ``TrainState`` (parameters,
optimizer state, controls) into ``WORKDIR/checkpoints/<step>`` through
``bt.train.Checkpointer``. Fine-tuning needs only the parameters, and not all of them:

.. math:: \\theta_{new} = (\\theta_{backbone}^{pretrained},\\ \\phi_{head}^{init})

``load_pretrained(workdir, template, skip=("head",))`` reads just the ``params`` entries
of the checkpoint that the template does not skip (an Orbax partial restore: the
optimizer state, whatever optimizer pretraining used, is never read), and keeps the
template's own values, a fresh initialization, for the skipped ones: the new head may have
another shape, or not exist in the old model at all. Before anything is read, the kept
entries are compared with the checkpoint's metadata by ``bt.train``'s own checker, and a
difference is an error naming the first mismatching path.
"""

import os
from pathlib import Path

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp

from bigtune_jax import tree_paths
from bigtune_jax.finetune import paths
from bigtune_jax.train import checkpoint as checkpoint_lib
from bigtune_jax import validation


def _checkpoint_directory(directory: str | os.PathLike) -> Path:
  """``directory/checkpoints`` for a ``fit`` workdir, else ``directory`` itself."""
  directory = Path(directory).absolute()
  nested = directory / "checkpoints"
  directory = nested if nested.is_dir() else directory
  if not directory.is_dir():
    raise FileNotFoundError(f"no checkpoint directory at {directory}")
  return directory


def _stored_params(tree) -> tuple[dict, tuple[str, ...]]:
  """The parameters of a stored tree and where they are in it: under ``params`` for a
  training state, else the whole tree."""
  if isinstance(tree, dict) and "params" in tree and "opt_state" in tree:
    return tree["params"], ("params",)
  return tree, ()


def load_pretrained(directory: str | os.PathLike, target, *, step: int | None = None,
                    skip: paths.Selection = ("head",)):
  """``target``'s parameters, with every entry not in ``skip`` read from a checkpoint.

  Args:
    directory: a ``fit`` workdir (its ``checkpoints/``) or a checkpoint directory of
      ``bt.train.Checkpointer``. The checkpoint holds a ``TrainState`` (its ``params`` are
      read) or a bare parameter tree.
    target: the new model's parameters, e.g. ``bt.train.init_params(new_model, x)``: the
      shape, dtype and sharding of every entry to read, and the initial value of every
      skipped one (so skipped entries must be arrays; the others may be
      ``jax.ShapeDtypeStruct``).
    step: the checkpoint's step; None: the latest.
    skip: a selection (``paths``) of entries NOT to read, in the target or the checkpoint:
      the new head (default ``("head",)``), or old layers the new model dropped.

  Returns:
    A tree of ``target``'s structure: checkpoint values, template values where skipped.

  Raises:
    FileNotFoundError: no checkpoint directory, or no checkpoint at ``step`` (the
      available steps are named).
    ValueError: a kept entry differs from the checkpoint in shape or dtype, is missing
      from one side (the first such path is named), a skip prefix names no entry, or a
      skipped entry has no value in ``target``.
  """
  if step is not None:
    validation.check_int("step", step, 0)
  paths.check_selection("skip", skip)
  directory = _checkpoint_directory(directory)
  item = checkpoint_lib.ITEM  # the name of the Checkpointer's one item
  with ocp.CheckpointManager(directory, options=ocp.CheckpointManagerOptions(create=False),
                             item_handlers={item: ocp.PyTreeCheckpointHandler()}) as manager:
    steps = sorted(manager.all_steps())
    step = steps[-1] if step is None and steps else step
    if step is None or step not in steps:
      missing = "no checkpoint" if step is None else f"no checkpoint for step {step}"
      raise FileNotFoundError(f"{missing} in {directory}; available steps: {steps}")
    where = directory / str(step)
    try:
      stored = manager.item_metadata(step)[item]
      stored, prefix = _stored_params(getattr(stored, "tree", stored))
    except Exception as err:
      raise ValueError(f"corrupt checkpoint {where}: cannot read its metadata: {err}") from err

    # Check everything before reading anything.
    stored, initial = tree_paths.flatten(stored), tree_paths.flatten(target)
    wanted = tree_paths.flatten(checkpoint_lib.abstract_like(target))
    skipped = paths.select(list(wanted) + [p for p in stored if p not in wanted], skip, "skip")
    kept = {path: leaf for path, leaf in wanted.items() if path not in skipped}
    mismatch = checkpoint_lib.first_mismatch(
        {path: meta for path, meta in stored.items() if path not in skipped}, kept)
    if mismatch is not None:
      raise ValueError(f"checkpoint {where} does not fit the target: {mismatch}")
    for path in sorted(skipped & set(initial)):
      if isinstance(initial[path], jax.ShapeDtypeStruct):
        raise ValueError(f"target: skipped entry {path!r} needs an initial value (an array), "
                         f"got {initial[path]!r}")

    restored = {}
    if kept:  # a partial restore: only these entries of the checkpoint are read
      item_target = tree_paths.unflatten({"/".join(prefix + (path,)): leaf
                                          for path, leaf in kept.items()})
      args = ocp.args.PyTreeRestore(
          item=item_target, partial_restore=True,
          restore_args=ocp.checkpoint_utils.construct_restore_args(item_target))
      try:
        restored = manager.restore(step, args=ocp.args.Composite(**{item: args}))[item]
      except Exception as err:
        raise ValueError(f"corrupt checkpoint {where}: {type(err).__name__}: {err}") from err
      restored = tree_paths.flatten(restored[prefix[0]] if prefix else restored)

  def value(path, leaf):
    name = tree_paths.path_name(path)
    return restored[name] if name in restored else jnp.copy(leaf)  # a copy: fit donates

  return jax.tree_util.tree_map_with_path(value, target)
