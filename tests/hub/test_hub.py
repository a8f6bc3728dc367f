"""bigtune_jax.hub against transformers itself: tiny random checkpoints made here, no network.

Every family's logits equal transformers' own torch forward in float32; checkpoints go
both ways (save_hf -> from_pretrained, save_pretrained with shards -> load_hf); bad
checkpoints are refused by name before any tensor is read.
"""

import dataclasses
import json
import shutil
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from bigtune_jax import hub  # noqa: E402
from bigtune_jax import models  # noqa: E402
from tests import multiprocess  # noqa: E402

SMALL = dict(vocab_size=300, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
             num_attention_heads=4)
LLAMA3_ROPE = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
               "high_freq_factor": 4.0, "original_max_position_embeddings": 16}


def _hf_model(kind: str):
  """A tiny transformers model with every parameter perturbed (biases and norms are
  zeros and ones at init: a swapped or dropped one would go unseen)."""
  torch.manual_seed(0)
  model = _hf_config_model(kind)
  with torch.no_grad():
    for p in model.parameters():
      p.add_(0.05 * torch.randn_like(p))
  return model


def _hf_config_model(kind: str):
  if kind == "gpt2":
    return transformers.GPT2LMHeadModel(transformers.GPT2Config(
        vocab_size=300, n_positions=64, n_embd=64, n_layer=2, n_head=4,
        layer_norm_epsilon=1e-6))
  if kind == "llama_gqa_llama3":
    return transformers.LlamaForCausalLM(transformers.LlamaConfig(
        **SMALL, num_key_value_heads=2, rope_theta=500000.0, rope_scaling=LLAMA3_ROPE,
        max_position_embeddings=64))
  if kind == "llama_tied":
    return transformers.LlamaForCausalLM(transformers.LlamaConfig(
        **SMALL, num_key_value_heads=4, tie_word_embeddings=True, max_position_embeddings=64))
  if kind == "llama_bias_head_dim":  # Llama's attention_bias: q, k, v and o_proj biases
    return transformers.LlamaForCausalLM(transformers.LlamaConfig(
        **SMALL, num_key_value_heads=2, head_dim=24, attention_bias=True,
        max_position_embeddings=64))
  if kind == "qwen2":
    return transformers.Qwen2ForCausalLM(transformers.Qwen2Config(
        **SMALL, num_key_value_heads=2, max_position_embeddings=64))
  if kind == "mistral":
    return transformers.MistralForCausalLM(transformers.MistralConfig(
        **SMALL, num_key_value_heads=1, sliding_window=None, max_position_embeddings=64))
  raise AssertionError(kind)


KINDS = ("gpt2", "llama_gqa_llama3", "llama_tied", "llama_bias_head_dim", "qwen2", "mistral")


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
  """kind -> (torch model, directory written by save_pretrained)."""
  root = tmp_path_factory.mktemp("hf")
  made = {}
  for kind in KINDS:
    model = _hf_model(kind).eval()
    model.save_pretrained(root / kind)
    made[kind] = (model, root / kind)
  return made


def _torch_logits(model, idx):
  with torch.no_grad():
    return model(torch.tensor(np.asarray(idx), dtype=torch.long)).logits.numpy()


def _ours(model, params, idx):
  return np.asarray(model.apply({"params": params}, jnp.asarray(idx, jnp.int32)))


@pytest.mark.parametrize("kind", KINDS)
def test_logits_equal_transformers_forward(checkpoints, kind):
  hf_model, path = checkpoints[kind]
  model, params = hub.load_hf(path, dtype=jnp.float32)
  rng = np.random.default_rng(len(kind))
  for length in (1, 7, 40):  # 40 > the llama3 rule's original 16 positions
    idx = rng.integers(0, 300, (2, length))
    np.testing.assert_allclose(_ours(model, params, idx), _torch_logits(hf_model, idx),
                               atol=1e-4, rtol=0)


def test_families_map_to_the_right_models(checkpoints):
  gpt, _ = hub.load_hf(checkpoints["gpt2"][1], dtype=jnp.float32)
  assert isinstance(gpt, models.GPT) and gpt.config.gelu_approximate
  assert gpt.config.layer_norm_epsilon == 1e-6 and gpt.config.vocab_size == 300
  llama, params = hub.load_hf(checkpoints["llama_gqa_llama3"][1])
  assert isinstance(llama, models.Llama) and llama.config.kv_heads == 2
  assert llama.config.rope_scaling_dict["rope_type"] == "llama3"
  assert llama.config.dtype == jnp.bfloat16  # compute dtype by default
  assert params["layers"]["self_attn"]["q_proj"]["kernel"].value.dtype == jnp.float32
  qwen, _ = hub.load_hf(checkpoints["qwen2"][1])
  assert qwen.config.attention_bias and qwen.config.model_type == "qwen2"


@pytest.mark.parametrize("kind", ("gpt2", "llama_gqa_llama3", "llama_bias_head_dim", "qwen2"))
def test_save_hf_loads_in_transformers_with_equal_logits(checkpoints, tmp_path, kind):
  model, params = hub.load_hf(checkpoints[kind][1], dtype=jnp.float32)
  out = hub.save_hf(tmp_path / "out", model, params, max_shard_size="60KB")
  assert (out / "model.safetensors.index.json").is_file()  # sharded above the size
  back = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
  assert type(back) is type(checkpoints[kind][0])
  idx = np.random.default_rng(0).integers(0, 300, (2, 9))
  np.testing.assert_allclose(_torch_logits(back, idx), _ours(model, params, idx), atol=1e-5)


def test_sharded_transformers_checkpoint_loads(checkpoints, tmp_path):
  hf_model = checkpoints["llama_tied"][0]
  hf_model.save_pretrained(tmp_path / "sharded", max_shard_size="100KB")
  assert len(list((tmp_path / "sharded").glob("model-*.safetensors"))) > 1
  model, params = hub.load_hf(tmp_path / "sharded", dtype=jnp.float32)
  idx = np.random.default_rng(1).integers(0, 300, (3, 5))
  np.testing.assert_allclose(_ours(model, params, idx), _torch_logits(hf_model, idx), atol=1e-4)


def test_bfloat16_checkpoint_loads_into_float32_parameters(checkpoints, tmp_path):
  hf_model = _hf_model("qwen2").to(torch.bfloat16)
  hf_model.save_pretrained(tmp_path / "bf16")
  model, params = hub.load_hf(tmp_path / "bf16", dtype=jnp.float32)
  stored = hf_model.model.embed_tokens.weight.detach().float().numpy()
  np.testing.assert_array_equal(np.asarray(params["embed_tokens"]["embedding"].value), stored)


def test_save_hf_never_leaves_a_partial_checkpoint_over_a_good_one(checkpoints, tmp_path,
                                                                   monkeypatch):
  model, params = hub.load_hf(checkpoints["gpt2"][1], dtype=jnp.float32)
  good = hub.save_hf(tmp_path / "ckpt", model, params)
  before = {p.name: p.read_bytes() for p in good.iterdir()}

  def fail(*args, **kwargs):
    raise OSError("disk full")
  monkeypatch.setattr(hub.safetensors.numpy, "save_file", fail)
  with pytest.raises(OSError, match="disk full"):
    hub.save_hf(tmp_path / "ckpt", model, params)
  assert {p.name: p.read_bytes() for p in good.iterdir()} == before
  assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]  # no staging left behind


# ------------------------------------------------------------------ bad input


@pytest.fixture
def no_reads(monkeypatch):
  """Fails the test if any tensor is read: errors must come from headers and config."""
  def read(*args):
    raise AssertionError("a tensor was read before the checkpoint was checked")
  monkeypatch.setattr(hub, "_read", read)


def _copy(checkpoints, kind, tmp_path):
  return Path(shutil.copytree(checkpoints[kind][1], tmp_path / kind))


def test_missing_config_is_named(checkpoints, tmp_path, no_reads):
  path = _copy(checkpoints, "gpt2", tmp_path)
  (path / "config.json").unlink()
  with pytest.raises(FileNotFoundError, match=r"config\.json is missing"):
    hub.load_hf(path)
  with pytest.raises(FileNotFoundError, match="does not exist"):
    hub.load_hf(tmp_path / "nowhere")


def _edit_config(path, **changes):
  config = json.loads((path / "config.json").read_text())
  config.update(changes)
  (path / "config.json").write_text(json.dumps(config))


def test_unsupported_model_type_lists_the_supported(checkpoints, tmp_path, no_reads):
  path = _copy(checkpoints, "gpt2", tmp_path)
  _edit_config(path, model_type="bert")
  with pytest.raises(ValueError, match="unsupported model_type 'bert'; supported: gpt2, "
                                       "llama, mistral, qwen2"):
    hub.load_hf(path)


def test_unknown_rope_scaling_type_is_refused(checkpoints, tmp_path, no_reads):
  path = _copy(checkpoints, "llama_tied", tmp_path)
  _edit_config(path, rope_parameters={"rope_type": "yarn", "factor": 4.0, "rope_theta": 1e4})
  with pytest.raises(ValueError, match="rope_scaling type must be one of 'default', "
                                       "'linear', 'llama3', got 'yarn'"):
    hub.load_hf(path)


def test_missing_shard_is_named(checkpoints, tmp_path, no_reads):
  checkpoints["llama_tied"][0].save_pretrained(tmp_path / "sharded", max_shard_size="100KB")
  victim = sorted((tmp_path / "sharded").glob("model-*.safetensors"))[1]
  victim.unlink()
  with pytest.raises(FileNotFoundError, match=f"shard .*{victim.name} named in"):
    hub.load_hf(tmp_path / "sharded")


def test_wrong_shape_and_missing_tensor_are_named(checkpoints, tmp_path, no_reads):
  path = _copy(checkpoints, "llama_gqa_llama3", tmp_path)
  _edit_config(path, intermediate_size=96)
  with pytest.raises(ValueError, match=r"tensor model\.layers\.0\.mlp\.gate_proj\.weight has "
                                       r"shape \(128, 64\), the config implies \(96, 64\)"):
    hub.load_hf(path)
  _edit_config(path, intermediate_size=128, num_hidden_layers=3)
  with pytest.raises(ValueError, match=r"tensor model\.layers\.2\..* is missing"):
    hub.load_hf(path)


def test_sliding_window_limits_the_positions_and_round_trips(checkpoints, tmp_path):
  """Mistral with a window shorter than its positions: exact up to the window, refused
  beyond it by name, and saved back with its window."""
  path = _copy(checkpoints, "mistral", tmp_path)
  _edit_config(path, sliding_window=16)
  hf_model = transformers.AutoModelForCausalLM.from_pretrained(path).eval()
  model, params = hub.load_hf(path, dtype=jnp.float32)
  assert model.config.sliding_window == 16 and model.config.block_size == 16
  idx = np.random.default_rng(3).integers(0, 300, (2, 16))
  np.testing.assert_allclose(_ours(model, params, idx), _torch_logits(hf_model, idx), atol=1e-4)
  with pytest.raises(ValueError, match="sequence length 17 exceeds sliding_window=16"):
    _ours(model, params, np.zeros((1, 17), np.int32))
  with pytest.raises(ValueError, match="cache max_len 32 exceeds sliding_window=16"):
    model.init_cache(1, 32)
  out = hub.save_hf(tmp_path / "out", model, params)
  assert json.loads((out / "config.json").read_text())["sliding_window"] == 16
  back = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
  np.testing.assert_allclose(_torch_logits(back, idx), _torch_logits(hf_model, idx), atol=1e-5)


def test_qwen2_window_counts_only_where_a_layer_slides(checkpoints, tmp_path):
  path = _copy(checkpoints, "qwen2", tmp_path)
  _edit_config(path, sliding_window=16, use_sliding_window=False, layer_types=None)
  assert hub.load_hf(path)[0].config.sliding_window is None
  _edit_config(path, use_sliding_window=True, max_window_layers=2)  # layers 2.. slide: none
  assert hub.load_hf(path)[0].config.sliding_window is None
  _edit_config(path, max_window_layers=1)
  assert hub.load_hf(path)[0].config.sliding_window == 16


def test_mistral_attention_bias_is_refused(checkpoints, tmp_path, no_reads):
  path = _copy(checkpoints, "mistral", tmp_path)
  _edit_config(path, attention_bias=True)
  with pytest.raises(ValueError, match="mistral attention_bias=true is not supported"):
    hub.load_hf(path)


def test_save_hf_refuses_what_it_cannot_write_before_writing(checkpoints, tmp_path):
  model, params = hub.load_hf(checkpoints["llama_tied"][1], dtype=jnp.float32)
  with pytest.raises(ValueError, match="needs attention_bias=False, o_proj_bias=False"):
    hub.save_hf(tmp_path / "a", model.clone(config=dataclasses.replace(
        model.config, model_type="mistral", attention_bias=True)), params)
  bad = jax.tree.map(lambda x: x, params)
  bad["norm"]["scale"] = bad["norm"]["scale"].replace_boxed(jnp.ones(3))
  with pytest.raises(ValueError, match=r"params norm/scale has shape \(3,\), the model's "
                                       r"config implies \(64,\)"):
    hub.save_hf(tmp_path / "b", model, bad)
  with pytest.raises(ValueError, match="max_shard_size must be bytes or a size"):
    hub.save_hf(tmp_path / "c", model, params, max_shard_size="lots")
  assert list(tmp_path.iterdir()) == []


def test_loads_onto_8_devices_fsdp_times_tensor(checkpoints, tmp_path):
  """In a fresh process with 8 CPU devices: fsdp 4 x tensor 2 gives the 1-device logits."""
  _, path = checkpoints["llama_gqa_llama3"]
  model, params = hub.load_hf(path, dtype=jnp.float32)
  idx = np.random.default_rng(2).integers(0, 300, (4, 8))
  expected = _ours(model, params, idx)
  np.save(tmp_path / "idx.npy", idx)
  multiprocess.finish(multiprocess.start("tests.hub_worker", path, tmp_path, devices=8))
  np.testing.assert_allclose(np.load(tmp_path / "logits.npy"), expected, atol=1e-5)
  specs = json.loads((tmp_path / "specs.json").read_text())
  assert specs["devices"] == 8
  assert specs["layers/self_attn/q_proj/kernel"] == [None, "fsdp", "tensor", None]
  assert specs["layers/mlp/gate_proj/kernel"] == [None, "fsdp", "tensor"]
  assert specs["embed_tokens/embedding"] == ["tensor", "fsdp"]
  assert specs["shard_shape/layers/mlp/gate_proj/kernel"] == [2, 16, 64]
