"""Tuning a GPT language model on the bundled text (seed 003 §4.1, tuning a large language
model: its parameters, structure and training strategy).

  python -m experiments.tune_lm --workdir runs/tune_lm [--preset tiny|small|full]

One search space holds the seed's three kinds of hyperparameters:

* **parameters** (§4.1.1): the peak learning rate of Adam (``learning_rate``, meant at
  ``base_batch_size``) and the warmup (``warmup_fraction`` of the steps, for the
  warmup-cosine schedule);
* **structure** (§4.1.2): ``n_layer`` and the width ``n_embd`` of ``bt.models.GPT``
  (``n_head = n_embd / head_size``);
* **training strategy** (§4.1.3): the schedule family (``bt.tune.make_schedule``:
  warmup + cosine, constant, exponential or step decay, each decaying to a tenth) and the
  batch size, with the linear learning-rate scaling rule ``eta = eta_base * B / B_base``
  (``bt.tune.build_strategy``).

Every trial sees the same number of training tokens (``trial_tokens``; a larger batch
takes fewer steps) and is scored by its validation loss (next-byte cross-entropy, nats).
The searcher is Optuna's TPE with the median pruner fed the validation loss at each
of ``evals`` evaluations (by tokens seen) (``bt.tune.OptunaSearch``, its study in ``WORKDIR/study.log``: a run started
again resumes it; or shared by many workers with ``--set storage=URL``, as
``experiments.tune``), or seeded random search where optuna is not installed.
The search is the library's one call, ``bt.tune.search_populations``: each round asks
``leaders`` trials and fills each leader up to ``population`` trials of the same structure,
schedule and batch (TPE proposes their learning rate and warmup); each such population is
trained as one vmapped, jit-compiled program (``bt.tune.train_population``), compiled once
per structure: the continuous hyperparameters are traced arrays. The best trial is then trained for ``final_tokens``
with ``bt.train.fit`` (checkpoints, resume) and evaluated on the held-out test bytes.

Data as ``experiments.lm``: Python's pydoc topics, bytes; train / validation / test are the
first 90 % / next 5 % / last 5 % of the stream. ``summary.json`` adds ``best_config``,
``best_trial_val_loss``, ``val_perplexity`` and ``test_perplexity`` (of the final model),
``trials`` (every trial: params, value, state) and ``search_wall_s``.

Presets: ``tiny`` (CI), ``small`` (about two CPU-minutes: 12 trials of 1-2 layers, widths
32-64, 64-byte context), ``full`` (a GPU: GPT-2 small-ish shapes, 6-12 layers, widths
512-768, 1024-byte context; populations of one, trials one after another).
"""

import math
import time

import jax.numpy as jnp
import optax

from bigtune_jax import models
from bigtune_jax import train
from bigtune_jax import tune
from experiments import cli
from experiments import report
from experiments import searching
from experiments import tasks

PRESETS = {
    "tiny": dict(n_layers=(1,), widths=(32,), head_size=16, batch_sizes=(8,),
                 schedules=("warmup_cosine",), lr_range=(1e-3, 1e-2), base_batch_size=8,
                 block_size=16, trial_tokens=8 * 16 * 10, final_tokens=8 * 16 * 20, rounds=1,
                 leaders=1, population=2, evals=2, sampler="tpe", pruner="median", text="",
                 seed=0, **searching.STUDY),
    "small": dict(n_layers=(1, 2), widths=(32, 64), head_size=16, batch_sizes=(8, 16),
                  schedules=("warmup_cosine", "constant", "exponential", "step"),
                  lr_range=(3e-4, 3e-2), base_batch_size=16, block_size=64,
                  trial_tokens=16 * 64 * 100, final_tokens=16 * 64 * 300, rounds=2,
                  leaders=3, population=2, evals=3, sampler="tpe", pruner="median", text="",
                  seed=0, **searching.STUDY),
    "full": dict(n_layers=(6, 8, 12), widths=(512, 768), head_size=64, batch_sizes=(8, 16, 32),
                 schedules=("warmup_cosine", "constant", "exponential", "step"),
                 lr_range=(1e-4, 3e-3), base_batch_size=16, block_size=1024,
                 trial_tokens=16 * 1024 * 300, final_tokens=16 * 1024 * 3000, rounds=4,
                 leaders=4, population=1, evals=3, sampler="tpe", pruner="median", text="",
                 seed=0, **searching.STUDY),
}
CHECKS = {"schedules": cli.some_of(*tune.search.strategy.SCHEDULES)}


def make_space(config) -> tune.Space:
  return tune.Space({
      "learning_rate": tune.LogUniform(*config["lr_range"]),
      "schedule": tune.Choice(list(config["schedules"])),
      "warmup_fraction": tune.Conditional("schedule", ("warmup_cosine",),
                                          tune.Uniform(0.0, 0.3)),
      "n_layer": tune.Choice(list(config["n_layers"])),
      "n_embd": tune.Choice(list(config["widths"])),
      "batch_size": tune.Choice(list(config["batch_sizes"])),
  })


model_and_loss = tasks.gpt_and_loss  # one GPT and loss object per structure
strategy = tasks.gpt_strategy  # Adam on a schedule, the linear scaling rule
make_optimizer = tasks.gpt_optimizer  # hparams -> optax transform, one object per program
FINAL_LR_FRACTION = tasks.GPT_FINAL_LR_FRACTION


def population_task(splits, config):
  """``structure -> bt.tune.PopulationTask``: one structure, schedule and batch size's
  population, every trial seeing ``trial_tokens`` in ``evals`` equal chunks (the validation
  loss reported by tokens seen: comparable across batch sizes)."""

  def make(structure) -> tune.PopulationTask:
    batch_size, block_size = structure["batch_size"], config["block_size"]
    every = max(config["trial_tokens"] // (batch_size * block_size * config["evals"]), 1)
    steps = every * config["evals"]
    model, loss_fn = model_and_loss(structure["n_layer"], structure["n_embd"],
                                    config["head_size"], block_size)
    return tune.PopulationTask(
        model, loss_fn, make_optimizer(structure["schedule"], batch_size, steps,
                                       config["base_batch_size"]),
        splits["train"], splits["validation"], steps=steps, batch_size=batch_size,
        eval_every=every, report_scale=batch_size * block_size, eval_batch_size=64)

  return make


def search(splits, config, workdir):
  """``bt.tune.search_populations`` until the study holds ``rounds * leaders * population``
  finished trials (an earlier run's and other workers' count); returns the searcher."""
  searcher = searching.make_searcher(make_space(config), config, workdir, study_name="tune_lm",
                                     mode="min")
  size = config["population"]
  tune.search_populations(searcher, population_task(splits, config), size=size,
                          trials=config["rounds"] * config["leaders"] * size,
                          leaders=config["leaders"], seed=config["seed"],
                          compact=False, role=config["role"])  # one program per structure
  return searcher


def main(argv=None) -> dict:
  workdir, preset, config = cli.parse_args(argv, PRESETS, __doc__.split("\n\n")[0],
                                           checks=CHECKS)
  start = time.time()
  splits = tasks.load_text(config)
  cli.check_batch_size("batch_sizes", max(config["batch_sizes"]), splits["train"],
                       f"training windows of block_size {config['block_size']}")
  searcher = search(splits, config, workdir)
  search_wall = time.time() - start
  if config["role"] == "worker":  # the run without --set role=worker trains the best
    return report.finish(workdir, {"experiment": "tune_lm", "preset": preset, "role": "worker",
                                   "trials": len(searcher.results),
                                   "search_wall_s": round(search_wall, 2)}, start)
  best = searcher.best
  if best is None:
    raise RuntimeError("tune_lm: no trial completed (all pruned or diverged); widen lr_range "
                       "or raise trial_tokens")
  params = dict(best.params)
  steps = max(config["final_tokens"] // (params["batch_size"] * config["block_size"]), 1)
  model, loss_fn = model_and_loss(params["n_layer"], params["n_embd"], config["head_size"],
                                  config["block_size"])
  plan = strategy(params, steps, config["base_batch_size"])
  tx = optax.chain(optax.clip_by_global_norm(1.0), plan.optimizer)
  init = train.init_params(model, jnp.asarray(splits["train"]["inputs"][:1]), config["seed"])
  fit_config = train.FitConfig(steps=steps, batch_size=plan.batch_size,
                               eval_every=max(steps // 4, 1), eval_batch_size=64,
                               seed=config["seed"], progress=preset != "tiny")
  summary = report.train_and_evaluate(
      "tune_lm", preset, model, init, tx, loss_fn, splits, fit_config, workdir, extra={
          "best_config": params, "best_trial_val_loss": best.value,
          "trials": [r._asdict() for r in searcher.results],
          "searcher": type(searcher).__name__, "search_wall_s": round(search_wall, 2),
          "model_params": models.count_params(init), "config": config})
  summary.update(val_perplexity=math.exp(summary["val_loss"]),
                 test_perplexity=math.exp(summary["test_loss"]))
  return report.finish(workdir, summary, start, hide=("trials", "config"))  # wall_s: all of it


if __name__ == "__main__":
  cli.run(main)
