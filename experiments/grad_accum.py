"""Seed 004 §4.2: gradient accumulation, shown equal to a 4x larger batch (VGG16, SGD 0.01).

The seed (§2.3, §3.1.3): "gradient accumulation adds up the gradients of several small
batches and then makes one update; this saves memory, so that a larger batch can be used".
Its §4.2 snippet builds VGG16 for CIFAR-10 as an ``nn.Sequential``, takes
``optim.SGD(lr=0.01)``, batches of 64, ``accumulation_steps = 4``, and trains 10 epochs::

  for batch_idx, (data, target) in enumerate(train_loader):
      if batch_idx % accumulation_steps == 0:
          optimizer.zero_grad()
      data, target = data.cuda(), target.cuda()
      output = model(data)
      loss = criterion(output, target)
      loss.backward()
      if (batch_idx + 1) % accumulation_steps == 0:
          optimizer.step()
          print(..., loss.item() / accumulation_steps)

Here the same technique is ``bt.accumulate(bt.sgd(0.01), 4)`` (``optax.MultiSteps``): every
call of the engine's train step is one micro-batch of ``micro_batch`` examples, and every
4th call updates the parameters with the mean of the 4 gradients. The experiment trains
the same initial parameters twice through ``bt.train.fit``, over the same examples in the
same order: (a) accumulated, micro-batches of B; (b) plain ``bt.sgd(0.01)`` on batches of
4B. Micro-steps 4u..4u+3 of (a) see exactly the rows of step u of (b), and the mean of 4
equal-sized micro-batch mean gradients is the mean gradient of their union, so after the
same number of updates the two parameter sets differ only by float32 rounding:
``summary.json`` reports ``max_param_diff_vs_4x_batch`` (max |w_a - w_b| over all
parameters) beside the parameters' scale (``max_abs_param``) and how far training moved
them (``max_param_change``), so that a tiny difference is not a vacuous one.

Bugs of the seed's snippet, fixed here:

1. **The loss is not divided by ``accumulation_steps`` before ``backward()``.** PyTorch adds
   gradients into ``.grad``, so each step uses the *sum* of 4 micro-batch gradients: 4x the
   gradient of the 4x batch, i.e. an effective learning rate of 0.04, not the claimed
   equivalence. The division appears only in the ``print``. Here the optimizer receives the
   mean of the micro-batch gradients (``optax.MultiSteps`` averages).
2. **The printed loss is meaningless**: ``loss.item() / accumulation_steps`` is the last
   micro-batch's loss divided by 4. The engine logs the mean loss over the micro-batches.
3. **The model is never moved to the GPU** (no ``model.cuda()``) while every batch is
   (``data.cuda()``): the first forward pass fails with a device mismatch. JAX places
   parameters and batches on the same device.
4. **Epoch ends break the windows**: 50,000 / 64 gives 782 batches (the last of 16
   examples), and 782 % 4 = 2, so the gradients of the last 2 micro-batches of every epoch
   are computed and then thrown away by the next epoch's ``zero_grad()`` at batch 0 (had
   they been kept, a 16-example batch would have weighed as much as a 64-example one). Here
   every batch has the same size (``fit`` drops the remainder), and the training split is
   trimmed to a multiple of 4B examples (1,258 -> 1,216 digits in the small preset) so that
   an epoch is a whole number of windows and both runs start each epoch together.
5. Not a bug but a difference: the seed's classifier ends 4096 -> 1000 -> ReLU -> Dropout
   -> 10, an ImageNet head with a 10-class layer bolted on; ``models.VGG16`` goes straight to
   ``num_classes``, as the paper and torchvision do.

**Dropout.** The seed's VGG16 has dropout 0.5. The engine draws the dropout key of step t as
``fold_in(rng, t)``: micro-step 4u+j of (a) masks its B rows with one key, step u of (b)
masks the same 4B rows with another, so with dropout the two runs see different masks and
agree only in expectation. Every preset therefore sets ``dropout_rate=0`` (the equality is
about accumulation, not about noise); ``--set dropout_rate=0.5`` runs the seed's network,
and the reported difference then measures the different masks, not rounding.

**Sizes.** ``small`` is a CPU-sized VGG16 of the same shape (every conv at 1/8 of its
channels, classifier width 64) on the bundled digits upsampled to 32 x 32 (VGG's five
2x2 pools need a multiple of 32; 28 x 28 would leave nothing after the fifth), micro-batch
16 (4 x 16 = 64 per update). ``full`` is the seed's network and sizes on CIFAR-10 (pass
``--set data_dir=DIR`` with its files; nothing is downloaded). The two hidden dense layers
and the head are re-drawn He-normal (``he_classifier``): ``models.VGG16`` draws them from
torchvision's N(0, 0.01), sized for 25,088 -> 4,096 -> 4,096; at the small preset's width it
scales the logits by about 1e-4 and the network does not train at all (measured: validation
loss 2.3025 = ln 10 after 400 SGD steps).

  python -m experiments.grad_accum --workdir runs/grad_accum [--preset small|full|tiny]

writes ``accumulated/`` and ``large_batch/`` (each a ``fit`` workdir: checkpoints,
metrics.jsonl, plots; running again resumes both) and ``summary.json``.
"""

import os
import time

import jax
import numpy as np
import optax

import bigtune_jax as bt
from bigtune_jax import data
from bigtune_jax import models
from bigtune_jax import train
from experiments import cli
from experiments import report
from experiments import tasks

PRESETS = {
    "tiny": dict(updates=3, micro_batch=8, accumulation=4, learning_rate=0.01, width=0.0625,
                 classifier_width=16, dropout_rate=0.0, eval_every=None, dataset="digits",
                 data_dir="", seed=0),
    "small": dict(updates=60, micro_batch=16, accumulation=4, learning_rate=0.01, width=0.125,
                  classifier_width=64, dropout_rate=0.0, eval_every=None, dataset="digits",
                  data_dir="", seed=0),
    # 10 epochs of CIFAR-10's 45,000 training images (after 10% validation), trimmed to
    # 44,800 = 175 updates x 4 micro-batches x 64: 1,750 updates of 256 examples.
    "full": dict(updates=1750, micro_batch=64, accumulation=4, learning_rate=0.01, width=1.0,
                 classifier_width=4096, dropout_rate=0.0, eval_every=None, dataset="cifar10",
                 data_dir="", seed=0),
}


def whole_windows(dataset: data.ArrayDataset, examples_per_update: int) -> data.ArrayDataset:
  """The first ``n - n % examples_per_update`` examples: every epoch is whole windows."""
  keep = len(dataset) // examples_per_update * examples_per_update
  if keep == 0:
    raise ValueError(f"micro_batch x accumulation = {examples_per_update} exceeds the "
                     f"training split ({len(dataset)} examples)")
  return data.ArrayDataset({name: array[:keep] for name, array in dataset.arrays.items()})


def _train(model, params, tx, loss_fn, splits, fit_config, workdir):
  """``fit`` from ``params`` (fit trains a copy: they stay usable), then the test metrics."""
  state = train.create_train_state(model, params, tx, seed=fit_config.seed)
  result = train.fit(state, loss_fn, splits["train"], splits["validation"],
                     config=fit_config, workdir=workdir)
  test = train.evaluate(loss_fn, result.state.params, splits["test"],
                        fit_config.eval_batch_size)
  return result, test


def max_abs(tree) -> float:
  """The largest |entry| of ``tree``, on the host (NumPy: no per-shape compile)."""
  return max(float(np.max(np.abs(x))) for x in jax.tree.leaves(jax.device_get(tree)))


def max_abs_diff(a, b) -> float:
  return max_abs(jax.tree.map(np.subtract, jax.device_get(a), jax.device_get(b)))


def main(argv=None) -> dict:
  workdir, preset, config = cli.parse_args(argv, PRESETS, __doc__.split("\n\n")[0])
  start = time.time()
  k, micro = config["accumulation"], config["micro_batch"]
  splits = tasks.load_images(config, image_size=32)
  splits["train"] = whole_windows(splits["train"], k * micro)
  model, params = tasks.vgg16(config, splits["train"]["image"][:1])
  loss_fn = train.classification_loss(model)
  initial = jax.device_get(params)
  progress = preset != "tiny"
  runs = {}
  sgd = optax.inject_hyperparams(bt.sgd)(learning_rate=config["learning_rate"])  # rate logged
  for name, tx, batch, per_update in (("accumulated", bt.accumulate(sgd, k), micro, k),
                                      ("large_batch", sgd, k * micro, 1)):
    every = config["eval_every"]  # updates between evaluations; None: once per epoch
    fit_config = train.FitConfig(steps=config["updates"] * per_update, batch_size=batch,
                                 eval_every=every and every * per_update,
                                 eval_batch_size=256, seed=config["seed"], progress=progress)
    runs[name] = _train(model, params, tx, loss_fn, splits, fit_config,
                        os.path.join(workdir, name))

  (acc, acc_test), (big, big_test) = runs["accumulated"], runs["large_batch"]
  train_loss_gap = max(abs(a["train_loss"] - b["train_loss"])
                       for a, b in zip(acc.history, big.history))
  summary = {
      "experiment": "grad_accum", "preset": preset,
      "steps": int(acc.state.step), "updates": config["updates"],
      "examples_per_update": k * micro, "train_examples": len(splits["train"]),
      "final_train_loss": acc.history[-1]["train_loss"], "test_loss": acc_test["loss"],
      "test_accuracy": acc_test["accuracy"], "val_loss": acc.history[-1]["val_loss"],
      "max_param_diff_vs_4x_batch": max_abs_diff(acc.state.params, big.state.params),
      "max_abs_param": max_abs(acc.state.params),
      "max_param_change": max_abs_diff(big.state.params, initial),
      "max_train_loss_diff_vs_4x_batch": train_loss_gap,
      "large_batch": {"steps": int(big.state.step),
                      "final_train_loss": big.history[-1]["train_loss"],
                      "test_loss": big_test["loss"], "test_accuracy": big_test["accuracy"]},
      "params": models.count_params(params), "config": config,
  }
  return report.finish(workdir, summary, start, hide=())


if __name__ == "__main__":
  cli.run(main)
