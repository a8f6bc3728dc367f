"""Fine-tune a pretrained language model to a new domain, and tune the fine-tuning itself
(seed 001 §4.2, fine-tuning a pretrained model on new data; §6.2-6.4, which layers to
train and at what rate; seed 003 §4.1, tuning a large language model).

Seed 001 §4.2's snippet fine-tunes a torchvision classifier with an undefined data loader;
its steps (load the pretrained model, choose what trains, train on the new data, evaluate)
are run here on a real pretrained language model, with the comparisons §6.2 asks for:

* **base**: the pretrained model, untouched;
* **full**: every weight trained (Adam, warmup + cosine);
* **head**: all frozen but the output head (``bt.finetune.freeze``);
* **lora**: LoRA adapters on q_proj / v_proj at PEFT's usual rank 8, alpha 16;
* **lora_search**: the best adapter of an Optuna search (TPE, median pruning) over the
  learning rate, alpha, rank, weight decay and the target modules, by the library's one
  call ``tune.search_populations``: each round one adapter population over the one frozen
  base (``tune.train_adapter_population``; ranks share a program through masks, pruned
  members leave it). Warmup is continuous; the target modules and the schedule (cosine or
  constant after warmup) select the program: TPE proposes them for the round's leader,
  and its followers keep them (one population of a fixed size per round).

For each: the target domain's test perplexity, wall time and trainable parameters, in
``report.md`` (table and validation curves) and ``summary.json``. The best adapter is
exported twice: merged into a Hugging Face checkpoint (``merged/``, ``save_hf``) and as a
PEFT adapter (``adapter/``) that ``peft.PeftModel.from_pretrained`` loads on the base.

**Data and model.** ``--set checkpoint=DIR`` takes any supported Hugging Face checkpoint
directory (GPT-2, Llama, Mistral, Qwen2, with its tokenizer) and ``--set train_text=PATH``
a text file or folder. With no checkpoint it runs offline: it pretrains a small Llama on
Python's own pydoc help topics (English prose, byte-level), saves it as a Hugging Face
checkpoint (``base/``), loads it back with ``bt.hub.load_hf`` as a user loads GPT-2, and
fine-tunes it to a second domain that ships with Python: the standard library's own
source files (code).

  python -m experiments.finetune_lm --workdir runs/finetune_lm [--preset small|tiny]
"""

import math
import os
import time

import jax
import jax.numpy as jnp

import bigtune_jax as bt
from bigtune_jax import data
from bigtune_jax import finetune
from bigtune_jax import hub
from bigtune_jax import models
from bigtune_jax import train
from bigtune_jax import tune
from bigtune_jax.train.metrics import png_figure
from experiments import cli
from experiments import report
from experiments import searching
from experiments import tasks

PRESETS = {  # the base Llama (tasks.LLAMA_BASES), then the fine-tuning and its search
    "tiny": dict(tasks.LLAMA_BASES["tiny"], finetune_steps=20, finetune_learning_rate=1e-3,
                 head_learning_rate=3e-3, lora_rank=4, population=4, rounds=1,
                 eval_every=10, seed=0, checkpoint="", train_text="", **searching.STUDY),
    "small": dict(tasks.LLAMA_BASES["small"], finetune_steps=100, finetune_learning_rate=1e-3,
                  head_learning_rate=3e-3, lora_rank=8, population=6, rounds=2,
                  eval_every=20, seed=0, checkpoint="", train_text="", **searching.STUDY),
}
CHECKS = {"n_head": cli.integer(1)}
TARGETS = {"qv": ("q_proj", "v_proj"), "all": "all-linear"}  # GPT-2: c_attn, all-linear


source_domain = tasks.stdlib_source  # the fine-tuning domain: the stdlib's source
pretrain = tasks.pretrain_llama  # the base: a small Llama pretrained on the pydoc topics


def save_merged(directory, model, params, base_dir):
  """The merged model as a Hugging Face checkpoint with the base's tokenizer files, so
  ``AutoTokenizer.from_pretrained(directory)`` loads the base's tokenizer (without them it
  would build an empty one)."""
  hub.save_hf(directory, model, params)
  hub.copy_tokenizer(base_dir, directory)
  return directory


def target_splits(config, workdir):
  """The fine-tuning domain's train / validation / test windows, and the model's vocab."""
  text = config["train_text"]
  if text and (not os.path.exists(text) or (os.path.isfile(text) and not os.path.getsize(text))):
    raise ValueError(f"--set train_text={text}: no such file or folder, or it is empty")
  if config["checkpoint"]:
    if not text:
      raise ValueError("--set checkpoint=DIR needs --set train_text=PATH (the new domain)")
    tokenizer = data.load_tokenizer(config["checkpoint"])
    blocks = data.load_token_dataset(config["train_text"], tokenizer,
                                     block_size=config["block_size"],
                                     cache_dir=os.path.join(workdir, "tokens"),
                                     seed=config["seed"])
    return {"train": blocks["train"].materialize(),
            "validation": blocks["validation"].materialize(),
            "test": blocks["test"].materialize()}
  if config["train_text"]:
    return tasks.split_windows(data.read_text(config["train_text"]), config["block_size"],
                            "train_text")
  return tasks.split_windows(source_domain(config["source_kb"]), config["block_size"],
                          "standard library source")


adapter_optimizer = tasks.adapter_optimizer  # AdamW, warmup, cosine or constant
SCHEDULES = ("constant", "cosine")
ADAPTER_HPARAMS = ("learning_rate", "alpha", "weight_decay", "warmup_fraction", "rank")


class Runner:
  """The methods, on one loaded base model and the target domain's splits."""

  def __init__(self, model, params, splits, config, workdir):
    self.model, self.params, self.splits = model, params, splits
    self.config, self.workdir = config, workdir
    self.loss_fn = train.language_model_loss(model)
    self.curves: dict[str, list[tuple[int, float]]] = {}
    # one object per schedule: the compiled population programs are reused across groups
    self.optimizers = {name: adapter_optimizer(config["finetune_steps"], name)
                       for name in SCHEDULES}

  def test_loss(self, params) -> float:
    return float(train.evaluate(self.loss_fn, params, self.splits["test"],
                                self.config["batch_size"] * 4)["loss"])

  def fit(self, name, tx, trainable=None):
    """Full or partial fine-tuning through ``bt.train.fit``."""
    steps = self.config["finetune_steps"]
    params = jax.tree.map(jnp.copy, self.params)  # fit donates its state
    state = train.create_train_state(self.model, params, tx, seed=self.config["seed"])
    result = train.fit(state, self.loss_fn, self.splits["train"], self.splits["validation"],
                       config=train.FitConfig(steps=steps, batch_size=self.config["batch_size"],
                                              eval_every=self.config["eval_every"],
                                              seed=self.config["seed"], progress=False),
                       workdir=os.path.join(self.workdir, name))
    self.curves[name] = [(row["step"], row["val_loss"]) for row in result.history
                         if "val_loss" in row]
    return result.state.params, finetune.trainable_parameter_count(self.params, trainable)

  def adapters(self, lora, hparams, on_eval=None, schedule="cosine"):
    return tune.train_adapter_population(
        lora, self.loss_fn, self.params, self.optimizers[schedule],
        hparams, self.splits["train"], self.splits["validation"],
        steps=self.config["finetune_steps"], batch_size=self.config["batch_size"],
        eval_every=self.config["eval_every"], seed=self.config["seed"], on_eval=on_eval)


def lora_targets(model, key: str):
  if isinstance(model, models.GPT):
    return {"qv": ("c_attn",), "all": "all-linear"}[key]
  return TARGETS[key]


def make_searcher(config, workdir):
  """The Optuna study of the adapters (TPE, median pruning), in ``WORKDIR/study.log``
  or ``--set storage=URL`` (``searching.make_searcher``, as every tuning experiment):
  opened before any work, so a bad storage fails at once."""
  space = tune.Space({"learning_rate": tune.LogUniform(1e-4, 3e-2),
                      "alpha": tune.Uniform(2.0, 64.0), "weight_decay": tune.Uniform(0.0, 0.1),
                      "warmup_fraction": tune.Uniform(0.0, 0.3),
                      "rank": tune.Int(1, config["lora_rank"]),
                      "targets": tune.Choice(sorted(TARGETS)),
                      "schedule": tune.Choice(SCHEDULES)})
  return searching.make_searcher(space, {"sampler": "tpe", "pruner": "median", **config},
                                 workdir, study_name="bigtune", mode="min")


def adapter_task(runner: Runner, config):
  """``structure -> bt.tune.PopulationTask``: adapters on the target modules and with the
  schedule of ``structure`` over the frozen base; ranks (masked) and the continuous values
  vary inside one population."""

  def make(structure) -> tune.PopulationTask:
    lora = finetune.LoRA(runner.model, targets=lora_targets(runner.model, structure["targets"]),
                         rank=config["lora_rank"])
    return tune.PopulationTask(
        lora, runner.loss_fn, runner.optimizers[structure["schedule"]], runner.splits["train"],
        runner.splits["validation"], steps=config["finetune_steps"],
        batch_size=config["batch_size"], eval_every=config["eval_every"],
        base_params=runner.params, hparams=ADAPTER_HPARAMS)

  return make


def search_adapters(runner: Runner, config, searcher):
  """``bt.tune.search_populations`` until the study holds ``rounds * population`` finished
  trials: each round one population of ``population`` trials sharing target modules and
  schedule (TPE proposes them for the leader; rank, alpha, rates for each), pruned members
  compacted away. Returns the best adapter, the searcher and the member-steps."""
  size = config["population"]
  result = tune.search_populations(searcher, adapter_task(runner, config), size=size,
                                   trials=config["rounds"] * size, by=("targets", "schedule"),
                                   seed=config["seed"], role=config["role"])
  member_steps = {"trained": result.member_steps,
                  "all_members": len(result.trials) * config["finetune_steps"]}
  best = None
  if result.best_trial is not None:
    row = result.best_trial
    best = {"val_loss": row["value"], "trial": row["number"], "params": row["params"],
            "lora": finetune.LoRA(runner.model, rank=config["lora_rank"], targets=lora_targets(
                runner.model, row["params"]["targets"])),
            "adapters": result.best_member, "curve": row["curve"]}  # its own rank and alpha
  if config["role"] == "worker":
    return best, searcher, member_steps
  if searcher.best is not None and (best is None or searcher.best.number != best["trial"]):
    best = train_again(runner, config, searcher.best)  # another worker's, or an earlier run's
  if best is None:
    raise RuntimeError("finetune_lm: every adapter trial was pruned or diverged")
  return best, searcher, member_steps


def train_again(runner: Runner, config, trial) -> dict:
  """The adapters of a finished trial of the study, trained again as a population of one
  (a member trains as it would alone)."""
  p = trial.params
  lora = finetune.LoRA(runner.model, targets=lora_targets(runner.model, p["targets"]),
                       rank=config["lora_rank"])
  result = runner.adapters(lora, {name: [p[name]] for name in ADAPTER_HPARAMS}, None,
                           p["schedule"])
  return {"val_loss": float(result.final["val_loss"][0]), "trial": trial.number,
          "params": dict(p), "lora": lora,
          "adapters": result.member(0),
          "curve": [(row["step"], row["val_loss"][0]) for row in result.history]}


def main(argv=None) -> dict:
  workdir, preset, config = cli.parse_args(argv, PRESETS, __doc__.split("\n\n")[0],
                                           checks=CHECKS)
  start = time.time()
  base_dir = config["checkpoint"]
  if base_dir:
    hub.read_config(base_dir)  # a clear error before any work
  searcher = make_searcher(config, workdir)  # a storage that cannot be opened, too
  if not base_dir:
    base_dir = pretrain(config, workdir)
  model, params = hub.load_hf(base_dir, dtype=jnp.float32)  # as a user loads GPT-2
  if config["block_size"] > model.config.block_size:
    raise ValueError(f"--set block_size must be at most the model's positions "
                     f"({model.config.block_size}), got {config['block_size']}")
  splits = target_splits(config, workdir)
  cli.check_batch_size("batch_size", config["batch_size"], splits["train"])
  runner = Runner(model, params, splits, config, workdir)
  if config["role"] == "worker":  # search only: the run without it trains, tests, exports
    search_adapters(runner, config, searcher)
    return report.finish(workdir, {"experiment": "finetune_lm", "preset": preset,
                                   "role": "worker", "search_trials": len(searcher.results)},
                         start)
  rows = {"base": {"test_loss": runner.test_loss(params), "trainable": 0, "wall_s": 0.0}}
  total = finetune.trainable_parameter_count(params)

  def timed(name, run):
    began = time.time()
    trained, count = run()
    rows[name] = {"test_loss": runner.test_loss(trained), "trainable": count,
                  "wall_s": round(time.time() - began, 2)}

  lr = config["finetune_learning_rate"]
  timed("full", lambda: runner.fit("full", bt.adam(lr)))
  head = ("lm_head",) if "lm_head" in params else ("wte",)
  timed("head", lambda: runner.fit("head", finetune.freeze(bt.adam(
      config["head_learning_rate"]), head), head))

  def default_lora():
    lora = finetune.LoRA(model, targets=lora_targets(model, "qv"), rank=8 if preset != "tiny"
                         else config["lora_rank"], alpha=16.0)
    result = runner.adapters(lora, {"learning_rate": [lr], "weight_decay": [0.0]})
    runner.curves["lora"] = [(row["step"], row["val_loss"][0]) for row in result.history]
    adapters = result.member(0)  # a finetune.Adapters: its rank and alpha with it
    return (lora.merge(params, adapters.params, alpha=adapters.alpha),
            finetune.adapter_parameter_count(adapters.params))

  timed("lora", default_lora)
  searched = {}

  def best_lora():
    best, _, member_steps = search_adapters(runner, config, searcher)
    searched.update(best=best, searcher=searcher, member_steps=member_steps)
    runner.curves["lora_search"] = best["curve"]
    lora, adapters = best["lora"], best["adapters"]  # Adapters: the member's rank, alpha
    merged = lora.merge(params, adapters)
    save_merged(os.path.join(workdir, "merged"), model, merged, base_dir)
    finetune.save_peft(os.path.join(workdir, "adapter"), lora, adapters,
                       base_model_name_or_path=str(base_dir))
    return merged, finetune.adapter_parameter_count(adapters)

  timed("lora_search", best_lora)
  for row in rows.values():
    row["test_perplexity"] = round(math.exp(row["test_loss"]), 3)
  best = searched["best"]
  summary = {
      "experiment": "finetune_lm", "preset": preset, "base_checkpoint": str(base_dir),
      "model": type(model).__name__, "model_params": total, "methods": rows,
      "best_lora": {k: best["params"][k] for k in best["params"]} | {
          "val_loss": best["val_loss"], "trial": best["trial"]},
      "search_trials": len(searched["searcher"].results),
      "search_member_steps": searched["member_steps"],
      "test_loss": rows["lora_search"]["test_loss"], "config": config}
  write_report(workdir, summary, runner.curves)
  return report.finish(workdir, summary, start, hide=("config",))


def write_report(workdir, summary, curves) -> None:
  """``report.md``: the table of methods and a plot of their validation curves."""
  with png_figure(os.path.join(workdir, "curves.png"), size=(6, 4)) as figure:
    axes = figure.subplots()
    for name, curve in curves.items():
      if curve:
        steps, losses = zip(*curve)
        axes.plot(steps, losses, marker="o", label=name)
    axes.axhline(summary["methods"]["base"]["test_loss"], color="gray", ls="--",
                 label="base (test)")
    axes.set(xlabel="fine-tuning step", ylabel="validation loss (nats/token)",
             title="Fine-tuning to the new domain")
    axes.legend()
    figure.tight_layout()
  lines = [f"# finetune_lm ({summary['preset']})", "",
           f"Base: {summary['base_checkpoint']} ({summary['model']}, "
           f"{summary['model_params']:,} parameters).", "",
           "| method | test loss | test perplexity | trainable params | wall s |",
           "|---|---:|---:|---:|---:|"]
  for name, row in summary["methods"].items():
    lines.append(f"| {name} | {row['test_loss']:.4f} | {row['test_perplexity']:.3f} | "
                 f"{row['trainable']:,} | {row['wall_s']} |")
  steps = summary["search_member_steps"]
  lines += ["", f"Best adapter: {summary['best_lora']}.",
            f"Search: {summary['search_trials']} trials, {steps['trained']} member-steps "
            f"computed of {steps['all_members']} without pruning.", "", "![curves](curves.png)"]
  with open(os.path.join(workdir, "report.md"), "w") as f:
    f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
  cli.run(main)
