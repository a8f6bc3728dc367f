"""experiments.tune_lm (seed 003 §4.1): the tiny preset searches, trains the best trial,
reports perplexities, and a second run on the workdir resumes the study."""

import json
import math

from experiments import tune_lm


def test_tune_lm_tiny_preset_searches_trains_and_resumes(tmp_path):
  args = ["--workdir", str(tmp_path), "--preset", "tiny"]
  summary = tune_lm.main(args)
  saved = json.loads((tmp_path / "summary.json").read_text())
  assert saved["test_perplexity"] == summary["test_perplexity"]
  for key in ("experiment", "steps", "final_train_loss", "test_loss", "val_loss", "devices",
              "wall_s", "best_config", "best_trial_val_loss"):
    assert summary[key] is not None, key
  assert math.isclose(summary["test_perplexity"], math.exp(summary["test_loss"]))
  assert math.isclose(summary["val_perplexity"], math.exp(summary["val_loss"]))
  assert summary["val_loss"] < math.log(256)  # better than uniform over the bytes
  space = tune_lm.make_space(tune_lm.PRESETS["tiny"])
  assert space.validate(summary["best_config"]) == summary["best_config"]
  assert len(summary["trials"]) == 2
  assert summary["best_trial_val_loss"] == min(
      t["value"] for t in summary["trials"] if t["state"] == "complete")

  again = tune_lm.main(args)  # the study and the final training resume: nothing reruns
  assert len(again["trials"]) == 2 and again["best_config"] == summary["best_config"]
  assert again["resumed_from"] == summary["steps"]
  assert again["test_loss"] == summary["test_loss"]
