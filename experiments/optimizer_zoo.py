"""The optimizers of the seeds side by side on one real task (seed 000 §3, seed 001 §3.1,
seed 003 §3.1.3).

GD (full batch), SGD, heavy-ball momentum, EMA momentum, Adam, the accumulated-norm
adaptive rate and SGD with hypergradient learning rates (SGD-HD) train the same MLP from
the same initialization on scikit-learn's bundled handwritten digits (1,797 real 8x8
images), for the same number of steps and, for the mini-batch methods, the same batches.
Each optimizer's whole run is one jit-compiled ``lax.scan``.

  python -m experiments.optimizer_zoo --workdir runs/optimizer_zoo

writes ``summary.json`` (per optimizer: final train loss, test loss and accuracy, the
learning rate at the end), ``loss_curves.png`` (full-training-set loss per step, and the
learning rate of the methods that change it) and prints a table.

The seeds' snippets train with hand-written loops and fixed settings; the rates here
were chosen so that each method converges in the step budget (SGD-HD deliberately starts
10x too small, to show it finding a better rate by itself).
"""

import argparse
import os
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

import bigtune_jax as bt
from bigtune_jax import data
from bigtune_jax import models
from bigtune_jax.train.metrics import png_figure
from experiments import cli
from experiments import report

BATCH_SIZE = 64
HIDDEN = (64,)

# name -> (optimizer, full batch?, hyperparameters for the report)
OPTIMIZERS = {
    "GD": (lambda: bt.sgd(0.5), True, {"learning_rate": 0.5}),
    "SGD": (lambda: bt.sgd(0.1), False, {"learning_rate": 0.1}),
    # Same nominal rate as SGD: heavy-ball's buffer sums the steps (about 1/(1-gamma) = 10x
    # SGD's step), EMA momentum averages them (SGD's scale); ema_momentum(a, b) is exactly
    # momentum(a (1 - b), b) for constant rates.
    "momentum": (lambda: bt.momentum(0.1, gamma=0.9), False, {"learning_rate": 0.1, "gamma": 0.9}),
    "ema_momentum": (lambda: bt.ema_momentum(0.1, beta=0.9), False,
                     {"learning_rate": 0.1, "beta": 0.9}),
    "adam": (lambda: bt.adam(3e-3), False, {"learning_rate": 3e-3}),
    "adaptive_sgd": (lambda: bt.adaptive_sgd(0.3, beta=1e-3), False,
                     {"learning_rate": 0.3, "beta": 1e-3}),
    "sgd_hd": (lambda: bt.hypergradient_sgd(0.01, hyper_lr=1e-2), False,
               {"initial_learning_rate": 0.01, "hyper_lr": 1e-2}),
}


def current_learning_rate(name: str, state, hyperparameters) -> jax.Array:
  """The rate a method applied at its last step (for the ones that change it)."""
  if name == "sgd_hd":
    return state.learning_rate
  if name == "adaptive_sgd":
    total = state[0].sum_squared_norm
    return hyperparameters["learning_rate"] / (1 + hyperparameters["beta"] * total)
  return jnp.asarray(hyperparameters.get("learning_rate", jnp.nan), jnp.float32)


def cross_entropy(logits, labels):
  return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


def batch_indices(num_examples: int, steps: int, seed: int) -> np.ndarray:
  """(steps, BATCH_SIZE) example indices: shuffled epochs by (seed, epoch), remainder dropped."""
  per_epoch = num_examples // BATCH_SIZE
  epochs = -(-steps // per_epoch)
  orders = [data.epoch_order(num_examples, seed=seed, epoch=e)[:per_epoch * BATCH_SIZE]
            for e in range(epochs)]
  return np.concatenate(orders).reshape(-1, BATCH_SIZE)[:steps]


def train(name, model: nn.Module, params, splits, steps: int, seed: int):
  """Trains one optimizer; returns its final params, loss curve and learning-rate curve."""
  make, full_batch, hyperparameters = OPTIMIZERS[name]
  optimizer = make()
  x = jnp.asarray(splits["train"]["image"])
  y = jnp.asarray(splits["train"]["label"])
  if full_batch:
    indices = np.broadcast_to(np.arange(len(y)), (steps, len(y)))
  else:
    indices = batch_indices(len(y), steps, seed)

  def loss_fn(p, rows):
    return cross_entropy(model.apply(p, x[rows]), y[rows])

  @jax.jit
  def run(params, indices):
    def step(carry, rows):
      p, state = carry
      grads = jax.grad(loss_fn)(p, rows)
      updates, state = optimizer.update(grads, state, p)
      p = optax.apply_updates(p, updates)
      lr = current_learning_rate(name, state, hyperparameters)
      return (p, state), (cross_entropy(model.apply(p, x), y), lr)
    (p, _), (losses, lrs) = jax.lax.scan(step, (params, optimizer.init(params)), indices)
    return p, losses, lrs

  return run(params, jnp.asarray(indices))


def evaluate(model, params, split):
  logits = model.apply(params, jnp.asarray(split["image"]))
  labels = jnp.asarray(split["label"])
  return (float(cross_entropy(logits, labels)),
          float(jnp.mean(jnp.argmax(logits, -1) == labels)))


def plot(curves, learning_rates, path):
  with png_figure(path, size=(12, 4.5), dpi=120) as fig:
    ax_loss, ax_lr = fig.subplots(1, 2)
    for name, losses in curves.items():
      ax_loss.plot(losses, label=name, linewidth=1.2)
    ax_loss.set(xlabel="step", ylabel="training loss (full training set)", yscale="log",
                title="Seed optimizers on the digits (same MLP, same init)")
    ax_loss.legend()
    for name, lrs in learning_rates.items():
      ax_lr.plot(lrs, label=name)
    ax_lr.set(xlabel="step", ylabel="learning rate", yscale="log",
              title="Rates that the optimizer adapts itself")
    ax_lr.legend()
    fig.tight_layout()


def run_zoo(workdir: str, steps: int = 600, seed: int = 0, names=tuple(OPTIMIZERS)) -> dict:
  """Trains every optimizer in ``names``; writes summary.json and loss_curves.png."""
  unknown = sorted(set(names) - set(OPTIMIZERS))
  if unknown:
    raise ValueError(f"unknown optimizer(s) {unknown}; choose from {sorted(OPTIMIZERS)}")
  if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
    raise ValueError(f"steps (--steps) must be an integer >= 1, got {steps!r}")
  if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
    raise ValueError(f"seed (--seed) must be an integer >= 0, got {seed!r}")
  os.makedirs(workdir, exist_ok=True)
  start = time.time()
  splits = data.load_dataset("digits", seed=seed)
  model = models.MLP(hidden=HIDDEN, num_classes=10)
  params = model.init(jax.random.key(seed), jnp.asarray(splits["train"]["image"][:1]))
  results, curves, adapted = {}, {}, {}
  for name in names:
    final, losses, lrs = train(name, model, params, splits, steps, seed)
    test_loss, test_accuracy = evaluate(model, final, splits["test"])
    curves[name] = np.asarray(losses)
    if name in ("sgd_hd", "adaptive_sgd"):
      adapted[name] = np.asarray(lrs)
    results[name] = {"final_train_loss": float(losses[-1]), "test_loss": test_loss,
                     "test_accuracy": test_accuracy, "final_learning_rate": float(lrs[-1]),
                     "hyperparameters": OPTIMIZERS[name][2]}
  plot(curves, adapted, os.path.join(workdir, "loss_curves.png"))
  summary = {"experiment": "optimizer_zoo", "dataset": "sklearn digits 8x8", "steps": steps,
             "batch_size": BATCH_SIZE, "model": f"MLP 64-{'-'.join(map(str, HIDDEN))}-10",
             **report.run_facts(start), "results": results}
  report.write_summary(workdir, summary)
  return summary


def print_table(summary: dict) -> None:
  print(f"{'optimizer':<14}{'train loss':>12}{'test loss':>12}{'test acc':>10}{'final lr':>12}")
  for name, r in summary["results"].items():
    print(f"{name:<14}{r['final_train_loss']:>12.4f}{r['test_loss']:>12.4f}"
          f"{r['test_accuracy']:>10.3f}{r['final_learning_rate']:>12.4g}")
  print(f"{summary['steps']} steps each on {summary['devices']} {summary['platform']} device(s), "
        f"{summary['wall_s']} s in all")


def main(argv=None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--workdir", required=True, help="where summary.json and the PNG go")
  parser.add_argument("--steps", type=int, default=600, help="training steps per optimizer")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--optimizers", nargs="+", default=list(OPTIMIZERS),
                      help=f"subset of {list(OPTIMIZERS)}")
  args = parser.parse_args(argv)
  if os.path.exists(args.workdir) and not os.path.isdir(args.workdir):
    parser.error(f"--workdir {args.workdir} is a file, not a directory")
  summary = run_zoo(args.workdir, steps=args.steps, seed=args.seed, names=args.optimizers)
  print_table(summary)
  print(f"wrote {os.path.join(args.workdir, 'summary.json')} and loss_curves.png")
  return summary


if __name__ == "__main__":
  cli.run(main)
