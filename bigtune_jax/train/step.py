"""Loss functions, the train step and the eval step.

A loss function maps ``(params, batch, rng, train)`` to ``(loss, sums)``: ``loss`` is the
mean over the batch's real rows (``batch["mask"]``, False on the rows that pad a last
batch), and ``sums`` holds ``loss_sum``, ``count`` (and ``correct`` for classifiers)
so that evaluation adds batches up exactly, whatever the padding.

The train step (``jax.jit(train_step, donate_argnums=0)``):

.. math::
  (\\ell, g) = \\nabla \\ell(w_t; B_t), \\quad (u, s') = tx(g, s, w_t; m, n), \\quad
  w_{t+1} = w_t + u

where ``m`` / ``n`` are the last evaluation's monitored metric and the evaluation count
(``state.metric`` / ``state.metric_count``), passed as optax's extra arguments
``value=m, value_count=n``: a ``bt.reduce_on_plateau`` in the chain reads them, every
other transform ignores them. (Transforms that read ``value`` as the current batch's loss,
such as ``optax.polyak_sgd``, do not fit this step.) **NaN guard**: when the
loss, any gradient, or any of the new parameters or optimizer state is not finite (a NaN
schedule, a rate of 1e40), the parameters and optimizer state are left exactly as they
were, ``skipped_steps`` counts it, and training goes on; a non-finite step never reaches
the state. Gradient accumulation is the optimizer's business
(``bt.accumulate``): each call of the step is one micro-batch.
"""

import inspect
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from bigtune_jax.train import data_checks
from bigtune_jax.train import nnx_state
from bigtune_jax.train.state import TrainState
from bigtune_jax.train.state import accepts_train_flag

LossFn = Callable[[Any, dict, jax.Array, bool], tuple[jax.Array, dict]]


def _apply(model: nn.Module) -> Callable:
  takes_train = accepts_train_flag(model)
  if nnx_state.is_nnx(model):  # nnx.merge of its graph and the params inside the loss
    return nnx_state.apply_fn(model, takes_train)

  def apply(params, x, rng, train, **kwargs):
    if takes_train:
      return model.apply({"params": params}, x, train=train, rngs={"dropout": rng}, **kwargs)
    return model.apply({"params": params}, x, **kwargs)

  return apply


def _inference(apply: Callable) -> Callable:
  """``(params, x) -> output`` with dropout off: one function per loss, so that the
  ``jax.eval_shape`` of its data checks is traced once per input shape."""

  def forward(params, x):
    return apply(params, x, jax.random.key(0), False)

  return jax.jit(forward)  # only shape-evaluated: jit's trace cache serves a repeated check


def _masked_mean(per_example, mask):
  mask = mask.astype(per_example.dtype)
  total = jnp.sum(per_example * mask)
  count = jnp.sum(mask)
  return total / jnp.maximum(count, 1.0), total, count


def _mask(batch, like):
  return batch.get("mask", jnp.ones(like.shape[:1], bool))


def classification_loss(model: nn.Module, input_key: str = "image",
                        label_key: str = "label") -> LossFn:
  """Softmax cross-entropy of logits against integer labels; also counts correct rows."""
  apply = _apply(model)

  def loss_fn(params, batch, rng, train):
    logits = apply(params, batch[input_key], rng, train).astype(jnp.float32)
    labels = batch[label_key]
    mask = _mask(batch, labels)
    per_example = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    loss, total, count = _masked_mean(per_example, mask)
    correct = jnp.sum((jnp.argmax(logits, -1) == labels) & mask)
    return loss, {"loss_sum": total, "count": count, "correct": correct.astype(jnp.float32)}

  forward = _inference(apply)

  def check_data(params, splits: data_checks.Splits) -> None:
    """On the host, before any step: labels are integers in [0, classes) (inside the jitted
    step an out-of-range label trains silently to NaN and a float label is cast)."""
    def classes(where, dataset) -> int:  # the last axis of the logits, traced, not computed
      if input_key not in dataset.arrays:
        raise ValueError(f"{where} has no model input {input_key!r}, only "
                         f"{sorted(dataset.arrays)} (pass input_key=)")
      x = np.asarray(dataset.arrays[input_key][:1])
      return data_checks.traced_shape(forward, params, x, where).shape[-1]
    data_checks.check_labels(splits, label_key, classes)

  loss_fn.check_data = check_data  # read by fit and evaluate; absent on regression losses
  return loss_fn


def regression_loss(model: nn.Module, input_key: str = "x", target_key: str = "y") -> LossFn:
  """Mean squared error, averaged over the target's features and the batch's real rows."""
  apply = _apply(model)

  def loss_fn(params, batch, rng, train):
    prediction = apply(params, batch[input_key], rng, train).astype(jnp.float32)
    target = batch[target_key].astype(jnp.float32)
    squared = (prediction - target) ** 2
    per_example = squared.reshape(squared.shape[0], -1).mean(axis=1)
    loss, total, count = _masked_mean(per_example, _mask(batch, target))
    return loss, {"loss_sum": total, "count": count}

  return loss_fn


def _takes_targets(model: nn.Module) -> bool:
  return "targets" in inspect.signature(type(model).__call__).parameters


def language_model_loss(model: nn.Module, input_key: str = "inputs",
                        target_key: str = "targets") -> LossFn:
  """Next-token cross-entropy per token (every token of a real row counts once).

  A model whose ``__call__`` takes ``targets`` (``GPT``, ``Llama``) returns the per-token
  losses through its fused, chunked head (``models/tied_head.py``): the ``(B, T, V)``
  float32 logits are never built, so training holds at most one chunk of them (the memory
  measured in ``benchmarks/lm_loss_memory.py``). Token accuracy would need the full logits'
  argmax, so on that path the sums hold ``loss_sum`` and ``count`` only. Any other model
  returns logits, and the sums also count ``correct`` (argmax) tokens.
  """
  apply = _apply(model)
  fused = _takes_targets(model)
  forward = _inference(apply)

  def loss_fn(params, batch, rng, train):
    targets = batch[target_key]  # (B, T)
    mask = jnp.broadcast_to(_mask(batch, targets)[:, None], targets.shape)
    if fused:
      per_token = apply(params, batch[input_key], rng, train, targets=targets)  # (B, T)
      loss, total, count = _masked_mean(per_token.reshape(-1), mask.reshape(-1))
      return loss, {"loss_sum": total, "count": count}
    logits = apply(params, batch[input_key], rng, train).astype(jnp.float32)  # (B, T, V)
    per_token = optax.softmax_cross_entropy_with_integer_labels(logits, targets)
    loss, total, count = _masked_mean(per_token.reshape(-1), mask.reshape(-1))
    correct = jnp.sum((jnp.argmax(logits, -1) == targets) & mask)
    return loss, {"loss_sum": total, "count": count, "correct": correct.astype(jnp.float32)}

  def check_data(params, splits: data_checks.Splits) -> None:
    """On the host, before any step: token ids lie in the model's vocabulary (its
    ``config.vocab_size``; else the last axis of its logits), or training gives NaN."""
    vocab_size = getattr(getattr(model, "config", None), "vocab_size", None)
    given = [(where, d) for where, d in splits.items() if d is not None]
    if vocab_size is None and not fused and given:  # the logits' last axis
      where, first = given[0]
      x = next(first.batches(1, shuffle=False, process_index=0, process_count=1))[input_key]
      vocab_size = data_checks.traced_shape(forward, params, x, where).shape[-1]
    if vocab_size is not None:
      data_checks.check_token_ids(splits, vocab_size, (input_key, target_key))

  loss_fn.check_data = check_data
  return loss_fn


def _all_finite(tree) -> jax.Array:
  """True when every float leaf of ``tree`` is finite (integer counters and keys pass)."""
  leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)
            if jnp.issubdtype(jnp.asarray(x).dtype, jnp.inexact)]
  return jnp.stack(leaves).all() if leaves else jnp.asarray(True)


def _none_turned_non_finite(old, new) -> jax.Array:
  """True unless a float leaf that was finite in ``old`` is not in ``new``. Optimizer states
  may hold infinities on purpose (a plateau's best metric starts at +inf)."""
  leaves = [jnp.all(jnp.isfinite(b) | ~jnp.isfinite(a))
            for a, b in zip(jax.tree.leaves(old), jax.tree.leaves(new))
            if jnp.issubdtype(jnp.asarray(b).dtype, jnp.inexact)]
  return jnp.stack(leaves).all() if leaves else jnp.asarray(True)


def _in_use(params, params_in_use):
  if params_in_use is None:
    return params
  return jax.lax.with_sharding_constraint(params, params_in_use)


def make_train_step(loss_fn: LossFn, *, params_in_use=None
                    ) -> Callable[[TrainState, dict], tuple[TrainState, dict]]:
  """``step(state, batch) -> (state, metrics)``; jit it with ``donate_argnums=0``.

  ``params_in_use``: shardings (a tree like the parameters) the parameters take where the
  loss uses them, e.g. FSDP's gathered layout (``sharding.jit_train_step`` sets it): XLA
  then all-gathers each weight before use and reduces its gradient back onto the shards.
  None leaves placement to XLA (one device, data parallelism).
  """

  def loss_in_use(params, batch, rng, train):
    return loss_fn(_in_use(params, params_in_use), batch, rng, train)

  def train_step(state: TrainState, batch: dict):
    rng = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
    (loss, sums), grads = jax.value_and_grad(loss_in_use, has_aux=True)(state.params, batch,
                                                                        rng, True)
    updates, opt_state = optax.with_extra_args_support(state.tx).update(
        grads, state.opt_state, state.params, value=state.metric,
        value_count=state.metric_count)
    params = optax.apply_updates(state.params, updates)
    # A NaN schedule or an overflowing rate gives non-finite updates from finite gradients:
    # guard what would be stored, not only what was computed.
    finite = (jnp.isfinite(loss) & _all_finite(grads) & _all_finite(params)
              & _none_turned_non_finite(state.opt_state, opt_state))
    state = state.replace(step=state.step + 1,
                          params=optax.tree.where(finite, params, state.params),
                          opt_state=optax.tree.where(finite, opt_state, state.opt_state),
                          skipped_steps=state.skipped_steps + (~finite).astype(jnp.int32))
    metrics = {"loss": loss, "grad_norm": optax.tree.norm(grads), "finite": finite, **sums}
    return state, metrics

  return train_step


def mean_metrics(sums: dict) -> dict:
  """The means of summed eval metrics: ``{"loss": loss_sum / count, "accuracy": correct /
  count}`` (accuracy when the loss counts ``correct`` rows), elementwise and in the sums'
  own dtype. The one reduction of ``make_eval_step``'s sums: for one dataset (``fit``,
  ``evaluate``), for a population's ``(N,)`` sums on the host, or traced inside a program
  (PBT's scores). A count of 0 (nothing evaluated) gives 0, not NaN."""
  count = sums["count"] + (sums["count"] == 0)  # operators: numpy and jax arrays alike
  means = {"loss": sums["loss_sum"] / count}
  if "correct" in sums:
    means["accuracy"] = sums["correct"] / count
  return means


def make_eval_step(loss_fn: LossFn, *, params_in_use=None) -> Callable[[Any, dict], dict]:
  """``step(params, batch) -> sums`` (deterministic: dropout off); ``params_in_use`` as in
  :func:`make_train_step`."""

  def eval_step(params, batch: dict):
    _, sums = loss_fn(_in_use(params, params_in_use), batch, jax.random.key(0), False)
    return sums

  return eval_step
