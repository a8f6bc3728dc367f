"""experiments.darts (seed 003 §3.2): the tiny preset searches, retrains and reports."""

import json

from experiments import darts


def test_darts_tiny_preset_writes_its_summary(tmp_path):
  summary = darts.main(["--workdir", str(tmp_path), "--preset", "tiny"])
  saved = json.loads((tmp_path / "summary.json").read_text())
  assert saved["test_accuracy"] == summary["test_accuracy"]
  for key in ("experiment", "steps", "final_train_loss", "test_loss", "test_accuracy",
              "devices", "wall_s", "arch", "final_alphas"):
    assert summary[key] is not None, key
  assert summary["steps"] == 20 and summary["search_steps"] == 20
  (node,) = saved["arch"]  # one node, one edge from the input: a non-zero candidate
  assert len(node) == 1 and node[0][0] == 0 and node[0][1] != "zero"
  assert abs(sum(saved["final_alphas"]["0->1"].values()) - 1) < 1e-5
  assert summary["test_accuracy"] > 0.3  # 10 classes: well above chance after 20 steps
