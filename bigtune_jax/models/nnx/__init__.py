"""Flax NNX versions of the models, over the linen modules' math and parameter layout.

Each NNX module here holds the same parameters under the same paths as its linen twin
(``nnx.to_pure_dict(nnx.state(model, nnx.Param))`` is a tree like the linen ``params``), and
calls the same pure forward function, so one weight table (``hub_tables``) and one engine
(``bt.train``) serve both. Unlike linen, NNX builds its parameters eagerly, so the input
size is a constructor argument (``in_features``, ``image_size``).
"""

from bigtune_jax.models.nnx.cnn import SimpleCNN
from bigtune_jax.models.nnx.gpt import GPT
from bigtune_jax.models.nnx.llama import Llama
from bigtune_jax.models.nnx.mlp import MLP

__all__ = ("GPT", "Llama", "MLP", "SimpleCNN")
