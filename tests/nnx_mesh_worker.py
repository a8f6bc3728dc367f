"""Run by tests/models/test_nnx_models.py in a fresh process with 8 fake CPU devices: loads a
checkpoint as an NNX model straight onto an fsdp 4 x tensor 2 mesh, trains it and its linen
twin 4 steps on that mesh, and writes the logits, the placements and the losses.

  python -m tests.nnx_mesh_worker CHECKPOINT_DIR OUT_DIR
"""

import json
import sys
from pathlib import Path

from flax import nnx
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from bigtune_jax import data, hub, train
from bigtune_jax.tree_paths import path_name


def _specs(tree) -> dict:
  return {path_name(p): list(leaf.sharding.spec) + [None] * (leaf.ndim - len(leaf.sharding.spec))
          for p, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def main(checkpoint: str, out: str) -> None:
  out = Path(out)
  mesh_config = train.MeshConfig(data=1, fsdp=4, tensor=2)
  model = hub.load_hf(checkpoint, dtype=jnp.float32, mesh=mesh_config.make_mesh(), api="nnx")
  tokens = np.load(out / "tokens.npy")
  np.save(out / "logits.npy", np.asarray(model(jnp.asarray(tokens[:2, :-1]))))
  report = {"devices": jax.device_count(),
            "loaded": _specs(nnx.to_pure_dict(nnx.state(model, nnx.Param)))}
  dataset = data.ArrayDataset({"inputs": tokens[:, :-1], "targets": tokens[:, 1:]})
  config = train.FitConfig(steps=4, batch_size=8, eval_every=2, progress=False, mesh=mesh_config)
  for api in ("linen", "nnx"):
    loaded = hub.load_hf(checkpoint, dtype=jnp.float32, api=api)
    net, params = loaded if api == "linen" else (loaded, None)
    result = train.fit(train.create_train_state(net, params, optax.adam(1e-2)),
                       train.language_model_loss(net), dataset, config=config)
    report[f"{api}_losses"] = [row["train_loss"] for row in result.history]
    report[f"{api}_trained"] = _specs(nn.unbox(result.state.params))
  (out / "report.json").write_text(json.dumps(report))


if __name__ == "__main__":
  main(*sys.argv[1:])
