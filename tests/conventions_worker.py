"""Run by tests/transforms/test_optax_conventions.py in a fresh process with 8 fake CPU devices
(``XLA_FLAGS=--xla_force_host_platform_device_count=8`` must be set before JAX starts): every
transform of ``registry.ALL`` is initialized and updated twice, eagerly and under jit, on
parameters sharded over a mesh whose axis is ``AxisType.Explicit`` (``jax.make_mesh``'s
default in current JAX), and the state's shardings are written as JSON.

  python -m tests.conventions_worker OUT_DIR
"""

import json
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from tests import registry

# Transforms whose state holds no array shaped like the parameters.
NO_PARAM_LIKE_STATE = ("sgd", "adaptive_sgd", "l2_sgd", "sgd_reduce_on_plateau",
                       "reduce_on_plateau", "l1", "l2", "scale_by_accumulated_norm")


def _paths(tree):
  return {jax.tree_util.keystr(path): leaf
          for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _same(a, b) -> bool:
  return (a.shape == b.shape and a.dtype == b.dtype
          and a.sharding.is_equivalent_to(b.sharding, a.ndim))


def check(case, params, jit: bool) -> dict:
  opt = case.make(case.learning_rate)
  init = jax.jit(opt.init) if jit else opt.init
  update = lambda g, s, p: opt.update(g, s, p, **case.kwargs)
  update = jax.jit(update) if jit else update
  state = init(params)
  grads = jax.tree.map(lambda w: 0.5 * w, params)
  new_state = state
  for _ in range(2):
    _, new_state = update(grads, new_state, params)
  before, after = _paths(state), _paths(new_state)
  changed = [f"{k}: {before[k].sharding} -> {after[k].sharding}"
             for k in before if not _same(before[k], after[k])]
  by_shape = {(w.shape, w.dtype.kind): w for w in jax.tree.leaves(params) if w.ndim}
  unlike, param_like = [], 0
  for name, leaf in before.items():
    w = by_shape.get((leaf.shape, leaf.dtype.kind if leaf.dtype != jnp.bfloat16 else "f"))
    if w is not None and leaf.ndim:
      param_like += 1
      if not leaf.sharding.is_equivalent_to(w.sharding, leaf.ndim):
        unlike.append(f"{name}: {leaf.sharding.spec} vs parameter {w.sharding.spec}")
  return {"changed_after_update": changed, "unlike_its_parameter": unlike,
          "param_like_leaves": param_like}


def main(out_dir: str) -> None:
  mesh = jax.make_mesh((8,), ("fsdp",))
  result = {"device_count": jax.device_count(), "no_param_like_state": NO_PARAM_LIKE_STATE}
  rng = np.random.default_rng(0)
  with jax.set_mesh(mesh):
    params = {  # distinct shapes, so that a state leaf's parameter is found by its shape
        "kernel": jax.device_put(jnp.asarray(rng.standard_normal((16, 6)), jnp.float32),
                                 NamedSharding(mesh, P("fsdp", None))),
        "wide": jax.device_put(jnp.asarray(rng.standard_normal((3, 24)), jnp.float32),
                               NamedSharding(mesh, P(None, "fsdp"))),
        "bias": jax.device_put(jnp.asarray(rng.standard_normal(5), jnp.float32),
                               NamedSharding(mesh, P())),
    }
    for mode in ("eager", "jit"):
      result[mode] = {}
      for case in registry.ALL:
        try:
          entry = check(case, params, jit=mode == "jit")
        except Exception as error:  # reported per case, so that one failure names itself
          entry = {"error": f"{type(error).__name__}: {str(error)[:500]}"}
        entry["mesh_axis_types"] = [str(t).split(".")[-1] for t in mesh.axis_types]
        result[mode][case.name] = entry
  with open(os.path.join(out_dir, "result.json"), "w") as f:
    json.dump(result, f, indent=1)


if __name__ == "__main__":
  main(sys.argv[1])
