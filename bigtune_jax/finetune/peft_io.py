"""LoRA adapters in PEFT's format: ``adapter_config.json`` + ``adapter_model.safetensors``,
what ``peft.PeftModel.from_pretrained(base, path)`` loads onto the transformers model and
``PeftModel.save_pretrained`` writes.

Tensor ``base_model.model.<module>.lora_A.weight`` is ``(r, in)`` and ``lora_B.weight``
``(out, r)``, ``<module>`` a transformers module name (``model.layers.3.self_attn.q_proj``,
``transformer.h.0.attn.c_attn``). ``finetune.LoRA``'s per-layer ``A (in, r)`` and
``B (r, out)`` are their transposes, with ``in``/``out`` flattened in transformers' order
(the hub tables' layout), also for GPT-2's ``Conv1D`` (PEFT's ``fan_in_fan_out``). The
module names come from ``bigtune_jax.hub_tables``: the families ``load_hf`` reads.
"""

import json
import math
import os
import re
from pathlib import Path

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import safetensors
import safetensors.numpy

from bigtune_jax import hub_tables
from bigtune_jax import tree_paths
from bigtune_jax.finetune.adapters import LORA_A
from bigtune_jax.finetune.adapters import LORA_B
from bigtune_jax.finetune.adapters import LoRA
from bigtune_jax.finetune.adapters import linear_layers
from bigtune_jax.finetune import nnx_lora
from bigtune_jax.models.nnx import params as nnx_params
from bigtune_jax.staged_dir import staged_directory

CONFIG, WEIGHTS = "adapter_config.json", "adapter_model.safetensors"
_PREFIX = "base_model.model."


def _modules(model) -> dict[str, tuple[str, bool]]:
  """Our layer path -> (transformers module name with ``{i}``, stacked per layer)."""
  family = hub_tables.family_of(model)
  return {e.path[:-len("/kernel")]: (e.hf_name[:-len(".weight")], e.per_layer)
          for e in family.entries(model.config) if e.path.endswith("/kernel")}


def _names(template: str, per_layer: bool, n_layer: int) -> list[str]:
  return [template.format(i=i) for i in range(n_layer)] if per_layer else [template]


def _target_modules(hf_modules: list[str], all_modules: list[str]):
  """PEFT's ``target_modules``: the short names when they pick exactly the adapted
  modules, else a regex over the full names."""
  short = sorted({m.rpartition(".")[2] for m in hf_modules})
  picked = [m for m in all_modules if m.rpartition(".")[2] in short]
  if sorted(picked) == sorted(hf_modules):
    return short
  return "|".join(re.escape(m).replace(r"\{i\}", r"\d+") for m in sorted(set(hf_modules)))


def save_peft(path: str | os.PathLike, lora: LoRA, lora_params=None, *, alpha=None, rank=None,
              base_model_name_or_path: str | None = None) -> Path:
  """Writes ``lora_params`` (one adapter, no member axis) as a PEFT LoRA adapter at ``path``.
  ``lora`` may instead be an NNX model with adapters (``finetune.nnx_lora``; no
  ``lora_params``): its own are written.

  ``alpha`` / ``rank``: a population member's own (default: ``lora.alpha`` and the stored
  rank); only the first ``rank`` columns are written. The directory is written beside
  ``path`` and moved into place, so a failed save leaves an old adapter as it was.
  """
  if isinstance(lora, nnx.Module):
    if lora_params is not None:
      raise ValueError("save_peft of an NNX model takes no lora_params: it writes its own")
    lora, lora_params = nnx_lora.adapters_of(lora)
  family = hub_tables.family_of(lora.model)
  n_layer = family.n_layer(lora.model.config)
  modules = _modules(lora.model)
  flat = {k: np.asarray(v) for k, v in tree_paths.flatten(lora_params).items()}
  adapted = sorted(p[:-len("/" + LORA_A)] for p in flat if p.endswith("/" + LORA_A))
  if not adapted:
    raise ValueError("lora_params hold no adapter (no 'lora_a' entry)")
  stored = flat[f"{adapted[0]}/{LORA_A}"].shape[-1]
  rank = stored if rank is None else int(rank)
  if not 1 <= rank <= stored:
    raise ValueError(f"rank must be in [1, {stored}] (the stored rank), got {rank}")
  alpha = float(lora.alpha if alpha is None else alpha)
  if not (alpha > 0 and math.isfinite(alpha)):
    raise ValueError(f"alpha must be a finite number > 0, got {alpha}")
  tensors, hf_modules = {}, []
  for layer in adapted:
    if layer not in modules:
      raise ValueError(f"lora_params adapt {layer!r}, which has no transformers module in "
                       f"{family.model_type}; adaptable: {', '.join(sorted(modules))}")
    template, per_layer = modules[layer]
    a, b = flat[f"{layer}/{LORA_A}"][..., :rank], flat[f"{layer}/{LORA_B}"][..., :rank, :]
    hf_modules.append(template)
    for i, name in enumerate(_names(template, per_layer, n_layer)):
      a_i, b_i = (a[i], b[i]) if per_layer else (a, b)
      tensors[f"{_PREFIX}{name}.lora_A.weight"] = np.ascontiguousarray(a_i.T)
      tensors[f"{_PREFIX}{name}.lora_B.weight"] = np.ascontiguousarray(b_i.T)
  config = {
      "peft_type": "LORA", "task_type": "CAUSAL_LM", "r": rank, "lora_alpha": alpha,
      "lora_dropout": lora.dropout, "use_rslora": lora.rslora, "bias": "none",
      "target_modules": _target_modules(hf_modules, [t for t, _ in modules.values()]),
      "fan_in_fan_out": family.model_type == "gpt2", "inference_mode": True,
      "init_lora_weights": True, "modules_to_save": None,
      "base_model_name_or_path": base_model_name_or_path}
  path = Path(path)
  with staged_directory(path, last=(CONFIG,)) as staging:
    (staging / CONFIG).write_text(json.dumps(config, indent=2, sort_keys=True))
    safetensors.numpy.save_file(tensors, staging / WEIGHTS, metadata={"format": "pt"})
  return path


def load_peft(path: str | os.PathLike, model, *, dtype=jnp.float32) -> tuple[LoRA, dict]:
  """``(LoRA, lora_params)`` from a PEFT LoRA adapter directory, for ``model`` (as
  ``hub.load_hf`` returned it). Every tensor is checked against the model by name and
  shape before any is converted: an adapter of another base is refused naming the tensor.
  For an NNX model (``load_hf(..., api="nnx")``) it returns the model, the adapters
  inserted (``nnx_lora.insert``)."""
  if isinstance(model, nnx.Module):
    lora, adapters = load_peft(path, nnx_params.to_linen(model)[0], dtype=dtype)
    return nnx_lora.insert(model, lora, adapters)
  path = Path(path)
  if not (path / CONFIG).is_file() or not (path / WEIGHTS).is_file():
    raise FileNotFoundError(f"{path} is not a PEFT adapter: it needs {CONFIG} and {WEIGHTS}")
  config = json.loads((path / CONFIG).read_text())
  if config.get("peft_type") != "LORA":
    raise ValueError(f"{path / CONFIG}: peft_type must be 'LORA', got {config.get('peft_type')!r}")
  for key, supported in (("bias", "none"), ("use_dora", False)):
    if config.get(key, supported) != supported:
      raise ValueError(f"{path / CONFIG}: {key}={config[key]!r} is not supported "
                       f"(only {supported!r})")
  for key in ("modules_to_save", "rank_pattern", "alpha_pattern", "layers_to_transform"):
    if config.get(key):
      raise ValueError(f"{path / CONFIG}: {key}={config[key]!r} is not supported")
  family = hub_tables.family_of(model)
  n_layer = family.n_layer(model.config)
  modules = _modules(model)
  by_hf = {template: layer for layer, (template, _) in modules.items()}
  with safetensors.safe_open(path / WEIGHTS, framework="np") as f:
    shapes = {name: tuple(f.get_slice(name).get_shape()) for name in f.keys()}
  rank = int(config["r"])
  layers = _check_tensors(shapes, modules, by_hf, n_layer, rank, model)
  flat = {}
  with safetensors.safe_open(path / WEIGHTS, framework="np") as f:
    for layer in layers:
      template, per_layer = modules[layer]
      names = _names(template, per_layer, n_layer)
      a = [f.get_tensor(f"{_PREFIX}{n}.lora_A.weight").T for n in names]
      b = [f.get_tensor(f"{_PREFIX}{n}.lora_B.weight").T for n in names]
      flat[f"{layer}/{LORA_A}"] = jnp.asarray(np.stack(a) if per_layer else a[0], dtype)
      flat[f"{layer}/{LORA_B}"] = jnp.asarray(np.stack(b) if per_layer else b[0], dtype)
  lora = LoRA(model, targets=tuple(layers), rank=rank, alpha=float(config["lora_alpha"]),
              dropout=float(config.get("lora_dropout") or 0.0),
              rslora=bool(config.get("use_rslora", False)))
  return lora, tree_paths.unflatten(flat)


def _check_tensors(shapes, modules, by_hf, n_layer, rank, model) -> list[str]:
  """Our adapted layer paths; ValueError naming a tensor the model has no place or shape for."""
  idx = jax.ShapeDtypeStruct((1, 1), jnp.int32)
  params = jax.eval_shape(lambda: model.init(jax.random.key(0), idx))["params"]
  linear = linear_layers(model, params)
  layers = []
  for name, shape in sorted(shapes.items()):
    match = re.fullmatch(re.escape(_PREFIX) + r"(.+)\.lora_([AB])\.weight", name)
    module = match and re.sub(r"\.\d+\.", ".{i}.", match.group(1), count=1)
    if not match or (module not in by_hf and match.group(1) not in by_hf):
      raise ValueError(f"adapter tensor {name} names no adaptable module of this "
                       f"{type(model).__name__}; its modules: {', '.join(sorted(by_hf))}")
    layer = by_hf.get(module, by_hf.get(match.group(1)))
    index = re.search(r"\.(\d+)\.", match.group(1))
    if module in by_hf and index and int(index.group(1)) >= n_layer:
      raise ValueError(f"adapter tensor {name} is for layer {index.group(1)}; this model has "
                       f"{n_layer} layers: is the adapter for another base model?")
    info = linear[layer]
    expected = (rank, info.n_in) if match.group(2) == "A" else (info.n_out, rank)
    if shape != expected:
      raise ValueError(f"adapter tensor {name} has shape {shape}; this model (r={rank}) "
                       f"needs {expected}: is the adapter for another base model?")
    if layer not in layers:
      layers.append(layer)
  for layer in layers:
    template, per_layer = modules[layer]
    for n in _names(template, per_layer, n_layer):
      for part in ("A", "B"):
        if f"{_PREFIX}{n}.lora_{part}.weight" not in shapes:
          raise ValueError(f"adapter tensor {_PREFIX}{n}.lora_{part}.weight is missing")
  if not layers:
    raise ValueError("the adapter holds no LoRA tensor")
  return layers
