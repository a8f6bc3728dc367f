"""Seed 003 §6.4 / 004 §3.2.3-3.2.4 (regularization), 004 §4.3 (plateau), 000 §3.4 (early
stopping): the experiments run and report what they claim."""

import json

import jax.numpy as jnp
import pytest

from bigtune_jax import models
from bigtune_jax import train
from experiments import early_stopping
from experiments import plateau
from experiments import regularization
from experiments import tasks
from tests import reference
from tests import utils


def test_regularization_tiny_reports_every_variant(tmp_path):
  summary = regularization.main(["--workdir", str(tmp_path), "--preset", "tiny"])
  assert set(summary["results"]) == set(regularization.VARIANTS)
  assert (tmp_path / "summary.json").exists()
  # Each variant's gap, from a float64 NumPy forward pass of its checkpointed parameters:
  # accuracy on the noisy labels it trained on, minus accuracy on the clean test split.
  config = summary["config"]
  splits = tasks.noisy_digits(config)
  target = train.init_params(models.MLP(hidden=config["hidden"], num_classes=10),
                             jnp.ones((1, 8, 8)), 0)
  for name, result in summary["results"].items():
    params = utils.trained_params(tmp_path / "variants" / name, target)
    accuracy = {split: reference.cross_entropy_and_accuracy(reference.mlp_logits(
        params, splits[split]["image"], result["activation"]), splits[split]["label"])[1]
                for split in ("train", "test")}
    assert result["gap"] == pytest.approx(accuracy["train"] - accuracy["test"], abs=1e-6), name


def test_plateau_cuts_the_rate_by_its_factor(tmp_path):
  summary = plateau.main(["--workdir", str(tmp_path), "--preset", "tiny",
                          "--set", "learning_rate=0.5"])
  lr = 0.5
  for cut in summary["reductions"]:  # every cut is exactly one factor of 0.1
    assert abs(cut["learning_rate"] - lr * 0.1) <= 1e-6 * lr
    lr = cut["learning_rate"]
  assert summary["reductions"], "the tiny preset (patience 1) should reach a plateau"
  assert (tmp_path / "plateau.png").exists()
  # Same initial parameters, same batches: the two runs agree until the first cut, which
  # comes the evaluation after the fixed run's (patience + 1)-th in a row that fails to beat
  # the best by the relative threshold (PyTorch's rule), and differ from there on.
  fixed, cut = ([json.loads(line) for line in (tmp_path / run / "metrics.jsonl").open()]
                for run in ("fixed", "plateau"))
  first = reference.first_plateau(
      [row["val_loss"] for row in fixed], summary["rule"]["patience"],
      summary["rule"]["threshold"]) + 1
  assert summary["reductions"][0]["step"] == fixed[first]["step"]
  assert [row["val_loss"] for row in cut[:first]] == [row["val_loss"] for row in fixed[:first]]
  assert cut[first]["val_loss"] != fixed[first]["val_loss"]


def test_early_stopping_stops_and_restores_the_best(tmp_path):
  summary = early_stopping.main(["--workdir", str(tmp_path), "--preset", "small",
                                 "--set", "hidden=64", "--set", "steps=330"])
  assert summary["stopped_early"]
  assert summary["best_step"] < summary["stopped_at"] < 330
  assert summary["steps_saved"] > 0
  # The restored parameters are the best evaluation's: their test loss beats the
  # memorizing full run's.
  assert summary["test_loss"] < summary["full"]["test_loss"]
  assert (tmp_path / "early_stopping.png").exists()


def test_early_stopping_rejects_bad_label_noise_before_any_work(tmp_path):
  with pytest.raises(ValueError, match=r"--set label_noise must be a number in \[0, 1\), got 1.5"):
    early_stopping.main(["--workdir", str(tmp_path / "run"), "--preset", "tiny",
                         "--set", "label_noise=1.5"])
  assert not (tmp_path / "run").exists()
