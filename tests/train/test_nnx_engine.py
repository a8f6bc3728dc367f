"""NNX models in the engine: the linen twins' layout and math, fit / evaluate through the
functional path (nnx.split outside, nnx.merge in the loss), checkpoints in the nnx.state
layout, bit-identical resume after SIGKILL, the non-finite step guard, input checks."""

import os
import subprocess
import sys
from pathlib import Path

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from bigtune_jax import models, train
from bigtune_jax.models import nnx as nnx_models
from bigtune_jax.train import nnx_state
from bigtune_jax.tree_paths import flatten
from tests import nnx_runs

ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONUNBUFFERED": "1",
       "PYTHONPATH": str(ROOT)}


def _shapes(tree):
  return jax.tree.map(jnp.shape, tree)


@pytest.mark.parametrize("name", ["mlp", "cnn"])
def test_nnx_models_hold_the_linen_layout_and_compute_the_same_logits(name):
  rng = np.random.default_rng()
  seed = int(rng.integers(1 << 30))
  if name == "mlp":
    x = rng.standard_normal((4, 5, 3)).astype(np.float32)
    linen = models.MLP(hidden=(7, 6), num_classes=4, activation="gelu")
    module = nnx_models.MLP(15, hidden=(7, 6), num_classes=4, activation="gelu",
                            rngs=nnx.Rngs(seed))
  else:
    x = rng.standard_normal((2, 20, 24, 3)).astype(np.float32)
    linen = models.SimpleCNN(num_classes=5)
    module = nnx_models.SimpleCNN(5, in_channels=3, image_size=(20, 24), rngs=nnx.Rngs(seed))
  params = linen.init(jax.random.key(seed), x)["params"]
  assert _shapes(nnx.to_pure_dict(nnx.state(module, nnx.Param))) == _shapes(params)
  nnx_state.to_nnx(module, params)
  np.testing.assert_allclose(module(x), linen.apply({"params": params}, x), rtol=1e-6,
                             atol=1e-6)


def test_fit_and_evaluate_train_an_nnx_model_exactly_as_its_linen_twin():
  data, val = nnx_runs.dataset(np.random.default_rng().integers(1000)), nnx_runs.dataset(7)
  linen = models.MLP(hidden=(16,), num_classes=nnx_runs.CLASSES)
  params = train.init_params(linen, data.arrays["image"][:1], seed=3)
  module = nnx_state.to_nnx(nnx_runs.mlp(dropout_rate=0.0), jax.tree.map(jnp.copy, params))
  config = train.FitConfig(steps=20, batch_size=16, eval_every=5, progress=False)
  results = [train.fit(train.create_train_state(m, p, optax.adam(1e-2)),
                       train.classification_loss(m), data, val, config=config)
             for m, p in ((linen, params), (module, None))]
  assert [r["train_loss"] for r in results[0].history] == [
      r["train_loss"] for r in results[1].history]
  jax.tree.map(np.testing.assert_array_equal, *(r.state.params for r in results))
  trained = nnx_state.to_nnx(module, results[1].state.params)  # a module the user calls
  np.testing.assert_array_equal(
      trained(val.arrays["image"]),
      linen.apply({"params": results[0].state.params}, val.arrays["image"]))
  scores = train.evaluate(train.classification_loss(trained), nnx_state.params_of(trained), val)
  assert scores == {"loss": results[1].history[-1]["val_loss"],
                    "accuracy": results[1].history[-1]["val_accuracy"]}


def test_a_killed_nnx_run_resumes_bit_for_bit_from_checkpoints_in_the_nnx_state_layout(
    tmp_path):
  workdir = tmp_path / "run"
  killed = subprocess.run([sys.executable, "-m", "tests.nnx_resume_worker", str(workdir),
                           "kill"], cwd=ROOT, env=ENV, capture_output=True, text=True,
                          timeout=300)
  assert killed.returncode == -9, killed.stderr[-2000:]
  stored = train.Checkpointer(workdir / "checkpoints").param_metadata()
  assert sorted(stored) == sorted(flatten(nnx.to_pure_dict(nnx.state(nnx_runs.mlp(), nnx.Param))))
  resumed = nnx_runs.fit_mlp(str(workdir))
  assert resumed.resumed_from == 20
  whole = nnx_runs.fit_mlp(None)
  assert resumed.history == whole.history
  for a, b in zip(jax.tree.leaves(resumed.state), jax.tree.leaves(whole.state)):
    np.testing.assert_array_equal(a, b)


def test_a_non_finite_step_leaves_the_nnx_parameters_as_they_were():
  module = nnx_runs.mlp(dropout_rate=0.0)
  state = train.create_train_state(module, None, optax.sgd(1e38))
  before = jax.tree.map(np.asarray, state.params)
  batch = {k: v[:8] for k, v in nnx_runs.dataset().arrays.items()}
  batch["image"] = batch["image"] * 1e30  # overflowing gradients
  state, out = jax.jit(train.make_train_step(train.classification_loss(module)))(state, batch)
  assert not bool(out["finite"]) and int(state.skipped_steps) == 1
  jax.tree.map(np.testing.assert_array_equal, jax.tree.map(np.asarray, state.params), before)


def test_nnx_inputs_are_refused_by_name():
  module = nnx_runs.mlp()
  with pytest.raises(ValueError, match="params of an NNX model must be None"):
    train.create_train_state(module, nnx.state(module, nnx.Param), optax.sgd(0.1))
  with pytest.raises(ValueError, match="params has no head.bias"):
    train.create_train_state(module, {"hidden_0": {}, "head": {"kernel": 0}}, optax.sgd(0.1))
  with pytest.raises(ValueError, match=r"params\[head.kernel\] has shape \(3, 3\)"):
    nnx_state.to_nnx(module, {**nnx.to_pure_dict(nnx.state(module, nnx.Param)),
                              "head": {"kernel": jnp.ones((3, 3)), "bias": jnp.ones(3)}})

  class Stateful(nnx.Module):
    def __init__(self):
      self.dense = nnx.Linear(2, 2, rngs=nnx.Rngs(0))
      self.dropout = nnx.Dropout(0.5, rngs=nnx.Rngs(1))

    def __call__(self, x):
      return self.dropout(self.dense(x))

  with pytest.raises(ValueError, match="nnx.Param only; Stateful also holds dropout.rngs"):
    train.create_train_state(Stateful(), None, optax.sgd(0.1))
  with pytest.raises(ValueError, match="train=True with dropout_rate=0.25 needs rng="):
    module(jnp.ones((2, nnx_runs.FEATURES)), train=True)
  with pytest.raises(ValueError, match="in_features must be"):
    nnx_models.MLP(0, rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="at least 16 x 16 pixels"):
    nnx_models.SimpleCNN(image_size=(12, 28), rngs=nnx.Rngs(0))
