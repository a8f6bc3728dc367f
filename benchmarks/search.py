"""Many trials at once, and which searcher finds a good configuration sooner.

``python -m benchmarks.search [--preset tiny|small|full] [--part all|population|samplers]
[--members N] [--steps N] [--batch-size N] [--repeats N] [--out FILE]``; the default
preset is ``full`` when JAX sees a GPU, else ``small``.

**(a) population vs sequential.** ``members`` configurations of an MLP (784-256-10 on the
digits' 28 x 28 view in ``small`` / ``full``) differing in learning rate, momentum and
weight decay (heavy-ball momentum + L2), trained for ``steps`` steps of ``batch_size``:

* *population*: one ``bigtune_jax.tune.train_population`` call, all members vmapped in
  one jitted ``lax.scan``, the batch shared. On a CPU its default vmaps cache-sized
  chunks of members (``lax.map`` over the chunks, see ``tune.population.programs.choose_chunk``); the
  "all vmapped" row forces one vmap over every member, as on an accelerator;
* *sequential*: the same configurations one after another, each a ``train_population``
  call with one member: its own jitted ``lax.scan`` loop, compiled once for the first
  trial and reused by the others (hyperparameters are traced arrays), so the baseline
  pays no per-trial compile either.

Each mode is timed on a second set of hyperparameters (the first call compiles; its time
is "1st call s"), end to end: data indices, init, training, one evaluation, the result on
the host; the modes take turns ``repeats`` times and each keeps its fastest time. The members' final validation losses of the two modes are compared
as a check that they trained the same configurations.

**(b) TPE vs random search** (needs optuna; skipped, with a note, where it is missing):
``OptunaSearch(sampler="tpe")`` and ``OptunaSearch(sampler="random")`` over learning rate,
momentum, weight decay, hidden units and layers of an MLP on the 8 x 8 digits, one trial
at a time (ask, train ``tpe_steps`` steps of ``batch_size``, tell the validation
accuracy), ``tpe_trials`` trials for each of
``tpe_seeds`` seeds; the table gives the best validation accuracy after n trials, mean and
standard deviation over the seeds. Optuna is imported only by this part.
"""

import argparse
import functools
import statistics
import time

import jax
import numpy as np

from bigtune_jax import data
from bigtune_jax.tune import population
from bigtune_jax.tune.search import space as space_lib
from benchmarks import common
from experiments.tasks import mlp_and_loss as model_and_loss  # one per structure: reused programs
from experiments.tasks import momentum_l2  # heavy-ball momentum + L2 from traced values

PRESETS = {  # tiny: (b) searches one structure, the one (a) compiled, so it compiles nothing
    "tiny": dict(members=4, hidden=16, image_size=8, batch_size=32, steps=20, repeats=3,
                 tpe_trials=3, tpe_seeds=1, tpe_steps=20, tpe_hidden=(16,), tpe_layers=(1,)),
    "small": dict(members=64, hidden=256, image_size=28, batch_size=128, steps=40, repeats=2,
                  tpe_trials=30, tpe_seeds=3, tpe_steps=200, tpe_hidden=(32, 64, 128),
                  tpe_layers=(1, 2)),
    "full": dict(members=64, hidden=256, image_size=28, batch_size=128, steps=2000, repeats=3,
                 tpe_trials=40, tpe_seeds=5, tpe_steps=300, tpe_hidden=(32, 64, 128),
                 tpe_layers=(1, 2)),
}


def search_space(preset: dict) -> space_lib.Space:
  """Part (b)'s space: momentum SGD's three continuous values and the MLP's structure."""
  return space_lib.Space({
      "learning_rate": space_lib.LogUniform(1e-3, 1.0),
      "momentum": space_lib.Uniform(0.0, 0.99),
      "weight_decay": space_lib.LogUniform(1e-6, 1e-2),
      "hidden": space_lib.Choice(list(preset["tpe_hidden"])),
      "layers": space_lib.Choice(list(preset["tpe_layers"])),
  })


def random_hparams(rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
  return {"learning_rate": np.exp(rng.uniform(np.log(1e-3), np.log(0.3), n)),
          "momentum": rng.uniform(0.0, 0.95, n),
          "weight_decay": np.exp(rng.uniform(np.log(1e-6), np.log(1e-3), n))}


def population_vs_sequential(preset: dict) -> dict:
  """Part (a); returns the rows and the speed-up."""
  splits = data.load_dataset("digits", seed=0, image_size=preset["image_size"])
  model, loss_fn = model_and_loss(preset["hidden"], 1)
  run = functools.partial(population.train_population, model, loss_fn, momentum_l2,
                          train_data=splits["train"], val_data=splits["validation"],
                          steps=preset["steps"], batch_size=preset["batch_size"])
  rng = np.random.default_rng(0)
  warmup, timed = random_hparams(rng, preset["members"]), random_hparams(rng, preset["members"])
  member = lambda h, i: {k: v[i:i + 1] for k, v in h.items()}

  n = preset["members"]
  modes = {"population (vmap)": lambda h: run(h)}
  if jax.default_backend() == "cpu":  # the default vmaps cache-sized chunks; all at once too
    modes = {"population (default chunks)": lambda h: run(h),
             "population (all vmapped)": lambda h: run(h, member_chunk=n)}
  modes["sequential"] = lambda h: [run(member(h, i)) for i in range(n)]
  rows, results = [], {}
  for mode, fn in modes.items():
    start = time.perf_counter()
    run(member(warmup, 0)) if mode == "sequential" else fn(warmup)  # compiles
    rows.append({"mode": mode, "first_s": time.perf_counter() - start, "times": []})
  for _ in range(preset["repeats"]):  # interleaved, so that a busy machine slows all alike
    for row, (mode, fn) in zip(rows, modes.items()):
      start = time.perf_counter()
      results[mode] = fn(timed)
      row["times"].append(time.perf_counter() - start)
  for row in rows:
    row["timed_s"] = min(row.pop("times"))
  alone = results["sequential"]
  together = results[rows[0]["mode"]]
  alone_loss = np.concatenate([r.final["val_loss"] for r in alone])
  for row in rows:
    row["member_steps_per_s"] = n * preset["steps"] / row["timed_s"]
    row["speedup"] = rows[-1]["timed_s"] / row["timed_s"]
  return {"rows": rows, "speedup": rows[0]["speedup"],
          "max_val_loss_difference": float(np.max(np.abs(together.final["val_loss"]
                                                         - alone_loss))),
          "best_val_accuracy": float(together.final["val_accuracy"].max())}


def _objective(params: dict, space: space_lib.Space, splits, preset: dict) -> float:
  model, loss_fn = model_and_loss(params["hidden"], params["layers"])
  continuous, _ = space.partition(params)
  result = population.train_population(model, loss_fn, momentum_l2,
                                       {k: [v] for k, v in continuous.items()},
                                       splits["train"], splits["validation"],
                                       steps=preset["tpe_steps"],
                                       batch_size=preset["batch_size"])
  return float(result.final["val_accuracy"][0])


def tpe_vs_random(preset: dict) -> dict:
  """Part (b): best validation accuracy after n trials, per sampler and seed."""
  import optuna  # pylint: disable=g-import-not-at-top
  from bigtune_jax.tune.search.optuna_search import OptunaSearch  # pylint: disable=g-import-not-at-top
  optuna.logging.set_verbosity(optuna.logging.WARNING)
  splits = data.load_dataset("digits", seed=0)  # the native 8 x 8 view, as experiments.tune
  space = search_space(preset)
  values = {}
  for sampler in ("tpe", "random"):
    values[sampler] = []
    for seed in range(preset["tpe_seeds"]):
      searcher = OptunaSearch(space, seed=seed, sampler=sampler)
      run = []
      for _ in range(preset["tpe_trials"]):
        trial = searcher.ask(1)[0]
        run.append(_objective(trial.params, space, splits, preset))
        searcher.tell(trial, run[-1])
      values[sampler].append(run)
  curves = {k: [np.maximum.accumulate(run).tolist() for run in v] for k, v in values.items()}
  return {"values": values, "curves": curves}


def _mean_std(values: list[float]) -> str:
  spread = statistics.pstdev(values) if len(values) > 1 else 0.0
  return f"{statistics.mean(values):.4f} ± {spread:.4f}"


def _sampler_table(part: dict, trials: int) -> list[str]:
  """Best-so-far after n trials; then the mean accuracy of the trials after TPE's 10
  random start-up trials (what the model-based proposals are worth on average)."""
  marks = sorted({n for n in (1, 5, 10, 20, 30, 40, 50, trials) if n <= trials})
  lines = ["| trials | TPE best val acc | random best val acc |", "|---:|---:|---:|"]
  for n in marks:
    cells = [_mean_std([c[n - 1] for c in part["curves"][s]]) for s in ("tpe", "random")]
    lines.append(f"| {n} | {cells[0]} | {cells[1]} |")
  if trials > 10:
    cells = [_mean_std([statistics.mean(run[10:]) for run in part["values"][s]])
             for s in ("tpe", "random")]
    lines.append(f"| mean of trials 11-{trials} | {cells[0]} | {cells[1]} |")
  return lines


def main(argv=None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--preset", choices=sorted(PRESETS),
                      help="default: full on a GPU, else small")
  parser.add_argument("--part", choices=("all", "population", "samplers"), default="all")
  parser.add_argument("--out", help="also write the results as JSON to this file")
  for flag in ("members", "steps", "batch_size", "repeats"):
    parser.add_argument("--" + flag.replace("_", "-"), type=int, help="override the preset's")
  args = parser.parse_args(argv)
  preset_name = args.preset or ("full" if jax.default_backend() == "gpu" else "small")
  preset = dict(PRESETS[preset_name])
  for flag in ("members", "steps", "batch_size", "repeats"):
    if getattr(args, flag) is not None:
      if getattr(args, flag) < 1:
        parser.error(f"--{flag.replace('_', '-')} must be >= 1, got {getattr(args, flag)}")
      preset[flag] = getattr(args, flag)
  result = {"preset": preset_name, **preset, "device": str(jax.devices()[0].device_kind),
            "platform": jax.default_backend(), "jax": jax.__version__}
  print(f"benchmarks.search, preset {preset_name} on {result['device']} "
        f"({result['platform']}), jax {jax.__version__}")
  if args.part in ("all", "population"):
    part = population_vs_sequential(preset)
    result["population"] = part
    print(f"\n(a) {preset['members']} members, MLP {preset['image_size'] ** 2}-"
          f"{preset['hidden']}-10, batch {preset['batch_size']}, {preset['steps']} steps")
    print("| mode | 1st call s | timed s | member-steps/s | speed-up |\n"
          "|---|---:|---:|---:|---:|")
    for row in part["rows"]:
      print(f"| {row['mode']} | {row['first_s']:.2f} | {row['timed_s']:.3f} | "
            f"{row['member_steps_per_s']:.0f} | {row['speedup']:.2f}x |")
    print(f"speed-up (sequential / population): {part['speedup']:.1f}x; members' val loss, "
          f"population vs alone: max |diff| {part['max_val_loss_difference']:.2e}")
  if args.part in ("all", "samplers"):
    try:
      import optuna  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import
    except ImportError:
      print("\n(b) skipped: optuna is not installed")
    else:
      start = time.perf_counter()
      part = tpe_vs_random(preset)
      part["wall_s"] = time.perf_counter() - start
      result["samplers"] = part
      print(f"\n(b) TPE vs random, {preset['tpe_trials']} trials x {preset['tpe_seeds']} "
            f"seeds, {preset['tpe_steps']} steps each ({part['wall_s']:.0f} s)")
      print("\n".join(_sampler_table(part, preset["tpe_trials"])))
  common.save(args.out, result, default=float)
  return result


if __name__ == "__main__":
  main()
