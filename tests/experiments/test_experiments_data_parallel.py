"""experiments.data_parallel (seed 004 §4.1.2): the tiny preset runs on every device this
process sees (one in the suite; eight with ``XLA_FLAGS=--xla_force_host_platform_device_count=8``,
as the README runs it) and reports them."""

import json

import jax

from experiments import data_parallel


def test_data_parallel_tiny_preset(tmp_path):
  summary = data_parallel.main(["--workdir", str(tmp_path), "--preset", "tiny"])
  devices = jax.device_count()
  assert json.loads((tmp_path / "summary.json").read_text())["devices"] == summary["devices"]
  assert summary["devices"] == devices and summary["processes"] == 1
  assert summary["mesh"] == {"data": devices, "fsdp": 1, "tensor": 1}
  assert summary["rows_per_device"] == 64 // devices and summary["steps"] == 20
  assert summary["test_loss"] < 2.2 and summary["test_accuracy"] > 0.4  # ln 10 = 2.30 untrained
