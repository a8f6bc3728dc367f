"""experiments.tune_lm (seed 003 §4.1): the tiny preset searches, trains the best trial,
reports perplexities, and a second run on the workdir resumes the study."""

import json
import math

from experiments import tune_lm
from tests import utils


def test_tune_lm_tiny_preset_searches_trains_and_resumes(tmp_path):
  args = ["--workdir", str(tmp_path), "--preset", "tiny"]
  summary = tune_lm.main(args)
  saved = json.loads((tmp_path / "summary.json").read_text())
  assert saved["test_perplexity"] == summary["test_perplexity"]
  utils.assert_run_facts(summary, "tune_lm")
  assert summary["steps"] == 20  # final_tokens 8*16*20 in batches of 8 windows of 16 tokens
  assert math.isclose(summary["test_perplexity"], math.exp(summary["test_loss"]))
  assert math.isclose(summary["val_perplexity"], math.exp(summary["val_loss"]))
  for key in ("final_train_loss", "val_loss", "test_loss"):  # better than uniform over bytes
    assert summary[key] < math.log(256), key
  space = tune_lm.make_space(tune_lm.PRESETS["tiny"])
  assert space.validate(summary["best_config"]) == summary["best_config"]
  assert len(summary["trials"]) == 2
  best = min((t for t in summary["trials"] if t["state"] == "complete"),
             key=lambda t: t["value"])
  assert summary["best_trial_val_loss"] == best["value"]
  assert summary["best_config"] == best["params"]  # the trial trained at the end

  again = tune_lm.main(args)  # the study and the final training resume: nothing reruns
  assert len(again["trials"]) == 2 and again["best_config"] == summary["best_config"]
  assert again["resumed_from"] == summary["steps"]
  assert again["test_loss"] == summary["test_loss"]
