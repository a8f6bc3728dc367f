"""The largest GPT that trains on one GPU: rematerialization + bfloat16 Adam moments.

``python -m benchmarks.gpt_memory [--widths 2560,3072,4096] [--batch 8] [--seq 1024]
[--budget-gb G] [--run] [--out FILE]``

Memory on paper, per float32 parameter: weights 4 B + gradient 4 B + Adam's two moments in
bfloat16 (``bt.adam(..., moment_dtype="bfloat16")``) 2 + 2 B = 12 B, against 16 B with
float32 moments. With ``remat=True`` each block keeps only its input ``(B, T, d)`` for the
backward pass and recomputes the rest; the fused head (``GPT(...)(idx, targets=...)``)
keeps ``B T V`` bfloat16 numbers instead of float32 logits. So at fixed width ``d`` the peak
grows linearly in depth ``L``: ``peak(L) = a + b L``.

For each width (GPT-2-like shapes: head size 128, MLP 4d, vocab 50304, learned positions,
tied head) the script compiles the training step (loss, gradient, Adam update, state
donated) for ``L = 2`` and ``L = 4`` without allocating anything (``jax.jit(...).lower``
on ``jax.ShapeDtypeStruct`` inputs), reads XLA's ``memory_analysis()`` (peak = arguments +
outputs - donated aliases + temporaries), fits ``a`` and ``b``, predicts the deepest ``L``
under the budget, and compiles that depth and its neighbours until ``L`` fits and ``L + 1``
does not. The budget is the JAX allocator's
limit on a GPU (``XLA_PYTHON_CLIENT_MEM_FRACTION``, set here to 0.95 unless given) and
``--budget-gb`` elsewhere. ``--run`` then builds the largest fitting model on the device
and runs three real steps: ``peak_bytes_in_use`` and the step time are reported.
On a CPU the analysis is XLA:CPU's (no cuDNN attention, other fusions): a rough guide only.
"""

import argparse
import os
import time

os.environ.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.95")

import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import optax  # noqa: E402

import bigtune_jax as bt  # noqa: E402
from bigtune_jax import models  # noqa: E402
from benchmarks import common  # noqa: E402

GIB = 2**30


def make(width: int, layers: int, seq: int) -> models.GPTConfig:
  return models.GPTConfig(n_layer=layers, n_embd=width, n_head=width // 128, block_size=seq,
                          vocab_size=50304, remat=True, head_chunk=128)  # 128: lean logits


def train_step(config: models.GPTConfig):
  """(init(key, tokens) -> (params, opt_state), jitted donated step(state, data))."""
  model = models.GPT(config)
  tx = bt.adam(1e-4, moment_dtype="bfloat16")

  def init(key, tokens):
    params = nn.unbox(model.init(key, tokens)["params"])
    return params, tx.init(params)

  def step(state, data):
    params, opt_state = state
    loss_fn = lambda p: model.apply({"params": p}, data[:, :-1], targets=data[:, 1:]).mean()
    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return (optax.apply_updates(params, updates), opt_state), loss

  return init, jax.jit(step, donate_argnums=0)


def analyse(config: models.GPTConfig, batch: int) -> dict:
  """Compiled memory of one training step at ``config``; nothing is allocated."""
  init, step = train_step(config)
  tokens = jax.ShapeDtypeStruct((batch, config.block_size), jnp.int32)
  data = jax.ShapeDtypeStruct((batch, config.block_size + 1), jnp.int32)
  state = jax.eval_shape(init, jax.random.key(0), tokens)
  start = time.perf_counter()
  m = step.lower(state, data).compile().memory_analysis()
  peak = (m.argument_size_in_bytes + m.output_size_in_bytes - m.alias_size_in_bytes
          + m.temp_size_in_bytes)
  return {"layers": config.n_layer, "width": config.n_embd,
          "params": models.gpt_param_count(config), "peak_gib": peak / GIB,
          "arguments_gib": m.argument_size_in_bytes / GIB, "temp_gib": m.temp_size_in_bytes / GIB,
          "compile_s": time.perf_counter() - start}


def deepest(width: int, seq: int, batch: int, budget: float) -> dict:
  """The deepest model of ``width`` under ``budget`` bytes, from a linear fit checked once."""
  lo, hi = analyse(make(width, 2, seq), batch), analyse(make(width, 4, seq), batch)
  per_layer = (hi["peak_gib"] - lo["peak_gib"]) / 2
  layers = max(int((budget / GIB - lo["peak_gib"]) / per_layer) + 2, 1)
  check = analyse(make(width, layers, seq), batch)
  while check["peak_gib"] * GIB > budget and layers > 1:  # the fit was optimistic
    layers -= 1
    check = analyse(make(width, layers, seq), batch)
  while (deeper := analyse(make(width, layers + 1, seq), batch))["peak_gib"] * GIB <= budget:
    layers, check = layers + 1, deeper  # the fit was pessimistic
  return {**check, "gib_per_layer": per_layer, "fixed_gib": lo["peak_gib"] - 2 * per_layer,
          "bytes_per_param": check["peak_gib"] * GIB / check["params"]}


def run_steps(config: models.GPTConfig, batch: int, steps: int = 3) -> dict:
  """Allocates the model on the device and runs ``steps`` real training steps."""
  init, step = train_step(config)
  key = jax.random.key(0, impl="rbg")
  data = jax.random.randint(key, (batch, config.block_size + 1), 0, config.vocab_size)
  state = jax.jit(init)(key, data[:, :-1])
  times, losses = [], []
  for _ in range(steps):
    start = time.perf_counter()
    state, loss = step(state, data)
    losses.append(float(loss))
    times.append(time.perf_counter() - start)
  stats = jax.devices()[0].memory_stats() or {}
  tokens = batch * config.block_size
  tflops = models.gpt_flops_per_token(config) * tokens / min(times[1:] or times) / 1e12
  return {"losses": losses, "step_s": times, "tflops": tflops,
          "peak_in_use_gib": stats.get("peak_bytes_in_use", 0) / GIB,
          "limit_gib": stats.get("bytes_limit", 0) / GIB}


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--widths", default="2560,3072,4096",
                      help="comma-separated model widths, multiples of 128 (head size 128)")
  parser.add_argument("--batch", type=int, default=8, help="sequences per step (default 8)")
  parser.add_argument("--seq", type=int, default=1024, help="tokens per sequence")
  parser.add_argument("--budget-gb", type=float,
                      help="memory budget in GiB (default: the GPU allocator's limit; 76 on CPU)")
  parser.add_argument("--run", action="store_true", help="run the largest model for 3 steps")
  parser.add_argument("--out", help="also write the results as JSON to this file")
  args = parser.parse_args(argv)
  widths = [int(w) for w in args.widths.split(",")]
  if any(w < 128 or w % 128 for w in widths):
    parser.error(f"--widths must be multiples of 128, got {widths}")
  if args.batch < 1 or args.seq < 1:
    parser.error(f"--batch and --seq must be >= 1, got {args.batch}, {args.seq}")
  stats = jax.devices()[0].memory_stats() or {}
  budget = (args.budget_gb * GIB if args.budget_gb else stats.get("bytes_limit", 76 * GIB))
  rows = [deepest(w, args.seq, args.batch, budget) for w in widths]
  best = max(rows, key=lambda r: r["params"])
  result = {"device": jax.devices()[0].device_kind, "jax": jax.__version__,
            "batch": args.batch, "seq": args.seq, "budget_gib": budget / GIB, "rows": rows,
            "largest": best, "date": time.strftime("%Y-%m-%d"),
            "command": common.command("benchmarks.gpt_memory", argv)}
  if args.run:
    result["run"] = run_steps(make(best["width"], best["layers"], args.seq), args.batch)
  print(f"budget {budget / GIB:.1f} GiB on {result['device']}, batch {args.batch} x {args.seq}, "
        "remat, fp32 params + grads, bf16 Adam moments")
  print("| width | heads | deepest L | params | compiled peak GiB | GiB/layer | B/param |")
  print("|---:|---:|---:|---:|---:|---:|---:|")
  for r in rows:
    print(f"| {r['width']} | {r['width'] // 128} | {r['layers']} | {r['params'] / 1e9:.2f} B | "
          f"{r['peak_gib']:.1f} | {r['gib_per_layer']:.2f} | {r['bytes_per_param']:.1f} |")
  if "run" in result:
    r = result["run"]
    print(f"ran {best['params'] / 1e9:.2f} B params: peak in use {r['peak_in_use_gib']:.1f} GiB "
          f"of {r['limit_gib']:.1f}; steps {', '.join(f'{t:.2f}' for t in r['step_s'])} s; "
          f"losses {', '.join(f'{l:.3f}' for l in r['losses'])}; {r['tflops']:.0f} TFLOP/s")
  common.save(args.out, result)
  return result


if __name__ == "__main__":
  main()
