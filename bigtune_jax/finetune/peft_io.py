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
from bigtune_jax.finetune import targets
from bigtune_jax.finetune.carried import LORA_A
from bigtune_jax.finetune.carried import LORA_B
from bigtune_jax.finetune.adapters import LoRA
from bigtune_jax.finetune.carried import unpack
from bigtune_jax.finetune import nnx_lora
from bigtune_jax.models.nnx import params as nnx_params
from bigtune_jax.staged_dir import staged_directory

CONFIG, WEIGHTS = "adapter_config.json", "adapter_model.safetensors"
_PREFIX = "base_model.model."


def _names(template: str, per_layer: bool, n_layer: int) -> list[str]:
  return [template.format(i=i) for i in range(n_layer)] if per_layer else [template]


def _target_modules(written: dict[str, list[str]], modules, n_layer: int):
  """PEFT's ``target_modules`` for the written module names (by template): the short
  names when they pick exactly those modules, else a regex over the full names (``\\d+``
  for a template written at every layer)."""
  every = [n for t, per_layer in modules.values() for n in _names(t, per_layer, n_layer)]
  names = sorted(n for group in written.values() for n in group)
  short = sorted({n.rpartition(".")[2] for n in names})
  if sorted(n for n in every if n.rpartition(".")[2] in short) == names:
    return short
  parts = []
  for template, group in sorted(written.items()):
    whole = "{i}" not in template or len(group) == n_layer
    parts += ([re.escape(template).replace(r"\{i\}", r"\d+")] if whole
              else [re.escape(n) for n in group])
  return "|".join(parts)


def _adapted_layers(flat: dict) -> list[str]:
  """Our adapted layer paths; ValueError for a parameter trained in full (no PEFT form)."""
  adapted = sorted(p[:-len("/" + LORA_A)] for p in flat if p.endswith("/" + LORA_A))
  for p in flat:
    if p.rpartition("/")[0] not in adapted:
      raise ValueError(f"lora_params hold {p!r}, a parameter trained in full (also_train): "
                       "PEFT's modules_to_save is not written; save the merged model with "
                       "hub.save_hf instead")
  return adapted


def save_peft(path: str | os.PathLike, lora: LoRA, lora_params=None, *, alpha=None, rank=None,
              base_model_name_or_path: str | None = None) -> Path:
  """Writes ``lora_params`` (one adapter, no member axis) as a PEFT LoRA adapter at ``path``.
  ``lora`` may instead be an NNX model with adapters (``finetune.nnx_lora``; no
  ``lora_params``): its own are written.

  ``lora_params``: ``Adapters`` (a population member's, ``result.member(i)``, carry their
  own rank and alpha; only that many columns are written), or a plain tree stored at
  ``lora.rank`` (read at ``lora.alpha``). ``alpha`` / ``rank`` given for a plain tree
  override them (the first ``rank`` columns are written); given for ``Adapters``, they
  must agree with its own (else ValueError). A stacked layer whose ``A`` and ``B`` are both
  zero (one the targets leave out) is not written. The directory is written beside
  ``path`` and moved into place, so a failed save leaves an old adapter as it was.
  """
  if isinstance(lora, nnx.Module):
    if lora_params is not None:
      raise ValueError("save_peft of an NNX model takes no lora_params: it writes its own")
    lora, lora_params = nnx_lora.adapters_of(lora)
  family = hub_tables.family_of(lora.model)
  n_layer = family.n_layer(lora.model.config)
  modules = targets.hf_modules(lora.model)
  tree, alpha, rank, stored = unpack(lora_params, lora.rank, lora.alpha, alpha, rank)
  rank = stored if rank is None else int(rank)
  alpha = float(alpha)
  if not (alpha > 0 and math.isfinite(alpha)):
    raise ValueError(f"alpha must be a finite number > 0, got {alpha}")
  flat = {k: np.asarray(v) for k, v in tree_paths.flatten(tree).items()}
  tensors, written = {}, {}
  for layer in _adapted_layers(flat):
    if layer not in modules:
      raise ValueError(f"lora_params adapt {layer!r}, which has no transformers module in "
                       f"{family.model_type}; adaptable: {', '.join(sorted(modules))}")
    template, per_layer = modules[layer]
    a, b = flat[f"{layer}/{LORA_A}"][..., :rank], flat[f"{layer}/{LORA_B}"][..., :rank, :]
    for i, name in enumerate(_names(template, per_layer, n_layer)):
      a_i, b_i = (a[i], b[i]) if per_layer else (a, b)
      if per_layer and not (a_i.any() or b_i.any()):
        continue  # a layer the targets leave out
      written.setdefault(template, []).append(name)
      tensors[f"{_PREFIX}{name}.lora_A.weight"] = np.ascontiguousarray(a_i.T)
      tensors[f"{_PREFIX}{name}.lora_B.weight"] = np.ascontiguousarray(b_i.T)
  if not tensors:
    raise ValueError("lora_params: every adapter is zero; there is nothing to write")
  config = {
      "peft_type": "LORA", "task_type": "CAUSAL_LM", "r": rank, "lora_alpha": alpha,
      "lora_dropout": lora.dropout, "use_rslora": lora.rslora, "bias": "none",
      "target_modules": _target_modules(written, modules, n_layer),
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

  An adapter on only some layers (``layers_to_transform``, or a ``target_modules`` that
  names some of them) loads with ``A = B = 0`` on the others, and a ``LoRA`` whose targets
  are the dotted module names of the layers present (``targets.py``): equal logits.
  For an NNX model (``load_hf(..., api="nnx")``) it returns the model, the adapters
  inserted (``nnx_lora.insert``).
  """
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
  for key in ("modules_to_save", "rank_pattern", "alpha_pattern"):
    if config.get(key):
      raise ValueError(f"{path / CONFIG}: {key}={config[key]!r} is not supported")
  n_layer = hub_tables.family_of(model).n_layer(model.config)
  modules = targets.hf_modules(model)
  with safetensors.safe_open(path / WEIGHTS, framework="np") as f:
    shapes = {name: tuple(f.get_slice(name).get_shape()) for name in f.keys()}
  rank = int(config["r"])
  present, linear = _check_tensors(shapes, modules, n_layer, rank, model)
  flat, names = {}, []
  with safetensors.safe_open(path / WEIGHTS, framework="np") as f:
    for layer, (template, per_layer) in modules.items():
      every = _names(template, per_layer, n_layer)
      have = [n for n in every if n in present]
      if not have:
        continue
      names += [layer] if have == every else have
      for part, leaf, zero in (("A", LORA_A, (linear[layer].n_in, rank)),
                               ("B", LORA_B, (rank, linear[layer].n_out))):
        tensors = [f.get_tensor(f"{_PREFIX}{n}.lora_{part}.weight").T if n in present
                   else np.zeros(zero, np.float32) for n in every]  # a layer left out: 0
        flat[f"{layer}/{leaf}"] = jnp.asarray(np.stack(tensors) if per_layer else tensors[0],
                                              dtype)
  lora = LoRA(model, targets=tuple(names), rank=rank, alpha=float(config["lora_alpha"]),
              dropout=float(config.get("lora_dropout") or 0.0),
              rslora=bool(config.get("use_rslora", False)))
  return lora, tree_paths.unflatten(flat)
def _check_tensors(shapes, modules, n_layer, rank, model) -> tuple[set[str], dict]:
  """The module names the adapter holds and the model's linear layers; ValueError naming a
  tensor the model has no place or shape for, or a module with one of A, B only."""
  idx = jax.ShapeDtypeStruct((1, 1), jnp.int32)
  params = jax.eval_shape(lambda: model.init(jax.random.key(0), idx))["params"]
  linear = targets.linear_layers(model, params)
  by_name = {n: layer for layer, (t, per_layer) in modules.items()
             for n in _names(t, per_layer, n_layer)}
  templates = {t for t, _ in modules.values()}
  present = set()
  for name, shape in sorted(shapes.items()):
    match = re.fullmatch(re.escape(_PREFIX) + r"(.+)\.lora_([AB])\.weight", name)
    module = match and re.sub(r"\.(\d+)\.", ".{i}.", match.group(1), count=1)
    if match and match.group(1) not in by_name and module in templates:
      index = re.search(r"\.(\d+)\.", match.group(1)).group(1)
      raise ValueError(f"adapter tensor {name} is for layer {index}; this model has "
                       f"{n_layer} layers: is the adapter for another base model?")
    if not match or match.group(1) not in by_name:
      raise ValueError(f"adapter tensor {name} names no adaptable module of this "
                       f"{type(model).__name__}; its modules: {', '.join(sorted(templates))}")
    info = linear[by_name[match.group(1)]]
    expected = (rank, info.n_in) if match.group(2) == "A" else (info.n_out, rank)
    if shape != expected:
      raise ValueError(f"adapter tensor {name} has shape {shape}; this model (r={rank}) "
                       f"needs {expected}: is the adapter for another base model?")
    present.add(match.group(1))
  for module in sorted(present):
    for part in ("A", "B"):
      if f"{_PREFIX}{module}.lora_{part}.weight" not in shapes:
        raise ValueError(f"adapter tensor {_PREFIX}{module}.lora_{part}.weight is missing")
  if not present:
    raise ValueError("the adapter holds no LoRA tensor")
  return present, linear
