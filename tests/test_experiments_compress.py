"""experiments.compress (seed 004 §3.1.1): the small preset clears the bar.

One run of the small preset is both the smoke test (every method, the summary's schema, the
plot) and the bar: 90 % sparsity and int8 each within 1 point of the dense test accuracy.
(The tiny preset costs about as much: the run is dominated by compiling its nine training
steps, not by the steps.)
"""

import json

import pytest

from experiments import compress

# qwix 0.1.8 still names flax's removed nnx.VariableState (an alias now): harmless.
pytestmark = pytest.mark.filterwarnings("ignore:'VariableState' was removed:DeprecationWarning")

METHODS = {"dense", "prune50", "prune75", "prune90", "prune2:4", "int8", "int8-qat",
           "lowrank8", "lowrank16", "lowrank32", "prune90+int8", "lowrank16+int8"}


def test_compress_small_preset_reaches_the_bar(tmp_path):
  summary = compress.main(["--workdir", str(tmp_path), "--preset", "small"])
  assert json.loads((tmp_path / "summary.json").read_text())["results"] == summary["results"]
  assert (tmp_path / "compress.png").stat().st_size > 0
  for key in ("experiment", "steps", "final_train_loss", "test_loss", "test_accuracy",
              "devices", "wall_s"):
    assert summary[key] is not None, key
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
