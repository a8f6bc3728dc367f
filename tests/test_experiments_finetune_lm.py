"""Seed 001 §4.1-4.2 (save, load, fine-tune) and the GPT language model on the bundled text."""

import math

from experiments import finetune_basic
from experiments import lm


def test_finetune_basic_tiny_loads_the_pretrained_backbone(tmp_path):
  summary = finetune_basic.main(["--workdir", str(tmp_path), "--preset", "tiny"])
  for key in ("test_accuracy", "scratch_test_accuracy", "pretrain_test_accuracy"):
    assert 0.0 <= summary[key] <= 1.0
  assert summary["pretrain_test_accuracy"] > 0.9  # the pretraining run really trained
  assert (tmp_path / "pretrain" / "checkpoints").is_dir()
  assert (tmp_path / "finetune" / "metrics.jsonl").exists()


def test_lm_tiny_learns_bytes_and_samples(tmp_path):
  summary = lm.main(["--workdir", str(tmp_path), "--preset", "tiny"])
  assert summary["test_loss"] < math.log(256)  # better than uniform over bytes
  assert math.isclose(summary["test_perplexity"], math.exp(summary["test_loss"]))
  assert len(summary["sample"]) > 0
  for key in ("experiment", "steps", "final_train_loss", "devices", "wall_s"):
    assert summary[key] is not None, key


def test_lm_rejects_a_text_shorter_than_a_window(tmp_path):
  short = tmp_path / "short.txt"
  short.write_text("too short")
  try:
    lm.main(["--workdir", str(tmp_path / "run"), "--preset", "tiny", "--set", f"text={short}"])
  except ValueError as error:
    assert "block_size" in str(error)
  else:
    raise AssertionError("expected a ValueError")
  assert not (tmp_path / "run").exists()  # nothing written before the error
