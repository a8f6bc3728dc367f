"""Flax linen models: one module per concept, each citing its seed section.

``LinearRegression`` (seed 002 §4.4), ``MLP`` (seed 000 §4.1), ``SimpleCNN`` (seed 000 §4.2),
``VGG16`` (seed 004 §4.2), ``LSTMClassifier`` (seed 000 §4.3), ``GPT`` (seed 003 §4.1) and
``Llama`` (Llama / Mistral / Qwen2 checkpoints, seed 001 §4.2; ``bigtune_jax.hub``).
Image inputs are NHWC; classifiers return logits.
"""

from bigtune_jax.models.cnn import SimpleCNN
from bigtune_jax.models.cnn import VGG16
from bigtune_jax.models.cnn import adaptive_avg_pool
from bigtune_jax.models.counting import count_params
from bigtune_jax.models.generation import generate
from bigtune_jax.models.gpt import GPT
from bigtune_jax.models.gpt import GPTConfig
from bigtune_jax.models.gpt import attention_implementation
from bigtune_jax.models.gpt import gpt_flops_per_token
from bigtune_jax.models.gpt import gpt_param_count
from bigtune_jax.models.kv_cache import KVCache
from bigtune_jax.models.linear import LinearRegression
from bigtune_jax.models.llama import Llama
from bigtune_jax.models.llama import LlamaConfig
from bigtune_jax.models.mlp import MLP
from bigtune_jax.models.rnn import LSTMClassifier
from bigtune_jax.models.supernet import Supernet

__all__ = (
    "GPT",
    "GPTConfig",
    "KVCache",
    "Llama",
    "LlamaConfig",
    "LSTMClassifier",
    "LinearRegression",
    "MLP",
    "SimpleCNN",
    "Supernet",
    "VGG16",
    "adaptive_avg_pool",
    "attention_implementation",
    "count_params",
    "generate",
    "gpt_flops_per_token",
    "gpt_param_count",
)
