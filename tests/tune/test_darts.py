"""bt.models.Supernet and bt.tune.population.darts: the mixed operation against a float64 NumPy
reference, DARTS' genotype rule, the first-order bilevel step, and the search picking the
operation that generated the data."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from bigtune_jax import train
from bigtune_jax.data import ArrayDataset
from bigtune_jax.models import Supernet
from bigtune_jax.models.supernet import DerivedNet
from bigtune_jax.models.supernet import merge_arch
from bigtune_jax.models.supernet import split_arch
from bigtune_jax.tune.population import darts
from tests.utils import assert_trees_close

NP_OPS = {"dense_relu": lambda z: np.maximum(z, 0), "dense_tanh": np.tanh,
          "dense_sigmoid": lambda z: 1 / (1 + np.exp(-z)), "dense_gelu": None}


def _numpy_supernet(params, x, net):
  """The supernet's formula in float64 NumPy."""
  p = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
  alphas = p["arch"]
  weights = np.exp(alphas - alphas.max(-1, keepdims=True))
  weights /= weights.sum(-1, keepdims=True)
  dense = lambda name, h: h @ p[name]["kernel"] + p[name]["bias"]
  states = [dense("stem", x.reshape(len(x), -1))]
  for j in range(1, net.nodes + 1):
    total = 0.0
    for e, (i, jj) in enumerate(net.edges):
      if jj != j:
        continue
      for k, op in enumerate(net.ops):
        if op == "skip":
          total = total + weights[e, k] * states[i]
        elif op != "zero":
          total = total + weights[e, k] * NP_OPS[op](dense(f"edge_{i}_{j}_{op}", states[i]))
    states.append(total)
  return dense("head", np.concatenate(states[1:], -1))


def _random_params(net, x, rng, dtype=np.float32):
  """Fresh normal parameters of ``net`` for inputs like ``x`` (no init to compile)."""
  shapes = jax.eval_shape(net.init, jax.random.key(0), x)["params"]
  return jax.tree.map(lambda s: jnp.asarray(0.7 * rng.standard_normal(s.shape), dtype), shapes)


def test_supernet_is_the_softmax_mixture_of_its_candidates(x64):
  rng = np.random.default_rng()
  net = Supernet(nodes=2, width=4, num_classes=3)
  x = rng.standard_normal((6, 2, 3))
  params = _random_params(net, x, rng, np.float64)
  assert params["arch"].shape == (3, 5)  # edges (0,1) (0,2) (1,2); 5 candidates
  np.testing.assert_allclose(np.asarray(net.arch_weights(params)).sum(-1), 1.0, rtol=1e-12)
  np.testing.assert_allclose(jax.jit(net.apply)({"params": params}, jnp.asarray(x)),
                             _numpy_supernet(params, x, net), rtol=1e-10, atol=1e-12)


def test_derive_keeps_the_strongest_non_zero_edges():
  ops = ("dense_relu", "dense_tanh", "skip", "zero")
  net = Supernet(nodes=3, width=4, num_classes=2, ops=ops, inputs_per_node=2)
  alphas = np.zeros((6, 4))  # edges (0,1) (0,2) (1,2) (0,3) (1,3) (2,3)
  alphas[0] = [0, 1, 0, 5]  # zero wins but is excluded: tanh
  alphas[1] = [2, 0, 0, 0]
  alphas[2] = [0, 0, 1, 0]
  alphas[3] = [0, 0, 0, 9]  # strongest overall through zero: dropped, its best op is weak
  alphas[4] = [0, 3, 0, 0]
  alphas[5] = [0, 0, 2.5, 0]
  assert net.derive(jnp.asarray(alphas)) == (
      ((0, "dense_tanh"),), ((0, "dense_relu"), (1, "skip")), ((1, "dense_tanh"), (2, "skip")))


def test_one_hot_supernet_is_its_derived_net():
  rng = np.random.default_rng()
  net = Supernet(nodes=2, width=4, num_classes=3, inputs_per_node=2)
  x = jnp.asarray(rng.standard_normal((8, 5)), jnp.float32)
  params = _random_params(net, x, rng)
  choice = rng.integers(0, 4, size=3)  # any candidate but zero (the last)
  params["arch"] = jnp.asarray(60.0 * np.eye(5)[choice] - 30.0, jnp.float32)
  derived = net.discrete(net.derive(params))
  assert [op for node in derived.architecture for _, op in node] == [
      net.ops[k] for k in choice]
  inherited = {k: v for k, v in params.items()
               if k in jax.eval_shape(derived.init, jax.random.key(0), x)["params"]}
  np.testing.assert_allclose(jax.jit(derived.apply)({"params": inherited}, x),
                             jax.jit(net.apply)({"params": params}, x), rtol=1e-5, atol=1e-5)


def test_darts_step_updates_alphas_on_val_then_weights_on_train():
  rng = np.random.default_rng()
  net = Supernet(nodes=2, width=4, num_classes=3)
  batch = lambda: {"image": jnp.asarray(rng.standard_normal((8, 5)), jnp.float32),
                   "label": jnp.asarray(rng.integers(0, 3, 8))}
  train_batch, val_batch = batch(), batch()
  weights, alphas = split_arch(_random_params(net, train_batch["image"], rng))
  loss_fn = train.classification_loss(net)
  grad = jax.jit(jax.grad(lambda w, a, b: loss_fn(merge_arch(w, a), b, None, True)[0],
                          argnums=(0, 1)))
  weight_tx, arch_tx = optax.sgd(0.5), darts.arch_optimizer()
  state = darts.DartsState(jnp.zeros([], jnp.int32), weights, alphas, weight_tx.init(weights),
                           arch_tx.init(alphas))
  step = jax.jit(darts.make_darts_step(loss_fn, weight_tx, arch_tx))
  new, metrics = step(state, train_batch, val_batch)

  # Alphas: the reference's Adam (lr 3e-4, betas (0.5, 0.999), L2 1e-3) on the validation
  # gradient at the old weights; a first Adam step is lr * g / (|g| + eps).
  g = grad(weights, alphas, val_batch)[1] + 1e-3 * alphas
  expected_alphas = alphas - 3e-4 * g / (jnp.abs(g) + 1e-8)
  assert_trees_close(new.alphas, expected_alphas, rtol=1e-4, atol=1e-9)
  # Weights: the training gradient at the *new* alphas. Both match exactly, so neither
  # update touched the other's parameters.
  expected_weights = jax.tree.map(lambda w, d: w - 0.5 * d, weights,
                                  grad(weights, expected_alphas, train_batch)[0])
  assert_trees_close(new.weights, expected_weights, rtol=1e-4, atol=1e-6)
  assert int(new.step) == 1 and np.isfinite(metrics["train_loss"])


def _teacher_task(activation, seed, n=1024, d=8, hidden=8):
  """Regression targets of a random one-hidden-layer network with ``activation``."""
  rng = np.random.default_rng(seed)
  w1 = 3.0 * rng.standard_normal((d, hidden)) / np.sqrt(d)
  w2 = rng.standard_normal((hidden, 1)) / np.sqrt(hidden)

  def split():
    x = rng.standard_normal((n, d))
    y = NP_OPS[activation](x @ w1) @ w2
    return ArrayDataset({"x": x.astype(np.float32), "y": y.astype(np.float32)})

  return split(), split()


def test_darts_picks_tanh_for_tanh_targets_and_the_derived_net_retrains():
  # Sigmoid is left out: sigmoid(2z) = (1 + tanh z) / 2, the same functions once the next
  # Dense layer absorbs the affine map, so no data can tell the two apart. Over seeds
  # 0..11 and 100..111 the search picked tanh every time; relu, skip, zero lose.
  train_data, val_data = _teacher_task("dense_tanh", seed=0)
  net = Supernet(nodes=1, width=16, num_classes=1,
                 ops=("dense_relu", "dense_tanh", "skip", "zero"))
  result = darts.darts_search(net, train_data, val_data, steps=600, batch_size=64,
                              loss_fn=train.regression_loss(net), record_every=300, seed=0)
  assert result.arch == (((0, "dense_tanh"),),), result.alphas[-1]
  assert result.alphas.shape == (3, 1, 4) and list(result.alpha_steps) == [0, 300, 600]
  np.testing.assert_allclose(result.alphas.sum(-1), 1.0, rtol=1e-6)
  assert result.history[-1]["val_loss"] < result.history[0]["val_loss"]
  assert result.val["loss"] < 0.5 * float(np.var(val_data["y"]))

  model = net.discrete(result.arch)  # retrained from scratch
  params = train.init_params(model, train_data["x"][:1], 1)
  loss_fn = train.regression_loss(model)
  before = train.evaluate(loss_fn, params, val_data, 512)
  fitted = train.fit(train.create_train_state(model, params, optax.adam(1e-2)), loss_fn,
                     train_data, val_data, config=train.FitConfig(
                         steps=300, batch_size=64, eval_every=300, progress=False))
  assert fitted.history[-1]["val_loss"] < 0.2 * before["loss"]


def test_bad_arguments_raise_clear_errors():
  with pytest.raises(ValueError, match="ops"):
    Supernet(ops=("dense_relu", "conv3x3"))
  with pytest.raises(ValueError, match="besides 'zero'"):
    Supernet(ops=("zero",))
  with pytest.raises(ValueError, match="nodes"):
    Supernet(nodes=0)
  with pytest.raises(ValueError, match="node 2"):
    DerivedNet(architecture=(((0, "skip"),), ((2, "skip"),)))
  with pytest.raises(ValueError, match="node 1"):
    DerivedNet(architecture=(((0, "zero"),),))
  data = ArrayDataset({"image": np.zeros((8, 4), np.float32), "label": np.zeros(8, np.int32)})
  with pytest.raises(ValueError, match="steps"):
    darts.darts_search(Supernet(), data, data, steps=0)
  with pytest.raises(ValueError, match="val_data"):
    darts.darts_search(Supernet(), data, data.arrays, steps=1, batch_size=4)
  big = ArrayDataset({k: np.concatenate([v] * 4) for k, v in data.arrays.items()})
  with pytest.raises(ValueError, match="val_data .* batch_size=16"):
    darts.darts_search(Supernet(), big, data, steps=1, batch_size=16)
  with pytest.raises(ValueError, match="supernet"):
    darts.darts_search(DerivedNet(architecture=(((0, "skip"),),)), data, data, steps=1)
