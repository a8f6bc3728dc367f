"""Seed 001 §3.2 / §4.2 / §6.2: fine-tuning strategies compared, frozen backbone vs full
fine-tuning vs LoRA, by test accuracy and trainable-parameter count.

On the bundled digits (as ``experiments.finetune_basic``, the same task split:
``tasks.task_splits``):

1. **Pretrain** an MLP on the digits 0-4 with ``bt.train.fit`` into ``DIR/pretrain``.
2. **Load** its checkpoint into the new model (a new 5-way head for the digits 5-9,
   relabelled 0-4, freshly initialized) with ``bt.finetune.load_pretrained``.
3. **Fine-tune** on ``finetune_per_class`` examples per new class, each method for the same
   ``finetune_steps`` with Adam, into ``DIR/<method>``:

   ========  ==========================================================================
   scratch   the same model from a random backbone, all parameters (the baseline)
   full      every parameter, from the pretrained backbone, at ``learning_rate``
   groups    ``param_groups``: backbone at ``learning_rate * backbone_lr_factor``, head
             at ``learning_rate`` (discriminative fine-tuning)
   frozen    ``freeze``: the new head only, at ``head_learning_rate``
   loraR     ``LoRA`` rank R (``lora_ranks``), ``lora_alpha``, on every hidden Dense
             layer, the new head trained in full (``also_train``), at ``head_learning_rate``
   ========  ==========================================================================

``DIR/summary.json``: ``experiment, steps, final_train_loss, test_loss, test_accuracy``
(those of ``full``), ``pretrain_test_accuracy`` (digits 0-4), ``devices, wall_s`` and
``results``: ``[{method, trainable_params, test_accuracy, test_loss}]``. Running again on
the same workdir resumes every run from its checkpoints.

  python -m experiments.finetune --workdir runs/finetune [--preset small|full|tiny]

What it measured (CPU, small preset, 50 training examples of 5-9, test accuracy on the
digits 5-9, seeds 0 / 1 / 2): scratch 0.872 / 0.838 / 0.905, full 0.844 / 0.832 / 0.872,
groups 0.676 / 0.737 / 0.765, frozen 0.631 / 0.715 / 0.698, lora4 0.849 / 0.771 / 0.888,
lora8 0.849 / 0.754 / 0.933; with all 627 training examples (``--set
finetune_per_class=0``, seed 0): 0.972, 0.978, 0.860, 0.771, 0.989, 0.989. (``A`` starts
uniform in ±1/sqrt(in), PEFT's init; the retired ``lora_init``'s N(0, 1/in) gave lora8
0.877 / 0.782 / 0.933 and 0.983.) LoRA trains 11 % (rank 4) or 20 % (rank 8) of the
parameters, the head included, and is on par with full fine-tuning within the seeds'
spread; the frozen backbone (2 %) is the worst: features learnt to separate 0-4 from
raw 8x8 pixels do not linearly separate 5-9, and a backbone at a tenth of the rate
(groups) is nearly frozen in 100 steps. Transfer between disjoint digit classes is weak
(``experiments.finetune_basic`` found the same), so no method beats scratch reliably here.
"""

import os
import time

import jax
import jax.numpy as jnp

import bigtune_jax as bt
from bigtune_jax import finetune as ft
from bigtune_jax import models
from bigtune_jax import train
from experiments import cli
from experiments import report
from experiments import tasks

PRESETS = {
    "tiny": dict(hidden=(32,), pretrain_steps=60, finetune_steps=20, batch_size=25,
                 finetune_per_class=10, learning_rate=3e-3, head_learning_rate=1e-2,
                 backbone_lr_factor=0.1, lora_ranks=(4,), lora_alpha=8.0, eval_every=60,
                 image_size=8, dataset="digits", data_dir="", seed=0),
    "small": dict(hidden=(128, 64), pretrain_steps=600, finetune_steps=100, batch_size=25,
                  finetune_per_class=10, learning_rate=1e-3, head_learning_rate=1e-2,
                  backbone_lr_factor=0.1, lora_ranks=(4, 8), lora_alpha=8.0, eval_every=100,
                  image_size=8, dataset="digits", data_dir="", seed=0),
    # A GPU run on real MNIST: --set dataset=mnist --set data_dir=DIR.
    "full": dict(hidden=(512, 256), pretrain_steps=4300, finetune_steps=500, batch_size=64,
                 finetune_per_class=100, learning_rate=1e-3, head_learning_rate=1e-2,
                 backbone_lr_factor=0.1, lora_ranks=(4, 8), lora_alpha=8.0, eval_every=430,
                 image_size=28, dataset="digits", data_dir="", seed=0),
}

HEAD = ("head",)


def methods(config, model, pretrained, fresh, example):
  """``{name: (initial trainable tree, optimizer, loss, trainable-parameter count)}``;
  ``example``: an input batch (LoRA finds the model's Dense layers on it)."""
  loss = train.classification_loss(model)
  lr, head_lr = config["learning_rate"], config["head_learning_rate"]
  copy = lambda tree: jax.tree.map(jnp.copy, tree)  # each run gets its own buffers: fit donates
  every = ft.trainable_parameter_count(fresh)
  plans = {
      "scratch": (copy(fresh), bt.adam(lr), loss, every),
      "full": (copy(pretrained), bt.adam(lr), loss, every),
      "groups": (copy(pretrained), ft.param_groups(
          {"backbone": lr * config["backbone_lr_factor"], "head": head_lr},
          lambda path: "head" if path.split("/")[0] == "head" else "backbone"), loss, every),
      "frozen": (copy(pretrained), ft.freeze(bt.adam(head_lr), HEAD), loss,
                 ft.trainable_parameter_count(pretrained, HEAD)),
  }
  hidden = tuple(f"hidden_{i}" for i in range(len(config["hidden"])))
  for i, rank in enumerate(config["lora_ranks"]):
    lora = ft.LoRA(model, targets=hidden, rank=rank, alpha=config["lora_alpha"],
                   also_train=HEAD)
    adapters = lora.init(jax.random.key(config["seed"] + 100 + i), pretrained, example)
    plans[f"lora{rank}"] = (adapters, bt.adam(head_lr), lora.loss(loss, pretrained),
                            ft.adapter_parameter_count(adapters))
  return plans


def format_table(results) -> str:
  lines = [f"{'method':<8}  {'trainable':>9}  {'test acc':>8}", "-" * 29]
  lines += [f"{r['method']:<8}  {r['trainable_params']:>9,}  {r['test_accuracy']:>8.4f}"
            for r in results]
  return "\n".join(lines)


def main(argv=None) -> dict:
  workdir, preset, config = cli.parse_args(argv, PRESETS, __doc__.split("\n\n")[0])
  start = time.time()
  splits = tasks.load_images(config, config["image_size"])
  old = tasks.task_splits(splits, tasks.OLD_CLASSES)
  new = tasks.task_splits(splits, tasks.NEW_CLASSES,
                                   config["finetune_per_class"])
  cli.check_batch_size("batch_size", config["batch_size"], old["train"],
                       "pretraining examples")
  cli.check_batch_size("batch_size", config["batch_size"], new["train"],
                       "fine-tuning examples (finetune_per_class x 5 classes)")
  sample = jnp.asarray(splits["train"]["image"][:1])
  progress, seed = preset != "tiny", config["seed"]
  new_model = models.MLP(hidden=config["hidden"], num_classes=len(tasks.NEW_CLASSES))
  fresh = train.init_params(new_model, sample, seed + 1)
  # Every method built once on the fresh parameters: a bad rank, alpha or learning rate
  # fails here, before anything is trained or written.
  methods(config, new_model, fresh, fresh, sample)

  # 1. Pretrain on the digits 0-4 (resumes from DIR/pretrain/checkpoints).
  old_model = models.MLP(hidden=config["hidden"], num_classes=len(tasks.OLD_CLASSES))
  pretrain = report.train_and_evaluate(
      "finetune/pretrain", preset, old_model, train.init_params(old_model, sample, seed),
      bt.adam(config["learning_rate"]), train.classification_loss(old_model), old,
      tasks.fit_config(config, config["pretrain_steps"], progress),
      os.path.join(workdir, "pretrain"))

  # 2. The new model: a new head on the pretrained backbone.
  pretrained = ft.load_pretrained(os.path.join(workdir, "pretrain"), fresh, skip=HEAD)

  # 3. Every method, same data, steps and head initialization.
  results, runs = [], {}
  plans = methods(config, new_model, pretrained, fresh, sample)
  for name, (params, tx, loss, count) in plans.items():
    runs[name] = report.train_and_evaluate(
        f"finetune/{name}", preset, new_model, params, tx, loss, new,
        tasks.fit_config(config, config["finetune_steps"], progress),
        os.path.join(workdir, name), extra={"trainable_params": count})
    results.append({"method": name, "trainable_params": count,
                    "test_accuracy": runs[name]["test_accuracy"],
                    "test_loss": runs[name]["test_loss"]})

  full = runs["full"]
  summary = {
      "experiment": "finetune", "preset": preset, "steps": full["steps"],
      "final_train_loss": full["final_train_loss"], "test_loss": full["test_loss"],
      "test_accuracy": full["test_accuracy"],
      "pretrain_test_accuracy": pretrain["test_accuracy"],
      "finetune_train_examples": len(new["train"]), "results": results, "config": config,
  }
  print(format_table(results))
  return report.finish(workdir, summary, start, hide=("results", "config"))


if __name__ == "__main__":
  cli.run(main)
