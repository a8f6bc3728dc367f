"""experiments.data_parallel (seed 004 §4.1.2): the tiny preset runs and reports its devices."""

import json

from experiments import data_parallel


def test_data_parallel_tiny_preset(tmp_path):
  summary = data_parallel.main(["--workdir", str(tmp_path), "--preset", "tiny"])
  assert json.loads((tmp_path / "summary.json").read_text())["devices"] == summary["devices"]
  assert summary["devices"] == 1 and summary["processes"] == 1  # this process has one device
  assert summary["mesh"] == {"data": 1, "fsdp": 1, "tensor": 1}
  assert summary["rows_per_device"] == 64 and summary["steps"] == 20
  assert summary["test_loss"] < 2.2 and summary["test_accuracy"] > 0.4  # ln 10 = 2.30 untrained
