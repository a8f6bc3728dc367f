"""Sharding (bigtune_jax/train/sharding.py): one train step on 1 device, data-parallel 8,
FSDP 4 x data 2, and FSDP x tensor-parallel for a GPT gives the same training; parameters
and optimizer state really are sharded; checkpoints move between meshes.

The 8-device checks run in ``tests/sharding_worker.py`` in a subprocess with 8 fake CPU
devices (see ``tests/multiprocess.py``); the rules table is checked here on abstract meshes.
"""

import contextlib
import json
import warnings

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import AbstractMesh
from jax.sharding import AxisType

import bigtune_jax as bt
from bigtune_jax import models
from bigtune_jax import train
from tests import multiprocess
from tests import sharding_worker


@pytest.fixture(scope="module")
def worker(tmp_path_factory):
  out = tmp_path_factory.mktemp("sharding")
  multiprocess.finish(multiprocess.start("tests.sharding_worker", out, devices=8))
  return json.loads((out / "result.json").read_text()), out


def abstract_mesh(data, fsdp, tensor):
  return AbstractMesh((data, fsdp, tensor), train.sharding.MESH_AXES,
                      axis_types=(AxisType.Auto,) * 3)


@contextlib.contextmanager
def reports_nothing():
  """Fails the test if a ReplicatedParameterWarning is issued inside."""
  with warnings.catch_warnings():
    warnings.simplefilter("error", train.ReplicatedParameterWarning)
    yield


@pytest.mark.parametrize("model,mesh", [("mlp", "dp8"), ("mlp", "fsdp4_dp2"),
                                        ("gpt", "fsdp2_tp2_dp2")])
def test_every_mesh_trains_like_one_device(worker, model, mesh):
  runs = worker[0][model]
  np.testing.assert_allclose(runs[mesh]["losses"], runs["1"]["losses"], rtol=1e-5)
  assert len(runs[mesh]["losses"]) == sharding_worker.STEPS
  assert runs[mesh]["params_vs_1"] <= 1e-5  # max |w_mesh - w_1| / max |w_1|


def test_fsdp_shards_parameters_and_optimizer_state(worker):
  runs = worker[0]["mlp"]
  for tree in ("params", "opt_state"):
    for name, array in runs["fsdp4_dp2"][tree].items():
      if name.endswith("count']") or not array["shape"]:
        continue
      assert "fsdp" in array["spec"], (name, array)
      assert np.prod(array["shard"]) * 4 == np.prod(array["shape"]), (name, array)
      assert array["devices"] == 8
  for array in runs["dp8"]["params"].values():  # data-parallel: whole copies on 8 devices
    assert array["spec"] == "P()" and array["shard"] == array["shape"] and array["devices"] == 8
  momentum = runs["fsdp4_dp2"]["opt_state"]
  for name, array in runs["fsdp4_dp2"]["params"].items():
    assert momentum[f"[1].trace{name}"]["spec"] == array["spec"]


def test_fsdp_times_tensor_parallel_gpt_layout(worker):
  params = worker[0]["gpt"]["fsdp2_tp2_dp2"]["params"]
  expected = {  # (layers, embed, mlp) etc. through LOGICAL_RULES
      "['h']['mlp']['c_fc']['kernel'].value": ("P(None, 'fsdp', 'tensor')", [2, 16, 64]),
      "['h']['mlp']['c_proj']['kernel'].value": ("P(None, 'tensor', 'fsdp')", [2, 64, 16]),
      "['h']['attn']['c_attn']['kernel'].value": ("P(None, 'fsdp', None, 'tensor', None)",
                                                  [2, 16, 3, 1, 16]),
      "['wte']['embedding'].value": ("P('tensor', 'fsdp')", [32, 16]),
  }
  for name, (spec, shard) in expected.items():
    assert (params[name]["spec"], params[name]["shard"]) == (spec, shard), name
  trace = worker[0]["gpt"]["fsdp2_tp2_dp2"]["opt_state"]
  assert trace["[1].trace['wte']['embedding'].value"]["spec"] == "P('tensor', 'fsdp')"


def test_fit_defaults_to_every_device_and_takes_a_mesh_config(worker):
  fit = worker[0]["fit"]
  assert fit["default_devices"] == 8
  np.testing.assert_allclose([r["train_loss"] for r in fit["fsdp_history"]],
                             [r["train_loss"] for r in fit["default_history"]], rtol=1e-5)
  assert fit["fsdp_history"][-1]["val_loss"] < fit["fsdp_history"][0]["val_loss"]
  assert "fsdp" in fit["fsdp_params"]["['hidden_0']['kernel']"]["spec"]


def test_lm_experiment_takes_its_mesh_from_the_command_line(worker):
  dp8, fsdp_tp = worker[0]["lm"]["dp8"], worker[0]["lm"]["fsdp2_tp2"]
  assert dp8["mesh"] == {"data": 8, "fsdp": 1, "tensor": 1} and dp8["devices"] == 8
  assert fsdp_tp["mesh"] == {"data": 2, "fsdp": 2, "tensor": 2}
  np.testing.assert_allclose(fsdp_tp["test_loss"], dp8["test_loss"], rtol=1e-5)
  assert fsdp_tp["test_loss"] < np.log(256)  # learned something in 20 steps


def test_checkpoint_saved_on_8_devices_restores_on_1_and_4(worker):
  result, out = worker
  one, four = result["restored"]["1"], result["restored"]["fsdp2_dp2"]
  assert one["max_difference"] == 0 and four["max_difference"] == 0
  assert one["step"] == four["step"] == sharding_worker.STEPS
  assert {a["devices"] for a in one["params"].values()} == {1}
  kernel = four["opt_state"]["[1].trace['hidden_0']['kernel']"]
  assert kernel["devices"] == 4 and kernel["spec"] == "P(None, 'fsdp')" and kernel["shard"] == [
      16, 32]
  # And in this process, which has a single device:
  model, params, _, _ = sharding_worker.mlp_setup()
  target = train.create_train_state(model, params, bt.momentum(0.05))
  with train.Checkpointer(out / "fsdp_run" / "checkpoints") as checkpoints:
    restored = checkpoints.restore(target)
  saved = np.load(out / "fsdp_params.npz")
  for name, array in sharding_worker.leaves(restored.params).items():
    np.testing.assert_array_equal(array, saved[name])
    assert len(array.sharding.device_set) == 1


def test_rules_shard_gpt2_small_on_an_abstract_mesh():
  """GPT-2 124M shapes (no allocation) on a 2 x 4 x 2 mesh: every dimension the rules name
  is divisible, so each device holds 1/8 of the big matrices."""
  config = models.GPTConfig.gpt2_124m()
  shapes = jax.eval_shape(models.GPT(config).init, jax.random.key(0),
                          jax.ShapeDtypeStruct((1, 8), jnp.int32))["params"]
  with reports_nothing():
    shardings = train.param_sharding(shapes, abstract_mesh(2, 4, 2))
  specs = jax.tree.map(lambda s: s.spec, nn.unbox(shardings))
  assert specs["wte"]["embedding"] == jax.P("tensor", "fsdp")
  assert specs["h"]["mlp"]["c_fc"]["kernel"] == jax.P(None, "fsdp", "tensor")
  assert specs["h"]["attn"]["c_proj"]["kernel"] == jax.P(None, "tensor", None, "fsdp")
  assert specs["h"]["ln_1"]["scale"] == specs["wpe"] == jax.P(None, "fsdp")
  # On 512-way FSDP the vocabulary, 50304 = 2^7 * 3 * 131, and the width, 768 = 2^8 * 3,
  # are not divisible: the embedding (the largest array) and the attention kernels stay
  # whole on every device, and the warning says so, largest first.
  with pytest.warns(train.ReplicatedParameterWarning,
                    match=r"\(fsdp=512, tensor=1\).*Largest: wte/embedding \(50304, 768\) "
                          r"154,533,888 bytes; h/attn/c_attn/kernel"):
    train.param_sharding(shapes, abstract_mesh(1, 512, 1))


def test_untagged_parameters_shard_their_largest_divisible_dimension():
  tree = {"kernel": jax.ShapeDtypeStruct((6, 12), jnp.float32),
          "odd": jax.ShapeDtypeStruct((3, 5), jnp.float32),
          "scalar": jax.ShapeDtypeStruct((), jnp.float32)}
  # "odd" stays whole: 60 of the 288 + 60 bytes of arrays (the scalar has nothing to split).
  with pytest.warns(train.ReplicatedParameterWarning,
                    match=r"^1 of 2 arrays .* 60 of 348 bytes \(17.2%.*Largest: odd \(3, 5\) "
                          r"60 bytes$"):
    shardings = train.param_sharding(tree, abstract_mesh(1, 4, 2))
  specs = jax.tree.map(lambda s: s.spec, shardings)
  assert specs == {"kernel": jax.P(None, "fsdp"), "odd": jax.P(), "scalar": jax.P()}
  # A train state is reported once, for its parameters: the momentum and the best
  # parameters, left whole alike, have the parameters' shapes.
  state = jax.eval_shape(lambda: train.create_train_state(
      models.MLP(hidden=(), num_classes=5), {"odd": jnp.ones((3, 5))}, bt.momentum(0.1)))
  state = state.replace(best_params=state.params)
  with pytest.warns(train.ReplicatedParameterWarning) as issued:
    train.state_sharding(state, abstract_mesh(1, 4, 2))
  assert len(issued) == 1 and "1 of 1 arrays" in str(issued[0].message)
  with reports_nothing():  # data parallelism replicates every parameter by design
    data_parallel = train.param_sharding(tree, abstract_mesh(8, 1, 1))
  assert all(s.spec == jax.P() for s in jax.tree.leaves(data_parallel))


def test_tagged_dimension_not_divisible_stays_whole():
  box = nn.LogicallyPartitioned(jax.ShapeDtypeStruct((10, 6), jnp.float32), ("vocab", "embed"))
  sharding = train.param_sharding({"w": box}, abstract_mesh(1, 3, 4))
  assert nn.unbox(sharding)["w"].spec == jax.P(None, "fsdp")  # 10 % 4 != 0; 6 % 3 == 0
  # GPT-2's width 768 on 512-way FSDP: the fsdp axis moves to another divisible dimension,
  # never to the stacked layers of a scan.
  tree = {"fc": nn.LogicallyPartitioned(jax.ShapeDtypeStruct((12, 768, 3072), jnp.float32),
                                        ("layers", "embed", "mlp")),
          "ln": nn.LogicallyPartitioned(jax.ShapeDtypeStruct((512, 768), jnp.float32),
                                        ("layers", "embed"))}
  with reports_nothing():  # "ln" stays whole, but is 1.4% of the bytes: under the 2% reported
    specs = nn.unbox(train.param_sharding(tree, abstract_mesh(1, 512, 1)))
  assert specs["fc"].spec == jax.P(None, None, "fsdp") and specs["ln"].spec == jax.P()


def test_mesh_shapes_and_bad_sizes():
  mesh = train.make_mesh()  # this process has one device
  assert dict(mesh.shape) == {"data": 1, "fsdp": 1, "tensor": 1}
  assert all(t == AxisType.Auto for t in mesh.axis_types)
  with pytest.raises(ValueError, match="fsdp"):
    train.MeshConfig(fsdp=0)
  with pytest.raises(ValueError, match="must equal the number of devices"):
    train.make_mesh(data=2)
  with pytest.raises(ValueError, match="fsdp \\* tensor = 2 must divide"):
    train.make_mesh(fsdp=2)
  with pytest.raises(ValueError, match="mesh must be a bt.train.MeshConfig"):
    train.FitConfig(steps=1, batch_size=1, mesh=(2, 4))


def test_abstract_like_needs_one_sharding_per_array():
  state = {"w": jnp.ones((4, 2)), "b": jnp.zeros(2)}
  mesh = train.make_mesh()
  target = train.abstract_like(state, {"w": train.batch_sharding(mesh),
                                       "b": train.sharding.replicated(mesh)})
  assert target["w"].sharding == train.batch_sharding(mesh) and target["b"].shape == (2,)
  with pytest.raises(ValueError, match="shardings has 1 leaves, the tree 2"):
    train.abstract_like(state, {"w": train.batch_sharding(mesh)})


def test_collective_bytes_are_read_from_compiled_hlo():
  """benchmarks/collectives.py's reader on XLA's three spellings of replica groups, an
  operand list with index comments, and a collective inside a loop of 12 trips."""
  from benchmarks import collectives  # pylint: disable=import-outside-toplevel
  hlo = """HloModule m
%body.1 (p: (s32[], f32[96])) -> (s32[], f32[96]) {
  %g = f32[12]{0} get-tuple-element(%p), index=1
  %ag = f32[96]{0} all-gather(%g), replica_groups=[1,8]<=[8], dimensions={0}
}
ENTRY %main (a: f32[8,768], b: bf16[768]) -> f32[] {
  %a = f32[8,768]{1,0} parameter(0)
  %b = bf16[768]{0} parameter(1)
  %c = f32[] constant(0)
  %ar = (f32[8,768]{1,0}, bf16[768]{0}, f32[]) all-reduce(%a, %b, /*index=2*/%c), replica_groups={{0,1,2,3},{4,5,6,7}}, to_apply=%add
  %rs = f32[1,768]{1,0} reduce-scatter(%a), replica_groups=mesh['axis_0'=2,'axis_1'=4] {'axis_0','axis_1'}, dimensions={0}
  %w = (s32[], f32[96]) while(%t), condition=%cond.1, body=%body.1, backend_config={"known_trip_count":{"n":"12"}}
}
"""
  totals = collectives.count_collectives(hlo, devices=8)
  ar, ag, rs = (totals[k] for k in ("all-reduce", "all-gather", "reduce-scatter"))
  assert (ar["count"], ar["operand_bytes"]) == (1, 8 * 768 * 4 + 768 * 2 + 4)
  assert ar["wire_bytes"] == pytest.approx(2 * 3 / 4 * ar["operand_bytes"])  # groups of 4
  assert (ag["count"], ag["operand_bytes"], ag["wire_bytes"]) == (12, 12 * 48, 12 * 7 * 48)
  assert rs["operand_bytes"] == 8 * 768 * 4
  assert rs["wire_bytes"] == pytest.approx(7 / 8 * rs["operand_bytes"])  # one group of 8
