"""Seed 001 §4.1-4.2 (save, load, fine-tune) and the GPT language model on the bundled text."""

import math

import numpy as np
import pytest

from bigtune_jax import models
from bigtune_jax import train
from experiments import finetune_basic
from experiments import lm
from experiments import tasks
from tests import reference
from tests import utils


def test_finetune_basic_tiny_loads_the_pretrained_backbone(tmp_path):
  summary = finetune_basic.main(["--workdir", str(tmp_path), "--preset", "tiny"])
  for key in ("test_accuracy", "scratch_test_accuracy", "pretrain_test_accuracy"):
    assert 0.0 <= summary[key] <= 1.0
  assert summary["pretrain_test_accuracy"] > 0.9  # the pretraining run really trained
  assert (tmp_path / "pretrain" / "checkpoints").is_dir()
  assert (tmp_path / "finetune" / "metrics.jsonl").exists()
  utils.assert_run_facts(summary, "finetune_basic")
  tiny = finetune_basic.PRESETS["tiny"]
  assert (summary["pretrain_steps"], summary["steps"]) == (tiny["pretrain_steps"],
                                                           tiny["finetune_steps"])
  assert summary["finetune_train_examples"] == 5 * tiny["finetune_per_class"]
  # The scores reported, recomputed by a float64 NumPy forward pass of each run's
  # checkpointed parameters: the pretrained model on the test digits 0-4, the fine-tuned and
  # the scratch model on the test digits 5-9 (relabelled 0-4 in class order).
  test = tasks.load_images(tiny, tiny["image_size"])["test"]
  target = train.init_params(models.MLP(hidden=tiny["hidden"], num_classes=5),
                             test["image"][:1], 0)  # the experiment's shape: its compiled init
  for run, classes, reported in (
      ("pretrain", tasks.OLD_CLASSES, ("pretrain_test_accuracy", None)),
      ("finetune", tasks.NEW_CLASSES, ("test_accuracy", "test_loss")),
      ("scratch", tasks.NEW_CLASSES, ("scratch_test_accuracy", "scratch_test_loss"))):
    keep = np.isin(test["label"], classes)
    loss, accuracy = reference.cross_entropy_and_accuracy(reference.mlp_logits(
        utils.trained_params(tmp_path / run, target), test["image"][keep]),
        test["label"][keep] - classes[0])
    assert summary[reported[0]] == pytest.approx(accuracy, abs=1e-6), run
    if reported[1] is not None:
      assert summary[reported[1]] == pytest.approx(loss, rel=1e-4), run


def test_lm_tiny_learns_bytes_and_samples(tmp_path):
  summary = lm.main(["--workdir", str(tmp_path), "--preset", "tiny"])
  assert summary["test_loss"] < math.log(256)  # better than uniform over bytes
  assert math.isclose(summary["test_perplexity"], math.exp(summary["test_loss"]))
  assert len(summary["sample"]) > 0
  utils.assert_run_facts(summary, "lm")
  tiny = lm.PRESETS["tiny"]
  assert summary["steps"] == tiny["steps"]
  # Bits per byte below the uniform guess's 8; the validation loss below ln 256 as well.
  assert 0 < summary["test_bits_per_byte"] < 8
  assert summary["val_loss"] < math.log(256)
  # GPT-2's parameter count, by hand: token (256 x C) and position (block x C) embeddings,
  # per layer two LayerNorms (2C each), c_attn (C x 3C + 3C), the attention's c_proj
  # (C x C + C), c_fc (C x 4C + 4C), the MLP's c_proj (4C x C + C): 12C^2 + 13C; the final
  # LayerNorm (2C); the head is tied to the token embedding.
  c = tiny["n_embd"]
  assert summary["params"] == (256 + tiny["block_size"]) * c + tiny["n_layer"] * (
      12 * c * c + 13 * c) + 2 * c


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
