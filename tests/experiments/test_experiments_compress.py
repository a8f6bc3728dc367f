"""experiments.compress (seed 004 §3.1.1): the small preset clears the bar.

One run of the small preset is both the smoke test (every method, the summary's schema, the
plot) and the bar: 90 % sparsity and int8 each within 1 point of the dense test accuracy.
(The tiny preset costs about as much: the run is dominated by compiling its nine training
steps, not by the steps.)
"""

import json

import pytest

from bigtune_jax import data
from bigtune_jax import models
from bigtune_jax import train
from experiments import compress
from tests import reference
from tests import utils

# qwix 0.1.8 still names flax's removed nnx.VariableState (an alias now): harmless.
pytestmark = pytest.mark.filterwarnings("ignore:'VariableState' was removed:DeprecationWarning")

METHODS = {"dense", "prune50", "prune75", "prune90", "prune2:4", "int8", "int8-qat",
           "lowrank8", "lowrank16", "lowrank32", "prune90+int8", "lowrank16+int8"}


def test_compress_small_preset_reaches_the_bar(tmp_path):
  summary = compress.main(["--workdir", str(tmp_path), "--preset", "small"])
  assert json.loads((tmp_path / "summary.json").read_text())["results"] == summary["results"]
  assert (tmp_path / "compress.png").stat().st_size > 0
  utils.assert_run_facts(summary, "compress")
  assert summary["steps"] == compress.PRESETS["small"]["steps"]
  results = {row["method"]: row for row in summary["results"]}
  assert set(results) == METHODS
  dense = results["dense"]
  assert dense["test_accuracy"] == summary["test_accuracy"] >= 0.95
  assert dense["size_bytes"] == 4 * (784 * 256 + 256 + 256 * 10 + 10)  # float32
  for method in ("prune90", "int8"):
    assert results[method]["test_accuracy"] >= dense["test_accuracy"] - 0.01, method
  # Real bytes shrink as promised: 90 % sparse in the bitmask format, int8 about 4x.
  assert results["prune90"]["size_bytes"] < 0.15 * dense["size_bytes"]
  assert 0.25 <= results["int8"]["size_bytes"] / dense["size_bytes"] < 0.26
  assert results["prune90+int8"]["size_bytes"] < results["prune90"]["size_bytes"] / 2
  assert (results["lowrank8"]["size_bytes"] < results["lowrank16"]["size_bytes"]
          < results["lowrank32"]["size_bytes"])
  # The dense run's test loss and accuracy, and the pruned runs' accuracies, recomputed by
  # a float64 NumPy forward pass of each run's checkpointed parameters over the test digits;
  # the 90 % run's checkpoint really is at least 90 % zeros in its kernels (global scope).
  test = data.load_dataset("digits", seed=0, image_size=28)["test"]
  target = train.init_params(models.MLP(hidden=(256,), num_classes=10),
                             test["image"][:1], 0)  # the experiment's shape: its compiled init
  for method in ("dense", "prune50", "prune90"):
    params = utils.trained_params(tmp_path / method, target)
    loss, accuracy = reference.cross_entropy_and_accuracy(
        reference.mlp_logits(params, test["image"]), test["label"])
    assert results[method]["test_accuracy"] == pytest.approx(accuracy, abs=1e-6), method
    if method == "dense":
      assert summary["test_loss"] == pytest.approx(loss, rel=1e-4)
      utils.assert_loss_fits_accuracy(summary["test_loss"], summary["test_accuracy"], 10)
  kernels = [params[layer]["kernel"] for layer in ("hidden_0", "head")]  # prune90's, the last
  zeros = sum(int((k == 0).sum()) for k in kernels) / sum(k.size for k in kernels)
  assert zeros >= 0.9 - 1e-3, zeros
