"""What a checkpoint is besides its weights, carried from ``load_hf`` to ``save_hf``.

A checkpoint's ``config.json`` holds keys the model's numbers do not depend on but its users
do: the special token ids (``bos_token_id``, ``eos_token_id``, ``pad_token_id``), which
transformers' ``generate`` stops and pads at, and others (``initializer_range``,
``use_cache``, ...); ``generation_config.json`` holds the decoding defaults (end tokens,
temperature, top_p). ``load_hf`` returns a model whose config is a ``HubGPTConfig`` or
``HubLlamaConfig``: the model's own config plus both files' contents as JSON text (frozen
and hashable, as the model's config must be), and ``save_hf`` writes them back, its own
keys (what the model is) over the kept ones. A model built without a checkpoint writes
transformers' own ``generation_config.json`` for its token ids
(``GenerationConfig.from_model_config``: the ids, ``"_from_model_config": true``).

Keys dropped on load, since the saved checkpoint differs in them: the weights' dtype and
the transformers version that wrote them (save_hf writes its own), ``quantization_config``
(the saved weights are not quantized) and ``auto_map`` (custom code: save_hf writes a
standard architecture).
"""

import dataclasses
import json

from bigtune_jax.models.gpt import GPTConfig
from bigtune_jax.models.llama import LlamaConfig

DROPPED = ("architectures", "dtype", "torch_dtype", "transformers_version",
           "quantization_config", "auto_map", "_name_or_path")
TOKEN_IDS = ("bos_token_id", "eos_token_id", "pad_token_id")


@dataclasses.dataclass(frozen=True)
class HubGPTConfig(GPTConfig):
  """A ``GPTConfig`` loaded from a checkpoint, with what ``save_hf`` writes back."""
  hf_config: str = "{}"  # JSON: the loaded config.json's keys, less DROPPED
  hf_generation_config: str = ""  # JSON: the loaded generation_config.json ("": none)


@dataclasses.dataclass(frozen=True)
class HubLlamaConfig(LlamaConfig):
  """A ``LlamaConfig`` loaded from a checkpoint, with what ``save_hf`` writes back."""
  hf_config: str = "{}"  # JSON: the loaded config.json's keys, less DROPPED
  hf_generation_config: str = ""  # JSON: the loaded generation_config.json ("": none)


def kept(config: dict, generation: dict | None) -> dict:
  """The ``hf_config`` / ``hf_generation_config`` fields for a loaded checkpoint."""
  return dict(
      hf_config=json.dumps({k: v for k, v in config.items() if k not in DROPPED},
                           sort_keys=True),
      hf_generation_config="" if generation is None else json.dumps(generation, sort_keys=True))


def files(cfg, written: dict, defaults: dict) -> tuple[dict, dict]:
  """``(config.json, generation_config.json)`` for a model config ``cfg``.

  ``written``: the keys that say what the model is (they win); then the kept keys of a
  loaded checkpoint; then ``defaults`` (a fresh model's token ids).
  """
  config = {**defaults, **json.loads(getattr(cfg, "hf_config", "{}")), **written}
  generation = getattr(cfg, "hf_generation_config", "")
  if generation:
    return config, json.loads(generation)
  ids = {k: config[k] for k in TOKEN_IDS if config.get(k) is not None}
  return config, {"_from_model_config": True, **ids}
