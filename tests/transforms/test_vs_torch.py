"""Trajectories against PyTorch, the framework the reader already trusts (float64, <= 1e-9).

torch.optim: SGD, SGD(momentum), SGD(momentum, weight_decay), Adam, and SGD driven by
StepLR. lr_scheduler: StepLR, ExponentialLR, ReduceLROnPlateau (every combination of mode,
threshold_mode, cooldown and min_lr, over many random metric sequences).
"""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import bigtune_jax as bt
from tests import registry
from tests.utils import assert_trees_close

torch = pytest.importorskip("torch")

STEPS = 60


def run_torch(make_optimizer, params, curvature, noise, make_scheduler=None):
  """Trains the noisy quadratic of ``registry`` with a torch optimizer (float64)."""
  treedef = jax.tree.structure(params)
  ws = [torch.tensor(np.asarray(x), dtype=torch.float64) for x in jax.tree.leaves(params)]
  for w in ws:
    w.requires_grad_(False)
  a = [torch.tensor(x) for x in jax.tree.leaves(curvature)]
  ns = [torch.tensor(x) for x in jax.tree.leaves(noise)]
  opt = make_optimizer(ws)
  scheduler = make_scheduler(opt) if make_scheduler else None
  trajectory = []
  for t in range(ns[0].shape[0]):
    for w, ai, n in zip(ws, a, ns):
      w.grad = ai * w + n[t]
    opt.step()
    if scheduler is not None:
      scheduler.step()
    trajectory.append([w.detach().numpy().copy() for w in ws])
  stacked = [np.stack([traj[i] for traj in trajectory]) for i in range(len(ws))]
  return jax.tree.unflatten(treedef, stacked)


CASES = {
    "sgd": (lambda: bt.sgd(0.05), lambda ws: torch.optim.SGD(ws, lr=0.05)),
    "momentum": (lambda: bt.momentum(0.05, gamma=0.9),
                 lambda ws: torch.optim.SGD(ws, lr=0.05, momentum=0.9)),
    "l2_momentum": (lambda: optax.chain(bt.l2(0.01), bt.momentum(0.05, gamma=0.9)),
                    lambda ws: torch.optim.SGD(ws, lr=0.05, momentum=0.9, weight_decay=0.01)),
    "l2_sgd": (lambda: optax.chain(bt.l2(0.03), bt.sgd(0.05)),
               lambda ws: torch.optim.SGD(ws, lr=0.05, weight_decay=0.03)),
    "adam": (lambda: bt.adam(0.01, b1=0.85, b2=0.99, eps=1e-7),
             lambda ws: torch.optim.Adam(ws, lr=0.01, betas=(0.85, 0.99), eps=1e-7)),
    "adam_defaults": (lambda: bt.adam(), lambda ws: torch.optim.Adam(ws)),
}


@pytest.mark.usefixtures("x64")
@pytest.mark.parametrize("name", list(CASES))
def test_optimizer_matches_torch(name):
  make_ours, make_torch = CASES[name]
  params, curvature, noise = registry.quadratic_problem(seed=11, steps=STEPS)
  actual = registry.run_jax(make_ours(), params, curvature, noise)
  expected = run_torch(make_torch, params, curvature, noise)
  assert_trees_close(actual, expected, rtol=1e-9, atol=1e-12)


@pytest.mark.usefixtures("x64")
def test_sgd_with_step_decay_matches_torch_step_lr():
  params, curvature, noise = registry.quadratic_problem(seed=5, steps=STEPS)
  actual = registry.run_jax(bt.sgd(bt.step_decay(0.1, step_size=9, gamma=0.5)),
                            params, curvature, noise)
  expected = run_torch(lambda ws: torch.optim.SGD(ws, lr=0.1), params, curvature, noise,
                       lambda opt: torch.optim.lr_scheduler.StepLR(opt, step_size=9, gamma=0.5))
  assert_trees_close(actual, expected, rtol=1e-9, atol=1e-12)


def torch_lrs(make_scheduler, lr0, epochs, metrics=None):
  """The learning rate a torch scheduler gives each epoch (the one used by that epoch)."""
  opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=lr0)
  scheduler = make_scheduler(opt)
  lrs = []
  for epoch in range(epochs):
    lrs.append(opt.param_groups[0]["lr"])
    opt.step()
    scheduler.step(*([metrics[epoch]] if metrics is not None else []))
  return np.asarray(lrs)


@pytest.mark.usefixtures("x64")
@pytest.mark.parametrize("step_size,gamma", [(1, 0.9), (3, 0.5), (10, 0.1)])
def test_step_decay_matches_step_lr(step_size, gamma):
  expected = torch_lrs(lambda o: torch.optim.lr_scheduler.StepLR(o, step_size, gamma), 0.3, 100)
  actual = jax.jit(jax.vmap(bt.step_decay(0.3, step_size, gamma)))(jnp.arange(100))
  np.testing.assert_allclose(actual, expected, rtol=1e-9)


@pytest.mark.usefixtures("x64")
@pytest.mark.parametrize("gamma", [0.99, 0.9, 0.5])
def test_exponential_decay_matches_exponential_lr(gamma):
  expected = torch_lrs(lambda o: torch.optim.lr_scheduler.ExponentialLR(o, gamma), 0.2, 100)
  actual = jax.jit(jax.vmap(bt.exponential_decay(0.2, gamma)))(jnp.arange(100))
  np.testing.assert_allclose(actual, expected, rtol=1e-9)


@pytest.mark.usefixtures("x64")
def test_exponential_decay_every_k_steps_matches_exponential_lr_stepped_every_k():
  expected = torch_lrs(lambda o: torch.optim.lr_scheduler.ExponentialLR(o, 0.7), 0.2, 20)
  actual = bt.exponential_decay(0.2, 0.7, every=4)(jnp.arange(80))
  np.testing.assert_allclose(actual, np.repeat(expected, 4), rtol=1e-9)


def random_metric_sequences(rng, count, length, mode):
  """Noisy, decaying, plateauing sequences with ties and the odd NaN: every branch of
  the rule gets exercised."""
  sequences = []
  for i in range(count):
    drift = rng.uniform(0.0, 0.05) * np.arange(length)
    plateau_from = rng.integers(length // 4, length)
    drift[plateau_from:] = drift[plateau_from]
    noise = rng.normal(scale=rng.choice([0.001, 0.02, 0.1]), size=length)
    x = 2.0 - drift + noise
    if i % 3 == 0:
      x = np.round(x, 1)  # ties
    if i % 5 == 0:
      x[rng.integers(length)] = np.nan
    sequences.append(x if mode == "min" else -x)
  return np.asarray(sequences)


PLATEAU_GRID = list(itertools.product(["min", "max"], ["rel", "abs"], [0, 3], [0.0, 0.02],
                                      [0, 2]))


@pytest.mark.usefixtures("x64")
@pytest.mark.parametrize("mode,threshold_mode,cooldown,min_lr,patience", PLATEAU_GRID)
def test_reduce_on_plateau_matches_torch(mode, threshold_mode, cooldown, min_lr, patience):
  lr0, factor = 0.1, 0.5
  # eps = 6e-3 blocks the reduction 0.00625 -> 0.003125 (and 0.025 -> 0.02 with min_lr).
  torch_eps = 6e-3 if cooldown == 0 else 1e-8
  threshold = 0.01 if threshold_mode == "rel" else 0.02
  rng = np.random.default_rng(PLATEAU_GRID.index((mode, threshold_mode, cooldown, min_lr, patience)))
  metrics = random_metric_sequences(rng, count=12, length=70, mode=mode)

  plateau = bt.reduce_on_plateau(factor=factor, patience=patience, mode=mode,
                                 threshold=threshold, threshold_mode=threshold_mode,
                                 cooldown=cooldown, min_scale=min_lr / lr0, eps=torch_eps / lr0)

  @jax.jit
  @jax.vmap
  def scales(sequence):
    def step(state, metric):
      _, state = plateau.update(jnp.zeros(()), state, value=metric)
      return state, state.scale
    _, out = jax.lax.scan(step, plateau.init(jnp.zeros(())), sequence)
    return out

  # The lr an epoch uses is the one set by the metrics before it: shift by one.
  ours = lr0 * np.concatenate([np.ones((len(metrics), 1)), np.asarray(scales(metrics))[:, :-1]],
                              axis=1)
  expected = np.stack([torch_lrs(
      lambda o: torch.optim.lr_scheduler.ReduceLROnPlateau(
          o, mode=mode, factor=factor, patience=patience, threshold=threshold,
          threshold_mode=threshold_mode, cooldown=cooldown, min_lr=min_lr, eps=torch_eps),
      lr0, metrics.shape[1], seq) for seq in metrics])
  np.testing.assert_allclose(ours, expected, rtol=1e-9)
  assert (expected[:, -1] < lr0).any(), "no sequence triggered a reduction: a weak test"
  if min_lr and torch_eps < 5e-3:  # a larger eps blocks the last step to min_lr
    assert np.isclose(expected, min_lr).any(), "min_lr never reached: a weak test"


@pytest.mark.usefixtures("x64")
def test_reduce_on_plateau_eps_blocks_small_reductions_like_torch():
  metrics = np.ones(30)  # never improves after the first
  plateau = bt.reduce_on_plateau(factor=0.5, patience=0, eps=0.1)  # scale units
  state = plateau.init(jnp.zeros(()))
  scales = []
  for m in metrics:
    _, state = plateau.update(jnp.zeros(()), state, value=m)
    scales.append(float(state.scale))
  expected = torch_lrs(lambda o: torch.optim.lr_scheduler.ReduceLROnPlateau(
      o, factor=0.5, patience=0, eps=0.2), 2.0, 31, np.ones(31))[1:] / 2.0
  np.testing.assert_allclose(scales, expected, rtol=1e-12)
  assert scales[-1] == 0.125  # 0.125 -> 0.0625 is a change of 0.0625 < eps = 0.1


def test_reduce_on_plateau_scales_the_updates():
  plateau = bt.reduce_on_plateau(factor=0.5, patience=0)
  opt = optax.chain(bt.sgd(1.0), plateau)
  params = {"w": jnp.ones(3)}
  state = opt.init(params)
  for metric, expected_scale in [(1.0, 1.0), (2.0, 0.5), (2.0, 0.25), (0.5, 0.25)]:
    updates, state = opt.update({"w": jnp.ones(3)}, state, params, value=metric)
    assert float(state[1].scale) == expected_scale
    np.testing.assert_allclose(updates["w"], -expected_scale * np.ones(3))
