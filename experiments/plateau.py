"""Seed 004 §4.3: reduce the learning rate on a plateau (ReduceLROnPlateau, factor 0.1,
patience 5), against the same training at a fixed rate.

The seed's §4.3 snippet trains its VGG16 (the network of §4.2) with ``optim.SGD(lr=0.01)``
and ``ReduceLROnPlateau(optimizer, mode="min", factor=0.1, patience=5)`` on CIFAR-10 for 10
epochs, calling ``scheduler.step(loss)`` after every mini-batch. Here the rule is
``bt.reduce_on_plateau(factor=0.1, patience=5)``, an optax transform whose scale follows
PyTorch's decision rule exactly (``tests/transforms/test_vs_torch.py`` checks it against
``torch.optim.lr_scheduler.ReduceLROnPlateau`` on random metric sequences), chained after
the SGD: ``optax.chain(sgd, bt.reduce_on_plateau(...))``. ``bt.train.fit`` hands it the
validation loss of every evaluation (``value=``), and its scale multiplies the updates.

Two runs from the same initial parameters over the same batches: ``fixed`` (SGD at the
constant rate) and ``plateau`` (the same SGD, scaled by the plateau rule). ``summary.json``
reports both runs' test loss and accuracy, the evaluations at which the rate was cut
(``reductions``: ``[{step, learning_rate}]``) and the rate at the end; ``plateau.png``
plots both validation losses and the rate. The top-level ``test_loss`` / ``test_accuracy``
/ ``final_train_loss`` are the plateau run's.

Bugs of the seed's snippet, fixed here:

* **The scheduler is stepped on each mini-batch's training loss.** ``patience=5`` then
  means five *batches*: any five noisy batch losses in a row that fail to beat the best one
  cut the rate tenfold, and over CIFAR-10's 782 batches per epoch the rate collapses to ~0
  long before a real plateau. The rule is meant for a validation metric, stepped once per
  evaluation (PyTorch's own documentation steps it with ``val_loss`` once per epoch); here
  it is fed the validation loss at each evaluation (``eval_every`` steps).
* ``verbose=True`` is deprecated since PyTorch 2.2 (and removed later); the rate is
  logged here in ``metrics.jsonl`` (``lr``, read by ``fit`` from the optimizer state of
  ``optax.inject_hyperparams(bt.sgd)``) and on the progress bar.
* The model is never moved to the GPU while the batches are (``data.cuda()``), and
  ``datasets.CIFAR10(download=True)`` needs the network: nothing is downloaded here — the
  default data is the bundled digits (upsampled to 32x32 for VGG's five pools); ``--set
  dataset=cifar10 --set data_dir=DIR`` reads CIFAR-10 files.

**Sizes.** ``full`` is the seed's VGG16 and rate on CIFAR-10, evaluated once per epoch.
``small`` must reach a plateau within a minute of a 2-core CPU, which plain SGD at 0.01 on
a VGG does not (it barely moves in a few hundred steps, see ``grad_accum``); it therefore
trains the seed's other CNN (``SimpleCNN`` of seed 000 §4.2, 28x28 view) at rate 0.1,
evaluating every 19 steps (one epoch of 1,258 images at batch 64), for 40 epochs — long
enough for the validation loss to stop improving, and for the rule to act. ``--set
model=vgg16`` trains the CPU-sized VGG16 of ``grad_accum`` (``tasks.vgg16``) instead.

  python -m experiments.plateau --workdir runs/plateau [--preset small|full|tiny]
"""

import os
import time

import jax
import jax.numpy as jnp
import optax

import bigtune_jax as bt
from bigtune_jax import models
from bigtune_jax import train
from bigtune_jax.train.metrics import png_figure
from experiments import cli
from experiments import report
from experiments import tasks

_RULE = dict(factor=0.1, patience=5, threshold=1e-4, cooldown=0)
PRESETS = {
    "tiny": dict(model="cnn", steps=40, batch_size=32, learning_rate=0.1, eval_every=4,
                 patience=1, width=0.0625, classifier_width=16, dataset="digits",
                 data_dir="", seed=0),
    "small": dict(model="cnn", steps=760, batch_size=64, learning_rate=0.1, eval_every=19,
                  patience=5, width=0.125, classifier_width=64, dataset="digits",
                  data_dir="", seed=0),
    # The seed: VGG16, SGD 0.01, 10 epochs of CIFAR-10's 45,000 training images at 64.
    "full": dict(model="vgg16", steps=7030, batch_size=64, learning_rate=0.01, eval_every=703,
                 patience=5, width=1.0, classifier_width=4096, dataset="cifar10",
                 data_dir="", seed=0),
}


# Settings of this experiment only (cli.RULES checks the shared ones).
CHECKS = {"model": cli.one_of("cnn", "vgg16")}


def build(config, splits):
  """``(model, params)`` for the configured ``model``."""
  if config["model"] == "vgg16":
    return tasks.vgg16(dict(config, dropout_rate=0.0), splits["train"]["image"][:1])
  if config["model"] == "cnn":
    model = models.SimpleCNN(num_classes=10)
    return model, train.init_params(model, jnp.asarray(splits["train"]["image"][:1]),
                                    config["seed"])
  raise ValueError(f"--set model={config['model']!r}: expected 'cnn' or 'vgg16'")


def plot(path, runs) -> None:
  with png_figure(path, size=(10, 4), dpi=120) as figure:
    loss_axis, lr_axis = figure.subplots(1, 2)
    for name, history in runs.items():
      steps = [row["step"] for row in history]
      loss_axis.plot(steps, [row["val_loss"] for row in history], marker=".", label=name)
      lr_axis.plot(steps, [row["lr"] for row in history], marker=".", label=name)
    loss_axis.set(xlabel="step", ylabel="validation loss", title="validation loss")
    lr_axis.set(xlabel="step", ylabel="learning rate", yscale="log", title="learning rate")
    for axis in (loss_axis, lr_axis):
      axis.grid(alpha=0.3)
      axis.legend()
    figure.tight_layout()


def main(argv=None) -> dict:
  workdir, preset, config = cli.parse_args(argv, PRESETS, __doc__.split("\n\n")[0],
                                           checks=CHECKS)
  start = time.time()
  image_size = 32 if config["model"] == "vgg16" else 28
  splits = tasks.load_images(config, image_size=image_size)
  model, params = build(config, splits)
  loss_fn = train.classification_loss(model)
  fit_config = train.FitConfig(steps=config["steps"], batch_size=config["batch_size"],
                               eval_every=config["eval_every"], seed=config["seed"],
                               progress=preset != "tiny")
  rule = dict(_RULE, patience=config["patience"])
  sgd = optax.inject_hyperparams(bt.sgd)(learning_rate=config["learning_rate"])  # rate logged
  runs = {}
  for name, tx in (("fixed", sgd), ("plateau", optax.chain(sgd, bt.reduce_on_plateau(**rule)))):
    runs[name] = report.train_and_evaluate(
        f"plateau/{name}", preset, model, jax.tree.map(jnp.copy, params), tx, loss_fn, splits,
        fit_config, os.path.join(workdir, name))
  histories = {name: train.MetricsLog(os.path.join(workdir, name, "metrics.jsonl")).rows()
               for name in runs}
  histories = {name: [row for row in rows if "val_loss" in row]
               for name, rows in histories.items()}
  reductions, previous = [], config["learning_rate"]
  for row in histories["plateau"]:
    if row["lr"] < previous * (1 - 1e-6):
      reductions.append({"step": row["step"], "learning_rate": row["lr"]})
    previous = row["lr"]
  plot(os.path.join(workdir, "plateau.png"), histories)
  fixed, cut = runs["fixed"], runs["plateau"]
  summary = {
      "experiment": "plateau", "preset": preset, "steps": cut["steps"],
      "final_train_loss": cut["final_train_loss"], "test_loss": cut["test_loss"],
      "test_accuracy": cut["test_accuracy"], "rule": rule, "reductions": reductions,
      "final_learning_rate": histories["plateau"][-1]["lr"],
      "fixed": {key: fixed[key] for key in ("final_train_loss", "test_loss", "test_accuracy",
                                            "val_loss")},
      "resumed_from": cut["resumed_from"], "config": config,
  }
  return report.finish(workdir, summary, start)


if __name__ == "__main__":
  cli.run(main)
