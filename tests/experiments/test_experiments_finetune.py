"""experiments.finetune: frozen backbone vs full fine-tuning vs LoRA, smoke-sized."""

import json

import jax
import numpy as np
import pytest

from bigtune_jax import finetune as ft
from bigtune_jax import models
from bigtune_jax import train
from experiments import finetune
from experiments import tasks
from tests import reference
from tests import utils


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
  assert on_disk["results"] == summary["results"]
  utils.assert_run_facts(on_disk, "finetune")
  tiny = finetune.PRESETS["tiny"]
  assert on_disk["steps"] == tiny["finetune_steps"]
  assert on_disk["finetune_train_examples"] == 5 * tiny["finetune_per_class"]
  assert (tmp_path / "lora4" / "checkpoints").is_dir()
  # The scores reported, recomputed by a float64 NumPy forward pass of the checkpointed
  # parameters: the pretrained model's on the test digits 0-4, each plain-MLP method's on the
  # test digits 5-9 (relabelled 0-4 in class order), and the summary's loss, full's.
  test = tasks.load_images(tiny, tiny["image_size"])["test"]
  target = train.init_params(models.MLP(hidden=tiny["hidden"], num_classes=5),
                             test["image"][:1], 0)  # the experiment's shape: its compiled init
  # LoRA's checkpoint holds the adapters and the head (also_train): merged onto the
  # pretrained backbone by the LoRA, a plain MLP again.
  lora = ft.LoRA(models.MLP(hidden=tiny["hidden"], num_classes=5), targets=("hidden_0",),
                 rank=4, alpha=tiny["lora_alpha"], also_train=("head",))
  backbone = ft.load_pretrained(tmp_path / "pretrain", target, skip=("head",))
  adapters = utils.trained_params(tmp_path / "lora4",
                                  lora.init(jax.random.key(0), backbone, test["image"][:1]))
  for classes, runs in ((tasks.OLD_CLASSES, {"pretrain": summary}),
                        (tasks.NEW_CLASSES, results)):
    keep = np.isin(test["label"], classes)
    images, labels = test["image"][keep], test["label"][keep] - classes[0]
    for name, run in runs.items():
      params = (lora.merge(backbone, adapters) if name == "lora4"
                else utils.trained_params(tmp_path / name, target))
      loss, accuracy = reference.cross_entropy_and_accuracy(
          reference.mlp_logits(jax.device_get(params), images), labels)
      reported = run["pretrain_test_accuracy" if name == "pretrain" else "test_accuracy"]
      assert reported == pytest.approx(accuracy, abs=1e-6), name
      if name != "pretrain":
        assert run["test_loss"] == pytest.approx(loss, rel=1e-4), name
  assert summary["test_loss"] == results["full"]["test_loss"]
  assert summary["test_accuracy"] == results["full"]["test_accuracy"]


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
