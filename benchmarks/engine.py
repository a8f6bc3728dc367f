"""Overheads of the training engine outside the train step: parameter init and evaluation.

``python -m benchmarks.engine [--repeats N] [--batch-sizes 16,64,256] [--out FILE]``

Two rows per measurement, both timed in the same run on the same device:

* ``init_params``: ``train.init_params(model, x, seed)`` called again for the same model
  configuration with a new seed (what experiments and searches do per run), against the
  baseline of a fresh ``jax.jit(lambda key, x: model.init(...))`` per call, which compiles
  every time (how ``init_params`` worked before 2026-11-23). Models: MLP 256-256 on the
  8x8 digits, and a 2-layer, 64-wide byte-level GPT (block 64).
* ``evaluate``: ``train.evaluate`` over the 1,258 digits of the training split (every
  batch dispatched before any result is read), against the baseline that reads each
  batch's sums back before dispatching the next one. Same eval step, same sums.

Each row is the median over ``--repeats`` calls after one warm-up call.
"""

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from bigtune_jax import data
from bigtune_jax import models
from bigtune_jax import train
from bigtune_jax.train import state as state_lib
from bigtune_jax.train import step as step_lib

from benchmarks import common


def _median_ms(fn, repeats: int) -> float:
  jax.block_until_ready(fn(0))  # warm-up (compiles where the row compiles once)
  times = []
  for i in range(1, repeats + 1):
    start = time.perf_counter()
    jax.block_until_ready(fn(i))
    times.append((time.perf_counter() - start) * 1e3)
  return statistics.median(times)


def _init_per_call(model, x, seed):
  """The baseline: a new jitted init closure, so a new compilation, on every call."""
  kwargs = {"train": False} if state_lib.accepts_train_flag(model) else {}
  init = jax.jit(lambda key, x: model.init(key, x, **kwargs)["params"])
  return init(jax.random.key(seed), x)


def _evaluate_reading_each_batch(eval_step, params, dataset, batch_size):
  """The baseline: each batch's sums are read back before the next batch is dispatched."""
  sums = None
  for batch in dataset.batches(min(batch_size, len(dataset)), shuffle=False, remainder="pad",
                               process_index=0, process_count=1):
    out = jax.device_get(eval_step(params, batch))
    sums = out if sums is None else jax.tree.map(np.add, sums, out)
  return {"loss": float(sums["loss_sum"] / sums["count"])}


def init_rows(repeats: int) -> list[dict]:
  digits = np.zeros((1, 8, 8, 1), np.float32)
  tokens = np.zeros((1, 64), np.int32)
  cases = [("MLP 256-256", models.MLP(hidden=(256, 256), num_classes=10), digits),
           ("GPT 2x64", models.GPT(models.GPTConfig(vocab_size=256, block_size=64, n_layer=2,
                                                    n_head=2, n_embd=64)), tokens)]
  rows = []
  for name, model, x in cases:
    x = jnp.asarray(x)
    base = _median_ms(lambda s, m=model, x=x: _init_per_call(m, x, s), repeats)
    ours = _median_ms(lambda s, m=model, x=x: train.init_params(m, x, s), repeats)
    rows.append({"what": "init_params", "case": name, "baseline": "jit per call",
                 "baseline_ms": base, "ms": ours, "speedup": base / ours})
  return rows


def evaluate_rows(repeats: int, batch_sizes) -> list[dict]:
  dataset = data.load_dataset("digits", seed=0)["train"]
  model = models.MLP(hidden=(256, 256), num_classes=10)
  params = train.init_params(model, jnp.asarray(dataset["image"][:1]), seed=0)
  eval_step = jax.jit(step_lib.make_eval_step(train.classification_loss(model)))
  rows = []
  for batch_size in batch_sizes:
    ours_result = train.evaluate(eval_step, params, dataset, batch_size)["loss"]
    base_result = _evaluate_reading_each_batch(eval_step, params, dataset, batch_size)["loss"]
    if ours_result != base_result:
      raise AssertionError(f"evaluate changed the loss: {ours_result} vs {base_result}")
    base = _median_ms(
        lambda _, b=batch_size: _evaluate_reading_each_batch(eval_step, params, dataset, b),
        repeats)
    ours = _median_ms(lambda _, b=batch_size: train.evaluate(eval_step, params, dataset, b),
                      repeats)
    rows.append({"what": "evaluate", "case": f"{len(dataset)} digits, batch {batch_size}",
                 "baseline": "read each batch", "baseline_ms": base, "ms": ours,
                 "speedup": base / ours})
  return rows


def format_table(result: dict) -> str:
  lines = [f"device: {result['device']}", "",
           "| what | case | baseline | baseline ms | bigtune ms | speed-up |",
           "|---|---|---|---:|---:|---:|"]
  lines += [f"| {r['what']} | {r['case']} | {r['baseline']} | {r['baseline_ms']:.2f} | "
            f"{r['ms']:.2f} | {r['speedup']:.1f}x |" for r in result["rows"]]
  return "\n".join(lines)


def main(argv=None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--repeats", type=int, default=10)
  parser.add_argument("--batch-sizes", default="16,64,256")
  parser.add_argument("--out", default=None)
  args = parser.parse_args(argv)
  if args.repeats < 1:
    raise ValueError(f"--repeats must be >= 1, got {args.repeats}")
  batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
  result = {"device": f"{jax.devices()[0].device_kind} ({jax.default_backend()}, "
                      f"{jax.device_count()} device(s))",
            "date": time.strftime("%Y-%m-%d"),
            "command": common.command("benchmarks.engine", argv),
            "rows": init_rows(args.repeats) + evaluate_rows(args.repeats, batch_sizes)}
  print(format_table(result))
  common.save(args.out, result)
  return result


if __name__ == "__main__":
  main()
