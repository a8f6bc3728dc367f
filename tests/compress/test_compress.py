"""bigtune_jax.compress: pruning, int8 quantization, low-rank factorization, storage."""

import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import bigtune_jax as bt
from bigtune_jax import compress
from bigtune_jax import models
from bigtune_jax import train
from tests.utils import assert_trees_close

# qwix 0.1.8 still names flax's removed nnx.VariableState (an alias now): harmless.
pytestmark = pytest.mark.filterwarnings("ignore:'VariableState' was removed:DeprecationWarning")


def apply(model, params, x):
  """``model``'s outputs, jit-compiled (eager flax + qwix dispatch op by op: slow)."""
  return jax.jit(lambda p, x: model.apply({"params": p}, x))(params, x)


def seed(rng) -> int:
  return int(rng.integers(1 << 30))


# --- pruning ------------------------------------------------------------------------------


def random_params(rng):
  """Two kernels of different scales (global pruning must treat them differently), a bias."""
  return {"a": {"kernel": jnp.asarray(rng.standard_normal((16, 12)), jnp.float32),
                "bias": jnp.asarray(rng.standard_normal(12), jnp.float32)},
          "b": {"kernel": jnp.asarray(0.1 * rng.standard_normal((12, 8)), jnp.float32)}}


def numpy_keep(scores: np.ndarray, sparsity: float) -> np.ndarray:
  """Reference: prune the round(s*n) smallest, ties by position (stable sort)."""
  flat = scores.reshape(-1)
  keep = np.ones(flat.size, bool)
  keep[np.argsort(flat, kind="stable")[:int(np.round(np.float32(sparsity) * flat.size))]] = False
  return keep.reshape(scores.shape)


def test_pruned_weights_stay_exactly_zero_through_training():
  rng = np.random.default_rng()
  params = random_params(rng)
  target = jax.tree.map(lambda w: jnp.asarray(rng.standard_normal(w.shape), w.dtype), params)
  schedule = compress.polynomial_sparsity(0.8, begin_step=3, end_step=23, update_every=5)
  tx = compress.prune(optax.adam(0.05), schedule)  # Adam moves pruned weights if unmasked

  @jax.jit
  def step(params, state):
    grads = jax.grad(lambda p: sum(jnp.sum((w - t) ** 2) for w, t in
                                   zip(jax.tree.leaves(p), jax.tree.leaves(target))))(params)
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  state = tx.init(params)
  zeros_before = {k: np.zeros(params[k]["kernel"].shape, bool) for k in ("a", "b")}
  for t in range(1, 61):
    params, state = step(params, state)
    for k in ("a", "b"):
      w, mask = np.asarray(params[k]["kernel"]), np.asarray(state.masks[k]["kernel"])
      assert np.all(w[~mask] == 0.0) and not np.any(np.signbit(w[~mask])), (t, k)
      assert np.all(zeros_before[k] <= ~mask), "a pruned weight came back"
      assert (~mask).sum() == round(float(schedule(t)) * w.size), (t, k)
      zeros_before[k] = ~mask
    assert state.masks["a"]["bias"].shape == () and np.all(np.asarray(params["a"]["bias"]))
  assert all(abs(r.fraction - 0.8) < 0.01 for r in compress.sparsity_report(params)
             if r.path.endswith("kernel"))


def zeta(s_f, s_i, t0, t_end, dt, t, power=3):
  """Zhu & Gupta (2017), transcribed: s_t at update steps, held in between."""
  if t < t0:
    return 0.0
  if t >= t_end:
    return s_f
  t_k = t0 + ((t - t0) // dt) * dt
  return s_f + (s_i - s_f) * (1.0 - (t_k - t0) / (t_end - t0)) ** power


def test_polynomial_schedule_matches_numpy():
  rng = np.random.default_rng()
  for _ in range(5):
    s_f, s_i = rng.uniform(0.3, 0.99), rng.uniform(0.0, 0.3) * rng.integers(2)
    t0, length, dt = int(rng.integers(0, 20)), int(rng.integers(1, 80)), int(rng.integers(1, 9))
    schedule = jax.jit(compress.polynomial_sparsity(s_f, t0, t0 + length, update_every=dt,
                                                    initial_sparsity=s_i))
    steps = np.arange(t0 + length + 10)
    expected = [zeta(s_f, s_i, t0, t0 + length, dt, t) for t in steps]
    np.testing.assert_allclose(jax.vmap(schedule)(steps), expected, rtol=2e-6, atol=1e-7)
  # s_i = 0: jaxpruner's s_f (1 - (1 - p)^3) at every update step.
  p = np.arange(0, 101, 10) / 100
  np.testing.assert_allclose(jax.vmap(compress.polynomial_sparsity(0.9, 0, 100, update_every=10))(
      np.arange(0, 101, 10)), 0.9 * (1 - (1 - p) ** 3), rtol=1e-6)


def test_layer_and_global_thresholds_match_numpy():
  rng = np.random.default_rng()
  params = random_params(rng)
  sparsity = rng.uniform(0.2, 0.9)
  layer = compress.magnitude_masks(params, sparsity, scope="layer")
  for k in ("a", "b"):
    np.testing.assert_array_equal(layer[k]["kernel"],
                                  numpy_keep(np.abs(np.asarray(params[k]["kernel"])), sparsity))
  assert np.asarray(layer["a"]["bias"]).shape == ()
  glob = compress.magnitude_masks(params, sparsity, scope="global")
  scores = np.concatenate([np.abs(np.asarray(params[k]["kernel"])).ravel() for k in ("a", "b")])
  keep = numpy_keep(scores, sparsity)
  np.testing.assert_array_equal(np.concatenate([np.asarray(glob[k]["kernel"]).ravel()
                                                for k in ("a", "b")]), keep)
  # The small-scale kernel loses more than its share under one global threshold.
  assert 1 - np.mean(glob["b"]["kernel"]) > sparsity > 1 - np.mean(glob["a"]["kernel"])
  # A filter: only "a" pruned.
  only_a = compress.magnitude_masks(params, 0.5, prunable=lambda path, w: path.startswith("a/k"))
  assert np.asarray(only_a["b"]["kernel"]).shape == () and np.mean(only_a["a"]["kernel"]) == 0.5


def test_two_four_pattern_keeps_the_two_largest_of_each_group():
  rng = np.random.default_rng()
  params = {"conv": {"kernel": jnp.asarray(rng.standard_normal((3, 3, 8, 5)), jnp.float32)},
            "dense": {"kernel": jnp.asarray(rng.standard_normal((16, 6)), jnp.float32)}}
  tx = compress.prune(optax.sgd(0.0), structure=(2, 4))
  updates, state = tx.update(jax.tree.map(jnp.zeros_like, params), tx.init(params), params)
  pruned = optax.apply_updates(params, updates)
  for k in ("conv", "dense"):
    w = np.moveaxis(np.asarray(params[k]["kernel"]), -2, -1)  # (..., out, in)
    groups = np.abs(w).reshape(*w.shape[:-1], -1, 4)
    kept = np.moveaxis(np.asarray(pruned[k]["kernel"]), -2, -1).reshape(groups.shape) != 0
    top2 = np.argsort(groups, axis=-1)[..., 2:]
    expected = np.zeros_like(kept)
    np.put_along_axis(expected, top2, True, axis=-1)
    np.testing.assert_array_equal(kept, expected)


def test_traced_sparsity_under_vmap():
  params = random_params(np.random.default_rng())

  def zeros_after_one_step(sparsity):
    tx = compress.prune(optax.sgd(0.1), sparsity, scope="global")
    grads = jax.tree.map(jnp.ones_like, params)
    updates, _ = tx.update(grads, tx.init(params), params)
    new = optax.apply_updates(params, updates)
    return sum(jnp.sum(new[k]["kernel"] == 0) for k in ("a", "b"))

  sparsities = jnp.array([0.0, 0.25, 0.5, 0.75])
  n = 16 * 12 + 12 * 8
  np.testing.assert_array_equal(jax.jit(jax.vmap(zeros_after_one_step))(sparsities),
                                np.round(np.asarray(sparsities) * n))


def test_sparsity_report_and_bitmask_bytes():
  kernel = np.zeros((8, 4), np.float32)
  kernel[:, 0] = 1.0  # 8 nonzeros of 32
  tree = {"layer": {"kernel": kernel, "bias": np.ones(4, np.float32)}}
  rows = compress.sparsity_report(tree)
  assert rows == [compress.LayerSparsity("layer/bias", 4, 0, 0.0),
                  compress.LayerSparsity("layer/kernel", 32, 24, 0.75)]
  assert "total" in compress.format_sparsity_report(rows).splitlines()[-1]
  assert compress.dense_nbytes(tree) == 32 * 4 + 4 * 4
  assert compress.bitmask_nbytes(tree) == (4 + 8 * 4) + 16  # 32 bits + 8 values; bias dense


def test_pruning_errors_name_the_argument():
  params = random_params(np.random.default_rng())
  for bad in (-0.1, 1.0, 1.5):
    with pytest.raises(ValueError, match=r"sparsity must be in \[0.0, 1.0\)"):
      compress.prune(optax.sgd(0.1), bad)
    with pytest.raises(ValueError, match="final_sparsity"):
      compress.polynomial_sparsity(bad, 0, 10)
  with pytest.raises(ValueError, match="exactly one of sparsity"):
    compress.prune(optax.sgd(0.1), 0.5, structure=(2, 4))
  with pytest.raises(ValueError, match="scope must be one of"):
    compress.prune(optax.sgd(0.1), 0.5, scope="network")
  with pytest.raises(ValueError, match="end_step must be an integer >= 5"):
    compress.polynomial_sparsity(0.5, 5, 4)
  with pytest.raises(ValueError, match="update_every"):
    compress.polynomial_sparsity(0.5, 0, 4, update_every=0)
  with pytest.raises(ValueError, match=r"structure\[1\] \(m\) must be an integer >= 3"):
    compress.prune(optax.sgd(0.1), structure=(2, 2))
  with pytest.raises(ValueError, match="'b/kernel' has shape \\(12, 8\\)"):
    compress.prune(optax.sgd(0.1), structure=(2, 8)).init(params)
  tx = compress.prune(optax.sgd(0.1), 0.5)
  with pytest.raises(ValueError, match="needs the parameters"):
    tx.update(params, tx.init(params))


# --- quantization -------------------------------------------------------------------------


def test_int8_ptq_weights_within_half_a_scale_and_real_bytes():
  rng = np.random.default_rng()
  model = models.MLP(hidden=(24,), num_classes=10)
  x = rng.uniform(0, 1, (3, 32, 8, 8, 1)).astype(np.float32)  # 3 calibration batches
  params = train.init_params(model, x[0], seed(rng))
  quantized = compress.quantize(model, params, list(x))
  assert set(compress.kernels(quantized)) == {"hidden_0/kernel", "head/kernel"}  # loop below
  for path, (values, scale) in compress.kernels(quantized).items():
    layer = path.split("/")[0]
    kernel = np.asarray(params[layer]["kernel"])
    assert values.dtype == jnp.int8 and scale.shape == (1, kernel.shape[1])  # per channel
    np.testing.assert_allclose(scale, np.abs(kernel).max(0, keepdims=True) / 127.5, rtol=1e-6)
    error = np.abs(np.asarray(values, np.float32) * np.asarray(scale) - kernel)
    # |x| = max|x| lands on exactly scale / 2; float32 rounding of q * s adds ~255 ulps.
    assert np.all(error <= np.asarray(scale) / 2 * (1 + 1e-4)), path
  # Static activation scale of the first layer: the mean over the calibration examples of
  # each example's max|x|, / 127.5.
  act_scale = quantized.params["hidden_0"]["dot_general0_lhs_scale"].array
  np.testing.assert_allclose(act_scale, np.abs(x).max(axis=(2, 3, 4)).mean() / 127.5,
                             rtol=1e-5)
  # Real bytes: int8 kernels + float32 per-channel scales, biases, activation scales.
  weights = 64 * 24 + 24 * 10
  assert quantized.nbytes == weights + 4 * (24 + 10) + 4 * (24 + 10) + 4 * 2
  # Static activation scales clip the hidden ReLU outputs above the calibrated mean max;
  # over 40 seeds this error spans 0.05-0.20 (median 0.09), so 0.3 bounds it without flaking
  # while a broken scale or dtype (error ~1) still fails.
  assert relative_error(quantized.apply(x[0]), apply(model, params, x[0])) < 0.3


def relative_error(actual, expected) -> float:
  """||actual - expected|| / ||expected|| (activations above the calibrated range clip)."""
  return float(np.linalg.norm(actual - expected) / np.linalg.norm(expected))


def test_int8_ptq_simple_cnn():
  rng = np.random.default_rng()
  model = models.SimpleCNN(num_classes=10)
  x = rng.uniform(0, 1, (2, 8, 28, 28, 1)).astype(np.float32)
  params = train.init_params(model, x[0], seed(rng))
  quantized = compress.quantize(model, params, list(x))
  assert set(compress.kernels(quantized)) == {"conv1/kernel", "conv2/kernel", "fc1/kernel",
                                              "fc2/kernel"}
  assert quantized.nbytes < compress.dense_nbytes(params) / 3
  # Static activation scales clip the hidden ReLU outputs above the calibrated mean max;
  # over 40 seeds this error spans 0.05-0.20 (median 0.09), so 0.3 bounds it without flaking
  # while a broken scale or dtype (error ~1) still fails.
  assert relative_error(quantized.apply(x[0]), apply(model, params, x[0])) < 0.3


def test_qat_passes_gradients_straight_through_the_rounding():
  rng = np.random.default_rng()
  model = models.MLP(hidden=(16,), num_classes=4)
  x = jnp.asarray(rng.uniform(0, 1, (32, 8, 8)), jnp.float32)
  params = train.init_params(model, x, seed(rng))
  qat = compress.qat_model(model)
  loss = lambda m: jax.jit(jax.grad(lambda p: jnp.mean(m.apply({"params": p}, x) ** 2)))
  out, float_out = apply(qat, params, x), apply(model, params, x)
  # Fake-quantized: over 60 seeds max|out - float| / max|float| spans 0.006-0.025.
  assert 0 < np.abs(out - float_out).max() < 0.08 * np.abs(float_out).max()
  grads, float_grads = loss(qat)(params), loss(model)(params)
  # round() has zero derivative almost everywhere: nonzero gradients close to the float
  # model's are the straight-through estimator at work. Over 60 seeds the largest
  # difference is 0.005-0.09 of max|float gradient| (a unit whose ReLU flips under
  # quantization); without the estimator it would be 1.
  for g, f in zip(jax.tree.leaves(grads), jax.tree.leaves(float_grads)):
    assert np.all(np.isfinite(g)) and np.abs(g).max() > 0
    np.testing.assert_allclose(g, f, atol=0.25 * np.abs(f).max())


def test_importing_compress_does_not_import_qwix():
  code = "import sys, bigtune_jax.compress; assert 'qwix' not in sys.modules"
  subprocess.run([sys.executable, "-c", code], check=True)


def test_quantization_errors():
  with pytest.raises(ValueError, match="flax.linen Module"):
    compress.quantize(object(), {}, [np.ones((1, 4))])
  with pytest.raises(ValueError, match="at least one batch"):
    compress.quantize(models.MLP(hidden=(4,)), {}, [])


# --- low-rank -----------------------------------------------------------------------------


def test_svd_reconstruction_error_is_the_dropped_singular_values(x64):
  rng = np.random.default_rng()
  m, n = rng.integers(5, 40, size=2)
  kernel = jnp.asarray(rng.standard_normal((m, n)))
  sigma = np.linalg.svd(np.asarray(kernel), compute_uv=False)
  for rank in (1, int(rng.integers(1, min(m, n) + 1)), min(m, n)):
    a, b = compress.truncated_svd(kernel, rank=rank)
    assert a.shape == (m, rank) and b.shape == (rank, n) and a.dtype == jnp.float64
    error = np.sum((np.asarray(kernel) - np.asarray(a @ b)) ** 2)
    np.testing.assert_allclose(error, np.sum(sigma[rank:] ** 2), rtol=1e-9, atol=1e-18)
  energy = rng.uniform(0.3, 0.99)
  expected = next(r for r in range(1, sigma.size + 1)
                  if np.sum(sigma[:r] ** 2) / np.sum(sigma ** 2) >= energy)
  assert compress.rank_for_energy(sigma, energy) == expected
  assert compress.truncated_svd(kernel, energy=energy)[0].shape == (m, expected)
  assert compress.rank_for_energy(sigma, 1.0) == sigma.size


def test_factorize_mlp_computes_the_truncated_kernels():
  rng = np.random.default_rng()
  model = models.MLP(hidden=(32,), num_classes=10)
  x = jnp.asarray(rng.uniform(0, 1, (16, 8, 8, 1)), jnp.float32)
  params = train.init_params(model, x, seed(rng))
  low, low_params = compress.factorize(model, params, rank=4)
  assert low.ranks == (4, 4)  # 4 * (64 + 32) < 64 * 32 and 4 * (32 + 10) < 32 * 10
  assert compress.dense_nbytes(low_params) < compress.dense_nbytes(params) / 3
  truncated = {name: {"kernel": jnp.dot(*compress.truncated_svd(params[name]["kernel"],
                                                                  rank=4)),
                      "bias": params[name]["bias"]} for name in params}
  np.testing.assert_allclose(apply(low, low_params, x), apply(model, truncated, x),
                             rtol=1e-4, atol=1e-5)
  full, full_params = compress.factorize(model, params, rank=32, layers=["hidden_0"])
  assert full.ranks == (32, None)
  np.testing.assert_allclose(apply(full, full_params, x), apply(model, params, x),
                             rtol=1e-4, atol=1e-5)
  assert compress.factorize(model, params, rank=12)[0].ranks == (12, None)  # head would grow


def test_low_rank_errors():
  kernel = jnp.ones((6, 4))
  for bad in (0, 5):
    with pytest.raises(ValueError, match="rank must be"):
      compress.truncated_svd(kernel, rank=bad)
  for bad in (0.0, 1.5):
    with pytest.raises(ValueError, match=r"energy must be in \(0.0, 1.0\]"):
      compress.truncated_svd(kernel, energy=bad)
  with pytest.raises(ValueError, match="exactly one of rank and energy"):
    compress.truncated_svd(kernel)
  with pytest.raises(ValueError, match="must be a bigtune_jax.models.MLP.*SimpleCNN"):
    compress.factorize(models.SimpleCNN(), {}, rank=2)
  model = models.MLP(hidden=(8,), num_classes=3)
  params = {"hidden_0": {"kernel": jnp.ones((5, 8)), "bias": jnp.ones(8)},
            "head": {"kernel": jnp.ones((8, 3)), "bias": jnp.ones(3)}}
  with pytest.raises(ValueError, match="layers must name Dense layers"):
    compress.factorize(model, params, rank=2, layers=["conv1"])
  with pytest.raises(ValueError, match=r"rank must be in \[1, 3\]"):
    compress.factorize(model, params, rank=4, layers=["head"])


def test_prune_around_a_plateau_keeps_pruned_weights_exactly_zero():
  """prune(chain(sgd, plateau)): the plateau scales the kept weights' updates (checked
  against sgd at the reduced rate) and the pruned weights stay bit-exact zeros."""
  rng = np.random.default_rng(5)
  params = {"kernel": jnp.asarray(rng.normal(size=(6, 4)), jnp.float32),
            "bias": jnp.asarray(rng.normal(size=4), jnp.float32)}
  plateau = bt.reduce_on_plateau(factor=0.5, patience=0, threshold=10.0)  # each metric cuts
  tx = compress.prune(optax.chain(optax.sgd(0.1), plateau), 0.5)
  state = tx.init(params)
  w, expected = params, None
  for count in range(1, 4):  # a new evaluation (value_count) on every update
    grads = jax.tree.map(lambda x: jnp.asarray(rng.normal(size=x.shape), x.dtype), w)
    updates, state = tx.update(grads, state, w, value=1.0, value_count=count)
    masks = state.masks
    expected = jax.tree.map(lambda p, g, m: np.where(m, p - 0.1 * 0.5**count * g, 0.0),
                            w, grads, masks)
    w = optax.apply_updates(w, updates)
    assert_trees_close(w, expected, rtol=1e-6, atol=1e-7)
    pruned = np.asarray(w["kernel"])[~np.asarray(masks["kernel"])]
    assert pruned.size == 12 and not pruned.any() and not np.signbit(pruned).any()