"""NNX GPT and Llama (Qwen2, Mistral): the linen twins' layout and logical axes, one weight
table for hub.load_hf / save_hf, equal logits to the linen model and to transformers, and
the same training trajectory through the engine."""

import json

from flax import nnx
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from bigtune_jax import data, hub, models, train  # noqa: E402
from bigtune_jax.models import nnx as nnx_models  # noqa: E402
from bigtune_jax.models.nnx import params as nnx_params  # noqa: E402
from tests import multiprocess  # noqa: E402
from tests.hub import test_hub  # noqa: E402  (its tiny random transformers checkpoints)

KINDS = ("gpt2", "llama_gqa_llama3", "qwen2", "mistral")


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
  root = tmp_path_factory.mktemp("hf")
  made = {}
  for kind in KINDS:
    model = test_hub._hf_model(kind).eval()
    model.save_pretrained(root / kind)
    made[kind] = (model, root / kind)
  return made


def _layout(tree):
  """Every parameter's path, shape and logical axis names."""
  boxed = lambda x: isinstance(x, nn.Partitioned)  # noqa: E731
  return jax.tree.map(lambda x: (x.value.shape, tuple(x.names)) if boxed(x) else x.shape,
                      tree, is_leaf=boxed)


@pytest.mark.parametrize("config", [models.GPTConfig.tiny(), models.LlamaConfig.tiny(
    tie_word_embeddings=True, attention_bias=True, o_proj_bias=True)], ids=["gpt", "llama"])
def test_an_nnx_decoder_has_the_linen_layout_axes_and_function(config):
  linen = {models.GPTConfig: models.GPT, models.LlamaConfig: models.Llama}[type(config)]
  twin = {models.GPTConfig: nnx_models.GPT, models.LlamaConfig: nnx_models.Llama}[type(config)]
  rng = np.random.default_rng()
  idx = jnp.asarray(rng.integers(0, config.vocab_size, (2, 9)), jnp.int32)
  shapes = jax.eval_shape(lambda: linen(config).init(jax.random.key(0), idx))["params"]
  params = jax.tree.map(lambda s: jnp.asarray(0.1 * rng.standard_normal(s.shape), s.dtype),
                        shapes)  # fresh random weights, in their logical-axis boxes
  module = nnx.eval_shape(lambda: twin(config, rngs=nnx.Rngs(0)))  # built without compute
  assert _layout(nnx_params.params_of(module)) == _layout(params)
  nnx_params.to_nnx(module, params)
  ours = nnx.jit(lambda m, i, t: (m(i), m(i, targets=t)))(module, idx, idx[:, ::-1])
  theirs = jax.jit(lambda p, i, t: (linen(config).apply({"params": p}, i),
                                    linen(config).apply({"params": p}, i, targets=t)))(
                                        params, idx, idx[:, ::-1])
  jax.tree.map(np.testing.assert_array_equal, ours, theirs)  # logits; fused head's losses


@pytest.mark.parametrize("kind", KINDS)
def test_load_hf_nnx_gives_the_linen_logits_and_transformers_logits(checkpoints, kind):
  hf_model, path = checkpoints[kind]
  linen, params = hub.load_hf(path, dtype=jnp.float32)
  module = hub.load_hf(path, dtype=jnp.float32, api="nnx")
  assert isinstance(module, nnx_models.GPT if kind == "gpt2" else nnx_models.Llama)
  assert module.config == linen.config
  idx = np.random.default_rng().integers(0, 300, (2, 11))
  logits = np.asarray(module(jnp.asarray(idx, jnp.int32)))
  np.testing.assert_allclose(logits, test_hub._ours(linen, params, idx), atol=1e-5, rtol=0)
  np.testing.assert_allclose(logits, test_hub._torch_logits(hf_model, idx), atol=1e-4, rtol=0)


@pytest.mark.parametrize("kind", ("gpt2", "qwen2"))
def test_save_hf_writes_an_nnx_model_that_transformers_loads_with_equal_logits(
    checkpoints, tmp_path, kind):
  module = hub.load_hf(checkpoints[kind][1], dtype=jnp.float32, api="nnx")
  module = nnx_params.to_nnx(module, jax.tree.map(lambda x: x * 1.5,
                                                 nnx.to_pure_dict(nnx.state(module, nnx.Param))))
  out = hub.save_hf(tmp_path / "out", module)
  back = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
  idx = np.random.default_rng().integers(0, 300, (2, 9))
  np.testing.assert_allclose(test_hub._torch_logits(back, idx),
                             np.asarray(module(jnp.asarray(idx, jnp.int32))), atol=1e-5)
  with pytest.raises(ValueError, match="takes params=None"):
    hub.save_hf(tmp_path / "other", module, {})
  with pytest.raises(ValueError, match="api must be one of"):
    hub.load_hf(checkpoints[kind][1], api="haiku")
  assert not (tmp_path / "other").exists()


@pytest.mark.parametrize("kind", ("gpt2",))
def test_linen_and_nnx_from_one_checkpoint_train_the_same_20_steps(checkpoints, kind):
  tokens = np.random.default_rng().integers(0, 300, (64, 9)).astype(np.int32)
  dataset = data.ArrayDataset({"inputs": tokens[:, :-1], "targets": tokens[:, 1:]})
  config = train.FitConfig(steps=20, batch_size=8, eval_every=4, progress=False)
  results = []
  for api in ("linen", "nnx"):
    loaded = hub.load_hf(checkpoints[kind][1], dtype=jnp.float32, api=api)
    model, params = loaded if api == "linen" else (loaded, None)
    state = train.create_train_state(model, params, optax.adamw(3e-3))
    results.append(train.fit(state, train.language_model_loss(model), dataset, config=config))
  losses = [[row["train_loss"] for row in r.history] for r in results]
  np.testing.assert_allclose(losses[1], losses[0], rtol=1e-6)
  assert losses[0][-1] < losses[0][0] - 0.1  # it trained
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5),
               nn.unbox(results[0].state.params), nn.unbox(results[1].state.params))
  trained = nnx_params.to_nnx(model, results[1].state.params)  # the module the user calls
  np.testing.assert_allclose(
      np.asarray(trained(jnp.asarray(tokens[:2, :-1]))),
      np.asarray(results[0].state.apply_fn({"params": results[0].state.params},
                                           jnp.asarray(tokens[:2, :-1]))), atol=1e-5)


def test_an_nnx_llama_loads_and_trains_on_an_fsdp_by_tensor_mesh_as_the_linen_one(
    checkpoints, tmp_path):
  hf_model, path = checkpoints["llama_gqa_llama3"]
  tokens = np.random.default_rng().integers(0, 300, (16, 9)).astype(np.int32)
  np.save(tmp_path / "tokens.npy", tokens)
  multiprocess.finish(multiprocess.start("tests.nnx_mesh_worker", path, tmp_path, devices=8))
  report = json.loads((tmp_path / "report.json").read_text())
  assert report["devices"] == 8
  np.testing.assert_allclose(np.load(tmp_path / "logits.npy"),
                             test_hub._torch_logits(hf_model, tokens[:2, :-1]), atol=1e-4)
  loaded = report["loaded"]  # the linen rules' placement (tests/hub/test_hub.py's 8-device test)
  assert loaded["layers/self_attn/q_proj/kernel"] == [None, "fsdp", "tensor", None]
  assert loaded["layers/mlp/gate_proj/kernel"] == [None, "fsdp", "tensor"]
  assert loaded["embed_tokens/embedding"] == ["tensor", "fsdp"]
  assert report["nnx_trained"] == report["linen_trained"]
  assert report["nnx_trained"]["layers/self_attn/q_proj/kernel"] == loaded[
      "layers/self_attn/q_proj/kernel"]
  np.testing.assert_allclose(report["nnx_losses"], report["linen_losses"], rtol=1e-6)
