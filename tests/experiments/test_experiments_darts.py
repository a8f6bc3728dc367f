"""experiments.darts (seed 003 §3.2): the tiny preset searches, retrains and reports."""

import json

from experiments import darts
from tests import utils


def test_darts_tiny_preset_writes_its_summary(tmp_path):
  summary = darts.main(["--workdir", str(tmp_path), "--preset", "tiny"])
  saved = json.loads((tmp_path / "summary.json").read_text())
  assert saved["test_accuracy"] == summary["test_accuracy"]
  utils.assert_run_facts(summary, "darts")
  assert summary["steps"] == 20 and summary["search_steps"] == 20
  (node,) = saved["arch"]  # one node, one edge from the input
  ((source, op),) = node
  alphas = saved["final_alphas"]["0->1"]
  assert abs(sum(alphas.values()) - 1) < 1e-5
  # DARTS keeps on each edge the candidate of largest softmax weight, zero excluded (Liu et
  # al., 2019, §2.4).
  assert source == 0 and op == max((o for o in alphas if o != "zero"), key=alphas.get)
  assert summary["test_accuracy"] > 0.3  # 10 classes: well above chance after 20 steps
  utils.assert_loss_fits_accuracy(summary["test_loss"], summary["test_accuracy"], 10)
