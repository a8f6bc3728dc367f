"""Search that wins: at the same wall-clock budget, which search finds the better model.

``python -m benchmarks.search_quality --workdir DIR [--quick | --preset small|full]
[--tasks gpt,lora] [--methods bt,optuna_median,...] [--seeds N] [--budget S]``

Two tasks that do not saturate within the budget (``search_quality_tasks.py``): LoRA
fine-tuning of ``finetune_lm``'s pretrained small Llama (winner's test perplexity) and
``tune_lm``'s GPT from scratch (winner's test bits per byte), both scored by validation
loss. Five searches over the same space, the same steps per trial and evaluation cadence
(``search_quality_methods.py``): ``bt`` (TPE asking populations, pruning inside them),
``optuna_median`` / ``optuna_hyperband`` (one trial at a time through ``fit``), ``random``
and ``ray`` (Ray Tune ASHA + OptunaSearch, concurrency = cores; needs the ``bench`` extra,
skipped with a note where Ray is missing).

Every (task, method, seed) runs in a fresh Python process with JAX's persistent
compilation cache off, so each pays its own compiles; the clock starts once the data and
the pretrained model are loaded, before the first compilation. Seeds take turns over the
methods, so a machine's load falls on all of them alike. Output (``--workdir``):
``search_quality.json`` (every run), ``search_quality.png`` (median and inter-quartile band
of the best-so-far validation loss against seconds) and ``search_quality.md`` (the median
best at 25 / 50 / 100 % of the budget, the winners' test metric as median [min, max],
trials started / finished / pruned and member-steps computed, medians over seeds).
"""

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

from benchmarks import common

# bt asks one leader per population (leaders=1): every population then holds `size` members
# of one structure, so each structure compiles one program; refill: a program runs
# refill * size trials, its freed slots taking new proposals (a task without structure: one
# program for the whole budget) (a compile costs ~20 times a
# trial's training in the small GPT on a CPU; RESULTS.md)
PRESETS = {  # per task: steps per trial, evaluation cadence, sizes; budgets in seconds
    "quick": dict(seeds=1, budget=12, leaders=1, size=3, refill=3, gpt=dict(
        steps=20, eval_every=10, batch_size=8, block_size=32, head_size=16, n_layers=[1],
        widths=[16, 32], eval_windows=64), lora=dict(steps=20, eval_every=10,
        base_preset="tiny", eval_windows=64)),
    "small": dict(seeds=3, budget=60, leaders=1, size=4, refill=3, gpt=dict(
        steps=60, eval_every=20, batch_size=16, block_size=64, head_size=16, n_layers=[1, 2],
        widths=[32, 64], eval_windows=128), lora=dict(steps=60, eval_every=20,
        base_preset="tiny", eval_windows=128)),
    "full": dict(seeds=5, budget=300, leaders=1, size=6, refill=3, gpt=dict(
        steps=150, eval_every=30, batch_size=16, block_size=64, head_size=16,
        n_layers=[1, 2, 3], widths=[32, 64, 96], eval_windows=256), lora=dict(
        steps=100, eval_every=20, base_preset="small", eval_windows=256)),
}
METHODS = ("bt", "optuna_median", "optuna_hyperband", "random", "ray")
FRACTIONS = (0.25, 0.5, 1.0)


def run_one(task_name: str, method: str, seed: int, preset: dict, workdir: str) -> dict:
  """One search in this process (``--one``): the task loaded, then the clock."""
  import jax  # pylint: disable=g-import-not-at-top
  from benchmarks import search_quality_methods as methods  # pylint: disable=g-import-not-at-top
  from benchmarks import search_quality_tasks as tasks  # pylint: disable=g-import-not-at-top
  jax.config.update("jax_enable_compilation_cache", False)  # every run pays its compiles
  task = tasks.build(task_name, preset[task_name], workdir)
  budget, clock = preset["budget"], preset.get("clock", "wall")
  if method == "bt":
    result = methods.run_bt(task, budget, seed, preset["leaders"], preset["size"], clock,
                            preset.get("refill"))
  elif method == "ray":
    result = methods.run_ray(task, budget, seed, workdir)
  else:
    result = methods.run_single(task, budget, seed, method, clock)
  return {"task": task_name, "method": method, "seed": seed, "budget_s": budget,
          "clock": clock, "metric": task.metric, **result}


def _spawn(task_name, method, seed, preset, workdir) -> dict | None:
  """``run_one`` in a fresh process; None (with its error shown) if it failed."""
  out = os.path.join(workdir, f"run_{task_name}_{method}_{seed}.json")
  env = {**os.environ, "JAX_ENABLE_COMPILATION_CACHE": "false",
         "PYTHONPATH": os.pathsep.join(filter(None, [os.getcwd(),
                                                     os.environ.get("PYTHONPATH")]))}
  env.pop("JAX_COMPILATION_CACHE_DIR", None)
  command = [sys.executable, "-m", "benchmarks.search_quality", "--one", task_name, method,
             str(seed), "--preset-json", json.dumps(preset), "--workdir", workdir, "--out", out]
  done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
  if done.returncode:
    print(f"{task_name}/{method}/seed {seed} failed:\n{done.stderr[-3000:]}", file=sys.stderr)
    return None
  with open(out) as f:
    return json.load(f)


def best_at(curve, seconds: float) -> float:
  """The best-so-far validation loss at ``seconds`` (inf before the first finished trial)."""
  values = [v for t, v in curve if t <= seconds]
  return min(values) if values else np.inf


def summarize(runs: list[dict]) -> dict:
  """Per task and method, medians over seeds (and the test metric's range)."""
  table = {}
  for run in runs:
    table.setdefault(run["task"], {}).setdefault(run["method"], []).append(run)
  summary = {}
  for task, by_method in table.items():
    for method, group in by_method.items():
      budget = group[0]["budget_s"]
      tests = [r["test_metric"] for r in group if r["test_metric"] is not None]
      summary.setdefault(task, {})[method] = {
          "seeds": len(group), "metric": group[0]["metric"],
          **{f"best_at_{int(f * 100)}": float(np.median([best_at(r["curve"], f * budget)
                                                          for r in group]))
             for f in FRACTIONS},
          "test_median": float(np.median(tests)) if tests else None,
          "test_range": [min(tests), max(tests)] if tests else None,
          **{k: float(np.median([r[k] for r in group]))
             for k in ("started", "finished", "pruned", "member_steps")}}
    summary[task]["bt_reaches_best_rival_at"] = _reach(by_method)
  return summary


def _reach(by_method: dict) -> float | None:
  """The fraction of the budget at which bt's median best-so-far reaches the best rival's
  median final validation loss (None if it never does, or without both)."""
  if "bt" not in by_method or len(by_method) < 2:
    return None
  budget = by_method["bt"][0]["budget_s"]
  target = min(np.median([best_at(r["curve"], budget) for r in group])
               for method, group in by_method.items() if method != "bt")
  grid = np.linspace(0, budget, 201)
  median = [np.median([best_at(r["curve"], t) for r in by_method["bt"]]) for t in grid]
  hit = [t for t, v in zip(grid, median) if np.isfinite(v) and v <= target]
  return float(hit[0] / budget) if hit else None


def plot(runs: list[dict], path: str) -> None:
  """Median and inter-quartile band of best-so-far validation loss against seconds."""
  from bigtune_jax.train.metrics import png_figure  # pylint: disable=g-import-not-at-top
  names = sorted({r["task"] for r in runs})
  with png_figure(path, size=(6 * len(names), 4)) as figure:
    for axes, task in zip(np.atleast_1d(figure.subplots(1, len(names))), names):
      for method in METHODS:
        group = [r for r in runs if r["task"] == task and r["method"] == method]
        if not group:
          continue
        grid = np.linspace(0, group[0]["budget_s"], 101)
        values = np.array([[best_at(r["curve"], t) for t in grid] for r in group])
        values[~np.isfinite(values)] = np.nan  # before the first finished trial
        low, mid, high = (np.percentile(values, q, axis=0) for q in (25, 50, 75))
        axes.plot(grid, mid, label=method)
        axes.fill_between(grid, low, high, alpha=0.2)
      axes.set(xlabel=f"{runs[0].get('clock', 'wall')} seconds (compiles included)",
               ylabel="best validation loss so far",
               title=task)
      axes.legend()
    figure.tight_layout()


def report(summary: dict, command: str, note: str) -> str:
  """The markdown table of :func:`summarize`."""
  lines = [f"`{command}` ({note})", ""]
  for task, by_method in summary.items():
    reach = by_method.get("bt_reaches_best_rival_at")
    lines += [f"**{task}** (bt reaches the best rival's final validation loss at "
              f"{'never' if reach is None else f'{reach:.0%}'} of the budget)", "",
              "| method | best val @25% | @50% | @100% | winner's test (median [min, max]) "
              "| started | finished | pruned | member-steps |", "|---|---:|---:|---:|---|---:|"
              "---:|---:|---:|"]
    for method, row in by_method.items():
      if method == "bt_reaches_best_rival_at":
        continue
      test = ("—" if row["test_median"] is None else f"{row['test_median']:.4f} "
              f"[{row['test_range'][0]:.4f}, {row['test_range'][1]:.4f}] {row['metric']}")
      lines.append(f"| {method} | {row['best_at_25']:.4f} | {row['best_at_50']:.4f} | "
                   f"{row['best_at_100']:.4f} | {test} | {row['started']:g} | "
                   f"{row['finished']:g} | {row['pruned']:g} | {row['member_steps']:g} |")
    lines.append("")
  return "\n".join(lines)


def _methods(names: str) -> list[str]:
  methods = [m for m in names.split(",") if m]
  unknown = sorted(set(methods) - set(METHODS))
  if unknown or not methods:
    raise ValueError(f"--methods takes some of {', '.join(METHODS)}, got {names!r}")
  if "ray" in methods:
    try:
      import ray  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import
    except ImportError:
      print("ray is not installed (pip install -e .[bench]): ray skipped", file=sys.stderr)
      methods.remove("ray")
  return methods


def parse(argv):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--workdir", required=True)
  parser.add_argument("--preset", choices=sorted(PRESETS), default="small")
  parser.add_argument("--quick", action="store_true", help="--preset quick (a smoke test)")
  parser.add_argument("--tasks", default="gpt,lora")
  parser.add_argument("--methods", default=",".join(METHODS))
  parser.add_argument("--seeds", type=int, help="override the preset's")
  parser.add_argument("--budget", type=float, help="seconds per search; override the preset's")
  parser.add_argument("--note", default="", help="the machine's load, for the report")
  parser.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                      help="budget in wall seconds, or in the search process's CPU seconds "
                           "(less disturbed by a shared machine; not with ray)")
  parser.add_argument("--one", nargs=3, metavar=("TASK", "METHOD", "SEED"), help=argparse.SUPPRESS)
  parser.add_argument("--preset-json", help=argparse.SUPPRESS)
  parser.add_argument("--out", help=argparse.SUPPRESS)
  args = parser.parse_args(argv)
  tasks = [t for t in args.tasks.split(",") if t]
  if not tasks or set(tasks) - {"gpt", "lora"}:
    parser.error(f"--tasks takes gpt and/or lora, got {args.tasks!r}")
  for name in ("seeds", "budget"):
    if getattr(args, name) is not None and getattr(args, name) <= 0:
      parser.error(f"--{name} must be > 0, got {getattr(args, name)}")
  if args.quick:
    args.preset = "quick"
  if args.clock == "cpu" and "ray" in args.methods.split(","):
    parser.error("--clock cpu counts this process's CPU time; Ray's trials run in other "
                 "processes: use --clock wall with ray")
  return args, tasks


def main(argv=None) -> dict:
  args, task_names = parse(argv)
  if args.one:
    task_name, method, seed = args.one
    result = run_one(task_name, method, int(seed), json.loads(args.preset_json), args.workdir)
    common.save(args.out, result)
    return result
  preset = dict(PRESETS[args.preset])
  preset.update({k: v for k, v in (("seeds", args.seeds), ("budget", args.budget)) if v},
                clock=args.clock)
  methods = _methods(args.methods)
  os.makedirs(args.workdir, exist_ok=True)
  if "lora" in task_names:
    from benchmarks import search_quality_tasks as tasks  # pylint: disable=g-import-not-at-top
    tasks.ensure_base(preset["lora"], args.workdir)  # pretrained once, outside every budget
  runs, start = [], time.time()
  for seed in range(preset["seeds"]):
    for task_name in task_names:
      for method in methods:
        run = _spawn(task_name, method, seed, preset, args.workdir)
        if run is not None:
          runs.append(run)
  summary = summarize(runs)
  command = common.command("benchmarks.search_quality", argv)
  note = (f"{time.strftime('%Y-%m-%d', time.gmtime())}, {os.cpu_count()} CPU cores, "
          f"{preset['budget']:g} {args.clock} s per search, {preset['seeds']} seeds; {args.note}")
  text = report(summary, command, note)
  result = {"command": command, "note": note, "preset": preset, "summary": summary,
            "runs": runs, "wall_s": time.time() - start}
  common.save(os.path.join(args.workdir, "search_quality.json"), result)
  with open(os.path.join(args.workdir, "search_quality.md"), "w") as f:
    f.write(text + "\n")
  if runs:
    plot(runs, os.path.join(args.workdir, "search_quality.png"))
  print(text)
  return result


if __name__ == "__main__":
  main()
