"""The Hugging Face bridge under a hostile user (issue 21): saving touches only our files,
a checkpoint is never loaded as a different model than transformers reads, a saved model
keeps its identity, and every error names the file, tensor or argument.

Against transformers itself, on tiny random checkpoints made here (``tests/hub/test_hub.py``'s).
"""

import json
import os
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import safetensors.numpy

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from bigtune_jax import data  # noqa: E402
from bigtune_jax import hub  # noqa: E402
from bigtune_jax.finetune import LoRA  # noqa: E402
from bigtune_jax.finetune import load_peft  # noqa: E402
from bigtune_jax.finetune import save_peft  # noqa: E402
from tests.hub.test_hub import _edit_config  # noqa: E402
from tests.hub.test_hub import _hf_model  # noqa: E402
from tests.hub.test_hub import _ours  # noqa: E402
from tests.hub.test_hub import _torch_logits  # noqa: E402

TEXT = "the quick brown fox jumps over the lazy dog; " * 20


def _snapshot(path: Path) -> dict:
  """Every file under ``path`` (subfolders too) -> its bytes."""
  return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*"))
          if p.is_file()}


def _user_files(path: Path) -> dict:
  """A user's files in a checkpoint folder: a real tokenizer, a README, a subfolder, and
  files whose names only look like ours. Returns them: name -> bytes."""
  ours = _snapshot(path)
  data.train_bpe([TEXT], 300).save(path)
  (path / "README.md").write_text("# my model\nfine-tuned on foxes\n")
  (path / "runs").mkdir()
  (path / "runs" / "loss.csv").write_text("step,loss\n1,2.5\n")
  (path / "model-final.safetensors").write_bytes(os.urandom(64))
  (path / "pytorch_model.bin").write_bytes(os.urandom(64))
  return {k: v for k, v in _snapshot(path).items() if k not in ours}


def _idx(seed, length=7):
  return np.random.default_rng(seed).integers(0, 300, (2, length))


def _loaded(tmp_path, kind):
  _hf_model(kind).save_pretrained(tmp_path / f"{kind}-source")
  return hub.load_hf(tmp_path / f"{kind}-source", dtype=jnp.float32)


# ------------------------------------------------ 1. saving never deletes what it did not write


def test_save_hf_replaces_our_files_and_keeps_the_users(tmp_path):
  """Sharded over single and single over sharded: the old checkpoint's files go (a stale
  model.safetensors would be what transformers loads), the user's stay byte for byte."""
  model, params = _loaded(tmp_path, "qwen2")
  out = tmp_path / "out"
  hub.save_hf(out, model, params, max_shard_size="60KB")
  assert len(list(out.glob("model-*-of-*.safetensors"))) > 2
  theirs = _user_files(out)
  idx = _idx(0)
  expected = _ours(model, params, idx)
  for size in ("5GB", "60KB"):  # single over shards, then shards over the single file
    hub.save_hf(out, model, params, max_shard_size=size)
    back = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    np.testing.assert_allclose(_torch_logits(back, idx), expected, atol=1e-5)
    kept = _snapshot(out)
    assert {k: kept[k] for k in theirs} == theirs, size
    ours = sorted(p.name for p in out.glob("model*.safetensors*") if p.name not in theirs)
    assert ("model.safetensors" in ours) == (size == "5GB"), ours  # a stale one would win
    assert (len(ours) > 3) == (size == "60KB"), ours  # the index and its shards
  tokenizer = transformers.AutoTokenizer.from_pretrained(out)
  assert tokenizer.decode(tokenizer.encode("the lazy fox")) == "the lazy fox"
  assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "qwen2-source"]  # no staging


def test_a_save_that_fails_while_moving_in_puts_every_old_file_back(tmp_path, monkeypatch):
  model, params = _loaded(tmp_path, "gpt2")
  out = tmp_path / "out"
  hub.save_hf(out, model, params, max_shard_size="60KB")
  _user_files(out)
  before = _snapshot(out)
  changed = {**params, "wpe": params["wpe"].replace_boxed(params["wpe"].value + 1.0)}
  for step in ("replace", "remove"):  # a move in fails, then a stale shard's removal
    real, calls = getattr(os, step), []

    def flaky(*args, real=real, calls=calls):
      calls.append(args)
      if len(calls) == 2:  # one file is already new (or already removed)
        raise OSError("disk error")
      return real(*args)
    with monkeypatch.context() as patch:
      patch.setattr(os, step, flaky)
      with pytest.raises(OSError, match="disk error"):
        hub.save_hf(out, model, changed)  # a single file over the shards
    assert _snapshot(out) == before, step
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gpt2-source", "out"]


def test_save_peft_keeps_the_users_files(tmp_path):
  model, params = _loaded(tmp_path, "llama_tied")
  lora = LoRA(model, targets=("q_proj", "v_proj"), rank=2)
  adapters = lora.init(jax.random.key(1), params)
  out = tmp_path / "adapter"
  save_peft(out, lora, adapters)
  theirs = _user_files(out)
  save_peft(out, lora, adapters, alpha=3.0)
  assert {k: v for k, v in _snapshot(out).items() if k in theirs} == theirs
  assert load_peft(out, model)[0].alpha == 3.0


# ---------------------------------- 2. a checkpoint is never loaded into a different model


def _store(path: Path, **tensors):
  """Adds (or replaces) tensors in ``path/model.safetensors``."""
  stored = safetensors.numpy.load_file(path / "model.safetensors")
  safetensors.numpy.save_file({**stored, **tensors}, path / "model.safetensors",
                              metadata={"format": "pt"})


def test_llama_head_is_read_as_transformers_reads_it(tmp_path):
  """tie_word_embeddings=true but lm_head.weight stored with other values: transformers
  unties them and uses the stored head; stored with the same values: tied."""
  hf = _hf_model("llama_tied")
  path = tmp_path / "llama"
  hf.save_pretrained(path)
  head = np.random.default_rng(1).normal(0, 0.1, (300, 64)).astype(np.float32)
  _store(path, **{"lm_head.weight": head})
  expected = transformers.AutoModelForCausalLM.from_pretrained(path).eval()
  model, params = hub.load_hf(path, dtype=jnp.float32)
  assert not model.config.tie_word_embeddings
  idx = _idx(2)
  np.testing.assert_allclose(_ours(model, params, idx), _torch_logits(expected, idx), atol=1e-4)
  hub.save_hf(tmp_path / "out", model, params)  # saved as what it is: untied
  assert not json.loads((tmp_path / "out" / "config.json").read_text())["tie_word_embeddings"]
  _store(path, **{"lm_head.weight": hf.model.embed_tokens.weight.detach().numpy()})
  model, params = hub.load_hf(path, dtype=jnp.float32)
  assert model.config.tie_word_embeddings
  np.testing.assert_allclose(_ours(model, params, idx), _torch_logits(hf.eval(), idx), atol=1e-4)


def test_gpt2_with_a_head_of_its_own_is_refused_naming_tensor_and_field(tmp_path):
  """models.GPT's head is its token embedding: a GPT-2 whose stored head differs (untied,
  or tied in the config with a different head stored) is refused; an equal one loads."""
  hf = transformers.GPT2LMHeadModel(transformers.GPT2Config(
      vocab_size=300, n_positions=64, n_embd=64, n_layer=2, n_head=4,
      tie_word_embeddings=False))
  with torch.no_grad():
    hf.lm_head.weight.add_(0.05 * torch.randn_like(hf.lm_head.weight))
  hf.save_pretrained(tmp_path / "untied")
  with pytest.raises(ValueError, match=r"lm_head\.weight apart from transformer\.wte\.weight "
                                       r".*tie_word_embeddings=False"):
    hub.load_hf(tmp_path / "untied")
  _edit_config(tmp_path / "untied", tie_word_embeddings=True)
  with pytest.raises(ValueError, match=r"lm_head\.weight .*tie_word_embeddings=True"):
    hub.load_hf(tmp_path / "untied")
  _edit_config(tmp_path / "untied", tie_word_embeddings=False)
  _store(tmp_path / "untied",
         **{"lm_head.weight": hf.transformer.wte.weight.detach().numpy()})
  expected = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "untied").eval()
  model, params = hub.load_hf(tmp_path / "untied", dtype=jnp.float32)
  np.testing.assert_allclose(_ours(model, params, _idx(3)), _torch_logits(expected, _idx(3)),
                             atol=1e-4)


def test_an_untied_head_that_is_not_stored_is_refused(tmp_path):
  path = tmp_path / "qwen2"
  _hf_model("qwen2").save_pretrained(path)
  stored = safetensors.numpy.load_file(path / "model.safetensors")
  del stored["lm_head.weight"]
  safetensors.numpy.save_file(stored, path / "model.safetensors", metadata={"format": "pt"})
  with pytest.raises(ValueError, match=r"tie_word_embeddings=false but the checkpoint stores "
                                       r"no lm_head\.weight"):
    hub.load_hf(path)


@pytest.mark.parametrize("kind,extra", [("gpt2", "transformer.h.0.attn.c_attn.lora.weight"),
                                        ("qwen2", "score.weight")])
def test_a_stored_tensor_the_model_would_ignore_is_refused_by_name(tmp_path, kind, extra):
  path = tmp_path / kind
  _hf_model(kind).save_pretrained(path)
  _store(path, **{extra: np.ones((3, 64), np.float32)})
  with pytest.raises(ValueError, match=rf"1 tensors the model has no place for.*{extra}"):
    hub.load_hf(path)


def test_with_both_a_single_file_and_an_index_the_single_file_is_read_as_transformers_does(
    tmp_path):
  path = tmp_path / "both"
  _hf_model("llama_tied").save_pretrained(path, max_shard_size="100KB")
  other = _hf_model("llama_tied")
  with torch.no_grad():
    for p in other.parameters():
      p.add_(0.1 * torch.randn_like(p))
  other.save_pretrained(tmp_path / "single")
  os.replace(tmp_path / "single" / "model.safetensors", path / "model.safetensors")
  expected = transformers.AutoModelForCausalLM.from_pretrained(path).eval()
  model, params = hub.load_hf(path, dtype=jnp.float32)
  np.testing.assert_allclose(_ours(model, params, _idx(4)), _torch_logits(expected, _idx(4)),
                             atol=1e-4)


# ------------------------------------------------------ 4. a saved model keeps its identity


def test_saved_qwen2_keeps_its_token_ids_and_generation_config(tmp_path):
  """transformers' generate on the re-saved model stops where the original's does."""
  hf = _hf_model("qwen2").eval()
  prompt = torch.tensor([[5, 17, 42]])
  free = hf.generate(prompt, max_new_tokens=8, do_sample=False)[0, 3:].tolist()
  k = next(i for i in range(1, 8) if free[i] not in free[:i])
  eos = free[k]  # the model's greedy continuation ends here
  hf.config.update(dict(bos_token_id=1, eos_token_id=eos, pad_token_id=2,
                        initializer_range=0.037))
  hf.generation_config = transformers.GenerationConfig(
      bos_token_id=1, eos_token_id=eos, pad_token_id=2, max_new_tokens=8, do_sample=False)
  hf.save_pretrained(tmp_path / "source")
  model, params = hub.load_hf(tmp_path / "source", dtype=jnp.float32)
  hub.save_hf(tmp_path / "out", model, params)
  back = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()
  original = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "source").eval()
  stops = original.generate(prompt)
  assert stops.shape[1] == 3 + k + 1 and stops[0, -1] == eos
  assert torch.equal(back.generate(prompt), stops)
  config = json.loads((tmp_path / "out" / "config.json").read_text())
  assert (config["bos_token_id"], config["eos_token_id"], config["pad_token_id"]) == (1, eos, 2)
  assert config["initializer_range"] == 0.037
  assert back.generation_config.max_new_tokens == 8


@pytest.mark.parametrize("dtype", ["int8", "uint8", "bool", "banana"])
def test_save_hf_refuses_a_dtype_that_is_not_floating_point(tmp_path, dtype):
  model, params = _loaded(tmp_path, "llama_tied")
  with pytest.raises(ValueError, match=rf"dtype must be a floating-point dtype .*got '{dtype}'"):
    hub.save_hf(tmp_path / "x", model, params, dtype=dtype)
  assert [p.name for p in tmp_path.iterdir()] == ["llama_tied-source"]  # nothing written


def test_finetune_lm_merged_checkpoint_carries_the_base_tokenizer(tmp_path):
  from experiments import finetune_lm  # pylint: disable=import-outside-toplevel
  base = tmp_path / "base"
  _hf_model("llama_tied").save_pretrained(base)
  data.train_bpe([TEXT], 300).save(base)
  model, params = hub.load_hf(base, dtype=jnp.float32)
  merged = finetune_lm.save_merged(tmp_path / "merged", model, params, base)
  ours = transformers.AutoTokenizer.from_pretrained(merged)
  theirs = transformers.AutoTokenizer.from_pretrained(base)
  assert len(ours) == len(theirs) > 256
  assert ours.encode(TEXT[:60]) == theirs.encode(TEXT[:60])


# -------------------------------------------------------- 7. errors that name the thing


def test_a_truncated_or_junk_shard_is_named(tmp_path):
  path = tmp_path / "sharded"
  _hf_model("llama_tied").save_pretrained(path, max_shard_size="100KB")
  shards = sorted(path.glob("model-*.safetensors"))
  assert len(shards) >= 3
  victim = shards[1]
  victim.write_bytes(victim.read_bytes()[:-100])
  with pytest.raises(ValueError, match=rf"{victim.name} is not a readable safetensors file"):
    hub.load_hf(path)
  victim.write_bytes(b"<html>not found</html>")
  with pytest.raises(ValueError, match=rf"{victim.name} is not a readable safetensors file"):
    hub.load_hf(path)


def test_a_quantized_tensor_or_a_stray_index_entry_is_named(tmp_path):
  path = tmp_path / "q"
  _hf_model("qwen2").save_pretrained(path)
  _store(path, **{"model.norm.weight": np.ones(64, np.int8)})
  with pytest.raises(ValueError, match=r"tensor model\.norm\.weight in .*model\.safetensors is "
                                       r"stored as I8"):
    hub.load_hf(path)
  sharded = tmp_path / "s"
  _hf_model("qwen2").save_pretrained(sharded, max_shard_size="100KB")
  index = json.loads((sharded / "model.safetensors.index.json").read_text())
  index["weight_map"]["model.norm.weight"] = "../q/model.safetensors"
  (sharded / "model.safetensors.index.json").write_text(json.dumps(index))
  with pytest.raises(ValueError, match=r"index\.json maps model\.norm\.weight to "
                                       r"'\.\./q/model\.safetensors'; each entry must be a file"):
    hub.load_hf(sharded)


def test_a_config_file_path_bad_json_and_bad_dtypes_are_named(tmp_path):
  path = tmp_path / "g"
  _hf_model("gpt2").save_pretrained(path)
  with pytest.raises(ValueError, match=r"config\.json is a file; pass the checkpoint directory"):
    hub.load_hf(path / "config.json")
  for name in ("param_dtype", "dtype"):
    for value in ("banana", "int8", None):
      with pytest.raises(ValueError, match=rf"^{name} must be a floating-point dtype .*got "
                                           rf"{value!r}"):
        hub.load_hf(path, **{name: value})
  (path / "generation_config.json").write_text("{not json")
  with pytest.raises(ValueError, match=r"generation_config\.json is not valid JSON"):
    hub.load_hf(path)


def test_a_config_without_a_field_the_family_needs_is_named(tmp_path):
  path = tmp_path / "g"
  _hf_model("gpt2").save_pretrained(path)
  config = json.loads((path / "config.json").read_text())
  del config["n_embd"]
  (path / "config.json").write_text(json.dumps(config))
  with pytest.raises(ValueError, match=r"config\.json has no 'n_embd', which a gpt2 config "
                                       r"needs"):
    hub.load_hf(path)
  _edit_config(path, model_type=["gpt2"])
  with pytest.raises(ValueError, match=r"config\.json has no model_type"):
    hub.load_hf(path)
