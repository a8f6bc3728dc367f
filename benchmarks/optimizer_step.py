"""One optimizer step on GPT-2-XL-shaped parameters: bigtune vs optax vs torch vs a copy.

``python -m benchmarks.optimizer_step [--preset full|small|tiny] [--steps N] [--warmup N]
[--out FILE]``; the default preset is ``full`` when JAX sees a GPU, else ``small``.

What is timed: ``jax.jit(step, donate_argnums=(0, 1))`` where ``step(params, opt_state,
grads)`` runs ``opt.update`` and ``optax.apply_updates`` and returns the new params and
state; the gradients are pre-generated random fp32 arrays passed in every step. Each row is
the median over ``--steps`` steps after ``--warmup`` steps (the first one compiles), each
step ended by ``jax.block_until_ready`` (torch: ``torch.cuda.synchronize`` on a GPU).

Parameters (fp32), GPT-2 XL: 48 layers, d = 1600, vocab 50257, block 1024, 1,557,611,200
parameters. Per layer 12 leaves: ln_1 g/b (d), attn c_attn W (d, 3d) + b, attn c_proj
W (d, d) + b, ln_2 g/b, mlp c_fc W (d, 4d) + b, mlp c_proj W (4d, d) + b; plus wte (vocab, d),
wpe (block, d), ln_f g/b. Two layouts of the same numbers:
  separate  one leaf per layer and tensor: 48 * 12 + 4 = 580 leaves;
  stacked   each per-layer tensor stacked on a leading axis of 48 (what flax ``nn.scan``
            makes): 12 + 4 = 16 leaves.

Bytes moved per step (the minimum for the formula, per fp32 parameter; B = bytes):
  adam, fp32 moments     28 B = read w, g, m, v (4 * 4) + write w, m, v (3 * 4)
  adam, bf16 moments     20 B = read w, g (2 * 4), m, v (2 * 2) + write w (4), m, v (2 * 2)
  momentum               20 B = read w, g, v (3 * 4) + write w, v (2 * 4)
  adaptive_sgd           16 B = read g for the global norm (4), then read w, g (2 * 4) and
                                write w (4): the norm must be complete before any update
  copy (x + 1)            8 B = read x (4) + write x (4)
Effective GB/s = bytes moved / median time; "% copy" divides it by the bandwidth of the
reference copy: a jitted, donated ``x + 1`` over ONE fp32 buffer with as many elements as
there are parameters (so the same bytes as the parameters). ``x + 1`` per leaf of each
layout is timed as well ("copy" rows of the two layouts).

Baselines in the same run: ``optax.adam(1e-3)`` and ``torch.optim.AdamW(params, lr=1e-3,
weight_decay=0, fused=True)`` (falls back to ``foreach=True``, and says so in the row's
name, where fused is not supported), each on both layouts, torch tensors on the device JAX
uses.

Memory (full preset on one 80 GB GPU): one Adam row holds params + grads + m + v = 16 B per
parameter = 25 GB. Only one optimizer's state is alive at a time (donation keeps a single
copy; each row's arrays are deleted and garbage-collected before the next). JAX keeps its
default preallocation (75 % of GPU memory, so the timings are those of a normal run), and
its pool does not go back to the driver when arrays are deleted: the JAX rows therefore run
in a child process (spawned), which returns its rows and exits, and only then does this
process run the torch rows on the emptied GPU (``torch.cuda.empty_cache`` between layouts).
This process never initialises a JAX backend.
"""

import argparse
import concurrent.futures
import dataclasses
import gc
import math
import multiprocessing
import statistics
import sys
import time

from benchmarks import common

PRESETS = {  # name: (layers, d_model, vocab, block, steps, warmup)
    "full": (48, 1600, 50257, 1024, 50, 5),  # GPT-2 XL: 1.56e9 params, 6.2 GB fp32; GPU only
    "small": (8, 256, 8192, 256, 20, 3),  # 8.5e6 params: tens of ms a step on a 2-core CPU
    "tiny": (2, 64, 512, 64, 3, 1),  # smoke run: ~30 s on 2 CPU cores, mostly XLA compiles
}

BYTES_PER_PARAM = {  # see the module docstring
    "copy (x + 1)": 8,
    "bt.adam": 28,
    "bt.adam bf16 moments": 20,
    "bt.momentum": 20,
    "bt.adaptive_sgd": 16,
    "optax.adam": 28,
    "torch.AdamW fused": 28,
    "torch.AdamW foreach": 28,
}


@dataclasses.dataclass(frozen=True)
class Shape:
  layers: int
  d_model: int
  vocab: int
  block: int

  def layer_shapes(self) -> dict[str, tuple[int, ...]]:
    """The 12 tensors of one transformer block."""
    d = self.d_model
    return {
        "ln_1.g": (d,), "ln_1.b": (d,),
        "attn.c_attn.w": (d, 3 * d), "attn.c_attn.b": (3 * d,),
        "attn.c_proj.w": (d, d), "attn.c_proj.b": (d,),
        "ln_2.g": (d,), "ln_2.b": (d,),
        "mlp.c_fc.w": (d, 4 * d), "mlp.c_fc.b": (4 * d,),
        "mlp.c_proj.w": (4 * d, d), "mlp.c_proj.b": (d,),
    }

  def shapes(self, layout: str) -> dict[str, tuple[int, ...]]:
    """Leaf name -> shape; ``layout`` is "separate" (580 leaves for GPT-2 XL) or "stacked" (16)."""
    if layout == "separate":
      out = {f"h.{i}.{k}": s for i in range(self.layers) for k, s in self.layer_shapes().items()}
    elif layout == "stacked":
      out = {f"h.{k}": (self.layers, *s) for k, s in self.layer_shapes().items()}
    else:
      raise ValueError(f"layout must be 'separate' or 'stacked', got {layout!r}")
    d = self.d_model
    out.update({"wte": (self.vocab, d), "wpe": (self.block, d), "ln_f.g": (d,), "ln_f.b": (d,)})
    return out

  def num_params(self) -> int:
    return sum(math.prod(s) for s in self.shapes("stacked").values())


def _row(name, layout, leaves, times_s, first_s):
  return {"name": name, "layout": layout, "leaves": leaves,
          "median_ms": 1e3 * statistics.median(times_s), "first_call_s": first_s,
          "times_ms": [1e3 * t for t in times_s]}


# ---------------------------------------------------------------- JAX rows (child process)

def jax_rows(preset: str | None, steps: int | None, warmup: int | None) -> dict:
  """Resolves the preset on this process's JAX backend and times every JAX row."""
  import jax
  import jax.numpy as jnp
  import optax

  import bigtune_jax as bt

  backend = jax.default_backend()
  preset = preset or ("full" if backend == "gpu" else "small")
  *dims, default_steps, default_warmup = PRESETS[preset]
  shape = Shape(*dims)
  steps, warmup = steps or default_steps, warmup or default_warmup

  def random_tree(layout, seed):
    shapes = shape.shapes(layout)
    keys = jax.random.split(jax.random.key(seed), len(shapes))
    return {name: jax.random.normal(k, s, jnp.float32) for k, (name, s) in zip(keys, shapes.items())}

  def time_loop(fn, carry, *args):
    """Runs ``carry = fn(*carry, *args)``; returns (per-step seconds, first call seconds)."""
    times = []
    for _ in range(warmup + steps):
      start = time.perf_counter()
      carry = jax.block_until_ready(fn(*carry, *args))
      times.append(time.perf_counter() - start)
    del carry  # the last outputs: freed before the next row
    return times[warmup:], times[0]

  rows = []
  copy = jax.jit(lambda tree: jax.tree.map(lambda x: x + 1, tree), donate_argnums=0)
  buffer = jnp.zeros((shape.num_params(),), jnp.float32)
  rows.append(_row("copy (x + 1)", "one buffer", 1, *time_loop(lambda x: (copy(x),), (buffer,))))
  del buffer
  _progress(rows[-1])

  optimizers = {  # bt.adam and optax.adam back to back: the pair compared most closely
      "bt.adam": bt.adam(1e-3),
      "optax.adam": optax.adam(1e-3),
      "bt.adam bf16 moments": bt.adam(1e-3, moment_dtype="bfloat16"),
      "bt.momentum": bt.momentum(0.1, gamma=0.9),
      "bt.adaptive_sgd": bt.adaptive_sgd(0.1, beta=1e-3),
  }
  for layout in ("separate", "stacked"):
    leaves = len(shape.shapes(layout))
    rows.append(_row("copy (x + 1)", layout, leaves,
                     *time_loop(lambda p: (copy(p),), (random_tree(layout, 0),))))
    _progress(rows[-1])
    grads = random_tree(layout, 1)
    for name, opt in optimizers.items():

      def step(params, opt_state, grads, opt=opt):
        updates, opt_state = opt.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

      params = random_tree(layout, 0)
      carry = (params, jax.jit(opt.init)(params))
      del params
      rows.append(_row(name, layout, leaves,
                       *time_loop(jax.jit(step, donate_argnums=(0, 1)), carry, grads)))
      del carry
      gc.collect()
      _progress(rows[-1])
    del grads
    gc.collect()

  import importlib.metadata
  device = jax.devices()[0]
  return {"preset": preset, "shape": dataclasses.asdict(shape), "steps": steps, "warmup": warmup,
          "backend": backend, "device": getattr(device, "device_kind", str(device)),
          "versions": {p: importlib.metadata.version(p) for p in ("jax", "jaxlib", "optax")},
          "rows": rows}


# ---------------------------------------------------------------- torch rows (this process)

def torch_rows(shape: Shape, backend: str, steps: int, warmup: int) -> tuple[list[dict], str]:
  """Times fused AdamW on both layouts; returns (rows, torch version and device or why there are no rows)."""
  try:
    import torch
  except ImportError:
    return [], "torch is not installed: no torch rows"
  if backend == "gpu" and not torch.cuda.is_available():
    return [], f"JAX runs on GPU but torch {torch.__version__} has no CUDA: no torch rows"
  device = torch.device("cuda" if backend == "gpu" else "cpu")
  sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
  generator = torch.Generator(device=device).manual_seed(0)

  rows = []
  for layout in ("separate", "stacked"):
    shapes = shape.shapes(layout)
    params = [torch.randn(s, device=device, generator=generator) for s in shapes.values()]
    for p in params:
      p.grad = torch.randn(p.shape, device=device, generator=generator)
    name, start = "torch.AdamW fused", time.perf_counter()
    try:
      opt = torch.optim.AdamW(params, lr=1e-3, weight_decay=0, fused=True)
      opt.step()  # the first step builds the state: where an unsupported fused fails
    except (RuntimeError, ValueError):
      name = "torch.AdamW foreach"
      opt = torch.optim.AdamW(params, lr=1e-3, weight_decay=0, foreach=True)
      opt.step()
    sync()
    first = time.perf_counter() - start
    times = []
    for _ in range(warmup - 1 + steps):
      start = time.perf_counter()
      opt.step()
      sync()
      times.append(time.perf_counter() - start)
    rows.append(_row(name, layout, len(shapes), times[warmup - 1:], first))
    _progress(rows[-1])
    del opt, params, p
    gc.collect()
    if device.type == "cuda":
      torch.cuda.empty_cache()
  return rows, f"torch {torch.__version__} on {device.type}"


# ---------------------------------------------------------------- report

def _progress(row):
  print(f"  {row['name']:<22} {row['layout']:<10} {row['median_ms']:10.3f} ms", file=sys.stderr,
        flush=True)


def summarise(result: dict) -> dict:
  """Adds bytes, GB/s, % of the copy bandwidth to each row, and the bt.adam ratios."""
  n = Shape(**result["shape"]).num_params()
  rows = result["rows"]
  for row in rows:
    row["bytes_per_step"] = BYTES_PER_PARAM[row["name"]] * n
    row["gb_per_s"] = row["bytes_per_step"] / row["median_ms"] / 1e6
  reference = next(r for r in rows if r["layout"] == "one buffer")
  for row in rows:
    row["pct_copy"] = 100 * row["gb_per_s"] / reference["gb_per_s"]
  ms = {(r["name"], r["layout"]): r["median_ms"] for r in rows}
  ratios = []
  for layout in ("separate", "stacked"):
    for mine in ("bt.adam", "bt.adam bf16 moments"):
      for base in ("optax.adam", "torch.AdamW fused", "torch.AdamW foreach"):
        if (mine, layout) in ms and (base, layout) in ms:
          ratios.append({"layout": layout, "name": mine, "baseline": base,
                         "time_ratio": ms[mine, layout] / ms[base, layout]})
  result["num_params"] = n
  result["reference_copy_gb_per_s"] = reference["gb_per_s"]
  result["ratios"] = ratios
  return result


def format_table(result: dict) -> str:
  s = result["shape"]
  lines = [
      f"optimizer step, preset {result['preset']}: {s['layers']} layers, d={s['d_model']}, "
      f"vocab {s['vocab']}, block {s['block']}, {result['num_params']:,} fp32 params "
      f"({4 * result['num_params'] / 1e9:.3g} GB)",
      f"device: {result['backend']} ({result['device']}); {result['torch']}; "
      f"jax {result['versions']['jax']}, optax {result['versions']['optax']}; "
      f"median of {result['steps']} steps after {result['warmup']} warmup",
      f"command: {result['command']}",
      "",
      "| optimizer | layout | leaves | median ms | GB moved/step | GB/s | % copy | 1st call s |",
      "|---|---|---:|---:|---:|---:|---:|---:|",
  ]
  order = {"one buffer": 0, "separate": 1, "stacked": 2}
  for r in sorted(result["rows"], key=lambda r: order[r["layout"]]):
    lines.append(f"| {r['name']} | {r['layout']} | {r['leaves']} | {r['median_ms']:.3f} | "
                 f"{r['bytes_per_step'] / 1e9:.4g} | {r['gb_per_s']:.1f} | {r['pct_copy']:.0f} | "
                 f"{r['first_call_s']:.2f} |")
  lines += ["", "time ratios (bt / baseline, median ms; < 1: bt is faster):"]
  for q in result["ratios"]:
    lines.append(f"  {q['layout']:<9} {q['name']:<21} / {q['baseline']:<20} {q['time_ratio']:.3f}")
  lines += ["", "% copy: effective GB/s over that of `x + 1` on one fp32 buffer of "
            f"{result['num_params']:,} elements (read + write: "
            f"{result['reference_copy_gb_per_s']:.1f} GB/s)."]
  return "\n".join(lines)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--preset", choices=sorted(PRESETS),
                      help="full: GPT-2 XL (default when JAX sees a GPU); small (default on CPU); "
                      "tiny: smoke run")
  parser.add_argument("--steps", type=int, help="timed steps per row (default: per preset)")
  parser.add_argument("--warmup", type=int, help="untimed steps first, >= 1 (default: per preset)")
  parser.add_argument("--out", help="also write the results as JSON to this file")
  args = parser.parse_args(argv)
  if args.steps is not None and args.steps < 1:
    parser.error(f"--steps must be >= 1, got {args.steps}")
  if args.warmup is not None and args.warmup < 1:
    parser.error(f"--warmup must be >= 1 (the first call compiles), got {args.warmup}")

  # JAX in a child process: its GPU memory pool goes back to the driver when it exits.
  spawn = multiprocessing.get_context("spawn")
  with concurrent.futures.ProcessPoolExecutor(1, mp_context=spawn) as pool:
    result = pool.submit(jax_rows, args.preset, args.steps, args.warmup).result()
  rows, result["torch"] = torch_rows(Shape(**result["shape"]), result["backend"],
                                     result["steps"], result["warmup"])
  result["rows"] += rows
  result["command"] = common.command("benchmarks.optimizer_step", argv)
  summarise(result)
  print(format_table(result))
  common.save(args.out, result)
  return result


if __name__ == "__main__":
  main()
