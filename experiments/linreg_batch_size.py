"""Seed 002 §4.4 (with §3.3): loss and throughput against the batch size.

  python -m experiments.linreg_batch_size --workdir runs/linreg_batch_size [--preset tiny|full]

§3.3 says a larger batch trains faster (more examples per second) but may reach a worse
model, a smaller one the reverse. §4.4, "实现批量大小选择", defines ``LinearRegression``
(``nn.Linear(1, 1)``), draws ``x = torch.randn(100, 1)``,
``y = theta * x + 0.1 * torch.randn(100, 1)`` and runs 1000 full-batch SGD steps
(``lr=0.01``) on a bare tensor ``theta``.

Here the linear-regression toy (``y = 2 x + 0.1 eps``, ``data.linear_regression_toy``) is
generated larger than §4.4's 100 examples, 2,000 by default (1,400 train, 200 validation,
400 test: the splits of ``data.load_dataset``), so that batches of 1 to 512 all fit in an
epoch. For each batch size ``b`` (1, 8, 32, 128, 512), ``models.LinearRegression`` trains
with the seed's ``bt.sgd(0.01)`` through the engine, in ``DIR/batch_<b>``, for the **same
number of epochs** (3, i.e. the same examples seen and about the same arithmetic):
``3 * (1400 // b)`` steps. Reported per batch size:

* the final train loss (mean over the last epoch's mini-batches), validation and test
  loss, and ``theta``;
* ``examples_per_s``: the steady-state throughput of the engine's jitted train step
  (``train.make_train_step``, ``donate_argnums=0``, as ``fit`` runs it) on one batch
  already on the device, compilation and a warm-up step excluded, the best of three
  timed blocks of ``timing_steps`` steps, ``block_until_ready`` at their ends. It leaves
  out the host input pipeline, evaluation and checkpoints (``wall_s`` of each run has
  everything, compilation included).

What it shows (``batch_size.png``): the model has two parameters, so a step costs about
the same at any batch size (dispatch overhead dominates) and examples/s grows almost in
proportion to ``b``; with a budget of epochs, though, a larger batch makes fewer
updates, and at the same learning rate ends further from the fit: §3.3's trade-off. (A
learning rate scaled with the batch would close part of the gap, up to the stability
limit ``lr < 1 / lambda_max`` of the loss.) ``summary.json`` has one ``results`` entry
per batch size; its top-level keys are those of the batch size with the lowest final
**validation** loss, named by ``selected``.

Bugs in the seed's §4.4 fixed here:

* ``y = theta * x + ...`` is computed while ``theta`` is still 0, so the targets are pure
  noise and there is no slope to learn; we use §4.1's slope 2 (``data/toy.py``).
* That ``y`` also depends on ``theta``, which requires grad, so it carries a graph: the
  second ``loss.backward()`` raises ``RuntimeError: Trying to backward through the graph a
  second time`` (checked with PyTorch 2.13): the snippet stops at ``i = 1``. Our targets
  are data (numpy arrays), not functions of the parameters.
* ``LinearRegression`` is defined but never used (a bare ``theta`` without bias is
  trained); here the module is the model. ``theta.data = torch.tensor([0.0],
  requires_grad=True)`` is a no-op and is dropped.
* Every step uses all 100 examples: the batch size, the section's subject, never appears.
  Here it is the swept variable, with the engine's mini-batches (shuffled each epoch).
* ``torch.randn`` is unseeded; our data and order are reproducible (``seed``).

``tiny`` (CI smoke): 400 examples, batch sizes 4 and 64, 2 epochs.
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
    "tiny": dict(num_examples=400, batch_sizes=(4, 64), epochs=2, learning_rate=0.01,
                 timing_steps=50, seed=0),
    "small": dict(num_examples=2000, batch_sizes=(1, 8, 32, 128, 512), epochs=3,
                  learning_rate=0.01, timing_steps=500, seed=0),
    # 14,000 training examples: batch 1 is 42,000 steps, batch 8192 one step per epoch.
    "full": dict(num_examples=20_000, batch_sizes=(1, 8, 32, 128, 512, 2048, 8192), epochs=3,
                 learning_rate=0.01, timing_steps=2000, seed=0),
}
FRACTIONS = {"train": 0.7, "validation": 0.1, "test": 0.2}  # as data.load_dataset splits


def load(config) -> dict:
  """The toy ``y = 2 x + 0.1 eps`` with ``num_examples`` examples, split like ``load_dataset``."""
  arrays = data.linear_regression_toy(config["num_examples"], slope=tasks.TRUE_SLOPE,
                                      seed=config["seed"])
  parts = data.split_arrays(arrays, FRACTIONS, seed=config["seed"])
  return {name: data.ArrayDataset(part) for name, part in parts.items()}


def steady_state_throughput(params, tx, split: data.ArrayDataset, batch_size: int, steps: int,
                            seed: int = 0) -> dict:
  """Examples per second of the engine's jitted train step on one device-resident batch.

  Compilation and one warm-up step are excluded; the best of three blocks of ``steps``
  steps is kept (the least disturbed by other processes). ``params`` are donated.
  """
  model = tasks.LINEAR_MODEL
  state = train.create_train_state(model, params, tx, seed=seed)
  step = jax.jit(train.make_train_step(train.regression_loss(model)), donate_argnums=0)
  batch = jax.device_put(next(split.batches(batch_size, seed=seed)))
  state, _ = step(state, batch)  # compiles
  jax.block_until_ready(state)
  seconds = []
  for _ in range(3):
    start = time.perf_counter()
    for _ in range(steps):
      state, _ = step(state, batch)
    jax.block_until_ready(state)
    seconds.append(time.perf_counter() - start)
  best = min(seconds)
  return {"step_us": 1e6 * best / steps, "examples_per_s": batch_size * steps / best}


def plot(workdir: str, results: dict) -> str:
  """``batch_size.png``: final losses (left) and examples/s (right) against the batch size."""
  sizes = np.array([run["batch_size"] for run in results.values()])
  path = os.path.join(workdir, "batch_size.png")
  with png_figure(path, size=(11, 4.2)) as fig:
    fig.subplots_adjust(left=0.07, right=0.98, bottom=0.12, top=0.92, wspace=0.22)
    loss_ax, speed_ax = fig.subplots(1, 2)
    for key, marker in (("final_train_loss", "o"), ("val_loss", "s"), ("test_loss", "^")):
      loss_ax.plot(sizes, [run[key] for run in results.values()], marker=marker, label=key)
    speed_ax.plot(sizes, [run["examples_per_s"] for run in results.values()], marker="o",
                  label="jitted train step, steady state")
    for ax, ylabel, title in ((loss_ax, "mean squared error", "final loss, same epochs"),
                              (speed_ax, "examples / s", "throughput")):
      ax.set_xscale("log", base=2)
      ax.set_yscale("log")
      ax.set_xlabel("batch size")
      ax.set_ylabel(ylabel)
      ax.set_title(f"seed 002 §4.4: {title}")
      ax.grid(True, which="both", alpha=0.3)
      ax.legend(fontsize="small")
  return path


def main(argv=None) -> dict:
  workdir, preset, config = cli.parse_args(argv, PRESETS, __doc__.split("\n\n")[0])
  start = time.time()
  splits = load(config)
  num_train = len(splits["train"])
  if not config["batch_sizes"] or not all(1 <= b <= num_train for b in config["batch_sizes"]):
    raise ValueError(f"batch_sizes {config['batch_sizes']}: give at least one, each in [1, "
                     f"{num_train}] (the training examples; raise num_examples for more)")
  params = tasks.linear_params(config["seed"])  # every run starts from these
  tx = optax.inject_hyperparams(bt.sgd)(learning_rate=config["learning_rate"])  # rate logged
  results = {}
  for batch_size in config["batch_sizes"]:
    steps = config["epochs"] * (num_train // batch_size)  # remainders are dropped
    run_config = dict(config, steps=steps, batch_size=batch_size, eval_every=None)  # per epoch
    run = tasks.train_linear_regression(
        f"linreg_batch_size/{batch_size}", preset, run_config, splits,
        jax.tree.map(jnp.copy, params), tx,
        os.path.join(workdir, f"batch_{batch_size}"),
        extra={"batch_size": batch_size, "epochs": config["epochs"]})
    run.update(steady_state_throughput(jax.tree.map(jnp.copy, params), tx, splits["train"],
                                       batch_size, config["timing_steps"], config["seed"]))
    results[str(batch_size)] = {k: v for k, v in run.items()
                                if k not in ("experiment", "preset", "devices", "platform")}
  plot(workdir, results)
  selected = min(results, key=lambda b: results[b]["val_loss"])
  best = results[selected]
  summary = {
      "experiment": "linreg_batch_size", "preset": preset, "selected": int(selected),
      "selected_by": "lowest final val_loss; the top-level losses and theta are its",
      **{k: best[k] for k in ("steps", "final_train_loss", "val_loss", "test_loss", "theta",
                              "bias", "resumed_from", "examples_per_s")},
      "true_slope": tasks.TRUE_SLOPE, "results": results, "config": config,
  }
  summary = report.finish(workdir, summary, start, hide=("results", "config"))
  for b, run in results.items():
    print(f"  batch {b:>5}  steps {run['steps']:>5}  train {run['final_train_loss']:.5f}  "
          f"val {run['val_loss']:.5f}  test {run['test_loss']:.5f}  theta {run['theta']:.4f}  "
          f"{run['step_us']:8.1f} us/step  {run['examples_per_s']:12,.0f} examples/s")
  return summary


if __name__ == "__main__":
  cli.run(main)
