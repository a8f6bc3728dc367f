"""experiments.mlp_sgd (seed 000 §4.1): the small preset clears its accuracy bar."""

import json

from experiments import mlp_sgd


def test_mlp_sgd_small_preset_reaches_the_bar(tmp_path):
  summary = mlp_sgd.main(["--workdir", str(tmp_path), "--preset", "small"])
  assert summary["test_accuracy"] >= 0.95
  assert json.loads((tmp_path / "summary.json").read_text())["test_accuracy"] == summary[
      "test_accuracy"]
  for key in ("experiment", "steps", "final_train_loss", "test_loss", "devices", "wall_s"):
    assert summary[key] is not None, key
