"""Seed 003 §6.4 / 004 §3.2.3-3.2.4 (regularization), 004 §4.3 (plateau), 000 §3.4 (early
stopping): the experiments run and report what they claim."""

import pytest

from experiments import early_stopping
from experiments import plateau
from experiments import regularization


def test_regularization_tiny_reports_every_variant(tmp_path):
  summary = regularization.main(["--workdir", str(tmp_path), "--preset", "tiny"])
  assert set(summary["results"]) == set(regularization.VARIANTS)
  for result in summary["results"].values():
    assert 0.0 <= result["test_accuracy"] <= 1.0
    assert abs(result["gap"] - (result["train_accuracy"] - result["test_accuracy"])) < 1e-6
  assert (tmp_path / "summary.json").exists()


def test_plateau_cuts_the_rate_by_its_factor(tmp_path):
  summary = plateau.main(["--workdir", str(tmp_path), "--preset", "tiny",
                          "--set", "learning_rate=0.5"])
  lr = 0.5
  for cut in summary["reductions"]:  # every cut is exactly one factor of 0.1
    assert abs(cut["learning_rate"] - lr * 0.1) <= 1e-6 * lr
    lr = cut["learning_rate"]
  assert summary["reductions"], "the tiny preset (patience 1) should reach a plateau"
  assert (tmp_path / "plateau.png").exists()
  assert summary["fixed"]["test_loss"] is not None


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
