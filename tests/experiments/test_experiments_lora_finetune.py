"""experiments.finetune_lm: pretrain offline, save and load a Hugging Face checkpoint,
fine-tune four ways plus an adapter-population search; exports load in transformers/peft."""

import json

import numpy as np
import pytest

from experiments import finetune_lm


def test_tiny_run_compares_the_methods_and_exports_the_best_adapter(tmp_path):
  summary = finetune_lm.main(["--workdir", str(tmp_path), "--preset", "tiny",
                              "--set", "pretrain_steps=20", "--set", "finetune_steps=6",
                              "--set", "eval_every=3", "--set", "population=1"])
  methods = summary["methods"]
  assert set(methods) == {"base", "full", "head", "lora", "lora_search"}
  for name in ("full", "head"):  # the new domain is learnt
    assert methods[name]["test_loss"] < methods["base"]["test_loss"]
  assert 0 < methods["lora"]["trainable"] < methods["head"]["trainable"] < methods["full"]["trainable"]
  assert summary["search_trials"] == 1
  for name in ("report.md", "curves.png", "summary.json", "base/config.json",
               "merged/model.safetensors", "adapter/adapter_config.json"):
    assert (tmp_path / name).is_file(), name
  config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
  assert config["r"] == summary["best_lora"]["rank"]
  assert np.isclose(config["lora_alpha"], summary["best_lora"]["alpha"])


def test_a_missing_corpus_or_checkpoint_is_named(tmp_path):
  with pytest.raises(ValueError, match="needs --set train_text"):
    finetune_lm.target_splits({"checkpoint": str(tmp_path), "train_text": ""}, str(tmp_path))
  (tmp_path / "empty.txt").write_text("")
  for text in (tmp_path / "missing.txt", tmp_path / "empty.txt"):
    with pytest.raises(ValueError, match="no such file or folder, or it is empty"):
      finetune_lm.target_splits({"checkpoint": "", "train_text": str(text)}, str(tmp_path))
  with pytest.raises(FileNotFoundError):
    finetune_lm.main(["--workdir", str(tmp_path / "w"), "--preset", "tiny",
                      "--set", f"checkpoint={tmp_path / 'nothing'}"])
