"""Run by tests/train/test_sharding.py in a fresh process with 8 fake CPU devices
(``XLA_FLAGS=--xla_force_host_platform_device_count=8`` must be set before JAX starts, and
the rest of the suite runs on one device): trains the same models on several meshes and
writes what the tests check as JSON.

  python -m tests.sharding_worker OUT_DIR
"""

import json
import os
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp

import bigtune_jax as bt
from bigtune_jax import data
from bigtune_jax import models
from bigtune_jax import train

STEPS = 6
BATCH = 32


def mlp_setup():
  rng = np.random.default_rng(0)
  x = rng.standard_normal((BATCH * STEPS, 16)).astype(np.float32)
  y = (x[:, :4].argmax(1)).astype(np.int32)
  model = models.MLP(hidden=(64,), num_classes=4)
  params = train.init_params(model, x[:1], seed=0)
  return model, params, train.classification_loss(model, "x", "y"), data.ArrayDataset(
      {"x": x, "y": y})


def gpt_setup():
  rng = np.random.default_rng(1)
  config = models.GPTConfig.tiny()
  tokens = rng.integers(0, config.vocab_size, (BATCH * STEPS, config.block_size + 1))
  windows = {"inputs": tokens[:, :-1].astype(np.int32), "targets": tokens[:, 1:].astype(np.int32)}
  model = models.GPT(config)
  params = train.init_params(model, windows["inputs"][:1], seed=0)
  return model, params, train.language_model_loss(model), data.ArrayDataset(windows)


def train_on(mesh_config, setup):
  """Per-step losses, and the final state, of STEPS momentum steps on ``mesh_config``."""
  model, params, loss_fn, dataset = setup()
  state = train.create_train_state(model, params, bt.momentum(0.05))
  mesh = mesh_config.make_mesh()
  shardings = train.state_sharding(state, mesh)
  state = jax.device_put(state, shardings)
  step = train.jit_train_step(loss_fn, shardings, mesh)
  losses = []
  for batch in dataset.batches(BATCH, seed=0):
    state, out = step(state, train.global_batch(batch, mesh))
    losses.append(float(out["loss"]))
  return losses, state


def leaves(tree):
  return {jax.tree_util.keystr(path): leaf
          for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def describe(tree):
  """Per array: its PartitionSpec, the shape of one device's shard, and how many devices."""
  return {name: {"spec": str(x.sharding.spec), "shard": list(x.addressable_shards[0].data.shape),
                 "shape": list(x.shape), "devices": len(x.sharding.device_set)}
          for name, x in leaves(tree).items()}


def max_relative_difference(a, b):
  """max |a - b| / max |b| over the arrays of two trees."""
  return max(float(np.max(np.abs(np.asarray(x) - np.asarray(y))) / np.max(np.abs(np.asarray(y))))
             for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def save_whole_shards() -> None:
  """From here on, Orbax writes each shard whole from its first replica.

  By default it splits a replicated shard into one slice per replica, each a program compiled
  for its shape: ~80 compiles (~8 s of this worker) for the lm runs' checkpoints, which no test
  reads. The checkpoints the tests restore are written before this, the default way.
  """
  ocp.type_handlers.register_type_handler(
      jax.Array, ocp.type_handlers.ArrayHandler(use_replica_parallel=False), override=True)


def main(out_dir: str) -> None:
  start = time.time()
  result = {"device_count": jax.device_count()}
  meshes = {
      "mlp": {"1": train.MeshConfig(data=1), "dp8": train.MeshConfig(),
              "fsdp4_dp2": train.MeshConfig(fsdp=4)},
      "gpt": {"1": train.MeshConfig(data=1), "fsdp2_tp2_dp2": train.MeshConfig(fsdp=2, tensor=2)},
  }
  for name, setup in (("mlp", mlp_setup), ("gpt", gpt_setup)):
    runs = {key: train_on(config, setup) for key, config in meshes[name].items()}
    reference = runs["1"][1]
    result[name] = {key: {
        "losses": losses,
        "params_vs_1": max_relative_difference(state.params, reference.params),
        "params": describe(state.params), "opt_state": describe(state.opt_state)}
        for key, (losses, state) in runs.items()}

  # fit: the default mesh is every device, data-parallel; checkpoints of the FSDP state
  # restore onto 1 and 4 devices.
  model, _, loss_fn, dataset = mlp_setup()

  def make_state():  # fresh arrays: fit donates the state it is given
    return train.create_train_state(model, mlp_setup()[1], bt.momentum(0.05))

  config = dict(steps=STEPS, batch_size=BATCH, eval_every=STEPS // 2, progress=False)
  default = train.fit(make_state(), loss_fn, dataset, config=train.FitConfig(**config))
  fsdp_dir = os.path.join(out_dir, "fsdp_run")
  fsdp = train.fit(make_state(), loss_fn, dataset, dataset, workdir=fsdp_dir,
                   config=train.FitConfig(**config, mesh=train.MeshConfig(fsdp=4)))
  result["fit"] = {"default_devices": len(jax.tree.leaves(default.state.params)[0].sharding
                                          .device_set),
                   "default_history": default.history, "fsdp_history": fsdp.history,
                   "fsdp_params": describe(fsdp.state.params)}
  saved = jax.device_get(fsdp.state.params)
  np.savez(os.path.join(out_dir, "fsdp_params.npz"), **{k: np.asarray(v) for k, v in leaves(
      saved).items()})
  restored = {}
  for key, mesh_config in (("1", train.MeshConfig(data=1)),
                           ("fsdp2_dp2", train.MeshConfig(data=2, fsdp=2))):
    mesh = mesh_config.make_mesh()
    target = train.abstract_like(make_state(), train.state_sharding(make_state(), mesh))
    with train.Checkpointer(os.path.join(fsdp_dir, "checkpoints")) as checkpoints:
      state = checkpoints.restore(target)
    restored[key] = {"step": int(state.step), "params": describe(state.params),
                     "opt_state": describe(state.opt_state),
                     "max_difference": max(float(np.max(np.abs(np.asarray(a) - np.asarray(b))))
                                           for a, b in zip(jax.tree.leaves(state.params),
                                                           jax.tree.leaves(saved)))}
  result["restored"] = restored

  # experiments.lm picks its layout by --set: FSDP 2 x tensor 2 x data 2 vs data 8. One
  # evaluation (one checkpoint) and a 2-byte sample: the layouts' losses are what is compared.
  from experiments import lm  # pylint: disable=g-import-not-at-top
  save_whole_shards()
  cheap = ["--set", "eval_every=20", "--set", "sample_bytes=2"]
  result["lm"] = {key: lm.main(["--workdir", os.path.join(out_dir, f"lm_{key}"), "--preset",
                                "tiny", *cheap, *flags])
                  for key, flags in (("dp8", []),
                                     ("fsdp2_tp2", ["--set", "fsdp=2", "--set", "tensor=2"]))}
  result["wall_s"] = time.time() - start
  with open(os.path.join(out_dir, "result.json"), "w") as f:
    json.dump(result, f, indent=1)


if __name__ == "__main__":
  main(sys.argv[1])
