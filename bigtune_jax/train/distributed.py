"""Many hosts: joining a multi-process run, and assembling each host's rows into global
batches (seed 004 §4.1.2: ``dist.init_process_group`` + ``DistributedSampler``).

JAX is multi-controller: every host runs the same program on its own devices, and
``jax.distributed.initialize`` connects them through a coordinator (host 0) so that
``jax.devices()`` lists every host's devices and one ``jit`` spans them all. Each host then
loads only its rows of every global batch (``ArrayDataset.batches`` gives host ``p`` of
``P`` the ``p``-th contiguous slice) and :func:`global_batch` stitches the slices into one
``jax.Array`` split over the mesh's batch axes, without moving data between hosts.

On CPU, collectives between processes go through Gloo over TCP
(``jax_cpu_collectives_implementation``, the default in recent JAX); GPUs use NCCL and TPUs
their interconnect, with nothing to configure. Within one process, several CPU devices
(``--xla_force_host_platform_device_count``) need their collectives awaited step by step
(:func:`cpu_collectives_need_sync`): a fact of the runtime, not of any sharding.

Where the run's parameters come from, in order: the arguments of :func:`maybe_initialize`;
the environment variables ``JAX_COORDINATOR_ADDRESS`` (``host:port`` of process 0),
``JAX_NUM_PROCESSES``, ``JAX_PROCESS_ID``; or, with ``cluster=True``, JAX's detection of
SLURM, Open MPI, Kubernetes and Cloud TPU environments.
"""

import argparse
import os

import jax
import numpy as np

from bigtune_jax import validation
from bigtune_jax.train import sharding as sharding_lib

ENVIRONMENT = {"coordinator_address": "JAX_COORDINATOR_ADDRESS",
               "num_processes": "JAX_NUM_PROCESSES", "process_id": "JAX_PROCESS_ID"}


def _from_environment(name: str, value):
  if value is not None:
    return value
  text = os.environ.get(ENVIRONMENT[name])
  if text is None or name == "coordinator_address":
    return text
  try:
    return int(text)
  except ValueError as error:
    raise ValueError(f"{ENVIRONMENT[name]} must be an integer, got {text!r}") from error


def maybe_initialize(coordinator_address: str | None = None, num_processes: int | None = None,
                     process_id: int | None = None, *, cluster: bool = False,
                     cpu_collectives: str | None = "gloo") -> bool:
  """Calls ``jax.distributed.initialize`` when a multi-process run is asked for; returns
  whether this process is part of one.

  Asked for means: any of the three parameters given, here or in the environment
  (``JAX_COORDINATOR_ADDRESS``, ``JAX_NUM_PROCESSES``, ``JAX_PROCESS_ID``), or ``cluster``
  (let JAX detect SLURM / Open MPI / Kubernetes / Cloud TPU). Call it first thing, before
  any JAX computation. ``cpu_collectives`` ("gloo" or "mpi") carries CPU collectives
  between processes. Calling it again once initialized does nothing.
  """
  if jax.distributed.is_initialized():
    return True
  coordinator_address = _from_environment("coordinator_address", coordinator_address)
  num_processes = _from_environment("num_processes", num_processes)
  process_id = _from_environment("process_id", process_id)
  if not cluster and (coordinator_address, num_processes, process_id) == (None, None, None):
    return False
  if num_processes is not None:
    num_processes = validation.check_int("num_processes", num_processes, 1)
  if process_id is not None:
    process_id = validation.check_int("process_id", process_id, 0)
  if process_id is not None and num_processes is not None and not (
      0 <= process_id < num_processes):
    raise ValueError(f"process_id must be an integer in [0, {num_processes}), "
                     f"got {process_id!r}")
  if coordinator_address is not None and ":" not in coordinator_address:
    raise ValueError(f"coordinator_address must be host:port, got {coordinator_address!r}")
  if cpu_collectives is not None:
    jax.config.update("jax_cpu_collectives_implementation", cpu_collectives)
  jax.distributed.initialize(coordinator_address, num_processes, process_id)
  return True


def add_flags(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
  """Adds ``--coordinator_address``, ``--num_processes``, ``--process_id`` and
  ``--cluster`` (the arguments of :func:`maybe_initialize`) to ``parser``."""
  group = parser.add_argument_group("many hosts (jax.distributed)")
  group.add_argument("--coordinator_address", default=None,
                     help="host:port of process 0 (or $JAX_COORDINATOR_ADDRESS)")
  group.add_argument("--num_processes", type=int, default=None,
                     help="processes in the run (or $JAX_NUM_PROCESSES)")
  group.add_argument("--process_id", type=int, default=None,
                     help="this process, 0 .. num_processes-1 (or $JAX_PROCESS_ID)")
  group.add_argument("--cluster", action="store_true",
                     help="detect SLURM / Open MPI / Kubernetes / Cloud TPU")
  return parser


def initialize_from_flags(args: argparse.Namespace) -> bool:
  """:func:`maybe_initialize` with the values :func:`add_flags` parsed."""
  return maybe_initialize(args.coordinator_address, args.num_processes, args.process_id,
                          cluster=args.cluster)


def is_primary() -> bool:
  """Whether this is process 0, the one that writes logs, plots and reports."""
  return jax.process_index() == 0


def global_batch(local_batch: dict, mesh: jax.sharding.Mesh) -> dict:
  """This host's rows (``ArrayDataset.batches``' output) as global arrays split by rows over
  the mesh's ``data`` and ``fsdp`` axes; the global batch is every host's rows in order."""
  rows = sharding_lib.batch_shards(mesh) // jax.process_count()
  for name, array in local_batch.items():
    if np.shape(array)[0] % max(rows, 1):
      raise ValueError(f"batch[{name!r}] has {np.shape(array)[0]} rows on this host, not a "
                       f"multiple of its {rows} batch shards (data * fsdp / hosts)")
  sharding = sharding_lib.batch_sharding(mesh)
  return {name: jax.make_array_from_process_local_data(sharding, np.asarray(array))
          for name, array in local_batch.items()}


def cpu_collectives_need_sync() -> bool:
  """Whether this process drives several CPU devices (``--xla_force_host_platform_device_count``).

  There XLA's CPU runtime can deadlock in a collective while other multi-device work is in
  flight (measured with jax 0.10.2, 8 fake devices on 2 cores: the all-reduce of a train
  step waits forever for its last device once steps are dispatched ahead, or an Orbax
  save runs beside them), so ``fit`` waits for each step and checkpoints save
  synchronously. GPUs, TPUs and one CPU device per process keep asynchronous dispatch.
  """
  return jax.default_backend() == "cpu" and jax.local_device_count() > 1
