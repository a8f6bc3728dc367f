"""The main job (seed 003 §3): tune an MLP on the bundled digits, then train the winner.

  python -m experiments.tune --workdir runs/tune [--preset tiny|small|full] [--set key=value]

1. **Search** (seed 003 §3.1-3.3: parameters, structure, training strategy). The space is
   learning rate, momentum, weight decay (heavy-ball momentum + L2: the continuous values)
   and hidden units, layers, batch size (the structure: each value is another program).
   Every round the searcher (TPE, ``bigtune_jax.tune.OptunaSearch``; seeded random search
   if optuna is missing) proposes ``leaders`` trials; each leader's structure is then
   filled up to a population of ``population`` trials (Optuna's ``enqueue_trial`` fixes
   the structure and TPE proposes the continuous values; other searchers' batches are
   grouped by structure). Each population is trained by
   ``bigtune_jax.tune.train_population``: one vmapped, jit-compiled program, reused by
   every later population of the same structure; trials must not recompile. The loop is
   the library's one call, ``bigtune_jax.tune.search_populations``. Each trial's
   validation accuracy after ``search_epochs`` epochs is told to the searcher
   (intermediate ones are reported, for ``--set pruner=median``).
   Many workers, on one machine or many, share one study with ``--set storage=URL``
   (``postgresql://...``, or ``journal:PATH`` on a shared filesystem): each trains its own
   populations until the study's budget is met; those started with ``--set role=worker``
   then exit, and the one run without it waits for them and alone does steps 2 and 3.
2. **Final training** of the best trial (highest validation accuracy, ties to the lower
   validation loss) with ``bigtune_jax.train.fit``, from ``final_seeds`` seeds (3; the
   initial weights and the data order): up to ``final_epochs`` epochs, evaluated every
   epoch, ``bt.reduce_on_plateau`` and ``bt.EarlyStopping`` on the validation loss (best
   parameters restored), checkpoints in ``WORKDIR/final`` (``final/seed_K`` for the others;
   a run started again on the same workdir resumes: the study from ``study.log``, the
   training from its checkpoint). Then the held-out test split. The reported test accuracy
   and loss are the median over the seeds (and their range): one retrain moves by several
   test examples when its initial weights change in the last bit (another machine's init:
   early stopping then stops a few steps apart), the median of three far less.
3. **Report**: ``report.md`` with ``search_progress.png``, ``hyperparameters.png`` and the
   winner's curves (``final/*.png``), and ``summary.json``.

Data: the native 8 x 8 digits (64 inputs); the 28 x 28 upsampled view holds the same
information, was no more accurate in our runs and costs 12 times the compute.
"""

import json
import math
import os
import shutil
import time

import jax
import numpy as np
import optax

import bigtune_jax as bt
from bigtune_jax import data
from bigtune_jax import train
from bigtune_jax.tune.search import space as space_lib
from bigtune_jax.train.metrics import png_figure
from experiments import cli
from experiments import report
from experiments import searching
from experiments import tasks

_SPACE = dict(lr_range=(1e-3, 0.5), momentum_max=0.95, weight_decay_range=(1e-6, 1e-3))
# The winner is retrained from 3 seeds and its figures are their median; init_scale
# multiplies its initial weights (1.0; a hook for the robustness test).
_FINAL = dict(final_seeds=3, init_scale=1.0)
PRESETS = {
    "tiny": dict(_SPACE, hidden=(16,), layers=(1,), batch_sizes=(64,), rounds=1, leaders=2,
                 population=2, search_epochs=1, final_epochs=2, patience=2, sampler="tpe",
                 pruner="none", seed=0, **_FINAL, **searching.STUDY),
    # 4 rounds x 2 leaders x 8 = 64 trials, at most 8 structures compiled.
    "small": dict(_SPACE, hidden=(64, 128, 256), layers=(1, 2), batch_sizes=(32, 64, 128),
                  rounds=4, leaders=2, population=8, search_epochs=10, final_epochs=60,
                  patience=10, sampler="tpe", pruner="none", seed=0, **_FINAL,
                  **searching.STUDY),
    "full": dict(_SPACE, hidden=(64, 128, 256, 512, 1024), layers=(1, 2, 3),
                 batch_sizes=(16, 32, 64, 128), rounds=8, leaders=4, population=64,
                 search_epochs=30, final_epochs=200, patience=20, sampler="tpe",
                 pruner="median", seed=0, **_FINAL, **searching.STUDY),
}
CONTINUOUS = ("learning_rate", "momentum", "weight_decay")
STRUCTURE = ("hidden", "layers", "batch_size")


def make_space(config) -> space_lib.Space:
  return space_lib.Space({
      "learning_rate": space_lib.LogUniform(*config["lr_range"]),
      "momentum": space_lib.Uniform(0.0, config["momentum_max"]),
      "weight_decay": space_lib.LogUniform(*config["weight_decay_range"]),
      "hidden": space_lib.Choice(list(config["hidden"])),
      "layers": space_lib.Choice(list(config["layers"])),
      "batch_size": space_lib.Choice(list(config["batch_sizes"])),
  })


momentum_l2 = tasks.momentum_l2  # the optimizer of one member, from its traced values
model_and_loss = tasks.mlp_and_loss  # one model and loss object per structure


def population_task(splits, config):
  """``structure -> bt.tune.PopulationTask``: the MLP of ``hidden`` x ``layers`` trained
  ``search_epochs`` epochs in batches of ``batch_size``, evaluated about 5 times."""

  def make(structure) -> bt.tune.PopulationTask:
    model, loss_fn = model_and_loss(structure["hidden"], structure["layers"])
    steps_per_epoch = splits["train"].steps_per_epoch(structure["batch_size"])
    return bt.tune.PopulationTask(
        model, loss_fn, momentum_l2, splits["train"], splits["validation"],
        steps=config["search_epochs"] * steps_per_epoch, batch_size=structure["batch_size"],
        eval_every=steps_per_epoch * max(1, config["search_epochs"] // 5))

  return make


def search(searcher, splits, config, workdir) -> tuple[list[dict], float]:
  """``bt.tune.search_populations`` until the study holds ``rounds * leaders * population``
  finished trials (an earlier run's and other workers' count), each population's records
  appended to ``workdir/trials.jsonl``; returns every finished trial of the study (of this
  run where there is no study), in trial order, and the wall time."""
  start, size = time.time(), config["population"]
  path = os.path.join(workdir, "trials.jsonl")

  def append(rows):
    with open(path, "a") as f:
      f.writelines(json.dumps({"number": r["number"], **r["params"],
                               "val_accuracy": r["val_accuracy"], "val_loss": r["val_loss"],
                               "pruned": r["state"] == "pruned"}) + "\n" for r in rows)

  bt.tune.search_populations(
      searcher, population_task(splits, config), size=size,
      trials=config["rounds"] * config["leaders"] * size, leaders=config["leaders"],
      metric="val_accuracy", seed=config["seed"], compact=False,  # one program per structure
      role=config["role"], on_population=append)
  if isinstance(searcher, bt.tune.OptunaSearch):
    records = [{"number": r["number"], **{k: r[k] for k in CONTINUOUS + STRUCTURE},
                "val_accuracy": r["val_accuracy"], "val_loss": r["val_loss"],
                "pruned": r["state"] == "pruned"} for r in searcher.records]
  else:
    with open(path) as f:
      records = [json.loads(line) for line in f if line.strip()]
  return sorted(records, key=lambda r: r["number"]), time.time() - start


def best_trial(records: list[dict]) -> dict:
  finite = [r for r in records if np.isfinite(r["val_loss"])] or records
  return max(finite, key=lambda r: (r["val_accuracy"], -r["val_loss"]))


def train_best(best: dict, splits, config, workdir) -> dict:
  """The winner trained again from ``final_seeds`` seeds (``seed``, ``seed + 1``, ...: the
  initial weights, the data order), each with fit (plateau, early stopping, checkpoints) and
  tested. The figures are the median over the seeds (and their range): one retrain's test
  accuracy moves by several test examples when its initial weights move by one ulp (an
  early-stopping step earlier or later), the median of three far less. The model kept (its
  curves, ``WORKDIR/final``) is the first seed's, started from the search's own init."""
  finals = [_train_winner(best, splits, config, workdir, k) for k in range(config["final_seeds"])]
  summary = dict(finals[0])
  for key in ("test_accuracy", "test_loss"):
    values = [final[key] for final in finals]
    summary.update({key: float(np.median(values)), f"{key}_range": [min(values), max(values)],
                    f"{key}_per_seed": values})
  return summary


def _train_winner(best: dict, splits, config, workdir, k: int) -> dict:
  """The winner from seed ``seed + k`` (its initial weights times ``init_scale``, a hook
  to test the figures' robustness), in ``WORKDIR/final`` (``k = 0``) or ``final/seed_K``."""
  model, loss_fn = model_and_loss(best["hidden"], best["layers"])
  steps_per_epoch = splits["train"].steps_per_epoch(best["batch_size"])
  seed = config["seed"] + k
  # The initial weights of seed `seed`, as the search starts a member (the compiled init).
  winner = {name: best[name] for name in CONTINUOUS}
  params = bt.tune.initial_state(model, loss_fn, momentum_l2, winner, splits["train"],
                                 seed=seed).params
  params = jax.tree.map(lambda w: w * np.float32(config["init_scale"]), params)
  fit_config = train.FitConfig(steps=config["final_epochs"] * steps_per_epoch,
                               batch_size=best["batch_size"], eval_every=steps_per_epoch,
                               seed=seed, checkpoint_every_evals=5, progress=False)
  tx = optax.chain(tasks.with_logged_rate(momentum_l2, winner),
                   bt.reduce_on_plateau(factor=0.5, patience=3))
  final_dir = os.path.join(workdir, "final", *([f"seed_{k}"] if k else []))
  _start_over_if_changed(final_dir, {**{name: best[name] for name in CONTINUOUS + STRUCTURE},
                                     "seed": seed, "init_scale": config["init_scale"]})
  return report.train_and_evaluate(
      "tune_final", "-", model, params, tx, loss_fn, splits, fit_config, final_dir,
      early_stopping=bt.EarlyStopping(patience=config["patience"], restore_best=True))


def _start_over_if_changed(final_dir: str, winner: dict) -> None:
  """A resumed search may crown another winner: its training then starts from scratch."""
  path = os.path.join(final_dir, "winner.json")
  if os.path.exists(path):
    with open(path) as f:
      if json.load(f) == winner:
        return  # the same winner: fit resumes from its checkpoint
    print(f"the best configuration changed: {final_dir} starts over")
  shutil.rmtree(final_dir, ignore_errors=True)
  os.makedirs(final_dir)
  with open(path, "w") as f:
    json.dump(winner, f)


def plot_search(records: list[dict], workdir: str) -> None:
  """``search_progress.png`` and ``hyperparameters.png``."""
  accuracy = np.array([r["val_accuracy"] for r in records])
  with png_figure(os.path.join(workdir, "search_progress.png"), layout="constrained") as fig:
    ax = fig.add_subplot()
    ax.scatter(np.arange(1, len(records) + 1), accuracy, s=10, alpha=0.5, label="trial")
    ax.plot(np.arange(1, len(records) + 1), np.maximum.accumulate(accuracy), color="C3",
            label="best so far")
    ax.set(xlabel="trial", ylabel="validation accuracy", title="search progress",
           ylim=(max(0.0, np.min(accuracy) - 0.02), 1.0))
    ax.grid(True, alpha=0.3)
    ax.legend()
  with png_figure(os.path.join(workdir, "hyperparameters.png"), size=(10.0, 6.0),
                    layout="constrained") as fig:
    for i, name in enumerate(CONTINUOUS + STRUCTURE):
      ax = fig.add_subplot(2, 3, i + 1)
      ax.scatter([r[name] for r in records], accuracy, s=10, alpha=0.6)
      if name in ("learning_rate", "weight_decay"):
        ax.set_xscale("log")
      ax.set(xlabel=name, ylabel="val accuracy",
             ylim=(max(0.0, np.min(accuracy) - 0.02), 1.0))
      ax.grid(True, alpha=0.3)


def write_report(workdir: str, summary: dict, records: list[dict]) -> None:
  top = sorted(records, key=lambda r: (-r["val_accuracy"], r["val_loss"]))[:10]
  names = CONTINUOUS + STRUCTURE
  lines = [
      "# Tuning an MLP on the digits", "",
      f"Test accuracy **{summary['test_accuracy']:.4f}** (test loss {summary['test_loss']:.4f};"
      f" the median of the winner retrained from {summary['final_seeds']} seeds, range "
      f"{summary['test_accuracy_range'][0]:.4f}-{summary['test_accuracy_range'][1]:.4f})"
      f" after {summary['trials']} trials, {summary['wall_s']:.0f} s in all "
      f"(search {summary['search_wall_s']:.0f} s, final training "
      f"{summary['final_wall_s']:.0f} s), searcher {summary['searcher']}, preset "
      f"`{summary['preset']}`.", "",
      "Best configuration: " + ", ".join(f"`{k}={v:.4g}`" if isinstance(v, float) else
                                          f"`{k}={v}`" for k, v in summary["best_config"].items()),
      "", "## Search progress", "", "![search progress](search_progress.png)", "",
      "## Hyperparameters against validation accuracy", "",
      "![hyperparameters](hyperparameters.png)", "", "## Top trials", "",
      "| trial | " + " | ".join(names) + " | val acc | val loss |",
      "|---:|" + "---:|" * (len(names) + 2)]
  for r in top:
    cells = [f"{r[k]:.3g}" if isinstance(r[k], float) else str(r[k]) for k in names]
    lines.append(f"| {r['number']} | " + " | ".join(cells) +
                 f" | {r['val_accuracy']:.4f} | {r['val_loss']:.4f} |")
  lines += ["", "## The winner's training (fit, plateau, early stopping)", "",
            f"The first seed's: {summary['steps']} steps, stopped early: "
            f"{summary['stopped_early']}.", ""]
  lines += [f"![{name}](final/{name}.png)" for name in ("loss", "accuracy", "learning_rate")
            if os.path.exists(os.path.join(workdir, "final", f"{name}.png"))]
  with open(os.path.join(workdir, "report.md"), "w") as f:
    f.write("\n".join(lines) + "\n")


def check_config(config, train_examples: int) -> None:
  """Every setting, before a file is written; the message names the --set field."""
  for name in ("rounds", "leaders", "population", "search_epochs", "final_epochs", "patience",
               "final_seeds"):
    value = config[name]
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
      raise ValueError(f"--set {name} must be an integer >= 1, got {value!r}")
  for name, low_min in (("lr_range", 0.0), ("weight_decay_range", 0.0)):
    pair = config[name]
    if len(pair) != 2 or not low_min < pair[0] < pair[1]:
      raise ValueError(f"--set {name} must be a pair LOW,HIGH with 0 < LOW < HIGH (a "
                       f"log-uniform range), got {','.join(map(str, pair))}")
  if not (math.isfinite(config["init_scale"]) and config["init_scale"] > 0):
    raise ValueError(f"--set init_scale must be a finite number > 0, got {config['init_scale']}")
  if not 0.0 <= config["momentum_max"] < 1.0:
    raise ValueError(f"--set momentum_max must lie in [0, 1), got {config['momentum_max']}")
  if not config["hidden"] or not config["layers"] or not config["batch_sizes"]:
    raise ValueError("--set hidden, layers and batch_sizes each need at least one value")
  if min(config["hidden"]) < 1 or min(config["layers"]) < 1 or min(config["batch_sizes"]) < 1:
    raise ValueError("--set hidden, layers and batch_sizes must be integers >= 1")
  if max(config["batch_sizes"]) > train_examples:
    raise ValueError(f"--set batch_sizes: {max(config['batch_sizes'])} is larger than the "
                     f"{train_examples} training examples")


def main(argv=None) -> dict:
  workdir, preset, config = cli.parse_args(argv, PRESETS, __doc__.split("\n\n")[0])
  start = time.time()
  splits = data.load_dataset("digits", seed=config["seed"])
  check_config(config, len(splits["train"]))
  # Before any file of ours: a storage that cannot be opened, or holds another study, stops here.
  searcher = searching.make_searcher(make_space(config), config, os.path.abspath(workdir),
                                     study_name="tune")
  os.makedirs(workdir, exist_ok=True)
  records, search_s = search(searcher, splits, config, os.path.abspath(workdir))
  name = f"optuna {config['sampler']}" if hasattr(searcher, "study") else "random"
  if config["role"] == "worker":
    return report.finish(workdir, {"experiment": "tune", "preset": preset, "role": "worker",
                                   "trials": len(records), "search_wall_s": round(search_s, 2),
                                   "searcher": name}, start)
  best = best_trial(records)
  final = train_best(best, splits, config, workdir)
  plot_search(records, workdir)
  summary = {
      "experiment": "tune", "preset": preset, "test_accuracy": final["test_accuracy"],
      "test_loss": final["test_loss"], "test_accuracy_range": final["test_accuracy_range"],
      "test_accuracy_per_seed": final["test_accuracy_per_seed"],
      "final_seeds": config["final_seeds"],
      "best_config": {k: best[k] for k in CONTINUOUS + STRUCTURE},
      "best_val_accuracy": best["val_accuracy"], "trials": len(records),
      "structures": len({tuple(r[k] for k in STRUCTURE) for r in records}),
      "searcher": name,
      "steps": final["steps"], "final_train_loss": final["final_train_loss"],
      "stopped_early": final["stopped_early"], "search_wall_s": round(search_s, 2),
      "final_wall_s": final["wall_s"], **report.run_facts(start), "config": config}
  write_report(workdir, summary, records)
  report.write_summary(workdir, summary)
  report.print_summary({k: v for k, v in summary.items() if k != "config"})
  return summary


if __name__ == "__main__":
  cli.run(main)
