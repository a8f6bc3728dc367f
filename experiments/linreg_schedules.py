"""Seed 002 §4.2-4.3 (with §3.2): fixed vs exponential vs step-decay learning rates.

  python -m experiments.linreg_schedules --workdir runs/linreg_schedules [--preset small|full|tiny]

§3.2 lists three strategies: a fixed rate, exponential decay and step decay. §4.2 and §4.3
train §4.1's ``theta`` with ``optim.SGD(lr=0.1)`` for 1000 iterations, calling
``optimizer.lr_step()`` after every iteration (§4.2, exponential) or when
``i % 100 == 0`` (§4.3, step). Here each schedule trains ``models.LinearRegression`` on
the seed's toy (``y = 2 x + 0.1 eps``, see ``linreg_sgd``) through the engine, in its own
workdir ``DIR/fixed``, ``DIR/exponential``, ``DIR/step``, from the same initialization
and on the same mini-batches:

==============  =======================================  ==============================
run             schedule (step t -> lr, t from 0)         PyTorch equivalent
==============  =======================================  ==============================
``fixed``       ``bt.constant(0.1)``                      ``SGD(lr=0.1)``
``exponential`` ``bt.exponential_decay(0.1, 0.995)``      ``ExponentialLR(gamma=0.995)``,
                ``= 0.1 * 0.995**t``                      ``.step()`` every iteration
``step``        ``bt.step_decay(0.1, 100, 0.1)``          ``StepLR(step_size=100,
                ``= 0.1 * 0.1**(t // 100)``               gamma=0.1)``, every iteration
==============  =======================================  ==============================

Mini-batches of 10 (of the 70 training examples) make the gradient noisy, which is what a
decaying rate is for: with a fixed rate SGD keeps jittering around the least-squares fit,
a decayed rate lets it settle. On this convex toy all three reach the noise floor
(``0.1**2``) within about 50 steps, before either decay has done much; the difference is
the last digits: the decayed runs end on the least-squares slope, the fixed rate a little
off it, with a slightly higher validation loss.

``schedules.png`` shows each run's training loss (mean over the steps since the previous
evaluation), validation loss and learning rate against the step; ``summary.json`` has one
``results`` entry per schedule. Its top-level keys
(``final_train_loss``, ``test_loss``, ``theta``, ...) are those of the schedule with the
lowest final **validation** loss, named by ``selected`` (chosen on validation, not test).

Bugs in the seed fixed here:

* ``optim.SGD(params=[theta], lr=0.1, lr_scheduler='exponential_lr')`` (and
  ``lr_scheduler='step'``) raises ``TypeError: SGD.__init__() got an unexpected keyword
  argument 'lr_scheduler'``, and optimizers have no ``lr_step()`` method. A schedule is a
  separate object (``torch.optim.lr_scheduler.ExponentialLR`` / ``StepLR`` and
  ``scheduler.step()``); here it is a function ``step -> lr`` given to ``bt.sgd``.
* Neither snippet gives a decay factor. We chose ``gamma = 0.995`` for the exponential
  decay (the rate falls about 150-fold over the 1000 steps instead of vanishing after a
  few hundred) and StepLR's default ``gamma = 0.1`` for the step decay.
* §4.3's ``if i % 100 == 0: optimizer.lr_step()`` is true at ``i = 0``, so the first decay
  happens after the very first step and then at 101, 201, ...; the intended step decay
  (``StepLR(step_size=100)``) decays after steps 100, 200, ... as ``bt.step_decay`` does.
* ``theta``, ``x``, ``y`` and ``loss_fn`` are not defined in §4.2-4.3 (they come from §4.1).

The ``tiny`` preset shrinks the seed's 1000 steps five times and its decays with them
(``gamma = 0.995**5 ~ 0.975``, ``step_size = 20``).
"""

import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

import bigtune_jax as bt
from bigtune_jax import data
from bigtune_jax import train
from bigtune_jax.train.metrics import png_figure
from experiments import cli
from experiments import report
from experiments import tasks

PRESETS = {
    # An evaluation every 10 steps draws the curves; a checkpoint (an Orbax save, the slow
    # part) at every 10th / 25th / 50th evaluation is enough to resume.
    "tiny": dict(steps=200, batch_size=10, learning_rate=0.1, exp_gamma=0.975, step_size=20,
                 step_gamma=0.1, eval_every=10, checkpoint_every_evals=10, seed=0),
    "small": dict(steps=1000, batch_size=10, learning_rate=0.1, exp_gamma=0.995, step_size=100,
                  step_gamma=0.1, eval_every=10, checkpoint_every_evals=25, seed=0),
    "full": dict(steps=1000, batch_size=10, learning_rate=0.1, exp_gamma=0.995, step_size=100,
                 step_gamma=0.1, eval_every=5, checkpoint_every_evals=50, seed=0),
}


def schedules(config) -> dict:
  """name -> (schedule, its hyperparameters for the report)."""
  lr = config["learning_rate"]
  return {
      "fixed": (bt.constant(lr), {"learning_rate": lr}),
      "exponential": (bt.exponential_decay(lr, config["exp_gamma"]),
                      {"learning_rate": lr, "gamma": config["exp_gamma"], "every": 1}),
      "step": (bt.step_decay(lr, config["step_size"], config["step_gamma"]),
               {"learning_rate": lr, "step_size": config["step_size"],
                "gamma": config["step_gamma"]}),
  }


def plot(workdir: str, runs: dict, steps: int) -> str:
  """``schedules.png``: loss (left) and learning rate (right) against the step, per run."""
  path = os.path.join(workdir, "schedules.png")
  with png_figure(path, size=(11, 4.2)) as fig:
    fig.subplots_adjust(left=0.07, right=0.98, bottom=0.12, top=0.92, wspace=0.22)
    loss_ax, lr_ax = fig.subplots(1, 2)
    every_step = np.arange(steps)
    for (name, (schedule, _)), color in zip(runs.items(), ("C0", "C1", "C2")):
      log = train.MetricsLog(os.path.join(workdir, name, "metrics.jsonl"))
      loss_ax.plot(*log.series("train_loss"), color=color, label=f"{name}: train")
      loss_ax.plot(*log.series("val_loss"), color=color, linestyle="--", label=f"{name}: val")
      lr_ax.plot(every_step, np.asarray(jax.device_get(schedule(every_step))), color=color,
                 label=name)
    for ax, ylabel, title in ((loss_ax, "mean squared error", "loss"),
                              (lr_ax, "learning rate (step t uses lr(t))", "learning rate")):
      ax.set_yscale("log")
      ax.set_xlabel("step")
      ax.set_xscale("log" if ax is loss_ax else "linear")  # the descent is in the first steps
      ax.set_ylabel(ylabel)
      ax.set_title(f"seed 002 §4.2-4.3: {title}")
      ax.grid(True, alpha=0.3)
      ax.legend(fontsize="small")
  return path


def main(argv=None) -> dict:
  workdir, preset, config = cli.parse_args(argv, PRESETS, __doc__.split("\n\n")[0])
  start = time.time()
  splits = data.load_dataset("linear_toy", seed=config["seed"])
  runs = schedules(config)
  params = tasks.linear_params(config["seed"])
  results = {}
  for name, (schedule, hyperparameters) in runs.items():
    run = tasks.train_linear_regression(
        f"linreg_schedules/{name}", preset, config, splits,
        jax.tree.map(jnp.copy, params),
        optax.inject_hyperparams(bt.sgd)(learning_rate=schedule),  # fit logs the rate
        os.path.join(workdir, name),
        checkpoint_every_evals=config["checkpoint_every_evals"],
        extra={"schedule": name, "hyperparameters": hyperparameters,
               "final_lr": float(schedule(config["steps"] - 1))})
    results[name] = {k: v for k, v in run.items()
                     if k not in ("experiment", "preset", "devices", "platform")}
  plot(workdir, runs, config["steps"])
  selected = min(results, key=lambda name: results[name]["val_loss"])
  best = results[selected]
  summary = {
      "experiment": "linreg_schedules", "preset": preset, "selected": selected,
      "selected_by": "lowest final val_loss; the top-level losses and theta are its",
      **{k: best[k] for k in ("steps", "final_train_loss", "val_loss", "test_loss", "theta",
                              "bias", "resumed_from")},
      "true_slope": tasks.TRUE_SLOPE, "results": results, "config": config,
  }
  summary = report.finish(workdir, summary, start, hide=("results", "config"))
  for name, run in results.items():
    print(f"  {name:<12} final lr {run['final_lr']:.2e}  train {run['final_train_loss']:.5f}  "
          f"val {run['val_loss']:.5f}  test {run['test_loss']:.5f}  theta {run['theta']:.4f}")
  return summary


if __name__ == "__main__":
  cli.run(main)
