"""Seed 003 §6.4 and seed 004 §3.2.3-3.2.4: fighting overfitting with L1, L2 and dropout,
and the choice of activation (ReLU, sigmoid, tanh).

Seed 003 §6.4 ("如何避免过拟合？", how to avoid overfitting) defines overfitting as a model
doing well on its training data and worse on new data, and lists four remedies: (1) a
smaller model, (2) L1 or L2 regularization "to limit the parameters' values", (3) dropout,
and (4) more training data. Seed 004 §3.2.3 (正则化) describes regularization as a penalty
added to the loss, naming L1 and L2; §3.2.4 (激活函数) names ReLU, sigmoid and tanh and says
that their effect on a model differs and must be chosen case by case. Neither section has
code; this experiment measures the claims.

Setup: ``bt.models.MLP`` (two hidden layers of 256 in the small preset) trained with
heavy-ball momentum, ``bt.momentum(0.03, gamma=0.9)``, on the bundled 8x8 digits, one run
per variant, all from the same initial parameters and seeing the same batches:

=================  ===========  =====================================================
variant            activation   regularizer
=================  ===========  =====================================================
``relu``           ReLU         none (the baseline)
``relu+l1``        ReLU         ``optax.chain(bt.l1(1e-3), ...)``: g + lambda sign(w)
``relu+l2``        ReLU         ``optax.chain(bt.l2(1e-2), ...)``: g + lambda w
``relu+dropout``   ReLU         ``MLP(dropout_rate=0.5)`` after each hidden layer
``sigmoid``        sigmoid      none
``tanh``           tanh         none
=================  ===========  =====================================================

L1 and L2 act on every parameter (biases too, as ``torch.optim.SGD(weight_decay=...)``
does); they are the gradients of lambda ||w||_1 and (lambda / 2) ||w||_2^2 added to the loss.

**Making overfitting visible.** The digits are easy: trained on clean labels, even 63
training images and a 1024-1024 MLP reach about 0.88 test accuracy, and in our runs L1,
L2 and dropout did not improve on that (they cost 0-5 points): there was little
overfitting to fix. So the training set is made into one that invites memorizing: a
stratified 30% subset of the training split (377 images) in which 30% of the labels are
replaced by a different, random class (``label_noise``; the validation and test labels
stay clean). A wide network trained long enough memorizes the wrong labels (train
accuracy 1.0, measured against the labels it was given) and its test accuracy falls; a
regularized one cannot memorize them, fits about the 70% of true labels, and generalizes
better. This is the random-label setting of Zhang et al., "Understanding deep learning
requires rethinking generalization" (ICLR 2017). ``--set label_noise=0 --set
train_fraction=1`` gives the clean, full-data case.

Reported per variant (``summary.json`` ``results``, a printed table and
``regularization.png``): ``train_accuracy`` (on the labels trained on, noisy included),
``train_clean_accuracy`` (the same images with their true labels), ``test_accuracy``,
``gap`` = train_accuracy - test_accuracy, and ``test_loss``. With label noise, a model that
ignores the noise scores about 0.7 on its own (noisy) training labels and more on the clean
test set, so a *negative* gap is what successful regularization looks like here; a gap near
1 - test_accuracy means memorization. The top-level ``test_loss`` / ``test_accuracy`` /
``final_train_loss`` are the baseline's (``relu``). Each variant trains with
``bt.train.fit`` in ``WORKDIR/variants/NAME`` (checkpoints, ``metrics.jsonl``, its own
plots) and resumes from there.

Seed bugs and inaccuracies fixed or corrected here:

* Seed 003 §6.4 says dropout "randomly drops the model's *inputs*" (随机丢弃模型输入). Dropout
  (Srivastava et al., 2014) zeroes hidden units (and optionally inputs) with probability p
  during training, scaling the survivors by 1 / (1 - p), and is off at evaluation; here it
  follows each hidden activation.
* Seed 004 §3.2.3 calls L1 and L2 "penalty terms added to the loss"; with adaptive
  optimizers that differs from weight decay (AdamW), so the penalties are applied as
  gradient terms before plain momentum SGD, where both readings coincide.

  python -m experiments.regularization --workdir runs/regularization [--preset small|full|tiny]
"""

import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

import bigtune_jax as bt
from bigtune_jax import models
from bigtune_jax import train
from bigtune_jax.train.metrics import png_figure
from experiments import cli
from experiments import report
from experiments import tasks

# name -> (activation, regularizer); "relu" is the unregularized baseline.
VARIANTS = {
    "relu": ("relu", "none"),
    "relu+l1": ("relu", "l1"),
    "relu+l2": ("relu", "l2"),
    "relu+dropout": ("relu", "dropout"),
    "sigmoid": ("sigmoid", "none"),
    "tanh": ("tanh", "none"),
}
BASELINE = "relu"

_COMMON = dict(batch_size=32, learning_rate=0.03, momentum=0.9, l1=1e-3, l2=1e-2, dropout=0.5,
               train_fraction=0.3, label_noise=0.3, image_size=8, variants=tuple(VARIANTS),
               seed=0)
PRESETS = {
    "tiny": dict(_COMMON, steps=30, hidden=(32,), eval_every=15),
    # 377 noisy training images // 32 = 11 steps an epoch: 600 steps ~ 55 epochs, enough for
    # the unregularized ReLU net to memorize every wrong label.
    "small": dict(_COMMON, steps=600, hidden=(256, 256), eval_every=75),
    # Wider and longer, for an accelerator; the same data.
    "full": dict(_COMMON, steps=5000, hidden=(2048, 2048), eval_every=250),
}


def check_config(config) -> None:
  """Raises one ValueError naming the field, before any work or write."""
  unknown = [v for v in config["variants"] if v not in VARIANTS]
  if unknown or not config["variants"]:
    raise ValueError(f"variants: unknown or empty {unknown or config['variants']!r}; "
                     f"choose among {list(VARIANTS)}")


def optimizer(config, regularizer: str) -> optax.GradientTransformation:
  tx = optax.inject_hyperparams(bt.momentum)(  # the rate in the state: fit logs it
      learning_rate=config["learning_rate"], gamma=config["momentum"])
  if regularizer == "l1":
    return optax.chain(bt.l1(config["l1"]), tx)
  if regularizer == "l2":
    return optax.chain(bt.l2(config["l2"]), tx)
  return tx


def run_variant(name: str, config, splits, params, fit_config: train.FitConfig, workdir: str):
  """Trains one variant from ``params`` in ``workdir/variants/name``; returns its results
  row and history."""
  activation, regularizer = VARIANTS[name]
  model = models.MLP(hidden=config["hidden"], num_classes=10, activation=activation,
                     dropout_rate=config["dropout"] if regularizer == "dropout" else 0.0)
  loss_fn = train.classification_loss(model)
  params = jax.tree.map(jnp.copy, params)  # fit donates the state's buffers; keep the shared ones
  state = train.create_train_state(model, params, optimizer(config, regularizer),
                                   seed=config["seed"])
  result = train.fit(state, loss_fn, splits["train"], splits["validation"], config=fit_config,
                     workdir=os.path.join(workdir, "variants", name))
  scores = {split: train.evaluate(loss_fn, result.state.params, splits[split],
                                  fit_config.eval_batch_size)
            for split in ("train", "train_clean", "test")}
  row = {
      "activation": activation, "regularizer": regularizer,
      "train_accuracy": scores["train"]["accuracy"],
      "train_clean_accuracy": scores["train_clean"]["accuracy"],
      "test_accuracy": scores["test"]["accuracy"],
      "gap": scores["train"]["accuracy"] - scores["test"]["accuracy"],
      "test_loss": scores["test"]["loss"],
      "final_train_loss": result.history[-1]["train_loss"] if result.history else None,
      "steps": int(result.state.step), "skipped_steps": int(result.state.skipped_steps),
      "resumed_from": result.resumed_from,
  }
  return row, result.history


def plot(results, histories, path: str) -> None:
  """Train vs test accuracy per variant (bars), and validation accuracy against the step."""
  with png_figure(path, size=(11, 4.2), layout="constrained") as fig:
    bars, curves = fig.subplots(1, 2)
    names = list(results)
    x = np.arange(len(names))
    for offset, key, label in ((-0.2, "train_accuracy", "train (labels trained on)"),
                               (0.2, "test_accuracy", "test")):
      bars.bar(x + offset, [results[n][key] for n in names], width=0.4, label=label)
    bars.set_xticks(x, names, rotation=20)
    bars.set_ylim(0, 1.15)
    bars.set_ylabel("accuracy")
    bars.set_title("train vs test accuracy")
    bars.legend(loc="upper center", ncols=2)
    for name in names:
      rows = [r for r in histories[name] if "val_accuracy" in r]
      curves.plot([r["step"] for r in rows], [r["val_accuracy"] for r in rows], marker="o",
                  markersize=3, label=name)
    curves.set_xlabel("step")
    curves.set_ylabel("validation accuracy (clean labels)")
    curves.set_title("validation accuracy while training")
    curves.grid(True, alpha=0.3)
    curves.legend()


def print_table(results) -> None:
  print(f"{'variant':<14}{'train':>8}{'train*':>8}{'test':>8}{'gap':>8}{'test loss':>11}")
  for name, r in results.items():
    print(f"{name:<14}{r['train_accuracy']:>8.3f}{r['train_clean_accuracy']:>8.3f}"
          f"{r['test_accuracy']:>8.3f}{r['gap']:>+8.3f}{r['test_loss']:>11.4f}")
  print("train: accuracy on the (noisy) labels trained on; train*: on their true labels")


def main(argv=None) -> dict:
  workdir, preset, config = cli.parse_args(argv, PRESETS, __doc__.split("\n\n")[0])
  check_config(config)
  start = time.time()
  splits = tasks.noisy_digits(config)
  fit_config = train.FitConfig(steps=config["steps"], batch_size=config["batch_size"],
                               eval_every=config["eval_every"], seed=config["seed"],
                               eval_batch_size=128,  # one shape for every split: one compile
                               progress=False)
  # Activation and dropout leave the parameter shapes and their initializers alone, so every
  # variant starts from the very same parameters (and one init is compiled, not six).
  params = train.init_params(models.MLP(hidden=config["hidden"], num_classes=10),
                             jnp.asarray(splits["train"]["image"][:1]), config["seed"])
  results, histories = {}, {}
  for name in config["variants"]:
    results[name], histories[name] = run_variant(name, config, splits, params, fit_config,
                                                 workdir)
  plot(results, histories, os.path.join(workdir, "regularization.png"))
  baseline = BASELINE if BASELINE in results else next(iter(results))
  base = results[baseline]
  summary = {
      "experiment": "regularization", "preset": preset, "steps": base["steps"],
      "baseline": baseline, "final_train_loss": base["final_train_loss"],
      "test_loss": base["test_loss"], "test_accuracy": base["test_accuracy"],
      "resumed_from": base["resumed_from"], "train_examples": len(splits["train"]),
      **report.run_facts(start), "results": results, "config": config,
  }
  report.write_summary(workdir, summary)
  print_table(results)
  return summary


if __name__ == "__main__":
  cli.run(main)
