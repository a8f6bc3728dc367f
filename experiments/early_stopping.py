"""Seed 000 §3.4: early stopping — watch the validation error and stop when it starts to rise.

Seed 000 §3.4 ("早停与学习率衰减") describes early stopping in one line: during training,
monitor the validation set's error and stop training when it begins to increase. It has no
code. Here the rule is ``bt.EarlyStopping(patience, min_delta, mode="min")`` on the
validation loss, fed by ``bt.train.fit`` at every evaluation: an evaluation *improves* when
the loss beats the best so far by more than ``min_delta``; after ``patience`` evaluations
in a row without improvement training stops, and the parameters of the best evaluation
(kept on the side by ``fit`` for ``EarlyStopping(restore_best=True)``) are restored.

"Stop when it begins to increase" taken literally (``patience=0``) stops at the first noisy
uptick; a patience of a few evaluations is the usual reading (Prechelt, "Early Stopping —
But When?", 1998) and the default here is 5 evaluations of one epoch each.

**Making the rise visible.** On the clean digits a small MLP's validation loss barely turns
up. The training data are therefore those of ``experiments.regularization``
(``tasks.noisy_digits``): a stratified 30% of the training split (377 images) with 30% of
the labels replaced by another class (validation and test stay clean). An unregularized MLP first learns the true pattern —
the validation loss falls — then memorizes the wrong labels, and the validation loss rises:
the setting early stopping is for.

Two runs from the same initial parameters over the same batches: ``full`` trains all
``steps``; ``early`` stops by the rule and restores its best parameters. ``summary.json``
reports, for ``early``: ``stopped_at`` (step), ``best_step``, ``best_val_loss``,
``test_loss`` and ``test_accuracy`` of the restored parameters; for ``full``: its final
validation and test metrics, and the steps saved (``steps_saved``). ``early_stopping.png``
plots both validation-loss curves with the stop and the best step marked.

  python -m experiments.early_stopping --workdir runs/early_stopping [--preset small|full|tiny]
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

_DATA = dict(train_fraction=0.3, label_noise=0.3, image_size=8, seed=0)
PRESETS = {
    "tiny": dict(_DATA, steps=60, batch_size=32, hidden=(32,), learning_rate=0.03,
                 momentum=0.9, eval_every=6, patience=1, min_delta=0.0),
    # 377 images // 32 = 11 steps an epoch; evaluated every epoch; at most ~55 epochs.
    "small": dict(_DATA, steps=600, batch_size=32, hidden=(256, 256), learning_rate=0.03,
                  momentum=0.9, eval_every=11, patience=5, min_delta=0.0),
    "full": dict(_DATA, steps=5000, batch_size=32, hidden=(2048, 2048), learning_rate=0.03,
                 momentum=0.9, eval_every=11, patience=10, min_delta=0.0),
}


def plot(path, histories, stopped_at, best_step) -> None:
  with png_figure(path, size=(7, 4), dpi=120) as figure:
    axis = figure.subplots()
    for name, history in histories.items():
      axis.plot([r["step"] for r in history], [r["val_loss"] for r in history], marker=".",
                label=f"{name}: validation loss")
    axis.axvline(best_step, color="green", linestyle="--", label=f"best (step {best_step})")
    axis.axvline(stopped_at, color="red", linestyle=":", label=f"stopped (step {stopped_at})")
    axis.set(xlabel="step", ylabel="validation loss", title="early stopping")
    axis.grid(alpha=0.3)
    axis.legend()
    figure.tight_layout()


def best_evaluation(state: train.TrainState) -> dict:
  """The index of the evaluation that the stopper kept as the best (what it restored): not
  simply the lowest loss, which with ``min_delta > 0`` may not count as an improvement."""
  return {"best_evaluation": int(state.early_stopping.best_step)}


def main(argv=None) -> dict:
  workdir, preset, config = cli.parse_args(argv, PRESETS, __doc__.split("\n\n")[0])
  start = time.time()
  stopper = bt.EarlyStopping(patience=config["patience"], min_delta=config["min_delta"],
                             restore_best=True)
  splits = tasks.noisy_digits(config)
  splits = {name: splits[name] for name in ("train", "validation", "test")}
  model = models.MLP(hidden=config["hidden"], num_classes=10)
  params = train.init_params(model, jnp.asarray(splits["train"]["image"][:1]), config["seed"])
  tx = optax.inject_hyperparams(bt.momentum)(learning_rate=config["learning_rate"],
                                             gamma=config["momentum"])  # fit logs the rate
  fit_config = train.FitConfig(steps=config["steps"], batch_size=config["batch_size"],
                               eval_every=config["eval_every"], seed=config["seed"],
                               progress=preset != "tiny")
  loss_fn = train.classification_loss(model)
  runs = {}
  for name, rule in (("full", None), ("early", stopper)):
    runs[name] = report.train_and_evaluate(
        f"early_stopping/{name}", preset, model, jax.tree.map(jnp.copy, params), tx, loss_fn,
        splits, fit_config, os.path.join(workdir, name), early_stopping=rule,
        report=None if rule is None else best_evaluation)
  histories = {name: [row for row in
                      train.MetricsLog(os.path.join(workdir, name, "metrics.jsonl")).rows()
                      if "val_loss" in row] for name in runs}
  early, full = runs["early"], runs["full"]
  best = histories["early"][early["best_evaluation"]]  # the evaluation whose params were kept
  stopped_at = histories["early"][-1]["step"]
  plot(os.path.join(workdir, "early_stopping.png"), histories, stopped_at, best["step"])
  summary = {
      "experiment": "early_stopping", "preset": preset, "steps": early["steps"],
      "final_train_loss": early["final_train_loss"], "test_loss": early["test_loss"],
      "test_accuracy": early["test_accuracy"], "stopped_early": early["stopped_early"],
      "stopped_at": stopped_at, "best_step": best["step"], "best_val_loss": best["val_loss"],
      "steps_saved": full["steps"] - early["steps"],
      "full": {"steps": full["steps"], "val_loss": full["val_loss"],
               "test_loss": full["test_loss"], "test_accuracy": full["test_accuracy"],
               "min_val_loss": min(row["val_loss"] for row in histories["full"])},
      "resumed_from": early["resumed_from"], "config": config,
  }
  return report.finish(workdir, summary, start)


if __name__ == "__main__":
  cli.run(main)
