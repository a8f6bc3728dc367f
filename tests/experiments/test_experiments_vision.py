"""Seed 000 §4.2-4.3 and seed 004 §4.2 experiments: accuracy bars on the small preset, and
gradient accumulation equal to a 4x batch."""

import json

import jax.numpy as jnp
import pytest

from bigtune_jax import data
from bigtune_jax import models
from bigtune_jax import train
from experiments import cnn_momentum
from experiments import grad_accum
from experiments import lstm_adam
from tests import reference
from tests import utils


def _check_summary(summary, path, experiment, steps):
  """The run facts, the step count the preset asks for, and the summary on disk."""
  utils.assert_run_facts(summary, experiment)
  assert summary["steps"] == steps
  assert json.loads((path / "summary.json").read_text())["test_loss"] == pytest.approx(
      summary["test_loss"])


def test_cnn_momentum_small_preset_reaches_the_bar(tmp_path):
  summary = cnn_momentum.main(["--workdir", str(tmp_path), "--preset", "small"])
  _check_summary(summary, tmp_path, "cnn_momentum", cnn_momentum.PRESETS["small"]["steps"])
  assert summary["test_accuracy"] >= 0.96  # seeds 0-4 gave 0.972-0.981 (lr 0.1: 0.908-0.983)
  assert summary["skipped_steps"] == 0
  # The seed's network by hand: conv 1->10 and 10->20 (5x5, biased), 320 -> 50 -> 10.
  assert summary["params"] == (25 + 1) * 10 + (250 + 1) * 20 + (320 + 1) * 50 + (50 + 1) * 10
  # The reported test loss and accuracy, recomputed by a float64 NumPy forward pass of the
  # checkpointed parameters over every test image.
  test = data.load_dataset("digits", seed=0, image_size=28)["test"]
  target = train.init_params(models.SimpleCNN(num_classes=10), jnp.ones((1, 28, 28, 1)), 0)
  loss, accuracy = reference.cross_entropy_and_accuracy(
      reference.simple_cnn_logits(utils.trained_params(tmp_path, target), test["image"]),
      test["label"])
  assert summary["test_accuracy"] == pytest.approx(accuracy, abs=1e-6)
  assert summary["test_loss"] == pytest.approx(loss, rel=1e-4)
  utils.assert_loss_fits_accuracy(summary["test_loss"], summary["test_accuracy"], 10)


def test_lstm_adam_small_preset_reaches_the_bar(tmp_path):
  summary = lstm_adam.main(["--workdir", str(tmp_path), "--preset", "small"])
  small = lstm_adam.PRESETS["small"]
  _check_summary(summary, tmp_path, "lstm_adam", small["steps"])
  assert summary["test_accuracy"] >= 0.90
  utils.assert_loss_fits_accuracy(summary["test_loss"], summary["test_accuracy"], 10)
  # 8x8 digits read row by row: 8 steps of 8 pixels. The LSTM has four gates, each with an
  # input kernel (8 x H), a recurrent kernel (H x H) and one bias (H); then the head.
  assert summary["sequence"] == [8, 8]
  h = small["hidden_size"]
  assert summary["params"] == 4 * (8 * h + h * h + h) + (h + 1) * 10


def test_grad_accum_equals_the_four_times_batch(tmp_path):
  summary = grad_accum.main(["--workdir", str(tmp_path), "--preset", "tiny"])
  tiny = grad_accum.PRESETS["tiny"]
  _check_summary(summary, tmp_path, "grad_accum", tiny["updates"] * tiny["accumulation"])
  assert summary["updates"] == summary["large_batch"]["steps"] == tiny["updates"]
  # Whole windows of 4 micro-batches: the training digits cut down to a multiple of 32.
  window = tiny["accumulation"] * tiny["micro_batch"]
  assert summary["examples_per_update"] == window
  train_digits = len(data.load_dataset("digits", seed=0, image_size=32)["train"])
  assert summary["train_examples"] == train_digits // window * window
  assert summary["max_param_change"] > 1e-4  # training moved the parameters...
  # ...and the accumulated run landed where the 4x batch did, up to float32 rounding.
  assert summary["max_param_diff_vs_4x_batch"] <= 1e-3 * summary["max_param_change"]
  assert summary["max_train_loss_diff_vs_4x_batch"] <= 1e-5


def test_lstm_adam_resumes_its_workdir(tmp_path):
  first = lstm_adam.main(["--workdir", str(tmp_path), "--preset", "tiny"])
  again = lstm_adam.main(["--workdir", str(tmp_path), "--preset", "tiny"])
  assert again["resumed_from"] == first["steps"]
  assert again["test_loss"] == pytest.approx(first["test_loss"], rel=1e-6)
