"""The optimizers under test: one list, one battery of tests run over all of them."""

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

import bigtune_jax as bt
from tests import reference as R


@dataclasses.dataclass(frozen=True)
class Case:
  name: str
  make: Callable[[Any], optax.GradientTransformation]  # learning_rate -> transform
  reference: Callable[[Callable[[int], float]], Any] | None  # lr(t) -> numpy (init, step)
  learning_rate: float = 0.05
  accepts_schedule: bool = True
  uses_params: bool = False  # update needs params (regularizers)
  update_kwargs: tuple = ()  # extra keyword arguments of every update, as (name, value) pairs

  @property
  def kwargs(self) -> dict:
    return dict(self.update_kwargs)

  def __repr__(self):
    return self.name


CASES = [
    Case("sgd", bt.sgd, R.sgd),
    Case("momentum", lambda lr: bt.momentum(lr, gamma=0.8), lambda lr: R.momentum(lr, 0.8)),
    Case("ema_momentum", lambda lr: bt.ema_momentum(lr, beta=0.7),
         lambda lr: R.ema_momentum(lr, 0.7)),
    Case("adam", lambda lr: bt.adam(lr, b1=0.8, b2=0.95, eps=1e-6),
         lambda lr: R.adam(lr, 0.8, 0.95, 1e-6)),
    Case("adaptive_sgd", lambda lr: bt.adaptive_sgd(lr, beta=0.1),
         lambda lr: R.adaptive_sgd(lr, 0.1)),
    Case("hypergradient_sgd", lambda lr: bt.hypergradient_sgd(lr, hyper_lr=2e-3),
         lambda lr: R.hypergradient_sgd(lr(1), 2e-3), accepts_schedule=False),
    Case("hypergradient_adam",
         lambda lr: bt.hypergradient_adam(lr, hyper_lr=1e-3, b1=0.8, b2=0.95, eps=1e-6),
         lambda lr: R.hypergradient_adam(lr(1), 1e-3, 0.8, 0.95, 1e-6), accepts_schedule=False),
    Case("l2_sgd", lambda lr: optax.chain(bt.l2(0.1), bt.sgd(lr)),
         lambda lr: R.regularized(R.sgd(lr), l2=0.1), uses_params=True),
    Case("l1_momentum", lambda lr: optax.chain(bt.l1(0.05), bt.momentum(lr, gamma=0.9)),
         lambda lr: R.regularized(R.momentum(lr, 0.9), l1=0.05), uses_params=True),
    Case("adam_bf16_moments", lambda lr: bt.adam(lr, moment_dtype="bfloat16"), None,
         learning_rate=1e-2),
    # The metric is flat, so with patience 0 the scale halves from the second step on.
    Case("sgd_reduce_on_plateau",
         lambda lr: optax.chain(bt.sgd(lr), bt.reduce_on_plateau(factor=0.5, patience=0)),
         None, update_kwargs=(("value", 1.0),)),
    Case("accumulate_adam", lambda lr: bt.accumulate(bt.adam(lr, b1=0.8, b2=0.95), 2), None),
]

# Transforms that are not optimizers on their own (no learning rate): they get optax's
# conventions (tests/transforms/test_optax_conventions.py) but not the optimizer battery.
PIECES = [
    Case("reduce_on_plateau", lambda lr: bt.reduce_on_plateau(), None,
         update_kwargs=(("value", 1.0),)),
    Case("l1", lambda lr: bt.l1(0.1), None, uses_params=True),
    Case("l2", lambda lr: bt.l2(0.1), None, uses_params=True),
    Case("scale_by_accumulated_norm", lambda lr: bt.transforms.scale_by_accumulated_norm(0.1), None),
    Case("scale_by_low_precision_adam", lambda lr: bt.transforms.scale_by_low_precision_adam(), None),
    Case("hypergradient_descent_momentum",
         lambda lr: bt.hypergradient_descent(optax.trace(0.9), lr, 1e-3), None),
]
ALL = CASES + PIECES


def quadratic_problem(seed: int, steps: int, dtype=np.float64):
  """A noisy quadratic on a nested tree: g_t(w) = a * w + noise_t, with a in [0.5, 1.5]."""
  rng = np.random.default_rng(seed)
  params = {
      "dense": {"kernel": rng.standard_normal((5, 3)), "bias": rng.standard_normal((3,))},
      "conv": [rng.standard_normal((2, 3, 4))],
      "scale": np.asarray(rng.standard_normal()),
  }
  params = jax.tree.map(lambda x: np.asarray(x, dtype), params)
  curvature = jax.tree.map(lambda x: rng.uniform(0.5, 1.5, np.shape(x)).astype(dtype), params)
  noise = jax.tree.map(lambda x: (0.3 * rng.standard_normal((steps,) + np.shape(x))).astype(dtype),
                       params)
  return params, curvature, noise


def run_jax(opt, params, curvature, noise, update_kwargs=None):
  """Trains with ``opt`` under ``jax.jit(lax.scan)``; returns the parameter trajectory.
  ``update_kwargs`` (e.g. a plateau's ``value``) go to every update."""
  update_kwargs = update_kwargs or {}

  def step(carry, noise_t):
    w, state = carry
    grads = jax.tree.map(lambda a, x, n: a * x + n, curvature, w, noise_t)
    updates, state = opt.update(grads, state, w, **update_kwargs)
    w = optax.apply_updates(w, updates)
    return (w, state), w

  @jax.jit
  def run(params, noise):
    params = jax.tree.map(jnp.asarray, params)
    _, trajectory = jax.lax.scan(step, (params, opt.init(params)), noise)
    return trajectory

  return run(params, noise)


def run_numpy(reference, params, curvature, noise):
  """The same training with a NumPy transcription; returns the trajectory like run_jax."""
  init, step = reference
  treedef = jax.tree.structure(params)
  ws = [np.asarray(x, np.float64) for x in jax.tree.leaves(params)]
  a = jax.tree.leaves(curvature)
  ns = jax.tree.leaves(noise)
  state, trajectory = init(ws), []
  for t in range(ns[0].shape[0]):
    gs = [ai * w + n[t] for ai, w, n in zip(a, ws, ns)]
    ws, state = step(ws, gs, state, t + 1)
    trajectory.append(ws)
  stacked = [np.stack([traj[i] for traj in trajectory]) for i in range(len(ws))]
  return jax.tree.unflatten(treedef, stacked)
