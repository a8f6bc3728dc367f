"""Hugging Face checkpoints in and out: ``config.json`` + safetensors, exact to transformers.

A user with a pretrained checkpoint (seed 001 §2.3/§4.2: load a pretrained model and adapt
it; seed 003 §4.1: tune GPT-2) loads it with ``load_hf`` and hands a fine-tuned model back
to the tools they serve with through ``save_hf``. Supported ``model_type``s: ``gpt2``
(``models.GPT`` with GPT-2's numerics), ``llama``, ``mistral`` and ``qwen2``
(``models.Llama``).

One name-mapping table per family (``hub_tables.py``, as levanter and MaxText do) says which
transformers tensor feeds which parameter and how its layout changes; per-layer tensors are
stacked into the scanned ``(n_layer, ...)`` layout. Loading reads every file's header
first and checks each tensor's presence and shape before anything is read or placed, then
reads one tensor at a time with the ``safetensors`` package: host memory holds at most one
stacked parameter beside the arrays already placed. With a ``mesh``, each parameter goes
straight onto its shards by the logical-axis rules of ``train/sharding.py``.
"""

import contextlib
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from flax import nnx
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import safetensors
import safetensors.numpy

from bigtune_jax import hub_tables
from bigtune_jax.hub_tables import SUPPORTED_MODEL_TYPES
from bigtune_jax.models.nnx import params as nnx_params
from bigtune_jax.tree_paths import path_name
from bigtune_jax import validation

INDEX = "model.safetensors.index.json"
SINGLE = "model.safetensors"
IGNORED_SUFFIXES = (".attn.bias", ".attn.masked_bias", "rotary_emb.inv_freq")  # old buffers


def read_config(path: str | os.PathLike) -> dict:
  """``path/config.json`` as a dict; a clear error when it is missing or not a config."""
  file = Path(path) / "config.json"
  if not Path(path).is_dir():
    raise FileNotFoundError(f"checkpoint directory {path} does not exist")
  if not file.is_file():
    raise FileNotFoundError(f"{file} is missing: a Hugging Face checkpoint directory holds "
                            f"config.json and model.safetensors")
  try:
    config = json.loads(file.read_text())
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise ValueError(f"{file} is not valid JSON: {e}") from None
  if not isinstance(config, dict) or "model_type" not in config:
    raise ValueError(f"{file} has no model_type; supported: {', '.join(SUPPORTED_MODEL_TYPES)}")
  return config


def _stored_tensors(path: Path) -> dict[str, tuple[Path, tuple[int, ...]]]:
  """Every stored tensor's file and shape, from the file headers only (no tensor is read).

  The files are those of the index of a sharded checkpoint, or the single file.
  """
  if (path / INDEX).is_file():
    try:
      weight_map = json.loads((path / INDEX).read_text()).get("weight_map")
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
      weight_map = None
    if not isinstance(weight_map, dict):
      raise ValueError(f"{path / INDEX} is not a safetensors index (no weight_map)")
    files = sorted({path / file for file in weight_map.values()})
    for file in files:
      if not file.is_file():
        raise FileNotFoundError(f"shard {file} named in {path / INDEX} is missing")
  elif (path / SINGLE).is_file():
    files = [path / SINGLE]
  else:
    raise FileNotFoundError(f"{path} has neither {SINGLE} nor {INDEX}")
  stored = {}
  for file in files:
    with safetensors.safe_open(file, framework="np") as f:
      for name in f.keys():
        stored[name] = (file, tuple(f.get_slice(name).get_shape()))
  return stored


def _resolve(name: str, stored: dict) -> str | None:
  """``name`` or, for checkpoints saved from the bare base model, without its prefix."""
  if name in stored:
    return name
  for prefix in ("transformer.", "model."):
    if name.startswith(prefix) and name[len(prefix):] in stored:
      return name[len(prefix):]
  return None


def _plan(entries, stored_shapes, n_layer):
  """Checks every tensor an entry needs is stored with the right shape; returns the names."""
  names = {}
  for entry in entries:
    layer_names = [entry.hf_name.format(i=i) for i in range(n_layer)] if entry.per_layer else [
        entry.hf_name]
    resolved = []
    for name in layer_names:
      found = _resolve(name, stored_shapes)
      if found is None:
        raise ValueError(f"tensor {name} is missing from the checkpoint")
      if stored_shapes[found][1] != entry.hf_shape:
        raise ValueError(f"tensor {found} has shape {stored_shapes[found][1]}, the config "
                         f"implies {entry.hf_shape}")
      resolved.append(found)
    names[entry.path] = resolved
  used = {n for group in names.values() for n in group}
  extra = sorted(n for n in stored_shapes if n not in used and not n.endswith(IGNORED_SUFFIXES))
  if extra:
    logging.warning("load_hf: %d stored tensors are not used: %s", len(extra), extra[:8])
  return names


def _shardings(mesh, abstract):
  from bigtune_jax.train import sharding as sharding_lib  # the engine, only when asked
  boxed = sharding_lib.param_sharding(abstract, mesh)
  return {path_name(p): s for p, s in jax.tree_util.tree_flatten_with_path(
      nn.unbox(boxed))[0]}


def load_hf(path: str | os.PathLike, *, dtype: Any = jnp.bfloat16,
            param_dtype: Any = jnp.float32, mesh: jax.sharding.Mesh | None = None,
            api: str = "linen", **config_overrides):
  """A transformers checkpoint directory as ``(model, params)``, or with ``api="nnx"`` as
  one ``nnx.Module`` (``bt.models.nnx.GPT`` / ``Llama``) holding the same arrays, placed
  the same way.

  Args:
    path: a directory with ``config.json`` and ``model.safetensors`` or a sharded
      ``model.safetensors.index.json`` (what ``save_pretrained`` writes).
    dtype: the model's compute dtype (``jnp.float32`` reproduces transformers' float32
      forward to float rounding).
    param_dtype: the dtype the parameters are stored in.
    mesh: a device mesh (``bt.train.MeshConfig(...).make_mesh()``): every parameter is
      placed straight onto its shards. None: the default device.
    api: ``"linen"`` or ``"nnx"``.
    **config_overrides: fields of the model config to set (``remat=True``, ``head_chunk``).

  Returns:
    ``(model, params)``: ``params`` is the ``{"params": ...}``-free tree with logical-axis
    boxes, as ``bt.train.init_params`` returns, ready for ``create_train_state``/``fit``.

  Raises:
    FileNotFoundError / ValueError naming the file or tensor: no ``config.json``, an
    unsupported ``model_type``, a missing shard or tensor, a tensor of the wrong shape, an
    unknown ``rope_scaling`` type; all before any tensor is read or placed.
  """
  validation.check_choice("api", api, ("linen", "nnx"))
  path = Path(path)
  config = read_config(path)
  family = hub_tables.family(config["model_type"])
  param_dtype = jnp.dtype(param_dtype)
  model = family.model_from_hf(config, dtype=dtype, param_dtype=param_dtype,
                               **config_overrides)
  idx = jax.ShapeDtypeStruct((1, 1), jnp.int32)
  abstract = jax.eval_shape(lambda: model.init(jax.random.key(0), idx))["params"]
  entries = family.entries(model.config)
  stored = _stored_tensors(path)
  names = _plan(entries, stored, family.n_layer(model.config))
  shardings = _shardings(mesh, abstract) if mesh is not None else {}
  leaves = {}
  for entry in entries:
    host = None  # the stacked parameter, filled one layer at a time
    for i, name in enumerate(names[entry.path]):
      part = entry.to_ours(_read(stored[name][0], name))
      if not entry.per_layer:
        host = part.astype(param_dtype)
        break
      if host is None:
        host = np.empty((len(names[entry.path]), *part.shape), param_dtype)
      host[i] = part
      del part
    sharding = shardings.get(entry.path)
    leaves[entry.path] = jax.device_put(host, sharding) if sharding is not None else \
        jnp.asarray(host)
    del host
  if api == "nnx":
    return nnx_params.from_linen(model, _fill(abstract, leaves))
  return model, _fill(abstract, leaves)


def _read(file: Path, name: str) -> np.ndarray:
  with safetensors.safe_open(file, framework="np") as f:
    return f.get_tensor(name)


def _fill(abstract, leaves: dict):
  """The boxed abstract tree with each leaf replaced by its loaded array."""
  def put(key_path, leaf):
    name = path_name(key_path)
    if isinstance(leaf, nn.Partitioned):
      return leaf.replace_boxed(leaves[name])
    return leaves[name]
  return jax.tree_util.tree_map_with_path(put, abstract,
                                          is_leaf=lambda x: isinstance(x, nn.Partitioned))


def _parse_size(value) -> int:
  if isinstance(value, str):
    units = {"KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30}
    for unit, factor in sorted(units.items(), key=lambda u: -len(u[0])):
      if value.upper().endswith(unit):
        try:
          return max(1, int(float(value[:-len(unit)]) * factor))
        except ValueError:
          break
    raise ValueError(f"max_shard_size must be bytes or a size such as '100KB', '5GB', "
                     f"got {value!r}")
  validation.check_int("max_shard_size", value, 1)
  return value


def _save_plan(family, model, params, dtype):
  """``[(hf_name, leaf, layer or None, entry, nbytes)]`` in transformers' order (layer by
  layer); checks the tree has every parameter in the model's shapes first."""
  if isinstance(params, dict) and set(params) == {"params"}:  # model.init's whole tree
    params = params["params"]
  leaves = {path_name(p): v for p, v in jax.tree_util.tree_flatten_with_path(
      nn.unbox(params))[0]}
  idx = jax.ShapeDtypeStruct((1, 1), jnp.int32)
  abstract = jax.eval_shape(lambda: model.init(jax.random.key(0), idx))["params"]
  for key_path, expected in jax.tree_util.tree_flatten_with_path(nn.unbox(abstract))[0]:
    name = path_name(key_path)
    if name not in leaves:
      raise ValueError(f"params have no {name}; is this {type(model).__name__}'s tree?")
    if tuple(leaves[name].shape) != expected.shape:
      raise ValueError(f"params {name} has shape {tuple(leaves[name].shape)}, the model's "
                       f"config implies {expected.shape}")
  entries = family.entries(model.config)
  plan = []
  for layer in [None, *range(family.n_layer(model.config))]:
    for entry in entries:
      if entry.per_layer == (layer is not None):
        leaf = leaves[entry.path]
        itemsize = jnp.dtype(dtype or leaf.dtype).itemsize
        plan.append((entry.hf_name.format(i=layer), leaf, layer, entry,
                     int(np.prod(entry.hf_shape)) * itemsize))
  return plan


def _host_tensor(leaf, layer, entry, dtype) -> np.ndarray:
  """One transformers tensor, brought to host memory on its own."""
  value = np.asarray(leaf if layer is None else leaf[layer])
  value = entry.to_hf(value if dtype is None else value.astype(dtype))
  return np.ascontiguousarray(value)


def _shards(plan, max_shard_size: int) -> list[list]:
  shards, size = [[]], 0
  for item in plan:
    if shards[-1] and size + item[-1] > max_shard_size:
      shards.append([])
      size = 0
    shards[-1].append(item)
    size += item[-1]
  return shards


def save_hf(path: str | os.PathLike, model: nn.Module, params=None, *,
            max_shard_size: int | str = "5GB", dtype: Any = None) -> Path:
  """Writes ``model``/``params`` as a transformers checkpoint directory at ``path``.

  ``config.json`` plus ``model.safetensors`` or, above ``max_shard_size`` (bytes or
  ``"100KB"``/``"5GB"``), shards with ``model.safetensors.index.json``;
  ``transformers.AutoModelForCausalLM.from_pretrained(path)`` loads it. ``params``: as
  ``load_hf`` returns them (or ``model.init``'s ``{"params": ...}``). ``dtype``: the stored
  dtype (default: the parameters' own). Host memory holds one shard at a time. The files
  are written to a temporary directory beside ``path`` and moved into place at the end,
  so a failed save leaves any checkpoint already at ``path`` as it was. An NNX
  ``bt.models.nnx.GPT`` / ``Llama`` is saved with ``params=None`` (its own).
  """
  if isinstance(model, nnx.Module):
    if params is not None:
      raise ValueError("save_hf of an NNX model takes params=None: it saves the model's own")
    model, params = nnx_params.to_linen(model)
  family = hub_tables.family_of(model)
  size = _parse_size(max_shard_size)
  dtype = None if dtype is None else jnp.dtype(dtype)
  path = Path(path)
  if path.exists() and not path.is_dir():
    raise ValueError(f"save_hf path {path} exists and is not a directory")
  config = family.config_to_hf(model.config)  # refuses what transformers cannot express
  plan = _save_plan(family, model, params, dtype)
  config["dtype"] = config["torch_dtype"] = str(dtype or jnp.dtype(plan[0][1].dtype))
  shards = _shards(plan, size)
  with staged_directory(path) as staging:
    (staging / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True))
    weight_map = {}
    for i, shard in enumerate(shards):
      file = SINGLE if len(shards) == 1 else f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
      tensors = {name: _host_tensor(leaf, layer, entry, dtype)
                 for name, leaf, layer, entry, _ in shard}
      safetensors.numpy.save_file(tensors, staging / file, metadata={"format": "pt"})
      del tensors
      weight_map.update({item[0]: file for item in shard})
    if len(shards) > 1:
      total = sum(item[-1] for item in plan)
      (staging / INDEX).write_text(json.dumps(
          {"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))
  return path


@contextlib.contextmanager
def staged_directory(path: Path):
  """Yields an empty directory beside ``path`` to write into; on success it replaces
  ``path`` (an old one is restored if the move fails), on an error it is removed and
  ``path`` is left as it was."""
  if path.exists() and not path.is_dir():
    raise ValueError(f"{path} exists and is not a directory")
  path.parent.mkdir(parents=True, exist_ok=True)
  staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
  try:
    yield staging
    _replace(staging, path)
  finally:
    shutil.rmtree(staging, ignore_errors=True)


def _replace(staging: Path, path: Path) -> None:
  """Moves ``staging`` to ``path``; an old ``path`` is restored if the move fails."""
  if not path.exists():
    staging.rename(path)
    return
  old = path.with_name(f".{path.name}.old")
  shutil.rmtree(old, ignore_errors=True)
  path.rename(old)
  try:
    staging.rename(path)
  except BaseException:
    old.rename(path)
    raise
  shutil.rmtree(old)
