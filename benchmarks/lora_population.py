"""N LoRA adapters trained as one population over a shared frozen base vs the same N
trained one after another; and pruning by compaction vs by masking.

Rows (all timed warm: each configuration runs once to compile, then is timed):

* ``sequential N``: N adapters, each ``train_adapter_population`` with one member;
* ``population N``: the N adapters as one population (one program, base held once);
* ``masked`` / ``compacted``: a population of N where half the members are stopped at
  the first evaluation (``on_eval``), kept in the program and frozen by a select, or
  gathered out of it (a smaller program for the rest of the run).

Columns: wall seconds, member-steps computed, member-steps/s (the steps every *live*
member took, per second: the useful work), and the train program's peak memory from XLA's
compiled memory analysis (arguments + temporaries).

  python -m benchmarks.lora_population [--preset cpu|full] [--steps 40]
"""

import argparse
import datetime
import platform
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from bigtune_jax import data
from bigtune_jax import models
from bigtune_jax import train
from bigtune_jax.finetune import LoRA
from bigtune_jax.tune.population import members
from bigtune_jax.tune.population import programs
from bigtune_jax.tune.population import train_adapter_population
from bigtune_jax.tune.population.data import PopulationData

PRESETS = {  # layers, width, heads, vocab, T, batch
    "cpu": (2, 128, 4, 256, 64, 8),
    "full": (12, 768, 12, 50304, 1024, 8),  # GPT-2 124M shapes, for a GPU
}


def make_optimizer(h):
  return optax.adamw(h["learning_rate"], weight_decay=0.0)


def build(preset: str):
  layers, width, heads, vocab, block, batch = PRESETS[preset]
  on_cpu = jax.default_backend() == "cpu"
  model = models.GPT(models.GPTConfig(vocab_size=vocab, block_size=block, n_layer=layers,
                                      n_head=heads, n_embd=width, dropout=0.0,
                                      dtype=jnp.float32 if on_cpu else jnp.bfloat16))
  params = model.init(jax.random.key(0), jnp.zeros((1, 1), jnp.int32))["params"]
  tokens = np.random.default_rng(0).integers(0, vocab, (batch * 16, block + 1)).astype(np.int32)
  make = lambda rows: data.ArrayDataset({"inputs": rows[:, :-1], "targets": rows[:, 1:]})
  return model, params, make(tokens[:batch * 12]), make(tokens[batch * 12:]), batch


def peak_bytes(lora, loss_fn, params, n, train_data, val_data, batch) -> int:
  """Arguments + temporaries of the compiled train program for a population of ``n``."""
  values = {"learning_rate": np.full(n, 1e-3, np.float32)}
  kind = members.AdapterMembers(lora, loss_fn)
  pop_data = PopulationData(train_data, val_data, batch, 0)
  states = members.init_states(kind, make_optimizer, values, np.zeros(n, np.int32),
                               pop_data.sample["inputs"], params)
  hp = {k: jnp.asarray(v) for k, v in values.items()}
  lowered = jax.jit(programs.train_members, static_argnames=(
      "kind", "make_optimizer", "chunk")).lower(
          kind, make_optimizer, states, hp, None, pop_data.train,
          jnp.asarray(pop_data.rows(0, 2)), chunk=None, shared=params)
  memory = lowered.compile().memory_analysis()
  return memory.argument_size_in_bytes + memory.temp_size_in_bytes


def main(argv=None) -> list[dict]:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--preset", choices=sorted(PRESETS), default="cpu")
  parser.add_argument("--steps", type=int, default=40)
  parser.add_argument("--sizes", default="8,16")
  args = parser.parse_args(argv)
  model, params, train_data, val_data, batch = build(args.preset)
  loss_fn = train.language_model_loss(model)
  lora = LoRA(model, targets=("c_attn",), rank=8)
  eval_every = max(args.steps // 4, 1)

  def run(n, on_eval=None, compact=True):
    rates = np.geomspace(1e-4, 1e-2, n)
    kwargs = dict(steps=args.steps, batch_size=batch, eval_every=eval_every, on_eval=on_eval,
                  compact=compact)
    go = lambda: train_adapter_population(
        lora, loss_fn, params, make_optimizer, {"learning_rate": rates}, train_data, val_data,
        **kwargs)
    go()  # compile
    start = time.perf_counter()
    result = go()
    return time.perf_counter() - start, result

  rows = []
  for n in [int(s) for s in args.sizes.split(",")]:
    one_wall, one = run(1)
    rows.append({"case": f"sequential {n}", "wall_s": n * one_wall,
                 "member_steps": n * one.member_steps, "useful": n * args.steps,
                 "peak_mib": peak_bytes(lora, loss_fn, params, 1, train_data, val_data,
                                        batch) / 2**20})
    wall, result = run(n)
    rows.append({"case": f"population {n}", "wall_s": wall, "member_steps": result.member_steps,
                 "useful": n * args.steps,
                 "peak_mib": peak_bytes(lora, loss_fn, params, n, train_data, val_data,
                                        batch) / 2**20})
  n = max(int(s) for s in args.sizes.split(","))
  half = np.arange(n) % 2 == 1

  def prune_half(step, metrics):
    del metrics
    return half if step == eval_every else None

  for compact in (False, True):
    wall, result = run(n, prune_half, compact)
    useful = int(n * eval_every + (~half).sum() * (args.steps - eval_every))
    rows.append({"case": f"{'compacted' if compact else 'masked'} {n}, half pruned at "
                         f"step {eval_every}", "wall_s": wall,
                 "member_steps": result.member_steps, "useful": useful, "peak_mib": float("nan")})
  print(f"# lora_population  {datetime.date.today()}  {jax.devices()[0].device_kind}  "
        f"({platform.processor() or platform.machine()}), preset {args.preset}, "
        f"{args.steps} steps, batch {batch}")
  print("| case | wall s | member-steps computed | useful member-steps/s | peak MiB |")
  print("|---|---:|---:|---:|---:|")
  for row in rows:
    print(f"| {row['case']} | {row['wall_s']:.2f} | {row['member_steps']} | "
          f"{row['useful'] / row['wall_s']:.1f} | {row['peak_mib']:.1f} |")
  return rows


if __name__ == "__main__":
  main()
