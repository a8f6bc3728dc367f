"""Reading a Hugging Face checkpoint directory's files; every error names the file.

``config.json`` and ``generation_config.json`` (JSON objects), and the safetensors files:
a sharded checkpoint's ``model.safetensors.index.json`` names them, else the single
``model.safetensors``. Which of the two transformers reads when both are present:
``model.safetensors`` (``modeling_utils._get_resolved_checkpoint_files`` looks for it first).
Headers are read before any tensor: each tensor's file, shape and stored dtype, and only
floating-point tensors are accepted (an int8 or float8 tensor belongs to a quantized
checkpoint, which this bridge does not read).
"""

import json
import os
from pathlib import Path
from typing import NamedTuple

import numpy as np
import safetensors

from bigtune_jax.hub_tables import SUPPORTED_MODEL_TYPES

INDEX = "model.safetensors.index.json"
SINGLE = "model.safetensors"
FLOAT_STORED = ("F16", "BF16", "F32", "F64")  # safetensors' dtype names


class Stored(NamedTuple):
  file: Path
  shape: tuple[int, ...]
  dtype: str  # safetensors' name: "F32", "BF16", ...


def read_json(file: Path) -> dict:
  """``file`` as a JSON object; ValueError naming the file when it is not one."""
  try:
    value = json.loads(file.read_text())
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise ValueError(f"{file} is not valid JSON: {e}") from None
  if not isinstance(value, dict):
    raise ValueError(f"{file} must hold a JSON object, got {type(value).__name__}")
  return value


def read_config(path: str | os.PathLike) -> dict:
  """``path/config.json`` as a dict; a clear error when it is missing or not a config."""
  path = Path(path)
  if path.is_file():
    raise ValueError(f"{path} is a file; pass the checkpoint directory that holds it "
                     f"({path.parent})")
  if not path.is_dir():
    raise FileNotFoundError(f"checkpoint directory {path} does not exist")
  file = path / "config.json"
  if not file.is_file():
    raise FileNotFoundError(f"{file} is missing: a Hugging Face checkpoint directory holds "
                            f"config.json and model.safetensors")
  config = read_json(file)
  if not isinstance(config.get("model_type"), str):
    raise ValueError(f"{file} has no model_type (a string); supported: "
                     f"{', '.join(SUPPORTED_MODEL_TYPES)}")
  return config


def read_generation_config(path: Path) -> dict | None:
  """``path/generation_config.json`` as a dict, or None when there is none."""
  file = path / "generation_config.json"
  return read_json(file) if file.is_file() else None


def _weight_files(path: Path) -> list[Path]:
  """The safetensors files of the checkpoint at ``path``, as transformers picks them."""
  if (path / SINGLE).is_file():
    return [path / SINGLE]
  if not (path / INDEX).is_file():
    raise FileNotFoundError(f"{path} has neither {SINGLE} nor {INDEX}")
  weight_map = read_json(path / INDEX).get("weight_map")
  if not isinstance(weight_map, dict):
    raise ValueError(f"{path / INDEX} is not a safetensors index (no weight_map)")
  for name, file in weight_map.items():
    if not isinstance(file, str) or Path(file).name != file or file in (".", ".."):
      raise ValueError(f"{path / INDEX} maps {name} to {file!r}; each entry must be a file "
                       f"name in {path}")
  files = sorted({path / file for file in weight_map.values()})
  for file in files:
    if not file.is_file():
      raise FileNotFoundError(f"shard {file} named in {path / INDEX} is missing")
  return files


def stored_tensors(path: Path) -> dict[str, Stored]:
  """Every stored tensor's file, shape and dtype, from the file headers only."""
  stored = {}
  for file in _weight_files(path):
    try:
      with safetensors.safe_open(file, framework="np") as f:
        for name in f.keys():
          view = f.get_slice(name)
          stored[name] = Stored(file, tuple(view.get_shape()), view.get_dtype())
    except safetensors.SafetensorError as e:
      raise ValueError(f"{file} is not a readable safetensors file (truncated or not "
                       f"safetensors?): {e}") from None
  for name, (file, _, dtype) in stored.items():
    if dtype not in FLOAT_STORED:
      raise ValueError(f"tensor {name} in {file} is stored as {dtype}; only floating-point "
                       f"tensors ({', '.join(FLOAT_STORED)}) are read, not a quantized "
                       f"checkpoint's")
  return stored


def read_tensor(file: Path, name: str) -> np.ndarray:
  """One tensor of ``file``; ValueError naming the file and tensor when it cannot be read."""
  try:
    with safetensors.safe_open(file, framework="np") as f:
      return f.get_tensor(name)
  except safetensors.SafetensorError as e:
    raise ValueError(f"tensor {name} in {file} cannot be read: {e}") from None
