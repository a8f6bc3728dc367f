"""experiments.finetune: frozen backbone vs full fine-tuning vs LoRA, smoke-sized."""

import json

import pytest

from experiments import finetune


def test_finetune_tiny_compares_methods(tmp_path):
  summary = finetune.main(["--workdir", str(tmp_path), "--preset", "tiny"])
  results = {r["method"]: r for r in summary["results"]}
  assert list(results) == ["scratch", "full", "groups", "frozen", "lora4"]  # tiny: rank 4
  count = {name: r["trainable_params"] for name, r in results.items()}
  # tiny: MLP 64-32-5; the head is 32*5+5; LoRA adds r*(64+32) on hidden_0.
  assert count["full"] == count["scratch"] == count["groups"] == 64 * 32 + 32 + 32 * 5 + 5
  assert count["frozen"] == 32 * 5 + 5
  assert count["lora4"] == count["frozen"] + 4 * (64 + 32)
  for r in summary["results"]:
    assert 0.0 <= r["test_accuracy"] <= 1.0
  assert summary["pretrain_test_accuracy"] > 0.9  # the pretraining run really trained
  on_disk = json.loads((tmp_path / "summary.json").read_text())
  for key in ("experiment", "steps", "final_train_loss", "test_loss", "test_accuracy",
              "devices", "wall_s", "results"):
    assert on_disk[key] is not None, key
  assert (tmp_path / "lora4" / "checkpoints").is_dir()


def test_finetune_rejects_a_rank_above_the_layer_width_before_training(tmp_path):
  with pytest.raises(ValueError, match=r"rank must be in \[1, min\(in, out\)\] = \[1, 32\]"):
    finetune.main(["--workdir", str(tmp_path / "run"), "--preset", "tiny",
                   "--set", "lora_ranks=33"])
  assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("setting, match", [
    ("lora_alpha=0", "alpha must be in"),
    ("head_learning_rate=-1", "learning_rate"),
    ("backbone_lr_factor=-1", r"learning_rates\['backbone'\]"),
])
def test_finetune_rejects_bad_method_settings_before_training(tmp_path, setting, match):
  with pytest.raises(ValueError, match=match):
    finetune.main(["--workdir", str(tmp_path / "run"), "--preset", "tiny", "--set", setting])
  assert not (tmp_path / "run").exists()
