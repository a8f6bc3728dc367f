"""Run by tests/train/test_distributed.py as each process of a real multi-process run on this
machine (``jax.distributed`` over loopback, Gloo collectives between the CPU processes):
trains ``setup()``'s MLP with ``bt.train.fit`` on a mesh spanning every process's devices,
checkpointing to a shared directory, and writes what the test checks. The test trains the
same ``setup()`` in one process to compare.

  JAX_COORDINATOR_ADDRESS=127.0.0.1:PORT JAX_NUM_PROCESSES=2 JAX_PROCESS_ID=I \\
    python -m tests.distributed_worker OUT_DIR
"""

import json
import os
import sys

import jax
import numpy as np

import bigtune_jax as bt
from bigtune_jax import data
from bigtune_jax import models
from bigtune_jax import train


def setup():
  """A small MLP classifier, its data and its fit config (6 steps of global batch 32)."""
  rng = np.random.default_rng(0)
  x = rng.standard_normal((256, 16)).astype(np.float32)
  y = x[:, :4].argmax(1).astype(np.int32)
  train_data = data.ArrayDataset({"x": x[:192], "y": y[:192]})
  val_data = data.ArrayDataset({"x": x[192:], "y": y[192:]})
  model = models.MLP(hidden=(64,), num_classes=4)
  params = train.init_params(model, x[:1], seed=0)
  state = train.create_train_state(model, params, bt.momentum(0.05))
  config = dict(steps=6, batch_size=32, eval_every=3, eval_batch_size=24, progress=False)
  return state, train.classification_loss(model, "x", "y"), train_data, val_data, config


def flat(tree) -> dict:
  return {jax.tree_util.keystr(k): np.asarray(v)
          for k, v in jax.tree_util.tree_flatten_with_path(tree)[0]}


def main(out_dir: str) -> None:
  # First, before any JAX computation: join the run the JAX_* variables describe.
  assert train.maybe_initialize(), "expected JAX_COORDINATOR_ADDRESS etc. in the environment"
  from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel

  state, loss_fn, train_data, val_data, config = setup()
  result = train.fit(state, loss_fn, train_data, val_data, workdir=os.path.join(out_dir, "run"),
                     config=train.FitConfig(**config, mesh=train.MeshConfig(fsdp=2)))
  kernel = result.state.params["hidden_0"]["kernel"]
  report = {"process_index": jax.process_index(), "process_count": jax.process_count(),
            "device_count": jax.device_count(), "local_device_count": jax.local_device_count(),
            "mesh": dict(kernel.sharding.mesh.shape), "history": result.history,
            "kernel_spec": str(kernel.sharding.spec),
            "kernel_local_shard": list(kernel.addressable_shards[0].data.shape)}
  params = multihost_utils.process_allgather(result.state.params, tiled=True)
  np.savez(os.path.join(out_dir, f"params_{jax.process_index()}.npz"), **flat(params))
  with open(os.path.join(out_dir, f"result_{jax.process_index()}.json"), "w") as f:
    json.dump(report, f, indent=1)


if __name__ == "__main__":
  main(sys.argv[1])
