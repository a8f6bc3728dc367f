"""Seed 004 §3.1.1: compress a trained MLP by pruning, int8 quantization and low-rank
factorization, and weigh test accuracy against the real bytes each model takes.

  python -m experiments.compress --workdir runs/compress [--preset small|full|tiny]

On the bundled digits in their 28x28 view (seed 000 §4.1's 784-256-10 MLP, plain SGD):

* ``dense``: the MLP trained with ``bt.train.fit``; float32 weights.
* ``prune50/75/90``: gradual magnitude pruning (one global threshold) while fine-tuning
  from ``dense`` for ``finetune_steps`` (``bt.compress.prune`` with Zhu & Gupta's cubic
  schedule from 0 to the final sparsity over the first half, a mask update every
  ``prune_every`` steps, then training at that sparsity); ``prune2:4``: one-shot 2:4
  structured sparsity, then the same fine-tuning.
* ``int8``: post-training quantization of ``dense`` with qwix (per-channel symmetric
  weights, activation ranges calibrated on ``calibration_batches`` training batches);
  ``int8-qat``: ``qat_steps`` of quantization-aware fine-tuning first, then the same.
* ``lowrankR``: every Dense layer that shrinks replaced by its rank-R truncated SVD, then
  fine-tuned ``finetune_steps``.
* ``prune90+int8``, ``lowrank16+int8``: the int8 quantization of those models.

``size_bytes`` is what storing the parameters takes: float32 or int8 arrays plus their
float32 scales (and the static activation scales) as they are, and for pruned models the
**bitmask format** of ``bt.compress.bitmask_nbytes`` (one bit per weight plus the nonzero
values; biases and scales dense). ``DIR/summary.json`` has ``results`` (``method,
size_bytes, test_accuracy``, plus ``compression`` = dense bytes / bytes) and the dense
run's ``steps, final_train_loss, test_loss, test_accuracy``; ``DIR/compress.png`` plots
accuracy against bytes. Each training run checkpoints in ``DIR/<method>`` when it ends;
running again on the same workdir restores the finished runs instead of training them.

What it measured (CPU, small preset, seed 0; 359 test digits, so one digit is 0.28
points): dense 98.61 % at 814,120 bytes; prune50/75/90 and prune2:4 98.61 % (90 %:
107,776 bytes, 7.6x smaller); int8 98.61 % (205,400 bytes, 4.0x), with QAT the same;
lowrank8/16/32 98.33/97.77/98.05 % (42,856/77,864/144,424 bytes); prune90+int8 98.61 % at
47,870 bytes (17x); lowrank16+int8 97.49 % at 21,404 bytes (38x). The dense model is
trained to convergence (1,500 steps) first, so that the extra steps the compressed models
get are not what lifts them: from 600 dense steps (97.21 %), the fine-tuned pruned and
low-rank models beat their own dense model.
"""

import os
import time

import jax
import jax.numpy as jnp
from matplotlib.ticker import NullFormatter

import bigtune_jax as bt
from bigtune_jax import compress
from bigtune_jax import data
from bigtune_jax import models
from bigtune_jax import train
from bigtune_jax.train.metrics import png_figure
from experiments import cli
from experiments import report

PRESETS = {
    "tiny": dict(hidden=(64,), steps=150, batch_size=64, learning_rate=0.1,
                 finetune_learning_rate=0.05, sparsities=(0.5, 0.9), finetune_steps=60,
                 prune_every=10, scope="global", qat_steps=20, ranks=(8,),
                 calibration_batches=2, seed=0),
    "small": dict(hidden=(256,), steps=1500, batch_size=64, learning_rate=0.1,
                  finetune_learning_rate=0.05, sparsities=(0.5, 0.75, 0.9),
                  finetune_steps=300, prune_every=15, scope="global", qat_steps=100,
                  ranks=(8, 16, 32), calibration_batches=8, seed=0),
    # Longer runs, higher sparsities and more ranks.
    "full": dict(hidden=(256,), steps=3000, batch_size=64, learning_rate=0.1,
                 finetune_learning_rate=0.05, sparsities=(0.5, 0.75, 0.9, 0.95, 0.98),
                 finetune_steps=1500, prune_every=50, scope="global", qat_steps=500,
                 ranks=(4, 8, 16, 32, 64), calibration_batches=16, seed=0),
}


CHECKS = {
    "sparsities": cli.Rule(lambda v: len(v) > 0 and all(0 < x < 1 for x in v),
                           "one or more fractions in (0, 1), comma-separated"),
    "scope": cli.one_of("global", "layer"),
}


def check_data(config, splits, model, params) -> None:
  """The settings that depend on the data and the model, before anything is trained."""
  cli.check_batch_size("batch_size", config["batch_size"], splits["train"])
  batches = splits["train"].steps_per_epoch(config["batch_size"])
  if config["calibration_batches"] > batches:
    raise ValueError(f"--set calibration_batches must be at most {batches} (the batches of "
                     f"{config['batch_size']} in one pass over the training examples), got "
                     f"{config['calibration_batches']}")
  for rank in config["ranks"]:
    try:  # a rank that factors no layer would leave the model dense
      compress.factorize(model, params, rank=rank)
    except ValueError as error:
      raise ValueError(f"--set ranks={','.join(map(str, config['ranks']))}: {error}") from None


def fit(model, params, tx, splits, steps: int, config, workdir: str, progress: bool):
  """``bt.train.fit`` of ``model`` from a copy of ``params`` (fit donates its state)."""
  state = train.create_train_state(model, jax.tree.map(jnp.copy, params), tx,
                                   seed=config["seed"])
  # No validation set (nothing is selected on it): a row of the training loss every tenth
  # of the run; one checkpoint, at the end (each run is short).
  fit_config = train.FitConfig(steps=steps, batch_size=config["batch_size"],
                               eval_every=max(steps // 10, 1), checkpoint_every_evals=10,
                               seed=config["seed"], progress=progress)
  return train.fit(state, train.classification_loss(model), splits["train"], None,
                   config=fit_config, workdir=workdir)


def test_metrics(model, params, splits, cache: dict) -> dict:
  """Loss and accuracy on the test split (one compiled eval step per model)."""
  if model not in cache:
    cache[model] = train.classification_loss(model)  # one loss: its eval step compiles once
  return train.evaluate(cache[model], params, splits["test"], 512)


def calibration_images(splits, config) -> list:
  batches = splits["train"].batches(config["batch_size"], seed=config["seed"])
  return [next(batches)["image"] for _ in range(config["calibration_batches"])]


def plot(workdir: str, results: list[dict], dense_accuracy: float) -> str:
  """``compress.png``: test accuracy against bytes (log scale), one marker a method."""
  path = os.path.join(workdir, "compress.png")
  with png_figure(path, size=(9, 4.8), dpi=120) as fig:
    ax = fig.subplots()
    for row in results:  # the marker tells the family: pruning, int8, low-rank, combinations
      method = row["method"]
      marker = ("*" if "+" in method else "s" if method.startswith("prune") else
                "^" if method.startswith("int8") else "D" if method.startswith("lowrank") else "o")
      ax.scatter(row["size_bytes"], 100 * row["test_accuracy"], marker=marker, s=45, alpha=0.8,
                 label=f"{method}: {row['size_bytes'] / 1e3:,.0f} kB, "
                       f"{100 * row['test_accuracy']:.2f} %")
    ax.axhline(100 * dense_accuracy - 1, color="grey", ls="--", lw=0.8, label="dense - 1 point")
    ax.set_xscale("log")
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("stored bytes (log scale)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("Compressing a trained MLP on the digits (28x28 view)")
    ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=7)
    fig.tight_layout()
  return path


def print_table(results: list[dict]) -> None:
  print(f"{'method':<16}{'bytes':>10}{'x smaller':>11}{'test acc':>10}")
  for row in results:
    print(f"{row['method']:<16}{row['size_bytes']:>10,}{row['compression']:>11.1f}"
          f"{100 * row['test_accuracy']:>9.2f}%")


def main(argv=None) -> dict:
  workdir, preset, config = cli.parse_args(argv, PRESETS, __doc__.split("\n\n")[0],
                                           checks=CHECKS)
  start = time.time()
  splits = data.load_dataset("digits", seed=config["seed"], image_size=28)
  progress = preset != "tiny"
  model = models.MLP(hidden=config["hidden"], num_classes=10)
  params = train.init_params(model, jnp.asarray(splits["train"]["image"][:1]), config["seed"])
  check_data(config, splits, model, params)
  run = lambda m, p, tx, steps, name: fit(m, p, tx, splits, steps, config,
                                          os.path.join(workdir, name), progress).state.params
  calibration = calibration_images(splits, config)
  finetune_sgd = bt.sgd(config["finetune_learning_rate"])
  # Built before any training, so that a bad sparsity, scope or prune_every fails first.
  pruners = {f"prune{round(100 * sparsity)}": compress.prune(
      finetune_sgd, compress.polynomial_sparsity(sparsity, 0, config["finetune_steps"] // 2,
                                                 update_every=config["prune_every"]),
      scope=config["scope"]) for sparsity in config["sparsities"]}
  pruners["prune2:4"] = compress.prune(finetune_sgd, structure=(2, 4))
  results, models_by_method, eval_steps = [], {}, {}

  def record(method, m, p, size, accuracy=None):
    accuracy = test_metrics(m, p, splits, eval_steps)["accuracy"] if accuracy is None else accuracy
    results.append({"method": method, "size_bytes": int(size), "test_accuracy": accuracy})
    models_by_method[method] = (m, p)

  def record_int8(method, m, p, sparse: bool):
    quantized = compress.quantize(m, p, calibration)
    size = (compress.bitmask_nbytes if sparse else compress.dense_nbytes)(quantized.params)
    record(method, quantized.model, quantized.params, size)

  # Dense baseline.
  dense_fit = fit(model, params, bt.sgd(config["learning_rate"]), splits, config["steps"],
                  config, os.path.join(workdir, "dense"), progress)
  dense = dense_fit.state.params
  dense_test = test_metrics(model, dense, splits, eval_steps)
  record("dense", model, dense, compress.dense_nbytes(dense), dense_test["accuracy"])

  # Gradual magnitude pruning with fine-tuning, and 2:4 structured sparsity.
  for name, tx in pruners.items():
    pruned = run(model, dense, tx, config["finetune_steps"], name.replace(":", "_"))
    record(name, model, pruned, compress.bitmask_nbytes(pruned))

  # Int8: post-training, and after quantization-aware fine-tuning.
  record_int8("int8", model, dense, sparse=False)
  qat = run(compress.qat_model(model), dense, finetune_sgd, config["qat_steps"], "int8_qat")
  record_int8("int8-qat", model, qat, sparse=False)

  # Low-rank factorization with fine-tuning.
  for rank in config["ranks"]:
    low_model, low_params = compress.factorize(model, dense, rank=rank)
    low_params = run(low_model, low_params, finetune_sgd, config["finetune_steps"],
                     f"lowrank{rank}")
    record(f"lowrank{rank}", low_model, low_params, compress.dense_nbytes(low_params))

  # Combinations.
  top = f"prune{round(100 * max(config['sparsities']))}"
  record_int8(f"{top}+int8", model, models_by_method[top][1], sparse=True)
  mid = f"lowrank{sorted(config['ranks'])[len(config['ranks']) // 2]}"
  record_int8(f"{mid}+int8", *models_by_method[mid], sparse=False)

  dense_bytes = results[0]["size_bytes"]
  for row in results:
    row["compression"] = round(dense_bytes / row["size_bytes"], 2)
  print(compress.format_sparsity_report(compress.sparsity_report(models_by_method[top][1])))
  print_table(results)
  plot(workdir, results, dense_test["accuracy"])
  summary = {
      "experiment": "compress", "preset": preset, "steps": int(dense_fit.state.step),
      "final_train_loss": dense_fit.history[-1]["train_loss"] if dense_fit.history else None,
      "test_loss": dense_test["loss"], "test_accuracy": dense_test["accuracy"],
      "results": results,
      "storage": "float32/int8 arrays + float32 scales as stored; pruned models in the "
                 "bitmask format (1 bit per weight + nonzero values; dense where smaller)",
      **report.run_facts(start), "config": config,
  }
  report.write_summary(workdir, summary)
  return summary


if __name__ == "__main__":
  cli.run(main)
