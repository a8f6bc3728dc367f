"""experiments.tune, the main job: the report it writes, resuming, and the accuracy bar."""

import json

import numpy as np
import pytest

import bigtune_jax as bt
from bigtune_jax import data
from experiments import report as experiment_report
from experiments import tune
from tests import utils

REPORT_FILES = ("report.md", "summary.json", "search_progress.png", "hyperparameters.png",
                "trials.jsonl", "final/loss.png", "final/accuracy.png")


def test_tiny_preset_writes_the_report_and_resumes(tmp_path, monkeypatch):
  finals, train_and_evaluate = [], experiment_report.train_and_evaluate

  def recorded(*args, **kwargs):
    finals.append(train_and_evaluate(*args, **kwargs))
    return finals[-1]
  monkeypatch.setattr(experiment_report, "train_and_evaluate", recorded)
  summary = tune.main(["--workdir", str(tmp_path), "--preset", "tiny"])
  for name in REPORT_FILES:
    assert (tmp_path / name).exists(), name
  utils.assert_run_facts(summary, "tune")
  utils.assert_loss_fits_accuracy(summary["test_loss"], summary["test_accuracy"], 10)
  assert json.loads((tmp_path / "summary.json").read_text())["trials"] == summary["trials"] == 4
  assert set(summary["best_config"]) == set(tune.CONTINUOUS + tune.STRUCTURE)
  assert summary["searcher"] == "optuna tpe"
  # The figure is the median of the winner retrained from 3 seeds, each its own run.
  accuracies = [final["test_accuracy"] for final in finals]
  assert len(finals) == 3 and summary["test_accuracy_per_seed"] == accuracies
  assert summary["test_accuracy"] == np.median(accuracies)
  assert summary["test_accuracy_range"] == [min(accuracies), max(accuracies)]
  assert summary["test_loss"] == np.median([final["test_loss"] for final in finals])
  for k in (1, 2):
    assert (tmp_path / "final" / f"seed_{k}" / "summary.json").exists()
  trials = [json.loads(line) for line in (tmp_path / "trials.jsonl").read_text().splitlines()]
  best = max(trials, key=lambda r: (r["val_accuracy"], -r["val_loss"]))
  assert summary["best_config"]["learning_rate"] == best["learning_rate"]
  report = (tmp_path / "report.md").read_text()
  assert "![search progress](search_progress.png)" in report and "final/loss.png" in report

  # Started again, nothing is left to do: no trial trains, and each final training resumes
  # from its last checkpoint.
  monkeypatch.setattr(bt.tune.PopulationTask, "train",
                      lambda *args, **kwargs: pytest.fail("a trial trained again"))
  first, finals[:] = list(finals), []
  again = tune.main(["--workdir", str(tmp_path), "--preset", "tiny"])
  assert [final["resumed_from"] for final in finals] == [final["steps"] for final in first]
  assert again["trials"] == 4 and again["best_config"] == summary["best_config"]
  assert again["test_accuracy"] == summary["test_accuracy"]


def test_small_preset_clears_the_bar(tmp_path):
  """The README's main command on half its search (2 rounds, 32 trials; the search is most
  of its time): the median test accuracy of the winner's 3 retrains >= 0.97. Measured with
  ``--set rounds=2``, seeds 0, 1, 2: 0.9916, 0.9749, 0.9749 (the 64 trials of the README:
  0.9889, 0.9721 at the lowest); at seed 0, the one tested, 0.9916, 7.8 test examples of
  360 over the bar (retrains 0.9889-0.9916). The README reports its time; a test on a
  shared machine does not judge it."""
  summary = tune.main(["--workdir", str(tmp_path), "--set", "rounds=2"])
  assert summary["test_accuracy"] >= 0.97
  assert summary["trials"] == 32 and summary["final_seeds"] == 3


def test_the_reported_accuracy_survives_a_last_bit_change_of_the_initial_weights(tmp_path):
  """Item 5 of issue 23: the winner's initial weights scaled by 1 + k * 1e-7 (a change in
  their last bit or two, as another machine's init gives; ``--set init_scale``): the
  reported test accuracy, the median over 3 retrains, moves by at most 2 test examples of
  360 (on the small preset, measured: one retrain moved by 4, 0.9861 -> 0.9972, the median
  by 2, 0.9889 -> 0.9944). The hook really changes the training: some seed's final training
  loss differs."""
  config = dict(tune.PRESETS["tiny"])
  splits = data.load_dataset("digits", seed=config["seed"])
  rng = np.random.default_rng()
  best = {"learning_rate": float(rng.uniform(0.05, 0.3)), "momentum": 0.8,
          "weight_decay": 1e-4, "hidden": 16, "layers": 1, "batch_size": 64}
  runs = [tune.train_best(best, splits, dict(config, init_scale=scale), str(tmp_path / name))
          for name, scale in (("as_is", 1.0), ("perturbed", 1 + int(rng.integers(1, 4)) * 1e-7))]
  assert abs(runs[0]["test_accuracy"] - runs[1]["test_accuracy"]) <= 2 / 360 + 1e-9
  losses = [[json.loads((tmp_path / name / "final" / sub / "summary.json").read_text())[
      "final_train_loss"] for sub in ("", "seed_1", "seed_2")] for name in ("as_is", "perturbed")]
  assert losses[0] != losses[1]
  with pytest.raises(ValueError, match="init_scale must be a finite number > 0"):
    tune.main(["--workdir", str(tmp_path / "bad"), "--preset", "tiny", "--set", "init_scale=0"])
  assert not (tmp_path / "bad").exists()
