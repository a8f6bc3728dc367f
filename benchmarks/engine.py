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

* ``nan_guard`` (``--parts guard``): one jitted train step (Adam) with the engine's NaN
  guard -- loss, gradients, the new parameters and the optimizer state must be finite --
  against the guard before 2026-12-04, which looked at the loss and gradients only. The
  two steps are compiled in the same run and timed alternately, step after step, on the
  same state and batch; the benchmark checks that they return the same state.

Each row is the median over ``--repeats`` calls after one warm-up call.
"""

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

import bigtune_jax as bt

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
  loss_fn = train.classification_loss(model)
  eval_step = jax.jit(step_lib.make_eval_step(loss_fn))  # the baseline's; evaluate has its own
  rows = []
  for batch_size in batch_sizes:
    ours_result = train.evaluate(loss_fn, params, dataset, batch_size)["loss"]
    base_result = _evaluate_reading_each_batch(eval_step, params, dataset, batch_size)["loss"]
    if ours_result != base_result:
      raise AssertionError(f"evaluate changed the loss: {ours_result} vs {base_result}")
    base = _median_ms(
        lambda _, b=batch_size: _evaluate_reading_each_batch(eval_step, params, dataset, b),
        repeats)
    ours = _median_ms(lambda _, b=batch_size: train.evaluate(loss_fn, params, dataset, b),
                      repeats)
    rows.append({"what": "evaluate", "case": f"{len(dataset)} digits, batch {batch_size}",
                 "baseline": "read each batch", "baseline_ms": base, "ms": ours,
                 "speedup": base / ours})
  return rows


def _step_with_the_old_guard(loss_fn):
  """The baseline: ``make_train_step`` as it was before 2026-12-04, guarding on the loss and
  the gradients only (a NaN schedule or a rate of 1e40 reached the parameters)."""

  def train_step(state, batch):
    rng = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
    (loss, sums), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params, batch, rng,
                                                                    True)
    updates, opt_state = state.tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    finite = jnp.isfinite(loss) & step_lib._all_finite(grads)  # pylint: disable=protected-access
    state = state.replace(step=state.step + 1,
                          params=optax.tree.where(finite, params, state.params),
                          opt_state=optax.tree.where(finite, opt_state, state.opt_state),
                          skipped_steps=state.skipped_steps + (~finite).astype(jnp.int32))
    return state, {"loss": loss, "grad_norm": optax.tree.norm(grads), "finite": finite, **sums}

  return train_step


def guard_rows(repeats: int) -> list[dict]:
  rng = np.random.default_rng(0)
  digits = data.load_dataset("digits", seed=0)["train"]
  tokens = rng.integers(0, 256, (16, 65))
  cases = [("MLP 256-256, Adam, batch 64", models.MLP(hidden=(256, 256), num_classes=10),
            train.classification_loss,
            {"image": jnp.asarray(digits["image"][:64]), "label": jnp.asarray(digits["label"][:64]),
             "mask": jnp.ones(64, bool)}),
           ("GPT 2x64, Adam, batch 16x64", models.GPT(models.GPTConfig(
               vocab_size=256, block_size=64, n_layer=2, n_head=2, n_embd=64)),
            train.language_model_loss,
            {"inputs": jnp.asarray(tokens[:, :-1], jnp.int32),
             "targets": jnp.asarray(tokens[:, 1:], jnp.int32), "mask": jnp.ones(16, bool)})]
  rows = []
  for name, model, make_loss, batch in cases:
    x = batch["image" if "image" in batch else "inputs"][:1]
    state = train.create_train_state(model, train.init_params(model, x, seed=0), bt.adam(1e-3))
    loss_fn = make_loss(model)
    new = jax.jit(step_lib.make_train_step(loss_fn))
    old = jax.jit(_step_with_the_old_guard(loss_fn))
    new_state, _ = new(state, batch)
    old_state, _ = old(state, batch)
    jax.tree.map(np.testing.assert_array_equal, (new_state.params, new_state.opt_state),
                 (old_state.params, old_state.opt_state))
    times = {"old": [], "new": []}
    for i in range(repeats):  # alternate the order, so that drift in the machine hits both
      for which in (("old", "new") if i % 2 == 0 else ("new", "old")):
        fn = old if which == "old" else new
        start = time.perf_counter()
        jax.block_until_ready(fn(state, batch))
        times[which].append((time.perf_counter() - start) * 1e3)
    base, ours = statistics.median(times["old"]), statistics.median(times["new"])
    rows.append({"what": "nan_guard", "case": name, "baseline": "loss + grads only",
                 "baseline_ms": base, "ms": ours, "speedup": base / ours})
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
  parser.add_argument("--parts", default="init,evaluate",
                      help="comma-separated: init, evaluate, guard (the NaN guard's cost)")
  parser.add_argument("--out", default=None)
  args = parser.parse_args(argv)
  if args.repeats < 1:
    raise ValueError(f"--repeats must be >= 1, got {args.repeats}")
  parts = args.parts.split(",")
  if not parts or any(p not in PARTS for p in parts):
    raise ValueError(f"--parts must be a comma-separated list of {', '.join(PARTS)}, "
                     f"got {args.parts!r}")
  batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
  result = {"device": f"{jax.devices()[0].device_kind} ({jax.default_backend()}, "
                      f"{jax.device_count()} device(s))",
            "date": time.strftime("%Y-%m-%d"),
            "command": common.command("benchmarks.engine", argv),
            "rows": [row for part in parts for row in PARTS[part](args.repeats, batch_sizes)]}
  print(format_table(result))
  common.save(args.out, result)
  return result


PARTS = {"init": lambda repeats, _: init_rows(repeats),
         "evaluate": evaluate_rows,
         "guard": lambda repeats, _: guard_rows(repeats)}


if __name__ == "__main__":
  main()
