"""bigtune_jax.tree_paths: one naming of pytree leaves for checkpoints, pruning and finetune."""

import chex
import flax
import jax.numpy as jnp
import numpy as np

from bigtune_jax import tree_paths


@flax.struct.dataclass
class _State:
  step: jnp.ndarray
  params: dict
  opt_state: tuple


def _state():
  rng = np.random.default_rng(0)
  params = {"hidden_0": {"kernel": rng.normal(size=(3, 4)), "bias": rng.normal(size=4)},
            "head": {"kernel": rng.normal(size=(4, 2))}}
  return _State(step=np.int32(7), params=params, opt_state=({"mu": params}, ()))


def test_dataclass_fields_dict_keys_and_indices_name_alike():
  names = tree_paths.leaf_paths(_state())
  assert names == ["step", "params/head/kernel", "params/hidden_0/bias", "params/hidden_0/kernel",
                   "opt_state/0/mu/head/kernel", "opt_state/0/mu/hidden_0/bias",
                   "opt_state/0/mu/hidden_0/kernel"]
  # Orbax metadata returns a dataclass as a dict of its fields: the names must not change.
  state = _state()
  as_dict = {"step": state.step, "params": state.params, "opt_state": list(state.opt_state)}
  assert sorted(tree_paths.leaf_paths(as_dict)) == sorted(names)  # dicts flatten sorted


def test_flatten_and_unflatten_are_inverse_for_dict_trees():
  params = _state().params
  flat = tree_paths.flatten(params)
  assert list(flat) == ["head/kernel", "hidden_0/bias", "hidden_0/kernel"]
  back = tree_paths.unflatten(flat)
  assert back.keys() == params.keys()
  chex.assert_trees_all_equal(back, params)  # every leaf back at its own path
