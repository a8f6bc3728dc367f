"""Name-mapping tables between transformers checkpoints and bigtune's models, one per family.

Each ``Entry`` maps one of our parameters (its ``tree_paths`` name) to a transformers tensor
name (``{i}`` for the layer of a stacked parameter) and gives the layout change both ways:
``torch.nn.Linear`` stores ``(out, in)``, our ``Dense`` kernels ``(in, out)`` with heads as
their own axes; GPT-2's ``Conv1D`` already stores ``(in, out)``. Configs map field by field;
a config that needs something the models do not do is refused with the field named.
Each family also says how its head relates to its token embedding (``tie_default``: what
transformers assumes when ``config.json`` has no ``tie_word_embeddings``; ``separate_head``:
whether our model can hold a head of its own) and builds a ``hub_identity`` config, so what
the checkpoint was besides its weights is saved back.
"""

import dataclasses
from collections.abc import Callable
from typing import Any

import numpy as np

from bigtune_jax.hub_identity import HubGPTConfig
from bigtune_jax.hub_identity import HubLlamaConfig
from bigtune_jax.models.gpt import GPT, GPTConfig
from bigtune_jax.models.llama import Llama, LlamaConfig

SUPPORTED_MODEL_TYPES = ("gpt2", "llama", "mistral", "qwen2")


@dataclasses.dataclass(frozen=True)
class Entry:
  path: str  # our parameter, e.g. "layers/self_attn/q_proj/kernel"
  hf_name: str  # e.g. "model.layers.{i}.self_attn.q_proj.weight"
  hf_shape: tuple[int, ...]  # one layer's stored shape
  per_layer: bool
  to_ours: Callable[[np.ndarray], np.ndarray]
  to_hf: Callable[[np.ndarray], np.ndarray]


def _same(x):
  return x


def _reshape(shape):
  return lambda x: x.reshape(shape)


def _linear(out_shape, in_dim):
  """torch Linear weight ``(out, in)`` <-> our kernel ``(in, *out_shape)``."""
  out = int(np.prod(out_shape))
  return (lambda w: w.T.reshape(in_dim, *out_shape),
          lambda k: k.reshape(in_dim, out).T)


def _linear_from_heads(head_shape, out_dim):
  """torch Linear weight ``(out, heads*hd)`` <-> our kernel ``(heads, hd, out)``."""
  inner = int(np.prod(head_shape))
  return (lambda w: w.T.reshape(*head_shape, out_dim),
          lambda k: k.reshape(inner, out_dim).T)


def _entry(path, hf_name, hf_shape, convert=None, per_layer=True):
  to_ours, to_hf = convert or (_same, _same)
  return Entry(path, hf_name, tuple(hf_shape), per_layer, to_ours, to_hf)


class GPT2:
  """``GPT2LMHeadModel`` <-> ``models.GPT(GPTConfig(gelu_approximate=True, ...))``."""
  model_type = "gpt2"
  embedding = "transformer.wte.weight"
  tie_default = True  # GPT2Config's
  separate_head = False  # models.GPT's head is always its token embedding

  @staticmethod
  def model_from_hf(config: dict, dtype: Any, param_dtype: Any, tied: bool, kept: dict,
                    **overrides) -> GPT:
    """``kept``: ``hub_identity.kept``'s fields; ``tied`` must be True (``separate_head``)."""
    if not tied:
      raise ValueError("models.GPT ties its head to the token embedding (tied=False given)")
    activation = config.get("activation_function", "gelu_new")
    approximate = {"gelu_new": True, "gelu_pytorch_tanh": True, "gelu": False}.get(activation)
    if approximate is None:
      raise ValueError(f"gpt2 activation_function must be 'gelu_new' or 'gelu', got "
                       f"{activation!r}")
    n_embd = config["n_embd"]
    if config.get("n_inner") not in (None, 4 * n_embd):
      raise ValueError(f"gpt2 n_inner must be 4 * n_embd ({4 * n_embd}) or null, got "
                       f"{config['n_inner']}")
    for key, supported in (("scale_attn_weights", True), ("scale_attn_by_inverse_layer_idx",
                                                          False), ("add_cross_attention", False)):
      if config.get(key, supported) != supported:
        raise ValueError(f"gpt2 {key}={config[key]} is not supported (only {supported})")
    return GPT(HubGPTConfig(**{**dict(
        vocab_size=config["vocab_size"], block_size=config["n_positions"],
        n_layer=config["n_layer"], n_head=config["n_head"], n_embd=n_embd,
        layer_norm_epsilon=config.get("layer_norm_epsilon", 1e-5), gelu_approximate=approximate,
        dtype=dtype, param_dtype=param_dtype), **kept, **overrides}))

  @staticmethod
  def n_layer(cfg: GPTConfig) -> int:
    return cfg.n_layer

  @staticmethod
  def entries(cfg: GPTConfig) -> list[Entry]:
    c, nh, hs = cfg.n_embd, cfg.n_head, cfg.head_size
    layer = "transformer.h.{i}."
    entries = [_entry("wte/embedding", "transformer.wte.weight", (cfg.vocab_size, c),
                      per_layer=False),
               _entry("wpe", "transformer.wpe.weight", (cfg.block_size, c), per_layer=False),
               _entry("ln_f/scale", "transformer.ln_f.weight", (c,), per_layer=False),
               _entry("ln_f/bias", "transformer.ln_f.bias", (c,), per_layer=False)]
    for norm in ("ln_1", "ln_2"):
      entries += [_entry(f"h/{norm}/scale", layer + f"{norm}.weight", (c,)),
                  _entry(f"h/{norm}/bias", layer + f"{norm}.bias", (c,))]
    entries += [
        _entry("h/attn/c_attn/kernel", layer + "attn.c_attn.weight", (c, 3 * c),
               (_reshape((c, 3, nh, hs)), _reshape((c, 3 * c)))),
        _entry("h/attn/c_attn/bias", layer + "attn.c_attn.bias", (3 * c,),
               (_reshape((3, nh, hs)), _reshape((3 * c,)))),
        _entry("h/attn/c_proj/kernel", layer + "attn.c_proj.weight", (c, c),
               (_reshape((nh, hs, c)), _reshape((c, c)))),
        _entry("h/attn/c_proj/bias", layer + "attn.c_proj.bias", (c,)),
        _entry("h/mlp/c_fc/kernel", layer + "mlp.c_fc.weight", (c, 4 * c)),
        _entry("h/mlp/c_fc/bias", layer + "mlp.c_fc.bias", (4 * c,)),
        _entry("h/mlp/c_proj/kernel", layer + "mlp.c_proj.weight", (4 * c, c)),
        _entry("h/mlp/c_proj/bias", layer + "mlp.c_proj.bias", (c,))]
    return entries

  @staticmethod
  def config_to_hf(cfg: GPTConfig) -> dict:
    return dict(model_type="gpt2", architectures=["GPT2LMHeadModel"],
                vocab_size=cfg.vocab_size, n_positions=cfg.block_size, n_embd=cfg.n_embd,
                n_layer=cfg.n_layer, n_head=cfg.n_head, n_inner=None,
                activation_function="gelu_new" if cfg.gelu_approximate else "gelu",
                layer_norm_epsilon=cfg.layer_norm_epsilon, resid_pdrop=cfg.dropout,
                embd_pdrop=cfg.dropout, attn_pdrop=0.0, tie_word_embeddings=True)

  @staticmethod
  def token_ids(cfg: GPTConfig) -> dict:
    """A fresh model's token ids: GPT-2's single end-of-text token, the last id."""
    return dict(bos_token_id=cfg.vocab_size - 1, eos_token_id=cfg.vocab_size - 1)


def _rope(config: dict) -> tuple[float, dict | None]:
  """``(rope_theta, rope_scaling)`` from either config style: transformers 5's
  ``rope_parameters`` or the older ``rope_theta`` + ``rope_scaling``."""
  params = dict(config.get("rope_parameters") or {})
  theta = params.pop("rope_theta", config.get("rope_theta", 10000.0))
  scaling = params or config.get("rope_scaling")
  if scaling is not None and scaling.get("rope_type", scaling.get("type")) == "default":
    scaling = None
  return theta, scaling


class LlamaFamily:
  """``LlamaForCausalLM`` / ``MistralForCausalLM`` / ``Qwen2ForCausalLM`` <-> ``models.Llama``."""
  ARCHITECTURES = {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM",
                   "qwen2": "Qwen2ForCausalLM"}
  embedding = "model.embed_tokens.weight"
  tie_default = False  # LlamaConfig's, MistralConfig's and Qwen2Config's
  separate_head = True

  def __init__(self, model_type: str):
    self.model_type = model_type

  def model_from_hf(self, config: dict, dtype: Any, param_dtype: Any, tied: bool, kept: dict,
                    **overrides) -> Llama:
    """``tied``: whether the head is the token embedding; ``kept``: ``hub_identity.kept``'s."""
    if config.get("hidden_act", "silu") != "silu":
      raise ValueError(f"{self.model_type} hidden_act must be 'silu', got {config['hidden_act']!r}")
    if config.get("mlp_bias", False):
      raise ValueError(f"{self.model_type} mlp_bias=true is not supported")
    bias = bool(config.get("attention_bias", False))
    if self.model_type == "mistral" and bias:
      raise ValueError("mistral attention_bias=true is not supported (MistralForCausalLM has none)")
    theta, scaling = _rope(config)
    fields = dict(
        vocab_size=config["vocab_size"], hidden_size=config["hidden_size"],
        intermediate_size=config["intermediate_size"],
        num_hidden_layers=config["num_hidden_layers"],
        num_attention_heads=config["num_attention_heads"],
        num_key_value_heads=config.get("num_key_value_heads"), head_dim=config.get("head_dim"),
        max_position_embeddings=config.get("max_position_embeddings", 4096),
        rms_norm_eps=config.get("rms_norm_eps", 1e-6), rope_theta=theta, rope_scaling=scaling,
        # Qwen2: q/k/v biases always, none on o_proj; Llama: attention_bias on all four.
        attention_bias=bias or self.model_type == "qwen2",
        o_proj_bias=bias and self.model_type == "llama",
        sliding_window=self._sliding_window(config),
        tie_word_embeddings=tied, model_type=self.model_type, dtype=dtype,
        param_dtype=param_dtype)
    return Llama(HubLlamaConfig(**{**fields, **kept, **overrides}))

  def _sliding_window(self, config: dict) -> int | None:
    """The window any layer attends within, as transformers decides it; None when none.

    Mistral: ``sliding_window`` itself. Qwen2: only with ``use_sliding_window``, and only if
    some layer is a ``"sliding_attention"`` one (``layer_types``, or the layers from
    ``max_window_layers`` on). ``models.Llama`` limits sequences to it (exact there).
    """
    window = config.get("sliding_window")
    if window is None or self.model_type == "llama":
      return None
    if self.model_type == "qwen2":
      layers = config.get("layer_types") or [
          "sliding_attention" if i >= config.get("max_window_layers", 28) else "full_attention"
          for i in range(config["num_hidden_layers"])]
      if not config.get("use_sliding_window", False) or "sliding_attention" not in layers:
        return None
    return window

  @staticmethod
  def token_ids(cfg: LlamaConfig) -> dict:
    """A fresh model has none (transformers' classes have their own defaults)."""
    return {}

  @staticmethod
  def n_layer(cfg: LlamaConfig) -> int:
    return cfg.num_hidden_layers

  @staticmethod
  def entries(cfg: LlamaConfig) -> list[Entry]:
    c, nh, nkv, hd = cfg.hidden_size, cfg.num_attention_heads, cfg.kv_heads, cfg.head_size
    ff = cfg.intermediate_size
    layer = "model.layers.{i}."
    entries = [_entry("embed_tokens/embedding", "model.embed_tokens.weight",
                      (cfg.vocab_size, c), per_layer=False),
               _entry("norm/scale", "model.norm.weight", (c,), per_layer=False)]
    if not cfg.tie_word_embeddings:
      entries.append(_entry("lm_head", "lm_head.weight", (cfg.vocab_size, c),
                            (np.transpose, np.transpose), per_layer=False))
    entries += [_entry("layers/input_layernorm/scale", layer + "input_layernorm.weight", (c,)),
                _entry("layers/post_attention_layernorm/scale",
                       layer + "post_attention_layernorm.weight", (c,))]
    for name, heads in (("q_proj", nh), ("k_proj", nkv), ("v_proj", nkv)):
      entries.append(_entry(f"layers/self_attn/{name}/kernel", layer + f"self_attn.{name}.weight",
                            (heads * hd, c), _linear((heads, hd), c)))
      if cfg.attention_bias:
        entries.append(_entry(f"layers/self_attn/{name}/bias", layer + f"self_attn.{name}.bias",
                              (heads * hd,), (_reshape((heads, hd)), _reshape((heads * hd,)))))
    entries.append(_entry("layers/self_attn/o_proj/kernel", layer + "self_attn.o_proj.weight",
                          (c, nh * hd), _linear_from_heads((nh, hd), c)))
    if cfg.o_proj_bias:
      entries.append(_entry("layers/self_attn/o_proj/bias", layer + "self_attn.o_proj.bias", (c,)))
    for name, shape in (("gate_proj", (ff, c)), ("up_proj", (ff, c)), ("down_proj", (c, ff))):
      entries.append(_entry(f"layers/mlp/{name}/kernel", layer + f"mlp.{name}.weight", shape,
                            (np.transpose, np.transpose)))
    return entries

  def config_to_hf(self, cfg: LlamaConfig) -> dict:
    """transformers' config for ``cfg``; a combination its class cannot express is refused."""
    biases = {"llama": (cfg.attention_bias, cfg.attention_bias),  # one flag for q/k/v/o
              "mistral": (False, False), "qwen2": (True, False)}[self.model_type]
    if (cfg.attention_bias, cfg.o_proj_bias) != biases:
      raise ValueError(f"{self.ARCHITECTURES[self.model_type]} needs attention_bias="
                       f"{biases[0]}, o_proj_bias={biases[1]}; got {cfg.attention_bias}, "
                       f"{cfg.o_proj_bias}")
    rope = {"rope_type": "default", **(cfg.rope_scaling_dict or {})}
    config = dict(
        model_type=self.model_type, architectures=[self.ARCHITECTURES[self.model_type]],
        vocab_size=cfg.vocab_size, hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size, num_hidden_layers=cfg.num_hidden_layers,
        num_attention_heads=cfg.num_attention_heads, num_key_value_heads=cfg.kv_heads,
        head_dim=cfg.head_size, max_position_embeddings=cfg.max_position_embeddings,
        rms_norm_eps=cfg.rms_norm_eps, hidden_act="silu", tie_word_embeddings=cfg.tie_word_embeddings,
        # Both spellings: transformers >= 5 reads rope_parameters, older releases the rest.
        rope_theta=cfg.rope_theta, rope_parameters={**rope, "rope_theta": cfg.rope_theta},
        rope_scaling=cfg.rope_scaling_dict)
    if self.model_type == "llama":
      config.update(attention_bias=cfg.attention_bias, mlp_bias=False)
    elif self.model_type == "mistral":
      config.update(sliding_window=cfg.sliding_window)
    else:  # every layer slides: the same as any split for sequences within the window
      kind = "full_attention" if cfg.sliding_window is None else "sliding_attention"
      config.update(use_sliding_window=cfg.sliding_window is not None,
                    sliding_window=cfg.sliding_window, max_window_layers=0,
                    layer_types=[kind] * cfg.num_hidden_layers)
    return config


def family(model_type: str):
  """The table for a ``config.json`` ``model_type``; a clear error listing the supported ones."""
  if model_type == "gpt2":
    return GPT2
  if model_type in LlamaFamily.ARCHITECTURES:
    return LlamaFamily(model_type)
  raise ValueError(f"unsupported model_type {model_type!r}; supported: "
                   f"{', '.join(SUPPORTED_MODEL_TYPES)}")


def family_of(model) -> Any:
  """The table for one of our models (Llama: by its ``config.model_type``)."""
  if isinstance(model, GPT):
    return GPT2
  if isinstance(model, Llama):
    return LlamaFamily(model.config.model_type)
  raise ValueError(f"save_hf supports models.GPT and models.Llama, got {type(model).__name__}")
