"""Seed 001 §3.2, §4.1-4.2: optimize a model, save it, load it, and fine-tune it on a new
task with a new loss, against a from-scratch baseline with the same budget.

Seed 001 §3.2 lists the fine-tuning steps: 1. load the pretrained model; 2. define a new
loss for the new task or data set; 3. update the parameters with an optimizer on that loss;
4. evaluate and adjust. Its §4.1 snippet trains ``model = ...`` with ``MSELoss`` and
``optim.Adam(lr=0.001)`` for 100 "epochs"; its §4.2 snippet "loads" a pretrained model
(``model = ...``), "loads" new data (``data = ...``), takes ``CrossEntropyLoss`` as the new
loss and trains it the same way with Adam (lr 0.001).

Here, on the bundled scikit-learn digits (1,797 real 8x8 images):

1. **Pretrain** (§4.1): an MLP on the digits 0-4 (5 classes), Adam, cross-entropy. The fit
   loop checkpoints the whole training state into ``DIR/pretrain/checkpoints``.
2. **Load** (§4.2 step 1): the last checkpoint's parameters are read back into the new
   model with ``bt.finetune.load_pretrained`` (an Orbax partial restore: the shapes and
   dtypes are checked first, and the optimizer state is never read).
3. **New task, new loss** (§4.2 steps 2-3): classify the digits 5-9. The pretrained head
   predicts the old label set {0..4}, so it is not loaded (``skip=("head",)``): the new
   model keeps its freshly initialized head for the new label set ({5..9}, relabelled
   0..4); the backbone (every hidden layer) gets the pretrained weights. The new loss is
   the cross-entropy of the new head's logits against the new labels,

   .. math:: J_{new}(\\theta, \\phi) = -\\frac{1}{|B|} \\sum_{(x, y) \\in B,\\ y \\ge 5}
             \\log \\operatorname{softmax}(W_\\phi\\, h_\\theta(x) + b_\\phi)_{y - 5}

   a different function from the pretraining loss both in its data (other digits) and in its
   parameters (the head ``phi`` never saw pretraining). Fine-tuning is the usual low-data
   case: ``finetune_per_class`` labelled examples per new class (0: all of them).
4. **Fine-tune** all parameters from there with the same optimizer into ``DIR/finetune``,
   and, for the benefit to be measured rather than claimed, train the **same** model from
   the **same** head initialization with a random backbone, same data, steps and optimizer,
   into ``DIR/scratch``.

``DIR/summary.json``: the fine-tuned model's ``steps, final_train_loss, test_loss,
test_accuracy`` (on the test digits 5-9), ``pretrain_test_accuracy`` (the pretrained model on
the test digits 0-4) and ``scratch_test_accuracy`` (the baseline on the test digits 5-9).
Running again on the same workdir resumes each of the three runs from its checkpoint.

  python -m experiments.finetune_basic --workdir runs/finetune [--preset small|full|tiny]

What was fixed in the seed's snippets (bugs, said plainly):

* ``model = ...`` (both snippets), ``data = ...``, ``input`` and ``target`` are never defined;
  ``input`` also shadows Python's builtin. The model here is an MLP and the data are real.
* §4.1 never saves the trained model, so §4.2 has nothing to load; here the pretraining run
  checkpoints it and §4.2 restores that checkpoint.
* §4.1 trains a model it will reuse as a classifier with ``MSELoss`` on raw outputs; the
  pretraining loss here is cross-entropy on logits, as for any classifier.
* §4.2's "new loss" is only a new criterion object on the *same* model: a new label set needs
  a new output layer, or the old head's classes are silently reused. A new head is built.
* Both loops call each pass over one fixed batch an "epoch": ``for epoch in range(100)`` makes
  100 full-batch steps on ``data``, with no data loader, no shuffling and no held-out data.
  Here training draws shuffled mini-batches and steps are counted as steps.
* Neither snippet evaluates (§3.3 step 7 "evaluate the model"); here every run is evaluated
  on validation during training and on a held-out test split at the end.
* Without a baseline, "fine-tuning helps" is a claim; here it is measured.

What it measured (CPU, 2026-11-23, small preset): the fine-tuned model reaches 0.844 test
accuracy on the digits 5-9 against 0.872 from scratch; seeds 1-3 agree (0.832/0.838,
0.872/0.905, 0.799/0.827), and with 30 fine-tuning steps the gap widens (0.760/0.883). A
backbone pretrained for 600 steps to separate 0-4 transfers *negatively* to the disjoint
classes 5-9 on raw 8x8 pixels; pretrained for 100 steps it is even (0.877/0.872), and with
all the 5-9 training data both reach 0.97-0.98. This is reported, not tuned away: transfer
between disjoint classes of a small MLP is weak, and the baseline is what shows it.
"""

import os
import time

import jax
import jax.numpy as jnp
import optax

import bigtune_jax as bt
from bigtune_jax import finetune as ft
from bigtune_jax import models
from bigtune_jax import train
from experiments import cli
from experiments import report
from experiments import tasks


PRESETS = {
    "tiny": dict(hidden=(64,), pretrain_steps=150, finetune_steps=30, batch_size=25,
                 finetune_per_class=10, learning_rate=3e-3, eval_every=50, image_size=8,
                 dataset="digits", data_dir="", seed=0),
    "small": dict(hidden=(128, 64), pretrain_steps=600, finetune_steps=100, batch_size=25,
                  finetune_per_class=10, learning_rate=1e-3, eval_every=100, image_size=8,
                  dataset="digits", data_dir="", seed=0),
    # A GPU run on real MNIST: --set dataset=mnist --set data_dir=DIR (default: the
    # upsampled 28x28 digits). 10 pretraining epochs of the ~27k MNIST digits 0-4 at 64.
    "full": dict(hidden=(512, 256), pretrain_steps=4300, finetune_steps=500, batch_size=64,
                 finetune_per_class=100, learning_rate=1e-3, eval_every=430, image_size=28,
                 dataset="digits", data_dir="", seed=0),
}


def main(argv=None) -> dict:
  workdir, preset, config = cli.parse_args(argv, PRESETS, __doc__.split("\n\n")[0])
  start = time.time()
  splits = tasks.load_images(config, config["image_size"])
  old = tasks.task_splits(splits, tasks.OLD_CLASSES)
  new = tasks.task_splits(splits, tasks.NEW_CLASSES, config["finetune_per_class"])
  cli.check_batch_size("batch_size", config["batch_size"], old["train"],
                       "pretraining examples")
  cli.check_batch_size("batch_size", config["batch_size"], new["train"],
                       "fine-tuning examples (finetune_per_class x 5 classes)")
  sample = jnp.asarray(splits["train"]["image"][:1])
  tx = optax.inject_hyperparams(bt.adam)(learning_rate=config["learning_rate"])  # logged
  progress = preset != "tiny"
  seed = config["seed"]

  # 1. Pretrain on the old task; fit checkpoints into DIR/pretrain/checkpoints.
  old_model = models.MLP(hidden=config["hidden"], num_classes=len(tasks.OLD_CLASSES))
  pretrain = report.train_and_evaluate(
      "finetune_basic/pretrain", preset, old_model, train.init_params(old_model, sample, seed),
      tx, train.classification_loss(old_model), old,
      tasks.fit_config(config, config["pretrain_steps"], progress),
      os.path.join(workdir, "pretrain"))

  # 2-3. The new task: a new head on the pretrained backbone, read back from the checkpoint;
  # the new loss is its cross-entropy.
  new_model = models.MLP(hidden=config["hidden"], num_classes=len(tasks.NEW_CLASSES))
  fresh = train.init_params(new_model, sample, seed + 1)  # random backbone, new head
  pretrained = ft.load_pretrained(os.path.join(workdir, "pretrain"), fresh, skip=("head",))
  new_loss = train.classification_loss(new_model)

  # 4. Fine-tune from the pretrained backbone, and from scratch with the same budget.
  # (fit donates the state's buffers to its jitted step: each run gets its own copy.)
  runs = {}
  for name, params in (("finetune", pretrained), ("scratch", fresh)):
    params = jax.tree.map(jnp.copy, params)
    runs[name] = report.train_and_evaluate(
        f"finetune_basic/{name}", preset, new_model, params, tx, new_loss, new,
        tasks.fit_config(config, config["finetune_steps"], progress),
        os.path.join(workdir, name))

  finetune, scratch = runs["finetune"], runs["scratch"]
  summary = {
      "experiment": "finetune_basic", "preset": preset, "steps": finetune["steps"],
      "final_train_loss": finetune["final_train_loss"], "test_loss": finetune["test_loss"],
      "test_accuracy": finetune["test_accuracy"],
      "pretrain_test_accuracy": pretrain["test_accuracy"],
      "scratch_test_accuracy": scratch["test_accuracy"],
      "scratch_test_loss": scratch["test_loss"],
      "pretrain_steps": pretrain["steps"], "finetune_train_examples": len(new["train"]),
      "resumed_from": finetune["resumed_from"], "config": config,
  }
  return report.finish(workdir, summary, start)


if __name__ == "__main__":
  cli.run(main)
