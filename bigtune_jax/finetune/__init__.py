"""Fine-tuning a pretrained model on a new task with a new loss (seed 001 §2.3, §3.2, §4.2).

Seed 001 §3.2's steps, each a piece here:

1. load the pretrained model: ``load_pretrained`` reads a ``bt.train.fit`` run's Orbax
   checkpoint into a new model's parameters, keeping a freshly initialized new head;
2. define the new loss: any ``bt.train`` loss of the new model (a new head, a new target);
3. update the parameters with an optimizer: all of them, only some (``freeze``), each group
   at its own rate (``param_groups``), or through low-rank adapters: ``LoRA`` on any
   Dense/DenseGeneral layer (adapters in the forward pass, stacked layers, a new head
   trained in full beside them with ``also_train``), trained as ``Adapters`` that carry
   their rank and alpha, merged with ``LoRA.merge``, exported in PEFT's format with
   ``save_peft`` / ``load_peft``; ``trainable_parameter_count`` says how many train;
4. evaluate and adjust: ``bt.train.fit`` / ``evaluate``.

Parameters are chosen by path (``hidden_0/kernel``) with prefixes or predicates (``paths``).
"""

from bigtune_jax.finetune.carried import Adapters
from bigtune_jax.finetune.adapters import LoRA
from bigtune_jax.finetune.carried import adapter_parameter_count
from bigtune_jax.finetune.carried import member_adapters
from bigtune_jax.finetune.groups import freeze
from bigtune_jax.finetune.groups import param_groups
from bigtune_jax.finetune.groups import trainable_parameter_count
from bigtune_jax.finetune.paths import Selection
from bigtune_jax.finetune.peft_io import load_peft
from bigtune_jax.finetune.peft_io import save_peft
from bigtune_jax.finetune.pretrained import load_pretrained
from bigtune_jax.finetune.targets import LinearLayer
from bigtune_jax.finetune.targets import linear_layers
from bigtune_jax.tree_paths import path_name

__all__ = (
    "Adapters",
    "LinearLayer",
    "LoRA",
    "Selection",
    "adapter_parameter_count",
    "freeze",
    "linear_layers",
    "load_peft",
    "load_pretrained",
    "member_adapters",
    "param_groups",
    "path_name",
    "save_peft",
    "trainable_parameter_count",
)
