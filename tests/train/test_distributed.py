"""Many hosts (bigtune_jax/train/distributed.py): a real 2-process run over loopback
(``jax.distributed`` with a local coordinator, Gloo CPU collectives, 2 fake devices per
process, FSDP 2 x data 2 across them) trains like one process, writes one metrics log and
a checkpoint that restores on one device; flags and environment are checked up front.
"""

import argparse
import json

import jax
import numpy as np
import pytest

from bigtune_jax import train
from bigtune_jax.train import distributed
from tests import distributed_worker
from tests import multiprocess


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  """The 2-process run's results and directory, and the same training in this process."""
  out = tmp_path_factory.mktemp("distributed")
  address = f"127.0.0.1:{multiprocess.free_port()}"
  processes = [multiprocess.start("tests.distributed_worker", out, devices=2,
                                  JAX_COORDINATOR_ADDRESS=address, JAX_NUM_PROCESSES="2",
                                  JAX_PROCESS_ID=str(i)) for i in range(2)]
  try:
    state, loss_fn, train_data, val_data, config = distributed_worker.setup()
    one = train.fit(state, loss_fn, train_data, val_data, config=train.FitConfig(**config))
    for process in processes:
      multiprocess.finish(process)
  finally:
    for process in processes:
      if process.poll() is None:
        process.kill()
  results = [json.loads((out / f"result_{i}.json").read_text()) for i in range(2)]
  return results, out, one


def test_two_processes_form_one_mesh(runs):
  results, _, _ = runs
  assert [r["process_index"] for r in results] == [0, 1]
  for r in results:
    assert (r["process_count"], r["device_count"], r["local_device_count"]) == (2, 4, 2)
    assert r["mesh"] == {"data": 2, "fsdp": 2, "tensor": 1}
    assert r["kernel_spec"] == "P(None, 'fsdp')" and r["kernel_local_shard"] == [16, 32]


def test_two_processes_train_like_one(runs):
  results, out, one_process = runs
  for key in ("train_loss", "val_loss", "val_accuracy"):
    expected = [row[key] for row in one_process.history]
    for r in results:  # every process sees the same global metrics
      np.testing.assert_allclose([row[key] for row in r["history"]], expected, rtol=1e-5)
  gathered = [np.load(out / f"params_{i}.npz") for i in range(2)]
  for name, array in distributed_worker.flat(one_process.state.params).items():
    for params in gathered:
      np.testing.assert_allclose(params[name], array, rtol=1e-5, atol=1e-7)


def test_only_process_0_logs_and_checkpoints_restore_on_one_device(runs):
  results, out, _ = runs
  rows = train.MetricsLog(out / "run" / "metrics.jsonl").rows()
  assert [r["step"] for r in rows] == [r["step"] for r in results[0]["history"]]  # once each
  target = distributed_worker.setup()[0]
  with train.Checkpointer(out / "run" / "checkpoints") as checkpoints:
    assert checkpoints.all_steps() == [3, 6]
    restored = checkpoints.restore(target)
  saved = np.load(out / "params_0.npz")
  for name, array in distributed_worker.flat(restored.params).items():
    np.testing.assert_array_equal(array, saved[name])


def test_global_batch_assembles_this_hosts_rows():
  mesh = train.make_mesh()
  rows = {"x": np.arange(12.0).reshape(6, 2), "mask": np.ones(6, bool)}
  batch = train.global_batch(rows, mesh)
  assert batch["x"].sharding == train.batch_sharding(mesh)
  np.testing.assert_array_equal(batch["x"], rows["x"])


def test_without_a_coordinator_nothing_is_initialized(monkeypatch):
  for name in distributed.ENVIRONMENT.values():
    monkeypatch.delenv(name, raising=False)
  assert not train.maybe_initialize()
  assert jax.process_count() == 1


@pytest.mark.parametrize("kwargs,match", [
    (dict(coordinator_address="localhost", num_processes=2, process_id=0), "host:port"),
    (dict(coordinator_address="localhost:1234", num_processes=2, process_id=2), "process_id"),
    (dict(coordinator_address="localhost:1234", num_processes=0, process_id=0),
     "num_processes"),
])
def test_bad_arguments_are_named_before_connecting(kwargs, match):
  with pytest.raises(ValueError, match=match):
    train.maybe_initialize(**kwargs)


def test_flags_and_environment(monkeypatch):
  parser = distributed.add_flags(argparse.ArgumentParser())
  args = parser.parse_args(["--coordinator_address", "10.0.0.1:1234", "--num_processes", "2",
                            "--process_id", "1"])
  assert (args.coordinator_address, args.num_processes, args.process_id, args.cluster) == (
      "10.0.0.1:1234", 2, 1, False)
  monkeypatch.setenv("JAX_NUM_PROCESSES", "two")
  with pytest.raises(ValueError, match="JAX_NUM_PROCESSES must be an integer"):
    train.maybe_initialize()
