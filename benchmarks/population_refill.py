"""Member-steps per CPU-second, compiles included: a refilled population against sequential
trials (issue 23 item 4: "make the population at least as fast per member-step as one
trial *including* what a user pays to start it").

On the two tasks of ``benchmarks/search_quality.py`` (``search_quality_tasks``, its
``--preset``; the GPT at one structure, ``--gpt-structure``), the same ``--trials`` random
configurations (seeded, from the task's space) are trained ``steps`` steps each, evaluated
every ``eval_every``, by

* ``sequential``: one trial after another, each ``bt.train.fit`` of a state with traced
  hyperparameters (``create_train_state(..., make_optimizer=f, hparams=h)``: one compiled
  step for all trials), as an Optuna user writes it;
* ``refill N``: one population of N slots (``train_population`` /
  ``train_adapter_population`` with ``refill``): N trials start, and each slot a trial
  leaves takes the next configuration, until all have run (one program, compiled once).

Each row runs in a fresh process (no jit cache, no persistent compilation cache) and counts
the process's CPU seconds (``time.process_time``: all its threads) from before its first
compile to the end: a measure that a shared machine disturbs far less than wall seconds.
Member-steps: the trials' own steps (``trials x steps``), the useful work.

  python -m benchmarks.population_refill --workdir DIR [--preset small] [--tasks gpt,lora]
      [--slots 4,8] [--trials 16] [--repeats 1] [--warm]

``--warm`` times each row's second run in its process instead: the speed once compiled.
"""

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

from benchmarks import common

# one structure of the small GPT space (the largest): a population trains one structure
GPT_STRUCTURE = {"n_layer": 2, "n_embd": 64}


def configs(task, trials: int, seed: int) -> list[dict]:
  """``trials`` configurations drawn uniformly (log-uniformly for "log") from the space."""
  rng = np.random.default_rng(seed)
  draw = {"log": lambda lo, hi: float(np.exp(rng.uniform(np.log(lo), np.log(hi)))),
          "uniform": lambda lo, hi: float(rng.uniform(lo, hi))}
  return [{name: draw[spec[0]](spec[1], spec[2]) for name, spec in task.space.items()
           if spec[0] != "choice"} | (GPT_STRUCTURE if task.name == "gpt" else {})
          for _ in range(trials)]


def sequential(task, trials: list[dict], seed: int) -> int:
  """Each trial through ``fit``; returns the member-steps trained."""
  from bigtune_jax import train  # pylint: disable=g-import-not-at-top
  done = 0
  for params in trials:
    state, loss_fn = task.single(params, seed)
    result = train.fit(state, loss_fn, task.splits["train"], task.splits["validation"],
                       config=task.fit_config(seed))
    done += int(result.state.step)
  return done


def refill(task, trials: list[dict], seed: int, slots: int) -> int:
  """One population of ``slots`` slots refilled until every trial ran; the member-steps."""
  from bigtune_jax import tune  # pylint: disable=g-import-not-at-top
  c = task.config
  names = [n for n in trials[0] if n not in GPT_STRUCTURE]
  waiting = list(trials[slots:])

  def more(step, free):
    del step
    new, waiting[:] = waiting[:free], waiting[free:]
    return {n: [t[n] for t in new] for n in names} if new else None

  first = {n: [t[n] for t in trials[:slots]] for n in names}
  kwargs = dict(steps=c["steps"], batch_size=c["batch_size"], eval_every=c["eval_every"],
                seed=seed, refill=more, eval_batch_size=64)
  if task.name == "gpt":
    # pylint: disable=protected-access
    model, loss_fn = task._model(trials[0])
    result = tune.train_population(model, loss_fn, task._make_optimizer(), first,
                                   task.splits["train"], task.splits["validation"], **kwargs)
  else:
    result = tune.train_adapter_population(task.lora, task.loss_fn, task.base,
                                           task.make_optimizer, first, task.splits["train"],
                                           task.splits["validation"], **kwargs)
  assert len(result.trained) == len(trials) and set(result.program_sizes) == {slots}
  return int(result.trained.sum())


def run_one(task_name: str, method: str, preset: dict, trials: int, seed: int,
            workdir: str, warm: bool = False) -> dict:
  """One row, in this (fresh) process: the task loaded, then the CPU clock; ``warm``: the
  same trials run once before the clock starts (the speed once compiled)."""
  import jax  # pylint: disable=g-import-not-at-top
  from benchmarks import search_quality_tasks as tasks  # pylint: disable=g-import-not-at-top
  jax.config.update("jax_enable_compilation_cache", False)  # every row pays its compiles
  task = tasks.build(task_name, preset[task_name], workdir)
  chosen = configs(task, trials, seed)
  run = ((lambda: sequential(task, chosen, seed)) if method == "sequential"
         else lambda: refill(task, chosen, seed, int(method.split()[1])))
  if warm:
    run()
  cpu, wall = time.process_time(), time.perf_counter()
  steps = run()
  cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
  return {"task": task_name, "method": method, "warm": warm, "trials": trials,
          "member_steps": steps,
          "cpu_s": cpu, "wall_s": wall, "steps_per_cpu_s": steps / cpu,
          "load_avg_1m": os.getloadavg()[0]}


def _spawn(task_name, method, args, preset) -> dict:
  out = os.path.join(args.workdir, f"refill_{task_name}_{method.replace(' ', '')}.json")
  warm = ["--warm"] if args.warm else []
  env = {**os.environ, "JAX_ENABLE_COMPILATION_CACHE": "false",
         "PYTHONPATH": os.pathsep.join(filter(None, [os.getcwd(),
                                                     os.environ.get("PYTHONPATH")]))}
  env.pop("JAX_COMPILATION_CACHE_DIR", None)
  command = [sys.executable, "-m", "benchmarks.population_refill", "--one", task_name, method,
             "--preset-json", json.dumps(preset), "--trials", str(args.trials), "--workdir",
             args.workdir, "--out", out, *warm]
  subprocess.run(command, env=env, check=True)
  with open(out) as f:
    return json.load(f)


def report(rows: list[dict], command: str, note: str) -> str:
  lines = [f"`{command}` ({note})", "",
           "| task | method | member-steps | CPU s | wall s | member-steps / CPU s "
           "| vs sequential |",
           "|---|---|---:|---:|---:|---:|---:|"]
  for row in rows:
    base = [r for r in rows if r["task"] == row["task"] and r["method"] == "sequential"]
    ratio = row["steps_per_cpu_s"] / np.median([r["steps_per_cpu_s"] for r in base])
    lines.append(f"| {row['task']} | {row['method']} | {row['member_steps']} | "
                 f"{row['cpu_s']:.1f} | {row['wall_s']:.1f} | {row['steps_per_cpu_s']:.1f} | "
                 f"{ratio:.2f}x |")
  return "\n".join(lines)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--workdir", required=True)
  parser.add_argument("--preset", default="small")
  parser.add_argument("--tasks", default="gpt,lora")
  parser.add_argument("--slots", default="4,8", help="population sizes, comma-separated")
  parser.add_argument("--trials", type=int, default=16)
  parser.add_argument("--repeats", type=int, default=1)
  parser.add_argument("--warm", action="store_true",
                      help="time each row's second run in its process (compiles excluded)")
  parser.add_argument("--one", nargs=2, help=argparse.SUPPRESS)
  parser.add_argument("--preset-json", help=argparse.SUPPRESS)
  parser.add_argument("--out", help=argparse.SUPPRESS)
  args = parser.parse_args(argv)
  if args.one:
    row = run_one(*args.one, json.loads(args.preset_json), args.trials, 0, args.workdir,
                  args.warm)
    common.save(args.out, row)
    return row
  from benchmarks import search_quality  # pylint: disable=g-import-not-at-top
  from benchmarks import search_quality_tasks as tasks  # pylint: disable=g-import-not-at-top
  preset = search_quality.PRESETS[args.preset]
  os.makedirs(args.workdir, exist_ok=True)
  names = [t for t in args.tasks.split(",") if t]
  if "lora" in names:
    tasks.ensure_base(preset["lora"], args.workdir)  # pretrained once, outside every row
  methods = ["sequential"] + [f"refill {n}" for n in args.slots.split(",") if n]
  rows = [_spawn(name, method, args, preset) for _ in range(args.repeats) for name in names
          for method in methods]
  note = (f"{time.strftime('%Y-%m-%d', time.gmtime())}, {os.cpu_count()} CPU cores, "
          f"1-minute load average {np.median([r['load_avg_1m'] for r in rows]):.1f}"
          + ("; warm: compiles excluded" if args.warm else "; compiles included"))
  text = report(rows, common.command("benchmarks.population_refill", argv), note)
  common.save(os.path.join(args.workdir, "population_refill.json"), {"rows": rows,
                                                                     "note": note})
  print(text)
  return rows


if __name__ == "__main__":
  main()
