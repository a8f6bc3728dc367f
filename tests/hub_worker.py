"""Run by tests/hub/test_hub.py in a fresh process with 8 fake CPU devices: loads a checkpoint
straight onto an fsdp 4 x tensor 2 mesh and writes its logits and parameter shardings.

  python -m tests.hub_worker CHECKPOINT_DIR OUT_DIR
"""

import json
import sys
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from bigtune_jax import hub
from bigtune_jax import train
from bigtune_jax.tree_paths import path_name


def main(checkpoint: str, out: str) -> None:
  out = Path(out)
  mesh = train.MeshConfig(data=1, fsdp=4, tensor=2).make_mesh()
  model, params = hub.load_hf(checkpoint, dtype=jnp.float32, mesh=mesh)
  idx = jnp.asarray(np.load(out / "idx.npy"), jnp.int32)
  np.save(out / "logits.npy", np.asarray(model.apply({"params": params}, idx)))
  specs = {"devices": jax.device_count()}
  for key_path, leaf in jax.tree_util.tree_flatten_with_path(nn.unbox(params))[0]:
    name = path_name(key_path)
    specs[name] = [None if a is None else a for a in leaf.sharding.spec] + [None] * (
        leaf.ndim - len(leaf.sharding.spec))
    specs[f"shard_shape/{name}"] = list(leaf.addressable_shards[0].data.shape)
  (out / "specs.json").write_text(json.dumps(specs))


if __name__ == "__main__":
  main(*sys.argv[1:])
