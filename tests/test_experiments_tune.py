"""experiments.tune, the main job: the report it writes, resuming, and the accuracy bar."""

import json

from experiments import tune

REPORT_FILES = ("report.md", "summary.json", "search_progress.png", "hyperparameters.png",
                "trials.jsonl", "final/loss.png", "final/accuracy.png")
SUMMARY_KEYS = ("test_accuracy", "best_config", "trials", "wall_s", "experiment", "steps",
                "final_train_loss", "test_loss", "devices")


def test_tiny_preset_writes_the_report_and_resumes(tmp_path):
  summary = tune.main(["--workdir", str(tmp_path), "--preset", "tiny"])
  for name in REPORT_FILES:
    assert (tmp_path / name).exists(), name
  for key in SUMMARY_KEYS:
    assert summary[key] is not None, key
  assert json.loads((tmp_path / "summary.json").read_text())["trials"] == summary["trials"] == 4
  assert set(summary["best_config"]) == set(tune.CONTINUOUS + tune.STRUCTURE)
  assert summary["searcher"] == "optuna tpe"
  trials = [json.loads(line) for line in (tmp_path / "trials.jsonl").read_text().splitlines()]
  best = max(trials, key=lambda r: (r["val_accuracy"], -r["val_loss"]))
  assert summary["best_config"]["learning_rate"] == best["learning_rate"]
  report = (tmp_path / "report.md").read_text()
  assert "![search progress](search_progress.png)" in report and "final/loss.png" in report

  again = tune.main(["--workdir", str(tmp_path), "--preset", "tiny"])  # nothing left to do
  assert again["trials"] == 4 and again["best_config"] == summary["best_config"]
  assert again["test_accuracy"] == summary["test_accuracy"]
  assert again["search_wall_s"] < summary["search_wall_s"]


def test_small_preset_clears_the_bar(tmp_path):
  """The README's main command: test accuracy >= 0.97 within 3 minutes on 2 CPU cores."""
  summary = tune.main(["--workdir", str(tmp_path)])
  assert summary["test_accuracy"] >= 0.97
  assert summary["wall_s"] <= 180
  assert summary["trials"] == 64
