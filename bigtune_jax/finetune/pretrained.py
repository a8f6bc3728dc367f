"""Load a pretraining run's parameters into a model with a new head (seed 001 §3.2 step 1,
"load the pretrained model", and §4.2's ``model = ...``).

A pretraining run of ``bt.train.fit`` checkpoints its whole ``TrainState`` (parameters,
optimizer state, controls) into ``WORKDIR/checkpoints/<step>`` through
``bt.train.Checkpointer``. Fine-tuning needs only the parameters, and not all of them:

.. math:: \\theta_{new} = (\\theta_{backbone}^{pretrained},\\ \\phi_{head}^{init})

``load_pretrained(workdir, template, skip=("head",))`` reads just the ``params`` entries
of the checkpoint that the template does not skip, through the engine's own
``Checkpointer(read_only=True).restore_params`` (an Orbax partial restore: the
optimizer state, whatever optimizer pretraining used, is never read), and keeps the
template's own values, a fresh initialization, for the skipped ones: the new head may have
another shape, or not exist in the old model at all. Before anything is read, the kept
entries are compared with the checkpoint's metadata by ``bt.train``'s own checker, and a
difference is an error naming the first mismatching path.
"""

import os
from pathlib import Path

from bigtune_jax import tree_paths
from bigtune_jax import validation
from bigtune_jax.finetune import paths
from bigtune_jax.train import checkpoint as checkpoint_lib


def _checkpoint_directory(directory: str | os.PathLike) -> Path:
  """``directory/checkpoints`` for a ``fit`` workdir, else ``directory`` itself."""
  directory = Path(directory).absolute()
  nested = directory / "checkpoints"
  directory = nested if nested.is_dir() else directory
  if not directory.is_dir():
    raise FileNotFoundError(f"no checkpoint directory at {directory}")
  return directory


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
  with checkpoint_lib.Checkpointer(directory, read_only=True) as checkpoints:
    stored = checkpoints.param_metadata(step)  # before anything is read
    wanted = tree_paths.leaf_paths(target)
    skipped = paths.select(wanted + [p for p in stored if p not in wanted], skip, "skip")
    return checkpoints.restore_params(target, step=step, skip=skipped.__contains__)
