"""LoRA on NNX models with Flax's nnx.LoRA / nnx.LoRAParam: only the adapters train, and
finetune.save_peft / load_peft round-trip them through PEFT itself with equal logits."""

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

torch = pytest.importorskip("torch")
peft = pytest.importorskip("peft")

from bigtune_jax import data, finetune, hub, models, train  # noqa: E402
from bigtune_jax.models import nnx as nnx_models  # noqa: E402
from bigtune_jax.finetune import nnx_lora  # noqa: E402
from bigtune_jax.models.nnx import params as nnx_params  # noqa: E402
from tests.hub import test_hub  # noqa: E402


@pytest.mark.parametrize("kind, targets", [("gpt2", ("c_attn", "mlp/c_proj")),
                                           ("qwen2", ("q_proj", "v_proj", "down_proj"))])
def test_nnx_lora_trains_only_the_adapters_and_peft_loads_them_with_equal_logits(
    tmp_path, kind, targets):
  hf_model = test_hub._hf_model(kind).eval()
  hf_model.save_pretrained(tmp_path / "base")
  model = hub.load_hf(tmp_path / "base", dtype=jnp.float32, api="nnx")
  frozen = jax.tree.map(np.array, nnx.to_pure_dict(nnx.state(model, nnx.Param)))
  seed = int(np.random.default_rng().integers(1 << 30))
  nnx_lora.add_lora(model, targets, rank=4, alpha=8.0, seed=seed)
  tokens = np.random.default_rng(seed).integers(0, 300, (32, 9)).astype(np.int32)
  dataset = data.ArrayDataset({"inputs": tokens[:, :-1], "targets": tokens[:, 1:]})
  state = train.create_train_state(model, None, optax.adam(1e-2))
  assert {type(v) for _, v in nnx.to_flat_state(nnx.state(model, nnx.LoRAParam))} == {
      nnx.LoRAParam}
  assert jax.tree.structure(state.params) == jax.tree.structure(
      nnx.to_pure_dict(nnx.state(model, nnx.LoRAParam)))  # wrt=nnx.LoRAParam: adapters only
  result = train.fit(state, train.language_model_loss(model), dataset,
                     config=train.FitConfig(steps=8, batch_size=8, eval_every=4,
                                            progress=False))
  assert result.history[-1]["train_loss"] < result.history[0]["train_loss"]
  nnx_params.to_nnx(model, result.state.params)
  for layer in nnx_lora.adapted_layers(model).values():  # the base kept; B moved from 0
    assert np.abs(layer.lora.lora_b[...]).max() > 0
  base = {path: module.base for path, module in nnx_lora.adapted_layers(model).items()}
  for path, module in base.items():
    np.testing.assert_array_equal(module.kernel[...], _at(frozen, path)["kernel"])

  finetune.save_peft(tmp_path / "adapter", model)
  adapted = peft.PeftModel.from_pretrained(hf_model, tmp_path / "adapter").eval()
  idx = tokens[:2, :-1]
  ours = np.asarray(model(jnp.asarray(idx)))
  np.testing.assert_allclose(ours, test_hub._torch_logits(adapted, idx), atol=1e-4, rtol=0)
  again = finetune.load_peft(tmp_path / "adapter",
                             hub.load_hf(tmp_path / "base", dtype=jnp.float32, api="nnx"))
  np.testing.assert_allclose(np.asarray(again(jnp.asarray(idx))), ours, atol=1e-6)


def _at(tree, path):
  for key in path.split("/"):
    tree = tree[key]
  return tree


def test_nnx_lora_refuses_bad_targets_ranks_and_a_second_set_before_changing_the_model():
  model = nnx.eval_shape(lambda: nnx_models.Llama(models.LlamaConfig.tiny(), rngs=nnx.Rngs(0)))
  with pytest.raises(ValueError, match="'nope' names no Dense layer"):
    nnx_lora.add_lora(model, ("nope",))
  with pytest.raises(ValueError, match="rank must be in"):
    nnx_lora.add_lora(model, ("q_proj",), rank=1000)
  assert not nnx_lora.adapted_layers(model)
  with pytest.raises(ValueError, match="holds no LoRA adapter"):
    finetune.save_peft("/nonexistent/never-written", model)
  nnx_lora.add_lora(model, ("q_proj",), rank=2)
  with pytest.raises(ValueError, match="already holds LoRA adapters on layers/self_attn/q_proj"):
    nnx_lora.add_lora(model, ("v_proj",))
  with pytest.raises(ValueError, match="takes no lora_params"):
    finetune.save_peft("/nonexistent/never-written", model, {})
