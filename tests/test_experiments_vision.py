"""Seed 000 §4.2-4.3 and seed 004 §4.2 experiments: accuracy bars on the small preset, and
gradient accumulation equal to a 4x batch."""

import json

import pytest

from experiments import cnn_momentum
from experiments import grad_accum
from experiments import lstm_adam

REQUIRED = ("experiment", "steps", "final_train_loss", "test_loss", "test_accuracy", "devices",
            "wall_s")


def _check_summary(summary, path):
  for key in REQUIRED:
    assert summary[key] is not None, key
  assert json.loads((path / "summary.json").read_text())["test_loss"] == pytest.approx(
      summary["test_loss"])


def test_cnn_momentum_small_preset_reaches_the_bar(tmp_path):
  summary = cnn_momentum.main(["--workdir", str(tmp_path), "--preset", "small"])
  _check_summary(summary, tmp_path)
  assert summary["test_accuracy"] >= 0.95
  assert summary["skipped_steps"] == 0


def test_lstm_adam_small_preset_reaches_the_bar(tmp_path):
  summary = lstm_adam.main(["--workdir", str(tmp_path), "--preset", "small"])
  _check_summary(summary, tmp_path)
  assert summary["test_accuracy"] >= 0.90


def test_grad_accum_equals_the_four_times_batch(tmp_path):
  summary = grad_accum.main(["--workdir", str(tmp_path), "--preset", "tiny"])
  _check_summary(summary, tmp_path)
  assert summary["steps"] == 4 * summary["updates"]
  assert summary["max_param_change"] > 1e-4  # training moved the parameters...
  # ...and the accumulated run landed where the 4x batch did, up to float32 rounding.
  assert summary["max_param_diff_vs_4x_batch"] <= 1e-3 * summary["max_param_change"]
  assert summary["max_train_loss_diff_vs_4x_batch"] <= 1e-5


def test_lstm_adam_resumes_its_workdir(tmp_path):
  first = lstm_adam.main(["--workdir", str(tmp_path), "--preset", "tiny"])
  again = lstm_adam.main(["--workdir", str(tmp_path), "--preset", "tiny"])
  assert again["resumed_from"] == first["steps"]
  assert again["test_loss"] == pytest.approx(first["test_loss"], rel=1e-6)
