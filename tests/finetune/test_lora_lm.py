"""LoRA on the language-model families (finetune.LoRA) and PEFT's adapter format, against
the ``peft`` library itself on tiny random transformers checkpoints made here."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from bigtune_jax import models
from bigtune_jax import train
from bigtune_jax.finetune import Adapters
from bigtune_jax.finetune import LoRA
from bigtune_jax.finetune import adapter_parameter_count
from bigtune_jax.finetune import load_peft
from bigtune_jax.finetune import member_adapters
from bigtune_jax.finetune import save_peft

TINY = {"gpt": (models.GPT(models.GPTConfig.tiny()), ("c_attn", "attn/c_proj")),
        "llama": (models.Llama(models.LlamaConfig.tiny()), "all-linear")}


def _setup(kind, rank=4, **kwargs):
  model, targets = TINY[kind]
  params = model.init(jax.random.key(0), jnp.zeros((1, 1), jnp.int32))["params"]
  lora = LoRA(model, targets=targets, rank=rank, alpha=8.0, **kwargs)
  return model, params, lora


def _perturbed(lora_params, seed=1, scale=0.1):
  leaves, treedef = jax.tree.flatten(lora_params)
  keys = jax.random.split(jax.random.key(seed), len(leaves))
  return jax.tree.unflatten(treedef, [x + scale * jax.random.normal(k, x.shape)
                                      for x, k in zip(leaves, keys)])


def _cut(tree, rank):
  """The first ``rank`` columns of every ``lora_a`` and rows of every ``lora_b``."""
  def cut(path, x):
    return x[..., :rank] if "lora_a" in jax.tree_util.keystr(path) else x[..., :rank, :]

  return jax.tree_util.tree_map_with_path(cut, tree)


IDX = jnp.asarray(np.random.default_rng(0).integers(0, 64, (2, 9)), jnp.int32)


@pytest.mark.parametrize("kind", sorted(TINY))
def test_init_leaves_logits_unchanged_and_merge_equals_the_adapted_model(kind):
  model, params, lora = _setup(kind)
  lora_params = lora.init(jax.random.key(2), params)
  trained = _perturbed(lora_params)

  @jax.jit  # one compilation for the four forward passes
  def logits(params, lora_params, trained):
    return (model.apply({"params": params}, IDX), lora.apply(params, lora_params, IDX),
            lora.apply(params, trained, IDX),
            model.apply({"params": lora.merge(params, trained)}, IDX))

  base, at_init, adapted, merged = logits(params, lora_params, trained)
  np.testing.assert_array_equal(at_init, base)
  assert float(jnp.abs(adapted - base).max()) > 0.1
  np.testing.assert_allclose(adapted, merged, atol=2e-5, rtol=0)


@pytest.mark.parametrize("kind", sorted(TINY))
def test_a_masked_rank_is_the_smaller_adapter_and_init_is_prefix_stable(kind):
  model, params, lora = _setup(kind, rank=4, rslora=True)
  small = LoRA(model, targets=lora.targets, rank=2, alpha=8.0, rslora=True)
  full, small_tree = lora.init(jax.random.key(5), params), small.init(jax.random.key(5), params)
  jax.tree.map(np.testing.assert_array_equal, _cut(full, 2), small_tree)
  trained = _perturbed(full)  # a population's tree: stored rank 4, masked to 2
  np.testing.assert_allclose(lora.apply(params, trained, IDX, rank=2),
                             small.apply(params, _cut(trained, 2), IDX), atol=1e-6)


def test_scale_is_alpha_over_rank_or_its_root():
  _, _, lora = _setup("gpt")
  assert lora.scale_and_mask()[0] == 2.0
  scale, mask = lora.scale_and_mask(alpha=6.0, rank=3)
  assert float(scale) == 2.0 and mask.tolist() == [1, 1, 1, 0]
  assert float(LoRA(lora.model, rank=4, alpha=8.0, rslora=True).scale_and_mask()[0]) == 4.0


def test_dropout_acts_in_training_only():
  model, params, lora = _setup("gpt", dropout=0.5)
  trained = _perturbed(lora.init(jax.random.key(2), params))
  loss_fn = lora.loss(train.language_model_loss(model), params)
  batch = {"inputs": IDX, "targets": jnp.roll(IDX, -1, 1), "mask": jnp.ones(2, bool)}
  eval_loss = loss_fn(trained, batch, jax.random.key(0), False)[0]
  no_dropout = LoRA(model, targets=lora.targets, rank=4, alpha=8.0)
  np.testing.assert_allclose(
      eval_loss, no_dropout.loss(train.language_model_loss(model), params)(
          trained, batch, jax.random.key(0), True)[0], rtol=1e-6)
  a, b = (loss_fn(trained, batch, jax.random.key(s), True)[0] for s in (0, 1))
  assert abs(float(a) - float(b)) > 1e-5 and abs(float(a) - float(eval_loss)) > 1e-5


def test_only_the_adapters_hold_optimizer_state_and_gradients():
  """Compiled memory analysis of one train step: LoRA's optimizer state and the step's
  temporaries beyond the forward pass scale with the adapters; full fine-tuning's with the
  base (its gradients and Adam moments). (The forward pass alone holds one layer's weights
  as a temporary: XLA's slice of the scanned, stacked weights.)"""
  model = models.Llama(models.LlamaConfig.tiny(
      hidden_size=256, intermediate_size=1024, vocab_size=256, num_attention_heads=4))
  # Jitted inits: one compile each, not one per primitive (only sizes are used here).
  params = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, 1), jnp.int32))["params"]
  base_bytes = sum(x.nbytes for x in jax.tree.leaves(params))
  lora = LoRA(model, targets="all-linear", rank=2)
  lora_params = jax.jit(lora.init)(jax.random.key(1), params)
  assert adapter_parameter_count(lora_params) < 0.02 * sum(x.size for x in jax.tree.leaves(params))
  loss_fn = train.language_model_loss(model)
  batch = {"inputs": IDX, "targets": IDX, "mask": jnp.ones(2, bool)}
  memory = lambda f, *args: jax.jit(f).lower(*args).compile().memory_analysis()
  forward = memory(lambda base, lp: lora.loss(loss_fn, base)(lp, batch, jax.random.key(0), False)[0],
                   params, lora_params).temp_size_in_bytes
  lora_state = train.create_train_state(model, lora_params, optax.adam(1e-3))
  state_bytes = sum(x.nbytes for x in jax.tree.leaves(lora_state.opt_state))
  assert state_bytes < 0.05 * base_bytes  # Adam: 2 floats per adapter weight
  lora_step = memory(lambda base, state, batch: train.make_train_step(lora.loss(loss_fn, base))(
      state, batch), params, lora_state, batch)
  full_step = memory(train.make_train_step(loss_fn),
                     train.create_train_state(model, params, optax.adam(1e-3)), batch)
  lora_extra = lora_step.temp_size_in_bytes - forward
  full_extra = full_step.temp_size_in_bytes + full_step.output_size_in_bytes - forward
  assert lora_extra < 0.25 * base_bytes, (lora_extra, base_bytes)  # measured 0.16
  assert lora_step.output_size_in_bytes < 0.05 * base_bytes
  assert full_extra > 2 * base_bytes, (full_extra, base_bytes)  # measured 3.3: grads, moments


def test_bad_settings_are_named():
  model, params, lora = _setup("llama")
  with pytest.raises(ValueError, match="'qkv' names no Dense layer.*layers/self_attn/q_proj"):
    LoRA(model, targets=("qkv",)).init(jax.random.key(0), params)
  with pytest.raises(ValueError, match="rank must be in \\[1, min\\(in, out\\)\\] = \\[1, 16\\]"):
    LoRA(model, targets=("k_proj",), rank=17).init(jax.random.key(0), params)
  for bad, match in ((dict(rank=0), "rank"), (dict(alpha=0.0), "alpha"),
                     (dict(dropout=1.0), "dropout"), (dict(rslora=1), "rslora")):
    with pytest.raises(ValueError, match=match):
      LoRA(model, **bad)


def test_also_train_trains_in_full_beside_the_adapters_and_has_no_peft_form(tmp_path):
  model, params, _ = _setup("llama")
  lora = LoRA(model, targets=("q_proj",), rank=2, also_train=("norm",))
  tree = lora.init(jax.random.key(0), params)
  assert set(tree) == {"layers", "norm"}
  trained = _perturbed(tree)
  np.testing.assert_allclose(lora.apply(params, trained, IDX),
                             model.apply({"params": lora.merge(params, trained)}, IDX), atol=2e-5)
  with pytest.raises(ValueError, match="'norm/scale', a parameter trained in full"):
    save_peft(tmp_path / "adapter", lora, trained)
  assert not (tmp_path / "adapter").exists()


# --- PEFT, against the peft library ------------------------------------------------------

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")

from bigtune_jax import hub  # noqa: E402


def _hf(kind):
  torch.manual_seed(0)
  if kind == "gpt2":
    hf = transformers.GPT2LMHeadModel(transformers.GPT2Config(
        vocab_size=128, n_positions=32, n_embd=32, n_layer=2, n_head=4))
  else:
    hf = transformers.LlamaForCausalLM(transformers.LlamaConfig(
        vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32))
  return hf.eval()


def _logits(model, idx):
  with torch.no_grad():
    return model(torch.tensor(np.asarray(idx), dtype=torch.long)).logits.numpy()


PEFT_CASES = {"gpt2": (("c_attn", "attn/c_proj"), True),  # attn/c_proj: a regex in PEFT
              "llama": (("q_proj", "v_proj", "o_proj", "down_proj"), False)}


def _trained_in_peft(hf, directory, **config):
  """A peft LoRA model of ``hf`` whose adapters are random (as if trained), saved in
  ``directory``."""
  peft_model = peft.get_peft_model(hf, peft.LoraConfig(**config))
  with torch.no_grad():
    for name, p in peft_model.named_parameters():
      if "lora_" in name:
        p.normal_(0, 0.05)
  peft_model.save_pretrained(directory)
  return peft_model


@pytest.mark.parametrize("kind", sorted(PEFT_CASES))
def test_peft_loads_our_adapter_with_equal_logits_and_we_load_it_back(kind, tmp_path):
  hf = _hf(kind)
  hf.save_pretrained(tmp_path / "base")
  model, params = hub.load_hf(tmp_path / "base", dtype=jnp.float32)
  targets, rslora = PEFT_CASES[kind]
  lora = LoRA(model, targets=targets, rank=4, alpha=8.0, rslora=rslora)
  trained = _perturbed(lora.init(jax.random.key(0), params), scale=0.05)
  idx = np.random.default_rng(1).integers(0, 128, (2, 9))
  member = Adapters(_cut(trained, 3), rank=3, alpha=6.0)  # a member's own rank, alpha
  ours = np.asarray(lora.apply(params, member, jnp.asarray(idx)))
  out = save_peft(tmp_path / "adapter", lora, member)
  config = json.loads((out / "adapter_config.json").read_text())
  assert config["r"] == 3 and config["lora_alpha"] == 6.0 and config["use_rslora"] == rslora
  theirs = _logits(peft.PeftModel.from_pretrained(hf, out).eval(), idx)
  np.testing.assert_allclose(theirs, ours, atol=1e-4, rtol=0)
  back, back_params = load_peft(out, model)
  assert back.rank == 3 and back.alpha == 6.0 and back.rslora == rslora
  np.testing.assert_allclose(back.apply(params, back_params, jnp.asarray(idx)), ours, atol=1e-6)


@pytest.mark.parametrize("kind", sorted(PEFT_CASES))
def test_an_adapter_trained_in_peft_loads_with_equal_logits(kind, tmp_path):
  hf = _hf(kind)
  hf.save_pretrained(tmp_path / "base")
  model, params = hub.load_hf(tmp_path / "base", dtype=jnp.float32)
  names = ["c_attn", "c_fc"] if kind == "gpt2" else ["k_proj", "up_proj"]
  peft_model = _trained_in_peft(hf, tmp_path / "adapter", r=2, lora_alpha=5,
                               target_modules=names, fan_in_fan_out=kind == "gpt2")
  lora, lora_params = load_peft(tmp_path / "adapter", model)
  idx = np.random.default_rng(2).integers(0, 128, (2, 9))
  np.testing.assert_allclose(lora.apply(params, lora_params, jnp.asarray(idx)),
                             _logits(peft_model.eval(), idx), atol=1e-4, rtol=0)
  merged = lora.merge(params, lora_params)  # merged weights: a plain checkpoint
  hub.save_hf(tmp_path / "merged", model, merged)
  np.testing.assert_allclose(
      _logits(transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "merged"), idx),
      _logits(peft_model, idx), atol=1e-4, rtol=0)


def test_an_adapter_for_another_base_is_refused_naming_the_tensor(tmp_path):
  hf = _hf("llama")
  hf.save_pretrained(tmp_path / "base")
  model, params = hub.load_hf(tmp_path / "base", dtype=jnp.float32)
  lora = LoRA(model, targets=("q_proj",), rank=2)
  save_peft(tmp_path / "adapter", lora, lora.init(jax.random.key(0), params))
  other = models.Llama(models.LlamaConfig.tiny(vocab_size=128, hidden_size=48,
                                               max_position_embeddings=32))
  with pytest.raises(ValueError, match=r"model.layers.0.self_attn.q_proj.lora_A.weight has "
                                       r"shape \(2, 32\); this model \(r=2\) needs \(2, 48\)"):
    load_peft(tmp_path / "adapter", other)
  deeper = models.Llama(models.LlamaConfig.tiny(vocab_size=128, num_hidden_layers=1,
                                                max_position_embeddings=32))
  with pytest.raises(ValueError, match="is for layer 1; this model has 1 layers"):
    load_peft(tmp_path / "adapter", deeper)
  with pytest.raises(FileNotFoundError, match="is not a PEFT adapter"):
    load_peft(tmp_path / "base", model)


def _base(tmp_path):
  _hf("llama").save_pretrained(tmp_path / "base")
  return hub.load_hf(tmp_path / "base", dtype=jnp.float32)


def test_a_population_member_exports_at_its_own_rank_and_alpha(tmp_path):
  """Issue 21 item 5: a member (rank 2, alpha 4) of a LoRA(rank=8, alpha=16) population
  saved without repeating them loads in PEFT with our logits; contradictions are refused."""
  model, params = _base(tmp_path)
  lora = LoRA(model, targets=("q_proj", "v_proj"), rank=8, alpha=16.0)
  stored = _perturbed(lora.init(jax.random.key(3), params), seed=4, scale=0.05)
  member = member_adapters(stored, 2, 4.0)  # what a population's member(i) is
  assert (member.rank, member.alpha) == (2, 4.0)
  jax.tree.map(np.testing.assert_array_equal, member.params, _cut(stored, 2))
  assert member_adapters(member, 2, 4.0) is member
  with pytest.raises(ValueError, match="alpha=16.0 contradicts the adapters' own alpha=4.0"):
    member_adapters(member, 2, 16.0)
  idx = np.random.default_rng(5).integers(0, 128, (2, 9))
  ours = np.asarray(lora.apply(params, member, jnp.asarray(idx)))
  np.testing.assert_allclose(  # the same as the population's masked view of the member
      ours, lora.apply(params, stored, jnp.asarray(idx), alpha=4.0, rank=2), atol=1e-6)
  out = save_peft(tmp_path / "adapter", lora, member)
  config = json.loads((out / "adapter_config.json").read_text())
  assert (config["r"], config["lora_alpha"]) == (2, 4.0)
  theirs = _logits(peft.PeftModel.from_pretrained(_hf("llama"), out).eval(), idx)
  np.testing.assert_allclose(theirs, ours, atol=1e-4, rtol=0)
  assert adapter_parameter_count(member) == 2 * 2 * ((32 + 32) + (32 + 16))  # 2 layers: q, v
  merged = model.apply({"params": lora.merge(params, member)}, jnp.asarray(idx))
  np.testing.assert_allclose(merged, ours, atol=2e-5)
  for bad, match in ((dict(alpha=16.0), "alpha=16.0 contradicts the adapters' own alpha=4.0"),
                     (dict(rank=8), "rank=8 contradicts the adapters' own rank=2")):
    with pytest.raises(ValueError, match=match):
      save_peft(tmp_path / "refused", lora, member, **bad)
  with pytest.raises(ValueError, match="stored at rank 2, but this LoRA's rank is 8"):
    save_peft(tmp_path / "refused", lora, member.params)
  with pytest.raises(ValueError, match="stored at rank 2, but this LoRA's rank is 8"):
    lora.merge(params, member.params)
  assert not (tmp_path / "refused").exists()


def _trained_like(tree, seed=6):
  """``tree`` after some training: noise on A and B of every stacked layer whose A is not
  zero (layers the targets leave out keep A = B = 0, as training keeps them)."""
  flat = {k: np.asarray(v) for k, v in jax.tree_util.tree_leaves_with_path(tree)}
  rng = np.random.default_rng(seed)

  def noisy(path, x):
    a = flat[path[:-1] + (jax.tree_util.DictKey("lora_a"),)]
    live = (np.abs(a).sum((-2, -1)) > 0).astype(np.float32)[..., None, None]
    return x + 0.05 * rng.standard_normal(x.shape).astype(np.float32) * live

  return jax.tree_util.tree_map_with_path(noisy, tree)


def _peft_modules(peft_model) -> set[str]:
  return {n.removeprefix("base_model.model.").partition(".lora_A.")[0]
          for n, _ in peft_model.named_parameters() if ".lora_A." in n}


@pytest.mark.parametrize("targets", [
    r".*\.(q_proj|v_proj)", ["model.layers.0.self_attn.q_proj"],
    ["self_attn.k_proj", "mlp.down_proj"], r"model\.layers\.1\..*_proj"])
def test_peft_target_modules_choose_what_peft_chooses(targets, tmp_path):
  """Issue 21 item 7: PEFT's dotted names and regexes (matched against transformers'
  module names) adapt the modules peft's own matching adapts, with equal logits."""
  model, params = _base(tmp_path)
  lora = LoRA(model, targets=targets, rank=2, alpha=4.0)
  trained = _trained_like(lora.init(jax.random.key(7), params))
  out = save_peft(tmp_path / "adapter", lora, trained)
  theirs = peft.get_peft_model(_hf("llama"), peft.LoraConfig(r=2, target_modules=targets))
  loaded = peft.PeftModel.from_pretrained(_hf("llama"), out).eval()
  assert _peft_modules(loaded) == _peft_modules(theirs)
  idx = np.random.default_rng(8).integers(0, 128, (2, 9))
  np.testing.assert_allclose(_logits(loaded, idx), lora.apply(params, trained, jnp.asarray(idx)),
                             atol=1e-4, rtol=0)


@pytest.mark.parametrize("config", [
    dict(target_modules=["q_proj", "v_proj"], layers_to_transform=[0]),
    dict(target_modules=r"model\.layers\.1\.mlp\.(up|down)_proj")])
def test_a_peft_adapter_on_some_layers_loads_with_equal_logits(config, tmp_path):
  """Issue 21 item 7: the layers an adapter leaves out load as A = B = 0, and it saves
  back as PEFT wrote it (the same modules, equal logits)."""
  model, params = _base(tmp_path)
  peft_model = _trained_in_peft(_hf("llama"), tmp_path / "adapter", r=2, lora_alpha=3, **config)
  lora, lora_params = load_peft(tmp_path / "adapter", model)
  idx = np.random.default_rng(9).integers(0, 128, (2, 9))
  expected = _logits(peft_model.eval(), idx)
  np.testing.assert_allclose(lora.apply(params, lora_params, jnp.asarray(idx)), expected,
                             atol=1e-4, rtol=0)
  out = save_peft(tmp_path / "again", lora, lora_params)
  again = peft.PeftModel.from_pretrained(_hf("llama"), out).eval()
  assert _peft_modules(again) == _peft_modules(peft_model)
  np.testing.assert_allclose(_logits(again, idx), expected, atol=1e-4, rtol=0)
