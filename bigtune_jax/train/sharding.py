"""One train step on any mesh: single device, data-parallel, FSDP, FSDP x tensor-parallel.

Seed 004 §2.2 / §3.1.2 ("distribute the training over many compute nodes") and §4.1.2
(PyTorch ``DistributedDataParallel``). Here parallelism is data, not code paths: a
``Mesh`` with three named axes and a table of rules decide where every array lives, and
``jax.jit`` with those in/out shardings lets XLA's SPMD partitioner insert the collectives
(Xu et al., "GSPMD", 2021).

* ``data``: replicas. The batch is split over it and gradients are all-reduced
  (:math:`g = \\frac{1}{D} \\sum_d g_d`, what DDP computes).
* ``fsdp``: the batch is split over it too, and parameters *and optimizer state* are sharded
  over it (ZeRO-3, Rajbhandari et al. 2020; PyTorch FSDP): each device keeps ``1/F`` of
  them. The step constrains the parameters to their gathered layout where the loss uses
  them (``params_in_use``), so XLA all-gathers each weight before use and reduces its
  gradient back onto the shards. (Left to itself, XLA split GPT-2's matmuls over the width
  and all-reduced activations: over 35 GiB per device and step on 8 devices, against
  0.7 GiB gathered weights and reduced gradients; ``benchmarks/collectives.py``.)
* ``tensor``: Megatron-style model parallelism (Shoeybi et al., 2019): heads, MLP width and
  vocabulary are split over it; the batch is replicated across it.

Which dimension of a parameter goes where: a parameter tagged with logical axis names
(``nn.with_logical_partitioning``, as ``bt.models.GPT`` does) is mapped through
``LOGICAL_RULES`` (MaxText / flax lm1b style); an untagged one (``nn.Dense`` of an MLP) has
its largest dimension divisible by the ``fsdp`` size sharded over ``fsdp``. A dimension not
divisible by its mesh axes stays unsharded, and a tagged parameter whose rules leave it
without ``fsdp`` that way gets it on its largest other divisible dimension, as untagged.
Optimizer moments have their parameter's shape (and tags), hence its sharding. Step
counters, keys and control states are replicated. Parameters that a mesh with ``fsdp`` or
``tensor`` > 1 still leaves whole on every device are reported, not silent: one
``ReplicatedParameterWarning`` names the largest when they hold over 2% of the bytes.
Activations: the batch is split by rows over ``data`` and ``fsdp`` (the ``batch`` rule);
XLA propagates the rest from the batch and the parameters in use. (A model's own
``nn.with_logical_constraint`` calls stay inactive: with rules and a mesh in context,
flax 0.12's ``DenseGeneral`` applies a kernel's logical names to its flattened init and
fails.)
"""

import dataclasses
import functools
import logging
import math
import warnings
from collections.abc import Callable, Sequence

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import AxisType
from jax.sharding import Mesh
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from bigtune_jax.train import step as step_lib
from bigtune_jax import validation
from bigtune_jax.tree_paths import path_name

MESH_AXES = ("data", "fsdp", "tensor")  # outermost (across hosts) to innermost (fastest links)
BATCH_AXES = ("data", "fsdp")  # the batch dimension is split over both
REPLICATED_TOLERANCE = 0.02  # replicated share of a tree's bytes reported (MaxText's default)
REPORTED = 5  # the largest replicated arrays a warning names

# Logical axis name -> mesh axes, in priority order (a mesh axis is used once per array).
LOGICAL_RULES = (
    ("batch", BATCH_AXES),  # activations (what batch_sharding places)
    ("vocab", "tensor"),
    ("heads", "tensor"),
    ("mlp", "tensor"),
    ("embed", "fsdp"),  # model width: what FSDP shards in a GPT
    ("kv", None),
    ("length", None),
    ("layers", None),  # the stacked (nn.scan) layer axis stays whole on every device
)


@dataclasses.dataclass(frozen=True)
class MeshConfig:
  """The shape of the device mesh; checked at construction.

  ``data=-1`` takes every device that ``fsdp * tensor`` leaves: ``MeshConfig()`` is pure
  data parallelism over all devices, ``MeshConfig(fsdp=8)`` FSDP over 8 (replicated over
  the rest), ``MeshConfig(fsdp=4, tensor=2)`` FSDP x tensor-parallel.
  """
  data: int = -1
  fsdp: int = 1
  tensor: int = 1
  rules: tuple = LOGICAL_RULES

  def __post_init__(self):
    if self.data != -1:
      validation.check_int("data", self.data, 1)
    validation.check_int("fsdp", self.fsdp, 1)
    validation.check_int("tensor", self.tensor, 1)

  def make_mesh(self, devices: Sequence[jax.Device] | None = None) -> Mesh:
    return make_mesh(self.data, self.fsdp, self.tensor, devices=devices)


def make_mesh(data: int = -1, fsdp: int = 1, tensor: int = 1, *,
              devices: Sequence[jax.Device] | None = None) -> Mesh:
  """A ``(data, fsdp, tensor)`` mesh over ``devices`` (default: all, every host's).

  Axes are ``AxisType.Auto`` (the partitioner propagates shardings; ``jax.make_mesh``
  defaults to ``Explicit`` in recent JAX). ``data=-1``: the devices left by the others.
  Explicit sizes whose product is smaller than the number of devices take the first ones
  (on a single host only: ``MeshConfig(data=1)`` is a one-device run).
  """
  devices = list(jax.devices() if devices is None else devices)
  validation.check_int("fsdp", fsdp, 1)
  validation.check_int("tensor", tensor, 1)
  if data == -1:
    if len(devices) % (fsdp * tensor):
      raise ValueError(f"fsdp * tensor = {fsdp * tensor} must divide the number of devices "
                       f"{len(devices)}")
    data = len(devices) // (fsdp * tensor)
  validation.check_int("data", data, 1)
  size = data * fsdp * tensor
  multi_host = len({d.process_index for d in devices}) > 1
  if size > len(devices) or (size < len(devices) and multi_host):
    raise ValueError(f"data * fsdp * tensor = {data}*{fsdp}*{tensor} must equal the number of "
                     f"devices, {len(devices)}" + ("" if multi_host else " (or be smaller)"))
  devices = devices[:size]
  return jax.make_mesh((data, fsdp, tensor), MESH_AXES, axis_types=(AxisType.Auto,) * 3,
                       devices=devices)


def batch_shards(mesh: Mesh) -> int:
  """Into how many pieces the batch dimension is split: ``data * fsdp``."""
  return math.prod(mesh.shape[axis] for axis in BATCH_AXES)


def default_mesh(batch_size: int) -> Mesh:
  """Data parallelism over every device, or over the most devices that divide ``batch_size``
  on a single host (with a warning): what ``fit`` uses when no mesh is configured."""
  devices = jax.devices()
  count = len(devices)
  if batch_size % count and jax.process_count() == 1:
    count = max(d for d in range(1, count + 1) if len(devices) % d == 0 and batch_size % d == 0)
    logging.warning("batch_size %d is not a multiple of the %d devices: training "
                    "data-parallel on %d of them", batch_size, len(devices), count)
  return make_mesh(count, 1, 1, devices=devices[:count])


def _usable(axes, size: int, mesh: Mesh):
  """``axes`` (a mesh axis, a tuple of them, or None) without the axes of size 1, or None
  when what remains does not divide ``size``."""
  names = (axes,) if isinstance(axes, str) else tuple(axes or ())
  names = tuple(a for a in names if mesh.shape[a] > 1)
  if not names or size % math.prod(mesh.shape[a] for a in names):
    return None
  return names[0] if len(names) == 1 else names


def _with_fsdp(axes: list, shape: Sequence[int], mesh: Mesh, skip=()) -> P:
  """``axes`` (one entry per dimension), plus ``fsdp`` on the largest free dimension it
  divides when nothing uses ``fsdp`` yet (dimensions in ``skip`` are never chosen)."""
  fsdp = mesh.shape["fsdp"]
  used = any("fsdp" in ((a,) if isinstance(a, str) else (a or ())) for a in axes)
  free = [d for d, size in enumerate(shape)
          if axes[d] is None and d not in skip and fsdp > 1 and size % fsdp == 0]
  if free and not used:
    axes = list(axes)
    axes[max(free, key=lambda d: (shape[d], -d))] = "fsdp"
  return P(*axes) if any(axes) else P()


def _tagged_spec(box: nn.Partitioned, mesh: Mesh, rules) -> P:
  """Through the rules; then, if no dimension took ``fsdp`` (e.g. 768 wide on 512 devices),
  the largest other one it divides, except the stacked ``layers`` axis of a scan."""
  shape = box.value.shape if hasattr(box.value, "shape") else np.shape(box.value)
  names = tuple(box.names)
  axes = nn.logical_to_mesh_axes(names, rules) if isinstance(
      box, nn.LogicallyPartitioned) else names
  axes = [_usable(a, size, mesh) for a, size in zip(axes, shape)]
  return _with_fsdp(axes, shape, mesh, skip={d for d, n in enumerate(names) if n == "layers"})


def _is_box(x) -> bool:
  return isinstance(x, nn.Partitioned)


def _unboxed(x):
  return x.value if _is_box(x) else x


def _leaf_sharding(x, mesh: Mesh, rules):
  """A tagged leaf's box holding its sharding through the rules, or an untagged leaf's
  sharding with ``fsdp`` on its largest divisible dimension."""
  if _is_box(x):
    return x.replace_boxed(NamedSharding(mesh, _tagged_spec(x, mesh, rules)))
  shape = np.shape(x)
  return NamedSharding(mesh, _with_fsdp([None] * len(shape), shape, mesh))


def _shardings(tree, mesh: Mesh, rules):
  return jax.tree.map(lambda x: _leaf_sharding(x, mesh, rules), tree, is_leaf=_is_box)


class ReplicatedParameterWarning(UserWarning):
  """Parameters stay whole on every device although the mesh shards parameters."""


def _nbytes(x) -> int:
  dtype = x.dtype if hasattr(x, "dtype") else np.asarray(x).dtype
  return math.prod(np.shape(x)) * np.dtype(dtype).itemsize


def _arrays(tree, shardings) -> list[tuple[str, tuple, int, P]]:
  """``(path, shape, bytes, spec)`` of every array of ``tree`` with at least one dimension
  (scalars, such as step counters, have nothing to split), ``spec`` from ``shardings``."""
  values = jax.tree_util.tree_leaves_with_path(tree, is_leaf=_is_box)
  specs = [_unboxed(s).spec for s in jax.tree.leaves(shardings, is_leaf=_is_box)]
  return [(path_name(path), np.shape(_unboxed(x)), _nbytes(_unboxed(x)), spec)
          for (path, x), spec in zip(values, specs) if np.shape(_unboxed(x))]


def _warn_if_replicated(tree, shardings, mesh: Mesh) -> None:
  """One :class:`ReplicatedParameterWarning` when the arrays left replicated on a mesh that
  shards parameters (``fsdp`` or ``tensor`` > 1) hold more than ``REPLICATED_TOLERANCE`` of
  the tree's bytes, naming the largest ``REPORTED`` of them (MaxText asserts the same on its
  parameters). Under pure data parallelism replicating everything is the point: nothing is
  reported."""
  if mesh.shape["fsdp"] == mesh.shape["tensor"] == 1:
    return
  arrays = _arrays(tree, shardings)
  whole = sorted((a for a in arrays if not any(a[3])), key=lambda a: -a[2])
  whole_bytes, total = sum(a[2] for a in whole), sum(a[2] for a in arrays)
  if whole_bytes <= REPLICATED_TOLERANCE * total:
    return
  largest = "; ".join(f"{path} {shape} {size:,} bytes"
                      for path, shape, size, _ in whole[:REPORTED])
  warnings.warn(
      f"{len(whole)} of {len(arrays)} arrays stay whole on every device of the mesh (fsdp="
      f"{mesh.shape['fsdp']}, tensor={mesh.shape['tensor']}): no mesh axis their rules allow "
      f"divides any of their dimensions (an untagged array may take fsdp only). They hold "
      f"{whole_bytes:,} of {total:,} bytes ({whole_bytes / total:.1%}; over "
      f"{REPLICATED_TOLERANCE:.0%} is reported). Largest: {largest}",
      ReplicatedParameterWarning, stacklevel=3)


def param_sharding(tree, mesh: Mesh, rules=LOGICAL_RULES):
  """A ``NamedSharding`` for every array of a parameter-like tree (parameters, optimizer
  state), in the tree's own structure (a tagged leaf keeps its box, holding the sharding).
  Warns (:class:`ReplicatedParameterWarning`) when arrays the mesh could shard stay whole."""
  shardings = _shardings(tree, mesh, rules)
  _warn_if_replicated(tree, shardings, mesh)
  return shardings


def state_sharding(state, mesh: Mesh, rules=LOGICAL_RULES):
  """Shardings for a ``TrainState`` (concrete or ``jax.eval_shape``'d), in its structure:
  ``params``, ``opt_state`` and ``best_params`` by the rules of :func:`param_sharding`; the
  rest replicated. Only ``params`` is reported when left whole: the optimizer moments and
  best parameters have its shapes, hence its shardings."""
  replicated = jax.tree.map(lambda _: NamedSharding(mesh, P()), state)
  shard = functools.partial(_shardings, mesh=mesh, rules=rules)
  return replicated.replace(params=param_sharding(state.params, mesh, rules),
                            opt_state=shard(state.opt_state),
                            best_params=shard(state.best_params))


def shard_state(state, mesh: Mesh, rules=LOGICAL_RULES):
  """``state`` placed on ``mesh`` by :func:`state_sharding`."""
  return jax.device_put(state, state_sharding(state, mesh, rules))


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Rows split over ``data`` and ``fsdp``, everything else whole (replicated over tensor)."""
  return NamedSharding(mesh, P(BATCH_AXES))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def gathered_sharding(param_shardings):
  """The layout parameters are used in: their stored sharding without the ``fsdp`` axis
  (FSDP gathers a weight where it is used; tensor-parallel dimensions stay split)."""
  def gathered(sharding):
    spec = [tuple(a for a in (axes if isinstance(axes, tuple) else (axes,)) if a != "fsdp")
            or None for axes in sharding.spec]
    spec = [axes[0] if axes and len(axes) == 1 else axes for axes in spec]
    return NamedSharding(sharding.mesh, P(*spec) if any(spec) else P())
  return jax.tree.map(gathered, param_shardings)


def _params_in_use(param_shardings, mesh: Mesh):
  return gathered_sharding(param_shardings) if mesh.shape["fsdp"] > 1 else None


def jit_train_step(loss_fn: Callable, state_shardings, mesh: Mesh) -> Callable:
  """The one train step (``make_train_step(loss_fn)``) jitted for ``mesh``: the state in
  and out with ``state_shardings`` (donated), the batch split by rows, metrics replicated;
  under FSDP the parameters are gathered where the loss uses them (``params_in_use``).
  XLA's SPMD partitioner derives the activations' shardings and inserts the collectives."""
  step = step_lib.make_train_step(
      loss_fn, params_in_use=_params_in_use(state_shardings.params, mesh))
  return jax.jit(step, in_shardings=(state_shardings, batch_sharding(mesh)),
                 out_shardings=(state_shardings, replicated(mesh)), donate_argnums=0)


def jit_eval_step(loss_fn: Callable, param_shardings, mesh: Mesh) -> Callable:
  """``make_eval_step(loss_fn)`` jitted for ``mesh``; the sums come back replicated."""
  step = step_lib.make_eval_step(loss_fn, params_in_use=_params_in_use(param_shardings, mesh))
  return jax.jit(step, in_shardings=(param_shardings, batch_sharding(mesh)),
                 out_shardings=replicated(mesh))


def mesh_of(tree) -> Mesh | None:
  """The ``(data, fsdp, tensor)`` mesh of the first array of ``tree`` placed on one, or None."""
  for leaf in jax.tree.leaves(tree):
    sharding = getattr(leaf, "sharding", None)
    if (isinstance(sharding, NamedSharding) and isinstance(sharding.mesh, Mesh)
        and tuple(sharding.mesh.axis_names) == MESH_AXES):
      return sharding.mesh
  return None
