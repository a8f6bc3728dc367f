"""GPT-2 124M training step: bigtune_jax's GPT vs plain Flax vs PyTorch nanoGPT, one run.

``python -m benchmarks.gpt_step [--preset full|tiny] [--variants a,b,...] [--steps N]
[--profile] [--hlo-dir DIR] [--out FILE]``; ``full`` (the default where ``nvidia-smi``
exists) is GPT-2 small: 12 layers, width 768, 12 heads, vocab 50304, T = 1024, batch 16,
bfloat16 compute, float32 parameters; ``tiny``, a 2-layer model, runs on a CPU in seconds
(compiled with ``TINY_XLA_FLAGS``: XLA's cheap optimization level, as compiling dominates).

One step is forward + backward + clip_grad_norm(1.0) + AdamW (lr 6e-4, betas (0.9, 0.95),
eps 1e-8, weight decay 0.1 on matrices and embeddings), all in one jitted, state-donating
function (JAX) or nanoGPT's ``train.py`` loop (PyTorch, ``gpt_torch.py``). Inputs are
random token ids, four batches on the device in rotation. Each framework runs in its own
child process, one after the other, so neither holds GPU memory while the other runs; JAX
variants that need other ``XLA_FLAGS`` get a process each. Timing: after ``warmup`` steps
(the first compiles), ``steps`` steps in windows of ``window`` steps, each window ended by
a device sync, without one between steps, as a training loop runs; ms/step is the median
window's time per step.

Rows (``VARIANTS``; ``--variants explore`` times the head and flag alternatives):
  flax     the project's ``GPT`` with blocks unrolled (``scan_unroll >= n_layer``) and the
           plain head: float32 logits + ``optax.softmax_cross_entropy_with_integer_labels``;
  bigtune  the same model through the fused head, ``GPT(...)(x, targets=y)``, one chunk,
           bfloat16 logits (``head_logits_dtype``): see ``bigtune_jax/models/tied_head.py``;
  pytorch  nanoGPT, ``torch.compile``d, bf16 autocast, cuDNN/flash SDPA, fused AdamW.
``benchmarks/gpt_step_NOTES.md`` has each version's prediction and measured outcome.

MFU (nanoGPT's ``estimate_mfu``): FLOPs per token ``6 N + 12 L H Q T``
(``bigtune_jax.models.gpt_flops_per_token``; N non-embedding parameters, the causal mask
not discounted) x tokens/s, over the bf16 peak measured in the same run: an
``n x n @ n x n`` bfloat16 product (n = 8192 on the GPU) timed by both frameworks, the
larger rate taken. The ratio is PyTorch's ms/step over the row's (> 1: faster than PyTorch).
"""

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import time

from benchmarks import common

PRESETS = {
    "full": dict(n_layer=12, n_head=12, n_embd=768, vocab=50304, block=1024, batch=16,
                 steps=30, warmup=5, window=10, matmul=8192),
    "tiny": dict(n_layer=2, n_head=2, n_embd=64, vocab=256, block=64, batch=4,
                 steps=4, warmup=2, window=2, matmul=256),
}
SHAPE_KEYS = ("n_layer", "n_head", "n_embd", "vocab", "block", "batch")

# name: (what it is, GPTConfig overrides, loss path, extra XLA_FLAGS)
UNROLL = {"scan_unroll": 1 << 10}  # >= n_layer: no loop over the blocks
BF16_HEAD = {"head_logits_dtype": "bfloat16"}
VARIANTS = {
    "flax-scan": ("plain head (fp32 logits, optax CE), blocks in a scan", {}, "logits", ""),
    "flax": ("plain head (fp32 logits, optax CE), blocks unrolled", UNROLL, "logits", ""),
    "bigtune": ("fused head, 1 chunk, bf16 logits; blocks unrolled",
                {**UNROLL, **BF16_HEAD}, "fused", ""),
    "fused-scan": ("fused head, 128-token chunks; blocks in a scan", {"head_chunk": 128},
                   "fused", ""),
    "fused-128": ("fused head, 128-token chunks, fp32 logits", {**UNROLL, "head_chunk": 128},
                  "fused", ""),
    "fused-1chunk": ("fused head, 1 chunk, fp32 logits", UNROLL, "fused", ""),
    "fused-256-bf16": ("fused head, 256-token chunks, bf16 logits",
                       {**UNROLL, **BF16_HEAD, "head_chunk": 256}, "fused", ""),
    "fused-2048-bf16": ("fused head, 2048-token chunks, bf16 logits",
                        {**UNROLL, **BF16_HEAD, "head_chunk": 2048}, "fused", ""),
    "bigtune-no-triton": ("bigtune, cuBLAS only", {**UNROLL, **BF16_HEAD},
                          "fused", "--xla_gpu_enable_triton_gemm=false"),
}
DEFAULT_VARIANTS = "flax,bigtune"
EXPLORE = "flax,bigtune,fused-1chunk,fused-256-bf16,fused-2048-bf16,bigtune-no-triton"
TINY_XLA_FLAGS = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"
RESULT_TAG = "GPT_STEP_RESULT "


def _is_decayed(path) -> bool:
  """nanoGPT decays every parameter with >= 2 dims: kernels, embeddings, wpe."""
  return str(getattr(path[-1], "key", path[-1])) in ("kernel", "embedding", "wpe")


def jax_worker(shape: dict, variants: list[str], run: dict) -> dict:
  """Times each JAX variant (same XLA_FLAGS) in this process; returns rows and the FLOPs."""
  import flax.linen as nn
  import jax
  import jax.numpy as jnp
  import optax

  from bigtune_jax import models

  def config(overrides):
    return models.GPTConfig(vocab_size=shape["vocab"], block_size=shape["block"],
                            n_layer=shape["n_layer"], n_head=shape["n_head"],
                            n_embd=shape["n_embd"], **overrides)

  a, b = (jax.random.normal(jax.random.key(i), (run["matmul"],) * 2, jnp.bfloat16)
          for i in (1, 2))
  matmul = jax.jit(jnp.matmul)
  jax.block_until_ready([matmul(a, b) for _ in range(3)])
  start = time.perf_counter()
  jax.block_until_ready([matmul(a, b) for _ in range(20)])
  peak = 2 * run["matmul"] ** 3 * 20 / (time.perf_counter() - start) / 1e12
  del a, b

  batch, block = shape["batch"], shape["block"]
  batches = [jax.random.randint(jax.random.key(10 + i), (batch, block + 1), 0, shape["vocab"])
             for i in range(4)]
  tx = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(
      6e-4, b1=0.9, b2=0.95, eps=1e-8, weight_decay=0.1,
      mask=lambda p: jax.tree_util.tree_map_with_path(lambda k, _: _is_decayed(k), p)))
  rows = []
  for name in variants:
    description, overrides, loss_path, flags = VARIANTS[name]
    model = models.GPT(config(overrides))

    def loss_fn(params, data):
      x, y = data[:, :-1], data[:, 1:]
      if loss_path == "fused":
        return model.apply({"params": params}, x, targets=y).mean()
      logits = model.apply({"params": params}, x)
      return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    def train_step(state, data):
      params, opt_state = state
      loss, grads = jax.value_and_grad(loss_fn)(params, data)
      updates, opt_state = tx.update(grads, opt_state, params)
      return (optax.apply_updates(params, updates), opt_state), loss

    key = jax.random.key(0, impl="rbg")  # RngBitGenerator: a fast init compile on CPU
    params = nn.unbox(jax.jit(model.init)(key, batches[0][:, :-1])["params"])
    state = [(params, jax.jit(tx.init)(params))]
    del params
    start = time.perf_counter()
    step = jax.jit(train_step, donate_argnums=0).lower(state[0], batches[0]).compile()
    compile_s = time.perf_counter() - start
    hlo = step.as_text()
    if run.get("hlo_dir"):
      with open(os.path.join(run["hlo_dir"], f"hlo_{name}.txt"), "w") as f:
        f.write(hlo)
    memory = step.memory_analysis()

    def one(i):
      state[0], loss = step(state[0], batches[i % len(batches)])
      return loss

    first_loss = float(one(0))
    for i in range(1, run["warmup"]):
      one(i)
    jax.block_until_ready(state[0])
    windows = []
    for _ in range(max(run["steps"] // run["window"], 1)):
      start = time.perf_counter()
      for i in range(run["window"]):
        loss = one(i)
      jax.block_until_ready((state[0], loss))
      windows.append((time.perf_counter() - start) / run["window"])
    row = {"framework": "jax", "variant": name, "description": description,
           "xla_flags": os.environ.get("XLA_FLAGS", ""), "window_s": windows,
           "compile_s": compile_s,
           "first_loss": first_loss, "last_loss": float(loss), "peak_tflops": peak,
           "cudnn_calls": sorted(set(re.findall(r'custom_call_target="([^"]*cudnn[^"]*)"', hlo))),
           "temp_gb": getattr(memory, "temp_size_in_bytes", 0) / 1e9,
           "version": f"jax {jax.__version__}", "device": jax.devices()[0].device_kind}
    if run["profile"] and jax.default_backend() == "gpu":
      from benchmarks import gpt_profile
      row["profile"] = gpt_profile.jax_kernels(lambda: jax.block_until_ready(one(0)))
    rows.append(row)
    print(f"  jax {name:<16} {1e3 * statistics.median(windows):8.2f} ms/step  "
          f"(compile {compile_s:.0f} s)", file=sys.stderr, flush=True)
    state.clear()  # frees this variant's device memory before the next one
    step = None
  flops = models.gpt_flops_per_token(config({}), seq_len=block)
  return {"rows": rows, "flops_per_token": flops, "backend": jax.default_backend()}


def torch_worker(shape: dict, run: dict) -> dict:
  from benchmarks import gpt_torch
  row = gpt_torch.run(shape, run["steps"], run["warmup"], run["window"], run["matmul"],
                      run["profile"])
  print(f"  torch {row['variant']:<30} {1e3 * statistics.median(row['window_s']):8.2f} ms/step",
        file=sys.stderr, flush=True)
  return {"rows": [row]}


def _spawn(kind: str, payload: dict, xla_flags: str = "") -> dict:
  """Runs this file as ``--worker kind`` in a fresh process; returns its JSON result."""
  env = dict(os.environ)
  env["XLA_FLAGS"] = " ".join(f for f in (env.get("XLA_FLAGS", ""), xla_flags) if f)
  env["PYTHONPATH"] = os.pathsep.join(p for p in (os.getcwd(), env.get("PYTHONPATH")) if p)
  proc = subprocess.run([sys.executable, "-m", "benchmarks.gpt_step", "--worker", kind,
                         json.dumps(payload)], env=env, stdout=subprocess.PIPE, text=True)
  lines = [l for l in proc.stdout.splitlines() if l.startswith(RESULT_TAG)]
  if proc.returncode or not lines:
    raise RuntimeError(f"the {kind} worker failed (exit {proc.returncode}, XLA_FLAGS "
                       f"{xla_flags!r}); its output:\n{proc.stdout[-4000:]}")
  return json.loads(lines[-1][len(RESULT_TAG):])


def summarise(result: dict) -> dict:
  """ms/step, tokens/s, TFLOP/s, MFU and the ratio to PyTorch, for each row."""
  shape, rows = result["shape"], result["rows"]
  tokens = shape["batch"] * shape["block"]
  result["peak_tflops"] = max(r["peak_tflops"] for r in rows)
  for r in rows:
    r["ms_per_step"] = 1e3 * statistics.median(r["window_s"])
    r["tokens_per_s"] = tokens / (r["ms_per_step"] / 1e3)
    r["tflops"] = result["flops_per_token"] * r["tokens_per_s"] / 1e12
    r["mfu"] = r["tflops"] / result["peak_tflops"]
  torch = [r for r in rows if r["framework"] == "pytorch"]
  for r in rows:
    r["vs_pytorch"] = torch[0]["ms_per_step"] / r["ms_per_step"] if torch else None
  return result


def format_table(result: dict) -> str:
  s = result["shape"]
  lines = [
      f"GPT train step, preset {result['preset']}: {s['n_layer']} layers, d {s['n_embd']}, "
      f"{s['n_head']} heads, vocab {s['vocab']}, T {s['block']}, batch {s['batch']}; "
      f"{result['flops_per_token'] / 1e6:.1f} MFLOP/token",
      f"device: {result['device']}; {result['versions']}; {result['date']}",
      f"bf16 matmul peak measured in this run: {result['peak_tflops']:.0f} TFLOP/s; "
      f"ms/step: median of {result['run']['steps'] // result['run']['window']} windows of "
      f"{result['run']['window']} steps",
      f"command: {result['command']}", "",
      "| framework | variant | ms/step | tokens/s | TFLOP/s | MFU | vs PyTorch |",
      "|---|---|---:|---:|---:|---:|---:|"]
  for r in result["rows"]:
    ratio = "" if r["vs_pytorch"] is None else f"{r['vs_pytorch']:.3f}x"
    lines.append(f"| {r['framework']} | {r['variant']} | {r['ms_per_step']:.2f} | "
                 f"{r['tokens_per_s'] / 1e3:.1f} k | {r['tflops']:.0f} | {100 * r['mfu']:.1f}% "
                 f"| {ratio} |")
  for r in (r for r in result["rows"] if "profile" in r):
    p = r["profile"]
    kinds = ", ".join(f"{k} {v:.2f}" for k, v in p["categories_ms"].items())
    lines.append(f"profile {r['framework']} {r['variant']}: kernels {p['kernel_ms_per_step']:.2f} "
                 f"ms/step ({kinds}), wall {p['wall_ms_per_step']:.2f}")
  return "\n".join(lines)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--preset", choices=sorted(PRESETS),
                      help="full: GPT-2 124M (default where nvidia-smi exists); tiny: CPU")
  parser.add_argument("--variants", default=DEFAULT_VARIANTS,
                      help=f"comma-separated JAX variants from {sorted(VARIANTS)}, or 'explore' "
                      f"for all (default {DEFAULT_VARIANTS})")
  parser.add_argument("--no-torch", action="store_true", help="skip the PyTorch baseline")
  parser.add_argument("--steps", type=int, help="timed steps per row (default: per preset)")
  parser.add_argument("--profile", action="store_true", help="GPU kernel-time breakdown per row")
  parser.add_argument("--out", help="also write the results as JSON to this file")
  parser.add_argument("--hlo-dir", help="write each JAX variant's optimized HLO here")
  parser.add_argument("--worker", nargs=2, help=argparse.SUPPRESS)
  args = parser.parse_args(argv)
  if args.worker:
    kind, payload = args.worker[0], json.loads(args.worker[1])
    out = (jax_worker(payload["shape"], payload["variants"], payload["run"]) if kind == "jax"
           else torch_worker(payload["shape"], payload["run"]))
    print(RESULT_TAG + json.dumps(out), flush=True)
    return out

  preset = args.preset or ("full" if shutil.which("nvidia-smi") else "tiny")
  variants = EXPLORE.split(",") if args.variants == "explore" else args.variants.split(",")
  unknown = [v for v in variants if v not in VARIANTS]
  if unknown:
    parser.error(f"--variants: unknown {unknown}; choose from {sorted(VARIANTS)}")
  if args.steps is not None and args.steps < 1:
    parser.error(f"--steps must be >= 1, got {args.steps}")
  p = PRESETS[preset]
  shape = {k: p[k] for k in SHAPE_KEYS}
  run = {"steps": args.steps or p["steps"], "warmup": p["warmup"],
         "window": min(p["window"], args.steps or p["window"]), "matmul": p["matmul"],
         "profile": args.profile, "hlo_dir": args.hlo_dir}

  rows, flops = [], None
  base_flags = "" if preset == "full" else TINY_XLA_FLAGS  # tiny: compile time dominates
  for flags in dict.fromkeys(VARIANTS[v][3] for v in variants):  # one process per flag set
    group = [v for v in variants if VARIANTS[v][3] == flags]
    try:
      out = _spawn("jax", {"shape": shape, "variants": group, "run": run},
                   " ".join(f for f in (base_flags, flags) if f))
    except RuntimeError as error:  # one failing flag set should not lose the others
      print(error, file=sys.stderr)
      continue
    rows += out["rows"]
    flops = out["flops_per_token"]
    if args.out:  # what is done so far survives a later worker's failure
      with open(args.out + ".partial", "w") as f:
        json.dump(rows, f)
  if not args.no_torch:
    rows += _spawn("torch", {"shape": shape, "run": run})["rows"]
  result = {"preset": preset, "shape": shape, "run": run, "flops_per_token": flops,
            "rows": rows, "device": rows[0]["device"],
            "versions": ", ".join(dict.fromkeys(r["version"] for r in rows)),
            "date": time.strftime("%Y-%m-%d"),
            "command": common.command("benchmarks.gpt_step", argv)}
  summarise(result)
  print(format_table(result))
  common.save(args.out, result)
  return result


if __name__ == "__main__":
  main()
