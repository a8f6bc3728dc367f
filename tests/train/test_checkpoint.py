"""Checkpointer: round trips, async saves, preservation policy, strict restore, bad paths."""

import json
import os

import flax.linen as nn
from flax.training import train_state
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from bigtune_jax.train import checkpoint
from bigtune_jax.train.checkpoint import Checkpointer, abstract_like


class _MLP(nn.Module):
  hidden: int = 32

  @nn.compact
  def __call__(self, x):  # (B, 64) -> (B, 10)
    hidden = nn.relu(nn.Dense(self.hidden)(x))  # Dense_0: kernel (64, hidden)
    return nn.Dense(10)(hidden)


def _fill(abstract, seed):
  """Random arrays shaped like ``abstract``, made in NumPy: no XLA compilation (fast tests)."""
  rng = np.random.default_rng(seed)
  def leaf(x):
    if jnp.issubdtype(x.dtype, jnp.integer):
      return jnp.asarray(rng.integers(0, 100, x.shape).astype(x.dtype))
    return jnp.asarray(rng.standard_normal(x.shape).astype(x.dtype))
  return jax.tree.map(leaf, abstract)


def _make_state(seed=0, hidden=32):
  """A flax TrainState (Python int step, Adam moments) holding random values."""
  model, tx = _MLP(hidden), optax.adam(1e-2)
  params = _fill(jax.eval_shape(
      lambda: model.init(jax.random.key(0), jnp.ones((1, 64)))["params"]), seed)
  opt_state = _fill(jax.eval_shape(tx.init, params), seed + 1)
  return train_state.TrainState(step=1, apply_fn=model.apply, params=params, tx=tx,
                                opt_state=opt_state)


def _bump(params, delta):
  return jax.tree.map(lambda p: jnp.asarray(np.asarray(p) + delta), params)


def _assert_same_bits(actual, expected):
  """Same paths, shapes, dtypes and bytes (static fields may differ: not leaves)."""
  actual = jax.tree_util.tree_flatten_with_path(actual)[0]
  expected = jax.tree_util.tree_flatten_with_path(expected)[0]
  assert [path for path, _ in actual] == [path for path, _ in expected]
  for (_, a), (_, e) in zip(actual, expected):
    if jax.dtypes.issubdtype(jnp.result_type(e), jax.dtypes.prng_key):
      a, e = jax.random.key_data(a), jax.random.key_data(e)
    a, e = np.asarray(a), np.asarray(e)
    assert (a.shape, a.dtype, a.tobytes()) == (e.shape, e.dtype, e.tobytes())


def _small(value):
  return {"w": jnp.asarray(np.full(3, value, np.float32))}


def test_round_trip_is_bit_for_bit(tmp_path):
  state = _make_state()
  tree = {"train": state.replace(step=jnp.asarray(np.int32(12))),
          "rng": jax.random.wrap_key_data(jnp.asarray(np.array([0, 7], np.uint32))),
          "loss_scale": jnp.asarray(np.float32(0.5))}
  with Checkpointer(tmp_path, async_save=False) as ckpt:
    assert ckpt.save(1, tree)
    restored = ckpt.restore(tree)
  _assert_same_bits(restored, tree)
  assert restored["train"].apply_fn == state.apply_fn  # static fields come from the target
  assert restored["train"].tx is state.tx


def test_python_scalars_restore_as_arrays(tmp_path):
  state = _make_state()  # `step` a Python int, as flax's TrainState.create makes it
  with Checkpointer(tmp_path, async_save=False) as ckpt:
    ckpt.save(1, {"state": state, "lr": 0.25, "table": np.arange(4)})
    restored = ckpt.restore({"state": state, "lr": 0.0, "table": np.zeros(4, np.int64)})
  assert int(restored["state"].step) == state.step == 1
  assert float(restored["lr"]) == 0.25 and restored["lr"].dtype == jnp.float32
  np.testing.assert_array_equal(restored["table"], np.arange(4))


def test_async_save_then_wait(tmp_path):
  state = _make_state()
  ckpt = Checkpointer(tmp_path)  # async by default
  assert ckpt.save(5, state)
  assert ckpt.latest_step() == 5  # counted as soon as save returns
  ckpt.wait()
  assert (tmp_path / "5" / "default").is_dir()
  assert not [p for p in os.listdir(tmp_path) if "tmp" in p]
  ckpt.close()
  with Checkpointer(tmp_path) as again:
    assert again.all_steps() == [5]
    _assert_same_bits(again.restore(state), jax.tree.map(jnp.asarray, state))


def test_keeps_the_last_two_and_the_best(tmp_path):
  losses = {1: 5.0, 2: 1.0, 3: 4.0, 4: 3.0, 5: 6.0, 6: 7.0}
  with Checkpointer(tmp_path, keep_last=2, keep_best=1, best_metric="val_loss") as ckpt:
    for step, loss in losses.items():
      assert ckpt.save(step, _small(step), {"val_loss": loss, "acc": 0.5})
    ckpt.wait()
    assert ckpt.all_steps() == [2, 5, 6]
    assert ckpt.best_step() == 2
  assert sorted(int(p) for p in os.listdir(tmp_path) if p.isdigit()) == [2, 5, 6]
  with Checkpointer(tmp_path, keep_last=2, keep_best=1, best_metric="val_loss") as again:
    assert again.all_steps() == [2, 5, 6] and again.best_step() == 2
    np.testing.assert_array_equal(again.restore(_small(0.0), step=2)["w"], np.full(3, 2.0))


@pytest.mark.parametrize("mode, best", [("min", 3), ("max", 2)])
def test_best_step_by_mode(tmp_path, mode, best):
  with Checkpointer(tmp_path, keep_last=10, best_metric="score", mode=mode) as ckpt:
    assert ckpt.best_step() is None
    for step, score in [(1, 0.5), (2, 0.9), (3, 0.1), (4, float("nan"))]:
      ckpt.save(step, _small(step), {"score": score})
    ckpt.save(5, _small(5))  # without metrics: never the best
    assert ckpt.best_step() == best  # NaN never ranks best


def test_metrics_are_stored_without_a_best_metric(tmp_path):
  with Checkpointer(tmp_path, keep_best=0) as ckpt:
    ckpt.save(1, _small(1), {"loss": np.float32(1.5)})
    assert ckpt.best_step() is None and ckpt.latest_step() == 1
  assert json.loads((tmp_path / "1" / "metrics" / "metrics").read_text()) == {"loss": 1.5}


def test_restore_through_abstract_and_concrete_targets(tmp_path):
  state = _make_state(seed=0)
  with Checkpointer(tmp_path, async_save=False) as ckpt:
    ckpt.save(1, state)
    ckpt.save(2, state.replace(params=_bump(state.params, 1)))
    abstract = jax.eval_shape(lambda: _make_state(seed=0))
    from_abstract = ckpt.restore(abstract, step=1)
    from_concrete = ckpt.restore(_make_state(seed=5), step=1)  # its values are ignored
    latest = ckpt.restore(abstract_like(state))
  expected = jax.tree.map(jnp.asarray, state)
  _assert_same_bits(from_abstract, expected)
  _assert_same_bits(from_concrete, expected)
  kernel = latest.params["Dense_0"]["kernel"]
  np.testing.assert_array_equal(kernel, np.asarray(state.params["Dense_0"]["kernel"]) + 1)
  assert kernel.sharding == jax.sharding.SingleDeviceSharding(jax.local_devices()[0])


def test_abstract_like_keeps_shardings_and_canonical_dtypes():
  x = jnp.asarray(np.ones((2, 3), np.float32))
  abstract = abstract_like({"x": x, "n": 3, "f": 0.5, "a": np.zeros(2, np.float64)})
  assert abstract["x"] == jax.ShapeDtypeStruct((2, 3), jnp.float32, sharding=x.sharding)
  assert abstract["n"].dtype == jnp.asarray(3).dtype and abstract["n"].shape == ()
  assert abstract["a"].dtype == jnp.asarray(np.zeros(2)).dtype
  assert all(leaf.sharding is not None for leaf in jax.tree.leaves(abstract))


@pytest.mark.parametrize("target_fn, message", [
    (lambda: _make_state(hidden=16),
     "params/Dense_0/bias: stored (32,) float32, target (16,) float32"),
    (lambda: _make_state().replace(params=jax.tree.map(
        lambda p: jnp.asarray(np.asarray(p).astype(jnp.bfloat16)), _make_state().params)),
     "params/Dense_0/bias: stored (32,) float32, target (32,) bfloat16"),
    (lambda: {"state": _make_state()}, "state/step: in the target, not in the checkpoint"),
])
def test_restore_into_a_different_tree_names_the_path(tmp_path, target_fn, message):
  with Checkpointer(tmp_path, async_save=False) as ckpt:
    ckpt.save(1, _make_state())
    with pytest.raises(ValueError, match=r"checkpoint .*1 does not fit the target") as err:
      ckpt.restore(target_fn())
  assert message in str(err.value)


def test_no_checkpoint_is_file_not_found(tmp_path):
  missing = tmp_path / "never" / "made"
  with Checkpointer(missing) as ckpt:
    with pytest.raises(FileNotFoundError, match=r"no checkpoint in .*never/made.*steps: \[\]"):
      ckpt.restore(_small(0.0))
  assert not missing.exists()  # only a save creates the directory
  with Checkpointer(tmp_path, async_save=False) as ckpt:
    ckpt.save(3, _small(3))
    with pytest.raises(FileNotFoundError, match=r"step 4 in .*available steps: \[3\]"):
      ckpt.restore(_small(0.0), step=4)


def _truncate_data(step_dir):
  for path in (step_dir / "default" / "d").iterdir():
    with open(path, "r+b") as f:
      f.truncate(os.path.getsize(path) // 2)


def _delete_metadata(step_dir):
  (step_dir / "default" / "_METADATA").unlink()


@pytest.mark.parametrize("corrupt", [_truncate_data, _delete_metadata])
def test_corrupt_checkpoint_is_named_and_spares_the_others(tmp_path, corrupt):
  with Checkpointer(tmp_path, keep_last=5, keep_best=0, async_save=False) as ckpt:
    for step in (1, 2, 3):
      ckpt.save(step, _small(step))
  corrupt(tmp_path / "2")
  with Checkpointer(tmp_path, keep_last=5, keep_best=0) as ckpt:
    with pytest.raises(ValueError, match=rf"corrupt checkpoint {tmp_path / '2'}"):
      ckpt.restore(_small(0.0), step=2)
    assert ckpt.save(4, _small(4))
    ckpt.wait()
    for step in (1, 3, 4):
      np.testing.assert_array_equal(ckpt.restore(_small(0.0), step=step)["w"], np.full(3, step))
    assert ckpt.all_steps() == [1, 2, 3, 4]  # never deleted by us


@pytest.mark.parametrize("tmp_name", [
    "7.orbax-checkpoint-tmp",  # Orbax 0.12
    "7.orbax-checkpoint-tmp-1712345678",  # older Orbax: a timestamp suffix
])
def test_partial_save_is_ignored(tmp_path, tmp_name):
  with Checkpointer(tmp_path, async_save=False) as ckpt:
    ckpt.save(5, _small(5))
  partial = tmp_path / tmp_name  # what a process killed mid-save leaves behind
  (partial / "default").mkdir(parents=True)
  (partial / "default" / "_METADATA").write_text('{"tree_metadata": {')
  with Checkpointer(tmp_path) as ckpt:
    assert ckpt.all_steps() == [5] and ckpt.latest_step() == 5
    np.testing.assert_array_equal(ckpt.restore(_small(0.0))["w"], np.full(3, 5.0))
    assert ckpt.save(7, _small(7))  # the same step again replaces the partial one
    ckpt.wait()
    np.testing.assert_array_equal(ckpt.restore(_small(0.0))["w"], np.full(3, 7.0))


def test_existing_or_older_step_is_skipped(tmp_path):
  with Checkpointer(tmp_path, async_save=False) as ckpt:
    assert ckpt.save(jnp.asarray(np.int32(2)), _small(2))  # e.g. state.step
    assert not ckpt.save(2, _small(99))
    assert not ckpt.save(1, _small(99))
    assert ckpt.all_steps() == [2]
    np.testing.assert_array_equal(ckpt.restore(_small(0.0))["w"], np.full(3, 2.0))


def test_metrics_without_the_best_metric_write_nothing(tmp_path):
  with Checkpointer(tmp_path, best_metric="val_loss") as ckpt:
    with pytest.raises(ValueError, match="val_loss"):
      ckpt.save(1, _small(1), {"loss": 1.0})
    for bad_step in (-1, 1.5, True, "2"):
      with pytest.raises(ValueError, match=f"step must be an integer >= 0, got {bad_step!r}"):
        ckpt.save(bad_step, _small(1))
    assert ckpt.all_steps() == []
  assert not tmp_path.joinpath("1").exists()


@pytest.mark.parametrize("kwargs, name", [
    ({"keep_last": 0}, "keep_last"),
    ({"keep_best": -1}, "keep_best"),
    ({"mode": "lowest", "best_metric": "loss"}, "mode"),
    ({"keep_best": 1}, "best_metric"),
])
def test_bad_arguments(tmp_path, kwargs, name):
  kwargs.setdefault("best_metric", None)
  with pytest.raises(ValueError, match=name):
    Checkpointer(tmp_path / "c", **kwargs)
  assert not (tmp_path / "c").exists()


def test_bad_directories(tmp_path, monkeypatch):
  a_file = tmp_path / "file"
  a_file.write_text("not a directory")
  with pytest.raises(ValueError, match=f"{a_file} exists and is not a directory"):
    Checkpointer(a_file)
  with pytest.raises(ValueError, match=f"{a_file} is not a directory"):
    Checkpointer(a_file / "below")
  monkeypatch.setattr(checkpoint.os, "access", lambda path, mode: False)  # root can write anywhere
  with pytest.raises(ValueError, match=f"{tmp_path} is not writable"):
    Checkpointer(tmp_path / "new")
  assert a_file.read_text() == "not a directory"


def test_restore_params_reads_only_the_kept_parameters_read_only(tmp_path):
  state = _make_state(seed=3)
  with Checkpointer(tmp_path, async_save=False) as ckpt:
    ckpt.save(1, state)
  fresh = _make_state(seed=9).params
  with Checkpointer(tmp_path, read_only=True) as ckpt:
    assert set(ckpt.param_metadata()) == {"Dense_0/bias", "Dense_0/kernel", "Dense_1/bias",
                                          "Dense_1/kernel"}
    loaded = ckpt.restore_params(fresh, skip=lambda path: path.startswith("Dense_1/"))
    with pytest.raises(ValueError, match="is read_only: nothing is saved"):
      ckpt.save(2, state)
  _assert_same_bits(loaded["Dense_0"], state.params["Dense_0"])  # read from the checkpoint
  _assert_same_bits(loaded["Dense_1"], fresh["Dense_1"])  # kept from the target
  wider = _make_state(seed=9, hidden=16).params
  with Checkpointer(tmp_path, read_only=True) as ckpt:
    with pytest.raises(ValueError, match=r"Dense_0/bias: stored \(32,\) float32, target \(16,\)"):
      ckpt.restore_params(wider)
  with pytest.raises(FileNotFoundError, match="no checkpoint directory"):
    Checkpointer(tmp_path / "none", read_only=True)
