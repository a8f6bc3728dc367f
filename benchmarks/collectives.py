"""Collective bytes of one GPT train step, on paper: data-parallel vs FSDP at 8-512 devices.

``python -m benchmarks.collectives [--devices 8,64,512] [--model gpt2_124m|gpt2_xl]
[--rows 8] [--modes dp,fsdp,fsdp8] [--out FILE]``

Nothing is run: for each device count ``n`` a child process starts JAX on the CPU with
``n`` fake devices (``--xla_force_host_platform_device_count``), builds the one train step
of ``bt.train`` (``make_train_step`` + ``jit_train_step``: GPT, next-token loss,
``clip_by_global_norm(1) + bt.adam``) on a mesh, lowers it on abstract inputs
(``jax.eval_shape``: no parameter is allocated) and compiles it. XLA's SPMD partitioner
then has inserted every collective; this reads them from the compiled HLO:

* ``operand bytes``: per device and step, the sum over collective instructions of their
  operands' sizes (an all-reduce of the gradients counts the whole gradient, an
  all-gather the local shard, a reduce-scatter the full input), times the trip count of
  the loop they sit in (none here: the layers are unrolled, ``scan_unroll = n_layer``);
* ``wire bytes``: what each device sends with ring algorithms, from the group size ``g``:
  all-reduce ``2 (g-1)/g S``, all-gather ``(g-1) S`` (S its operand), reduce-scatter
  ``(g-1)/g S``, all-to-all ``(g-1)/g S``, collective-permute ``S``.

Modes: ``dp`` (mesh data = n: parameters and Adam state replicated, gradients all-reduced),
``fsdp`` (fsdp = n: everything sharded n ways, ZeRO-3), ``fsdp8`` (fsdp = 8 within a host
of 8 accelerators x data = n / 8 across hosts). Also reported: the bytes of parameters and
optimizer state each device holds. Rows per device ``--rows`` sequences of ``block_size``
tokens. The CPU compiler's choices stand in for a GPU's: XLA:GPU runs the same SPMD
partitioner but also turns all-reduce + dynamic-slice into reduce-scatter and combines
small collectives, so GPU counts can differ in kind (not much in bytes).
"""

import argparse
import dataclasses
import json
import math
import os
import re
import subprocess
import sys
import time

from benchmarks import common

MODELS = {  # name: GPTConfig.gpt2_124m overrides
    "gpt2_124m": {},
    "gpt2_xl": dict(n_layer=48, n_head=25, n_embd=1600),  # 1.56e9 parameters
}
MODES = {"dp": dict(), "fsdp": dict(data=1, fsdp=-1), "fsdp8": dict(fsdp=8)}
COLLECTIVES = ("all-reduce", "all-gather", "reduce-scatter", "all-to-all", "collective-permute")
DTYPE_BYTES = {"pred": 1, "s8": 1, "u8": 1, "bf16": 2, "f16": 2, "s16": 2, "u16": 2,
               "f32": 4, "s32": 4, "u32": 4, "f64": 8, "s64": 8, "u64": 8}
_DEF = re.compile(r"^\s*(?:ROOT )?%?([\w.\-]+) = (\(.*?\)|\w+\[[\d,]*\](?:\{[^}]*\})?) ([\w\-]+)\(")
_ARRAY = re.compile(r"(\w+)\[([\d,]*)\]")


def shape_bytes(shape: str) -> int:
  """Bytes of an HLO shape, e.g. ``f32[8,768]{1,0}`` or a tuple of them."""
  return sum(DTYPE_BYTES.get(dtype, 0) * math.prod(int(d) for d in dims.split(",") if d)
             for dtype, dims in _ARRAY.findall(shape))


def group_size(line: str, devices: int) -> int:
  """Participants per group, from ``replica_groups`` in any of XLA's three spellings."""
  if m := re.search(r"replica_groups=\{\{([\d,]*)\}", line):
    return len(m.group(1).split(","))
  if m := re.search(r"replica_groups=\[(\d+),(\d+)\]<=", line):
    return int(m.group(2))
  if m := re.search(r"replica_groups=mesh\[([^\]]*)\][^{]*\{([^}]*)\}", line):
    sizes = dict(re.findall(r"'(\w+)'=(\d+)", m.group(1)))
    return math.prod(int(sizes[a]) for a in re.findall(r"'(\w+)'", m.group(2)))
  return devices  # replica_groups={} : every device


def count_collectives(hlo: str, devices: int) -> dict:
  """Per kind: instructions, operand bytes and ring wire bytes per device (see module)."""
  shapes, trips, computation, lines = {}, {}, None, []
  for line in hlo.splitlines():
    if m := re.match(r"(?:ENTRY )?%?([\w.\-]+) .*\{\s*$", line):  # a computation's header
      computation = m.group(1)
    if m := _DEF.match(line):
      shapes[m.group(1)] = m.group(2)
      lines.append((computation, m.group(3), line))
      if m.group(3) == "while" and (body := re.search(r"body=%?([\w.\-]+)", line)):
        trip = re.search(r'"known_trip_count":\{"n":"(\d+)"', line)
        trips[body.group(1)] = int(trip.group(1)) if trip else 1
  totals = {kind: {"count": 0, "operand_bytes": 0, "wire_bytes": 0.0} for kind in COLLECTIVES}
  for computation, opcode, line in lines:
    kind = opcode.removesuffix("-start")
    if kind not in COLLECTIVES:
      continue
    operands = re.sub(r"/\*.*?\*/", "", re.search(rf"{opcode}\(([^)]*)\)", line).group(1))
    size = sum(shape_bytes(shapes.get(name.strip().lstrip("%"), ""))
               for name in operands.split(",") if name.strip())
    g, times = group_size(line, devices), trips.get(computation, 1)
    wire = {"all-reduce": 2 * (g - 1) / g, "all-gather": g - 1, "reduce-scatter": (g - 1) / g,
            "all-to-all": (g - 1) / g, "collective-permute": 1.0}[kind] * size
    totals[kind]["count"] += times
    totals[kind]["operand_bytes"] += times * size
    totals[kind]["wire_bytes"] += times * wire
  return totals


def measure(devices: int, model: str, rows: int, modes: list[str]) -> list[dict]:
  """In a process whose JAX has ``devices`` CPU devices: one row per mode."""
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  import optax  # pylint: disable=import-outside-toplevel

  import bigtune_jax as bt  # pylint: disable=import-outside-toplevel
  from bigtune_jax import models, train  # pylint: disable=import-outside-toplevel

  assert jax.device_count() == devices, (jax.device_count(), devices)
  config = models.GPTConfig.gpt2_124m(**MODELS[model])
  config = dataclasses.replace(config, scan_unroll=config.n_layer)  # no loop over layers
  gpt = models.GPT(config)
  tx = optax.chain(optax.clip_by_global_norm(1.0), bt.adam(6e-4))
  state = jax.eval_shape(lambda: train.create_train_state(
      gpt, train.init_params(gpt, jnp.zeros((1, config.block_size), jnp.int32)), tx))
  results = []
  for mode in modes:
    options = dict(MODES[mode])
    if options.get("fsdp") == -1:
      options["fsdp"] = devices
    if devices % options.get("fsdp", 1) or (mode == "fsdp8" and devices <= 8):
      continue  # fsdp8 on 8 devices is fsdp
    mesh = train.MeshConfig(**options).make_mesh()
    shardings = train.state_sharding(state, mesh)
    step = train.jit_train_step(train.language_model_loss(gpt), shardings, mesh)
    tokens = jax.ShapeDtypeStruct((rows * devices, config.block_size), jnp.int32)
    batch = {"inputs": tokens, "targets": tokens, "mask": jax.ShapeDtypeStruct(
        (rows * devices,), jnp.bool_)}
    start = time.perf_counter()
    hlo = step.lower(state, batch).compile().as_text()
    held = sum(math.prod(s.shard_shape(x.shape)) * x.dtype.itemsize for x, s in zip(
        jax.tree.leaves(state), jax.tree.leaves(shardings)))
    results.append({"devices": devices, "mode": mode, "mesh": dict(mesh.shape),
                    "model": model, "params": sum(math.prod(x.shape) for x in jax.tree.leaves(
                        state.params)), "rows_per_device": rows, "held_bytes": held,
                    "compile_s": round(time.perf_counter() - start, 1),
                    "collectives": count_collectives(hlo, devices)})
  return results


def table(rows: list[dict]) -> str:
  mb = lambda b: f"{b / 2**20:,.0f}"
  lines = ["| devices | mode | mesh (data x fsdp) | all-reduce | all-gather | reduce-scatter "
           "| operand MiB | wire MiB | params+Adam MiB/device |",
           "|---:|---|---|---:|---:|---:|---:|---:|---:|"]
  for r in rows:
    c = r["collectives"]
    cell = lambda k: f"{c[k]['count']} / {mb(c[k]['operand_bytes'])}"
    lines.append(f"| {r['devices']} | {r['mode']} | {r['mesh']['data']} x {r['mesh']['fsdp']} | "
                 f"{cell('all-reduce')} | {cell('all-gather')} | {cell('reduce-scatter')} | "
                 f"{mb(sum(v['operand_bytes'] for v in c.values()))} | "
                 f"{mb(sum(v['wire_bytes'] for v in c.values()))} | {mb(r['held_bytes'])} |")
  return "\n".join(lines)


def main(argv=None) -> list[dict]:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--devices", default="8,64,512")
  parser.add_argument("--model", default="gpt2_124m", choices=sorted(MODELS))
  parser.add_argument("--rows", type=int, default=8, help="sequences per device")
  parser.add_argument("--modes", default="dp,fsdp,fsdp8")
  parser.add_argument("--out", default=None, help="also write the rows as JSON here")
  parser.add_argument("--worker", type=int, default=None, help=argparse.SUPPRESS)
  args = parser.parse_args(argv)
  modes = args.modes.split(",")
  if args.worker is not None:
    print(json.dumps(measure(args.worker, args.model, args.rows, modes)))
    return []
  rows = []
  for devices in (int(d) for d in args.devices.split(",")):
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=(
        os.environ.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={devices}"))
    out = subprocess.run([sys.executable, "-m", "benchmarks.collectives", "--worker",
                          str(devices), "--model", args.model, "--rows", str(args.rows),
                          "--modes", args.modes], env=env, capture_output=True, text=True,
                         check=False)
    if out.returncode:
      raise RuntimeError(f"{devices} devices: {out.stderr[-3000:]}")
    rows += json.loads(out.stdout.strip().splitlines()[-1])
    print(f"{devices} devices: compiled in " + ", ".join(
        f"{r['mode']} {r['compile_s']} s" for r in rows if r["devices"] == devices), flush=True)
  print(f"{args.model} ({rows[0]['params']:,} parameters), {args.rows} sequences per device; "
        "per kind: instructions / operand MiB per device and step")
  print(table(rows))
  common.save(args.out, rows)
  return rows


if __name__ == "__main__":
  main()
