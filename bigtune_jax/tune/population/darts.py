"""DARTS: gradient-based structure search (seed 003 §3.2.1-3.2.2, structure parameters
:math:`s` and weights :math:`\\theta` updated by stochastic gradients; Liu et al., ICLR 2019,
"DARTS: Differentiable Architecture Search", arXiv:1806.09055).

The bilevel problem :math:`\\min_\\alpha \\mathcal{L}_{val}(w^*(\\alpha), \\alpha)` s.t.
:math:`w^*(\\alpha) = \\arg\\min_w \\mathcal{L}_{train}(w, \\alpha)`, solved to first order
as the reference code does with ``unrolled=False``: every step, on a validation batch
:math:`V_t` and then a training batch :math:`B_t`,

.. math::
  \\alpha_{t+1} = \\alpha_t - \\text{Adam}\\big(\\nabla_\\alpha \\mathcal{L}(w_t, \\alpha_t; V_t)
      + \\lambda_\\alpha \\alpha_t\\big), \\qquad
  w_{t+1} = w_t - \\text{SGD}_{\\eta_t, \\mu}\\big(\\text{clip}_5(\\nabla_w
      \\mathcal{L}(w_t, \\alpha_{t+1}; B_t)) + \\lambda_w w_t\\big)

with the reference's settings: Adam lr 3e-4, :math:`\\beta = (0.5, 0.999)`,
:math:`\\lambda_\\alpha = 10^{-3}` (``torch.optim.Adam(weight_decay=...)``, L2 added to the
gradient); SGD momentum 0.9, :math:`\\lambda_w = 3 \\cdot 10^{-4}`, global-norm clipping at
5, :math:`\\eta_t` cosine-annealed from 0.025 to 0.001 (per step here, per epoch there).
Either optimizer may be replaced. The second-order (unrolled) variant is not implemented.

The supernet is ``bigtune_jax.models.Supernet``; ``params["arch"]`` holds :math:`\\alpha`
and the rest :math:`w`. Each step differentiates with respect to its own part only, so an
architecture update never moves a weight and vice versa. The data live on the device; a
``lax.scan`` of the pure step runs ``record_every`` steps per call (one compilation). The
result holds the derived architecture (``Supernet.derive``), the history of the softmax
weights, and the trained supernet; retrain ``supernet.discrete(result.arch)`` from scratch
(``bigtune_jax.train.fit``), as DARTS does.
"""

from collections.abc import Callable
import dataclasses
import functools
import time
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax

from bigtune_jax import validation
from bigtune_jax.data.pipeline import ArrayDataset
from bigtune_jax.models.supernet import Architecture
from bigtune_jax.models.supernet import Supernet
from bigtune_jax.models.supernet import merge_arch
from bigtune_jax.models.supernet import split_arch
from bigtune_jax.train.loop import evaluate
from bigtune_jax.train.state import init_params
from bigtune_jax.train.step import LossFn
from bigtune_jax.train.step import classification_loss
from bigtune_jax.transforms import adam
from bigtune_jax.transforms import l2
from bigtune_jax.tune.population.data import PopulationData
from bigtune_jax.tune.population.data import model_input


def arch_optimizer(learning_rate: float = 3e-4, b1: float = 0.5, b2: float = 0.999,
                   weight_decay: float = 1e-3) -> optax.GradientTransformation:
  """The reference's architecture optimizer: Adam with L2 weight decay on the gradient."""
  return optax.chain(l2(weight_decay), adam(learning_rate, b1=b1, b2=b2))


def weight_optimizer(steps: int, learning_rate: float = 0.025, min_learning_rate: float = 1e-3,
                     momentum: float = 0.9, weight_decay: float = 3e-4,
                     grad_clip: float = 5.0) -> optax.GradientTransformation:
  """The reference's weight optimizer: clipping, L2, SGD with momentum on a cosine
  schedule from ``learning_rate`` to ``min_learning_rate`` over ``steps``."""
  validation.check_int("steps", steps, 1)
  validation.check_interval("min_learning_rate", min_learning_rate, 0.0, learning_rate,
                            high_closed=True)
  schedule = optax.cosine_decay_schedule(learning_rate, steps,
                                         alpha=min_learning_rate / learning_rate)
  return optax.chain(optax.clip_by_global_norm(grad_clip), l2(weight_decay),
                     optax.sgd(schedule, momentum=momentum))


@flax.struct.dataclass
class DartsState:
  step: jax.Array  # shape=(), int32
  weights: Any  # the supernet's parameters without "arch"
  alphas: jax.Array  # (edges, ops)
  weight_opt_state: Any
  arch_opt_state: Any


def make_darts_step(loss_fn: LossFn, weight_tx: optax.GradientTransformation,
                    arch_tx: optax.GradientTransformation) -> Callable:
  """``step(state, train_batch, val_batch) -> (state, metrics)``: one first-order DARTS
  step, the architecture update on ``val_batch`` then the weight update on
  ``train_batch``. Pure; ``loss_fn(params, batch, rng, train)`` as ``bt.train``'s."""

  def step(state: DartsState, train_batch: dict, val_batch: dict):
    rng = jax.random.key(0)  # the supernet has no dropout

    def val_loss(alphas):
      return loss_fn(merge_arch(state.weights, alphas), val_batch, rng, True)[0]

    arch_loss, arch_grad = jax.value_and_grad(val_loss)(state.alphas)
    updates, arch_opt_state = arch_tx.update(arch_grad, state.arch_opt_state, state.alphas)
    alphas = optax.apply_updates(state.alphas, updates)

    def train_loss(weights):
      return loss_fn(merge_arch(weights, alphas), train_batch, rng, True)[0]

    loss, grads = jax.value_and_grad(train_loss)(state.weights)
    updates, weight_opt_state = weight_tx.update(grads, state.weight_opt_state, state.weights)
    weights = optax.apply_updates(state.weights, updates)
    state = DartsState(state.step + 1, weights, alphas, weight_opt_state, arch_opt_state)
    return state, {"train_loss": loss, "val_loss": arch_loss}

  return step


@functools.partial(jax.jit, static_argnames=("step_fn",), donate_argnames=("state",))
def _run(step_fn, state, train, val, train_rows, val_rows):
  """``len(train_rows)`` steps in one ``lax.scan``; mean train / val loss over them."""

  def body(state, rows):
    take = lambda arrays, r: jax.tree.map(lambda a: a[r], arrays)
    return step_fn(state, take(train, rows[0]), take(val, rows[1]))

  state, metrics = jax.lax.scan(body, state, (train_rows, val_rows))
  return state, jax.tree.map(jnp.mean, metrics)


@dataclasses.dataclass
class DartsResult:
  arch: Architecture  # derived from the final alphas
  alphas: np.ndarray  # (records, edges, ops) softmax weights, after each recorded step
  alpha_steps: np.ndarray  # (records,) the step of each row of `alphas` (0: the init)
  history: list[dict]  # per record: step, train_loss, val_loss (means since the last)
  params: Any  # the trained supernet's parameters ("arch" included)
  val: dict  # the trained supernet on all of val_data: loss (and accuracy)
  steps: int
  wall_s: float


def _check_search(supernet, train_data, val_data, steps, batch_size, record_every,
                  seed) -> int:
  """``darts_search``'s arguments, each named; returns ``record_every`` (its default:
  ``steps // 50``)."""
  if not isinstance(supernet, Supernet):
    raise ValueError(f"supernet must be a bigtune_jax.models.Supernet, got {supernet!r}")
  validation.check_int("steps", steps, 1)
  validation.check_int("seed", seed, 0)
  record_every = max(steps // 50, 1) if record_every is None else record_every
  validation.check_int("record_every", record_every, 1)
  validation.check_int("batch_size", batch_size, 1)
  for name, dataset in (("train_data", train_data), ("val_data", val_data)):
    if not isinstance(dataset, ArrayDataset) or len(dataset) < batch_size:
      raise ValueError(f"{name} must be a bigtune_jax.data.ArrayDataset of at least "
                       f"batch_size={batch_size} examples, got {dataset!r}")
  return record_every


def darts_search(supernet: Supernet, train_data: ArrayDataset, val_data: ArrayDataset, *,
                 steps: int, batch_size: int = 64, loss_fn: LossFn | None = None,
                 weight_tx: optax.GradientTransformation | None = None,
                 arch_tx: optax.GradientTransformation | None = None,
                 record_every: int | None = None, seed: int = 0,
                 input_key: str | None = None) -> DartsResult:
  """Searches ``supernet``'s architecture by first-order DARTS (see the module docstring).

  Args:
    supernet: the ``bigtune_jax.models.Supernet`` to search.
    train_data: the weights' data (DARTS: one half of the training set).
    val_data: the architecture's data (DARTS: the other half).
    steps: DARTS steps (each one architecture and one weight update), >= 1.
    batch_size: examples per batch, for both updates.
    loss_fn: ``(params, batch, rng, train) -> (loss, sums)``; default
      ``bt.train.classification_loss(supernet)`` (``regression_loss`` for regression).
    weight_tx: the weights' optimizer; default :func:`weight_optimizer` over ``steps``.
    arch_tx: the architecture's optimizer; default :func:`arch_optimizer`.
    record_every: steps between records of the alphas and losses (one ``lax.scan``;
      a divisor of ``steps`` compiles once); default ``steps // 50``.
    seed: the supernet's initialization and the data order.
    input_key: the array the supernet takes (default: the first that is not a target).

  Returns:
    A :class:`DartsResult`.

  Raises:
    ValueError: naming the argument, before any work.
  """
  start = time.time()
  record_every = _check_search(supernet, train_data, val_data, steps, batch_size,
                               record_every, seed)
  train = PopulationData(train_data, None, batch_size, seed)  # the weights' steps
  val = PopulationData(val_data, None, batch_size, seed + 1)  # the architecture's steps
  loss_fn = classification_loss(supernet) if loss_fn is None else loss_fn
  weight_tx = weight_optimizer(steps) if weight_tx is None else weight_tx
  arch_tx = arch_optimizer() if arch_tx is None else arch_tx

  weights, alphas = split_arch(init_params(supernet, model_input(train.sample, input_key), seed))
  state = DartsState(jnp.zeros([], jnp.int32), weights, alphas, weight_tx.init(weights),
                     arch_tx.init(alphas))
  step_fn = make_darts_step(loss_fn, weight_tx, arch_tx)
  records, history, done = [np.asarray(supernet.arch_weights(alphas))], [], 0
  while done < steps:
    count = min(record_every, steps - done)
    state, metrics = _run(step_fn, state, train.train, val.train,
                          jnp.asarray(train.rows(done, count)), jnp.asarray(val.rows(done, count)))
    done += count
    records.append(np.asarray(supernet.arch_weights(state.alphas)))
    history.append({"step": done, **{k: float(v) for k, v in metrics.items()}})
  params = merge_arch(state.weights, state.alphas)
  val_metrics = evaluate(loss_fn, params, val_data, 512)
  return DartsResult(arch=supernet.derive(params), alphas=np.stack(records),
                     alpha_steps=np.asarray([0] + [r["step"] for r in history]),
                     history=history, params=params, val=val_metrics, steps=done,
                     wall_s=time.time() - start)
