"""The compiled programs of a population: train an interval, evaluate (seed 003 §3.1, "many
trials at once"; the vectorized population of Jaderberg et al., 2017, arXiv:1711.09846).

Member :math:`i` has its own trainable tree :math:`w^i` (a whole model, or adapters over
the frozen shared weights :math:`W`), optimizer state :math:`s^i` and continuous
hyperparameters :math:`h^i`; at its step :math:`t` member :math:`i` sees the batch
:math:`B_t` of one data order (every member of a plain population at the same :math:`t`;
a refilled population's members each at steps of their own):

.. math::
  (u^i, s^i_{t+1}) = tx(h^i)\\big(\\nabla \\ell(w^i_t; W, h^i, B_t), s^i_t, w^i_t\\big),
  \\qquad w^i_{t+1} = w^i_t + u^i, \\qquad i = 1..N

as ``jax.vmap`` over :math:`(w, s, h)` of ``bigtune_jax.train.make_train_step`` (NaN guard
included), :math:`W` broadcast (and the batch, when all members are at one step), inside
a ``lax.scan`` over the steps between two evaluations. ``make_optimizer(h)`` and the member's loss (``kind.loss(W, h)``) are
built *inside* the vmapped function with traced scalars, so the hyperparameters are data:
another population of the same size, kind and batch size runs the program already compiled
(``kind`` and ``make_optimizer`` are static arguments: pass equal objects to reuse it).
"""

from collections.abc import Callable, Mapping
import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from bigtune_jax.train import step as step_lib
from bigtune_jax.train.step import make_eval_step
from bigtune_jax.train.step import make_train_step
from bigtune_jax import validation


def train_members(kind, make_optimizer, states, hparams, active, data: Mapping[str, jax.Array],
                  rows: jax.Array, chunk: int | None = None, shared=None):
  """``steps`` steps of every member on the batches ``data[rows ...]``: ``rows`` of shape
  ``(steps, batch)`` are every member's batches (one population, one data order), of shape
  ``(N, steps, batch)`` each member's own (members of a refilled population are at steps of
  their own). ``active`` (None: all train; else ``(N, steps)`` bool): where False, the
  member's state is kept (a select). Returns ``(states, train_loss (N,))``, the loss
  averaged over each member's active steps.

  ``chunk`` (a divisor of N; None: N) members are vmapped together through all the steps,
  and ``lax.map`` runs the N / chunk chunks one after another: the same arithmetic, but a
  CPU keeps a small chunk's parameters and optimizer state in its caches over the steps.
  ``shared``: the weights every member shares and none trains (``kind.loss(shared, hp)``).
  """
  own = rows.ndim == 3  # each member its own rows

  def member_step(state, hp, live, batch):
    train_step = make_train_step(kind.loss(shared, hp))
    new, metrics = train_step(state.replace(tx=make_optimizer(hp)), batch)
    new = new.replace(tx=None)
    if live is not None:
      new = jax.tree.map(lambda n, o: jnp.where(live, n, o), new, state)
    return new, metrics["loss"]

  def run(members):
    states, hparams, active, member_rows = members

    def step(states, xs):
      step_rows, live = xs  # (batch,) or (members, batch); None or (members,)
      batch = {name: array[step_rows] for name, array in data.items()}
      batch["mask"] = jnp.ones(step_rows.shape, bool)
      in_axes = (0, 0, None if live is None else 0, 0 if own else None)
      return jax.vmap(member_step, in_axes=in_axes)(states, hparams, live, batch)

    by_step = lambda x: None if x is None else jnp.swapaxes(x, 0, 1)  # (steps, members, ...)
    xs = (by_step(member_rows) if own else rows, by_step(active))
    states, losses = jax.lax.scan(step, states, xs)  # losses: (steps, members)
    if active is None:
      return states, losses.mean(axis=0)
    live = by_step(active)
    total = jnp.where(live, losses, 0.0).sum(axis=0)
    return states, total / jnp.maximum(live.sum(axis=0), 1)

  n = next(iter(hparams.values())).shape[0]
  members = (states, hparams, active, rows if own else None)
  if chunk is None or chunk >= n:
    return run(members)
  split = lambda x: x.reshape(n // chunk, chunk, *x.shape[1:])
  merge = lambda x: x.reshape(n, *x.shape[2:])
  out = jax.lax.map(run, jax.tree.map(split, members))
  return jax.tree.map(merge, out)


def evaluate_members(kind, params, hparams, val_batches: Mapping[str, jax.Array],
                     shared=None) -> dict:
  """Every member's summed eval metrics (``loss_sum``, ``count``, ``correct``; (N,) each)
  over the stacked, padded validation batches ``(num_batches, batch, ...)``."""

  def member(p, hp):
    eval_step = make_eval_step(kind.loss(shared, hp))
    sums = jax.lax.map(lambda batch: eval_step(p, batch), val_batches)
    return jax.tree.map(lambda s: s.sum(axis=0), sums)

  return jax.vmap(member)(params, hparams)


def check_member_chunk(member_chunk: int | None, n: int) -> None:
  """ValueError unless ``member_chunk`` is None or a divisor of the member count ``n``."""
  if member_chunk is not None:
    validation.check_int("member_chunk", member_chunk, 1)
    if n % member_chunk:
      raise ValueError(f"member_chunk must be a divisor of the number of members {n}, got "
                       f"{member_chunk}")


def choose_chunk(params, member_chunk: int | None = None) -> int:
  """The ``chunk`` of ``train_members`` for stacked ``params`` (leading axis N): the largest
  divisor of N at most ``member_chunk`` when given (a compacted population keeps it
  dividing); else all N on an accelerator, and on a CPU the largest divisor of N whose
  chunk holds at most 2^18 parameters (1 MB in float32; with gradients and momentum it stays
  in a core's caches). Measured on 2 CPU cores: 64 members of a 784-256-10 MLP train 1.5-2x
  slower all vmapped together than one at a time; 8 of a 64-256-256-10 MLP fastest 2 at a
  time, of a 64-64-10 MLP all together.
  """
  leaves = jax.tree.leaves(params)
  n = leaves[0].shape[0]
  if member_chunk is not None:
    fits = member_chunk
  elif jax.default_backend() != "cpu":
    return n
  else:
    per_member = sum(leaf.size for leaf in leaves) // n
    fits = max(1, (1 << 18) // max(per_member, 1))
  return max(d for d in range(1, n + 1) if n % d == 0 and d <= fits)


def mean_metrics(sums: Mapping[str, Any]) -> dict[str, np.ndarray]:
  """``{"val_loss": (N,), "val_accuracy": (N,)}`` (accuracy for a classifier's loss) from
  summed eval metrics, on the host in float64."""
  sums = {k: np.asarray(v, np.float64) for k, v in jax.device_get(dict(sums)).items()}
  return {f"val_{name}": mean for name, mean in step_lib.mean_metrics(sums).items()}


class Programs(NamedTuple):
  """The jit-compiled population functions (see :func:`jitted`)."""
  train: Callable  # train_members
  evaluate: Callable  # evaluate_members


@functools.cache
def jitted() -> Programs:
  """The jit-compiled ``train_members`` and ``evaluate_members``, both at XLA's full
  optimization. (Evaluation once compiled at backend optimization level 0 on a CPU: for
  ``benchmarks/search_quality_tasks``' small GPT it saved 0.1 of 1.1 CPU s of compile and
  ran 2.7 times slower, 0.82 against 0.30 CPU s for 4 members; for its tiny LoRA it saved
  0.5 s and ran 1.5 times slower: a loss after a few evaluations.)
  """
  return Programs(
      train=jax.jit(train_members, static_argnames=("kind", "make_optimizer", "chunk"),
                    donate_argnames=("states",)),
      evaluate=jax.jit(evaluate_members, static_argnames=("kind",)))
