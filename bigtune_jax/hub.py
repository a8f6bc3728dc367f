"""Hugging Face checkpoints in and out: ``config.json`` + safetensors, exact to transformers.

A user with a pretrained checkpoint (seed 001 §2.3/§4.2: load a pretrained model and adapt
it; seed 003 §4.1: tune GPT-2) loads it with ``load_hf`` and hands a fine-tuned model back
to the tools they serve with through ``save_hf``. Supported ``model_type``s: ``gpt2``
(``models.GPT`` with GPT-2's numerics), ``llama``, ``mistral`` and ``qwen2``
(``models.Llama``).

One name-mapping table per family (``hub_tables.py``, as levanter and MaxText do) says which
transformers tensor feeds which parameter and how its layout changes; per-layer tensors are
stacked into the scanned ``(n_layer, ...)`` layout. Loading reads every file's header
first (``hub_read.py``) and checks each tensor's presence and shape before anything is read
or placed, then reads one tensor at a time with the ``safetensors`` package: host memory
holds at most one stacked parameter beside the arrays already placed. With a ``mesh``, each
parameter goes straight onto its shards by the logical-axis rules of ``train/sharding.py``.

A checkpoint is never loaded as a different model: a stored tensor the model has no place
for, a missing one, or a head its config and tensors disagree on is either read as
transformers reads it or refused by name. Saving touches only our files (``staged_dir.py``)
and keeps what the checkpoint was besides its weights (``hub_identity.py``).
"""

import json
import os
import shutil
from pathlib import Path
from typing import Any

from flax import nnx
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import safetensors.numpy

from bigtune_jax import hub_identity
from bigtune_jax import hub_read
from bigtune_jax import hub_tables
from bigtune_jax.models.nnx import params as nnx_params
from bigtune_jax import validation
from bigtune_jax.hub_read import INDEX
from bigtune_jax.hub_read import SINGLE
from bigtune_jax.hub_read import read_config  # noqa: F401 (public: bt.hub.read_config)
from bigtune_jax.models.gpt import FLOAT_DTYPES
from bigtune_jax.staged_dir import staged_directory
from bigtune_jax.tree_paths import path_name

HEAD = "lm_head.weight"
GENERATION = "generation_config.json"
# The checkpoint files save_hf writes (and transformers' save_pretrained): an older save's
# that the new one does not write are removed, or a stale model.safetensors would be read.
OURS = r"model(-\d{5}-of-\d{5})?\.safetensors|model\.safetensors\.index\.json"
IGNORED_SUFFIXES = (".attn.bias", ".attn.masked_bias", "rotary_emb.inv_freq")  # old buffers


def _float_dtype(name: str, value: Any) -> jnp.dtype:
  """``value`` as a dtype, if it is a floating-point one the models take; else ValueError
  naming the argument."""
  try:
    dtype = None if value is None else jnp.dtype(value)
  except (TypeError, ValueError):
    dtype = None
  if dtype is None or dtype.name not in FLOAT_DTYPES:
    raise ValueError(f"{name} must be a floating-point dtype ({', '.join(FLOAT_DTYPES)}), "
                     f"got {value!r}")
  return dtype


def _resolve(name: str, stored: dict) -> str | None:
  """``name`` or, for checkpoints saved from the bare base model, without its prefix."""
  if name in stored:
    return name
  for prefix in ("transformer.", "model."):
    if name.startswith(prefix) and name[len(prefix):] in stored:
      return name[len(prefix):]
  return None


def _tied(family, config: dict, stored: dict) -> bool:
  """Whether the head is the token embedding, as transformers 5 decides it on load.

  ``tie_word_embeddings`` (absent: ``family.tie_default``) ties ``lm_head.weight`` to the
  embedding, unless the checkpoint stores both with different values: then transformers
  keeps the stored head (``PreTrainedModel.tie_weights``: "both are present in the
  checkpoints with different values, so we will NOT tie them"). Untied, a head that is not
  stored would start at random: refused. A model that cannot hold a head of its own
  (``family.separate_head``: GPT-2) refuses a stored head that differs from the embedding.
  The two tensors are read, to compare them, only where both are stored and the config
  ties them or the model cannot hold a head of its own.
  """
  tie = config.get("tie_word_embeddings", family.tie_default)
  if HEAD not in stored:
    if not tie:
      raise ValueError(f"config.json says tie_word_embeddings=false but the checkpoint "
                       f"stores no {HEAD}: transformers would start the head at random")
    return True
  embedding = _resolve(family.embedding, stored)
  if embedding is None:
    return True  # _plan names the missing embedding
  if family.separate_head and not tie:
    return False
  same = stored[embedding].shape == stored[HEAD].shape and np.array_equal(
      _read(stored[embedding].file, embedding), _read(stored[HEAD].file, HEAD))
  if not same and not family.separate_head:
    raise ValueError(f"the checkpoint stores {HEAD} apart from {embedding} with different "
                     f"values (config tie_word_embeddings={tie}), which transformers uses as a "
                     f"separate head; models.GPT's head is always its token embedding")
  return same


def _plan(entries, stored, n_layer, duplicates=()):
  """Checks every tensor an entry needs is stored with the right shape and that every
  stored tensor has a place (but the old buffers and the tied head's ``duplicates``);
  returns the names. A tensor transformers would ignore or start at random is refused."""
  names = {}
  for entry in entries:
    layer_names = [entry.hf_name.format(i=i) for i in range(n_layer)] if entry.per_layer else [
        entry.hf_name]
    resolved = []
    for name in layer_names:
      found = _resolve(name, stored)
      if found is None:
        raise ValueError(f"tensor {name} is missing from the checkpoint")
      if stored[found].shape != entry.hf_shape:
        raise ValueError(f"tensor {found} has shape {stored[found].shape}, the config "
                         f"implies {entry.hf_shape}")
      resolved.append(found)
    names[entry.path] = resolved
  used = {n for group in names.values() for n in group} | set(duplicates)
  extra = sorted(n for n in stored if n not in used and not n.endswith(IGNORED_SUFFIXES))
  if extra:
    raise ValueError(f"the checkpoint stores {len(extra)} tensors the model has no place for, "
                     f"which would be ignored: {', '.join(extra[:8])}"
                     f"{' ...' if len(extra) > 8 else ''} (in {stored[extra[0]].file})")
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

  The model's config is a ``hub_identity.HubGPTConfig`` / ``HubLlamaConfig``: it also
  keeps the checkpoint's token ids, other config keys and ``generation_config.json``,
  which ``save_hf`` writes back.

  Raises:
    FileNotFoundError / ValueError naming the file, tensor or argument: no ``config.json``,
    an unsupported ``model_type``, a missing shard, an unreadable or non-floating-point
    safetensors file, a missing tensor or one of the wrong shape, a stored tensor the model
    has no place for, a head the config and tensors disagree on (``_tied``), an unknown
    ``rope_scaling`` type, a dtype that is not floating point; all before any tensor is
    placed (and before any is read but the head and embedding ``_tied`` compares).
  """
  validation.check_choice("api", api, ("linen", "nnx"))
  path = Path(path)
  dtype, param_dtype = _float_dtype("dtype", dtype), _float_dtype("param_dtype", param_dtype)
  config = read_config(path)
  family = hub_tables.family(config["model_type"])
  stored = hub_read.stored_tensors(path)
  tied = _tied(family, config, stored)
  kept = hub_identity.kept(config, hub_read.read_generation_config(path))
  try:
    model = family.model_from_hf(config, dtype=dtype, param_dtype=param_dtype, tied=tied,
                                 kept=kept, **config_overrides)
  except KeyError as e:
    raise ValueError(f"{path / 'config.json'} has no {e.args[0]!r}, which a "
                     f"{config['model_type']} config needs") from None
  idx = jax.ShapeDtypeStruct((1, 1), jnp.int32)
  abstract = jax.eval_shape(lambda: model.init(jax.random.key(0), idx))["params"]
  entries = family.entries(model.config)
  names = _plan(entries, stored, family.n_layer(model.config),
                duplicates=[HEAD] if tied and HEAD in stored else [])
  shardings = _shardings(mesh, abstract) if mesh is not None else {}
  leaves = {entry.path: _load(entry, names[entry.path], stored, param_dtype,
                              shardings.get(entry.path)) for entry in entries}
  if api == "nnx":
    return nnx_params.from_linen(model, _fill(abstract, leaves))
  return model, _fill(abstract, leaves)


def _load(entry, names: list[str], stored: dict, param_dtype, sharding) -> jax.Array:
  """One parameter: its tensors read one at a time into the stacked host array, then
  placed (onto ``sharding`` when given)."""
  host = None  # the stacked parameter, filled one layer at a time
  for i, name in enumerate(names):
    part = entry.to_ours(_read(stored[name].file, name))
    if not entry.per_layer:
      host = part.astype(param_dtype)
      break
    if host is None:
      host = np.empty((len(names), *part.shape), param_dtype)
    host[i] = part
    del part
  return jax.device_put(host, sharding) if sharding is not None else jnp.asarray(host)


def _read(file: Path, name: str) -> np.ndarray:
  return hub_read.read_tensor(file, name)


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

  ``config.json``, ``generation_config.json`` and ``model.safetensors`` or, above
  ``max_shard_size`` (bytes or ``"100KB"``/``"5GB"``), shards with
  ``model.safetensors.index.json``; ``transformers.AutoModelForCausalLM.from_pretrained(path)``
  loads it. ``params``: as ``load_hf`` returns them (or ``model.init``'s
  ``{"params": ...}``). ``dtype``: the stored floating-point dtype (default: the parameters'
  own). A model ``load_hf`` returned keeps its checkpoint's token ids, other config keys
  and generation config (``hub_identity``). Host memory holds one shard at a time.

  Into an existing folder, as ``save_pretrained`` does: our files replace theirs and every
  other file (a tokenizer, a README, a subfolder) stays; a previous save's checkpoint files
  this one no longer uses (``model*.safetensors``, the index) are removed. The files are
  written beside ``path`` first and moved in one by one, configs last
  (``staged_dir.staged_directory``), so a failed save leaves the old checkpoint as it was. An NNX
  ``bt.models.nnx.GPT`` / ``Llama`` is saved with ``params=None`` (its own).
  """
  if isinstance(model, nnx.Module):
    if params is not None:
      raise ValueError("save_hf of an NNX model takes params=None: it saves the model's own")
    model, params = nnx_params.to_linen(model)
  family = hub_tables.family_of(model)
  size = _parse_size(max_shard_size)
  dtype = None if dtype is None else _float_dtype("dtype", dtype)
  path = Path(path)
  if path.exists() and not path.is_dir():
    raise ValueError(f"save_hf path {path} exists and is not a directory")
  written = family.config_to_hf(model.config)  # refuses what transformers cannot express
  plan = _save_plan(family, model, params, dtype)
  written["dtype"] = written["torch_dtype"] = str(dtype or jnp.dtype(plan[0][1].dtype))
  config, generation = hub_identity.files(model.config, written, family.token_ids(model.config))
  shards = _shards(plan, size)
  with staged_directory(path, last=(INDEX, GENERATION, "config.json"), stale=OURS) as staging:
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
    (staging / GENERATION).write_text(json.dumps(generation, indent=2, sort_keys=True))
    (staging / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True))
  return path


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "added_tokens.json", "vocab.json", "merges.txt", "vocab.txt",
                   "tokenizer.model", "chat_template.jinja", "chat_template.json")


def copy_tokenizer(source: str | os.PathLike, target: str | os.PathLike) -> list[str]:
  """Copies the tokenizer files of checkpoint directory ``source`` (those of
  ``TOKENIZER_FILES`` it has: what ``AutoTokenizer.save_pretrained`` writes) into
  ``target``, so ``AutoTokenizer.from_pretrained(target)`` loads the same tokenizer;
  returns the names copied."""
  source, target = Path(source), Path(target)
  names = [n for n in TOKENIZER_FILES if (source / n).is_file()]
  target.mkdir(parents=True, exist_ok=True)
  for name in names:
    shutil.copyfile(source / name, target / name)
  return names
