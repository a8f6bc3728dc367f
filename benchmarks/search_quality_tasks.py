"""The two tasks of ``benchmarks/search_quality.py``, each behind the same small interface:
one trial through the library's single-model path (:meth:`Task.single`: a state with traced
hyperparameters and a loss, for ``bt.train.fit``), the population of a structure for the
library's search (:meth:`Task.population_task`: a ``bt.tune.PopulationTask`` for
``bt.tune.search_populations``), and a trained model's test metric.

* ``lora``: LoRA fine-tuning (rank 8, alpha 16 on q_proj / v_proj) of ``finetune_lm``'s
  small Llama, pretrained on the pydoc topics (``WORKDIR/base``, made once, outside every
  budget), on the standard library's source; search space: AdamW's peak learning rate,
  weight decay and warmup fraction (warmup + cosine to a tenth). Test metric: perplexity.
* ``gpt``: ``tune_lm``'s GPT trained from scratch on the pydoc topics (bytes); search
  space: Adam's peak learning rate and warmup fraction (warmup + cosine to a tenth, global
  norm clipped at 1), and the structure: layers and width. Test metric: bits per byte
  (cross-entropy in nats / ln 2).

Only public API (``bt.train``, ``bt.tune``, ``bt.finetune``, ``bt.hub``) and the recipes
the experiments share (``experiments/tasks.py``; a benchmark imports no experiment). Validation and test sets are the first ``eval_windows`` windows of
each held-out split, so that an evaluation costs the same small time in every method.
"""

import dataclasses
import functools
import math
import os

import jax
import jax.numpy as jnp

from bigtune_jax import data
from bigtune_jax import finetune
from bigtune_jax import hub
from bigtune_jax import train
from bigtune_jax import tune
from experiments import tasks


def _head(dataset: data.ArrayDataset, n: int) -> data.ArrayDataset:
  return data.ArrayDataset({k: v[:n] for k, v in dataset.arrays.items()})


@dataclasses.dataclass
class Task:
  """One search problem; ``config`` is the task's part of the preset."""
  name: str
  config: dict
  splits: dict
  space: dict  # name -> ("log" | "uniform", low, high) or ("choice", values)
  metric: str  # the test metric's name

  @property
  def structure(self) -> tuple[str, ...]:
    return tuple(n for n, spec in self.space.items() if spec[0] == "choice")

  def fit_config(self, seed: int) -> train.FitConfig:
    c = self.config
    return train.FitConfig(steps=c["steps"], batch_size=c["batch_size"],
                           eval_every=c["eval_every"], eval_batch_size=64, seed=seed,
                           progress=False)


class GPTTask(Task):
  """``tune_lm``'s GPT from scratch (module docstring)."""
  hparams = ("learning_rate", "warmup_fraction")

  def _model(self, params):
    c = self.config
    return tasks.gpt_and_loss(params["n_layer"], params["n_embd"], c["head_size"],
                              c["block_size"])

  def _make_optimizer(self):
    c = self.config  # one object per process: programs are reused across trials
    return tasks.gpt_optimizer("warmup_cosine", c["batch_size"], c["steps"], c["batch_size"])

  def single(self, params, seed: int):
    model, loss_fn = self._model(params)
    init = train.init_params(model, jnp.asarray(self.splits["train"]["inputs"][:1]), seed)
    hparams = {k: params[k] for k in self.hparams}
    return train.create_train_state(model, init, make_optimizer=self._make_optimizer(),
                                    hparams=hparams, seed=seed), loss_fn

  def population_task(self, structure) -> tune.PopulationTask:
    c = self.config
    model, loss_fn = self._model(structure)
    return tune.PopulationTask(model, loss_fn, self._make_optimizer(), self.splits["train"],
                               self.splits["validation"], steps=c["steps"],
                               batch_size=c["batch_size"], eval_every=c["eval_every"],
                               hparams=self.hparams, eval_batch_size=64)

  def trained(self, params, tree):
    return (self._model(params)[1], tree)

  def test_metric(self, member) -> float:
    loss_fn, params = member
    loss = train.evaluate(loss_fn, params, self.splits["test"], 64)["loss"]
    return loss / math.log(2)  # bits per byte


class LoRATask(Task):
  """LoRA fine-tuning of ``finetune_lm``'s pretrained Llama (module docstring)."""

  def __init__(self, *args, base_dir: str):
    super().__init__(*args)
    self.model, self.base = hub.load_hf(base_dir, dtype=jnp.float32)
    self.lora = finetune.LoRA(self.model, targets=("q_proj", "v_proj"), rank=8, alpha=16.0)
    self.loss_fn = train.language_model_loss(self.model)
    self.adapter_loss = self.lora.loss(self.loss_fn, self.base)  # one object: one structure
    self.make_optimizer = tasks.adapter_optimizer(self.config["steps"], "cosine")

  def single(self, params, seed: int):
    adapters = self.lora.init(jax.random.key(seed), self.base)
    return train.create_train_state(self.model, adapters, make_optimizer=self.make_optimizer,
                                    hparams=dict(params), seed=seed), self.adapter_loss

  def population_task(self, structure) -> tune.PopulationTask:
    del structure  # one structure: the rank-8 LoRA of q_proj / v_proj
    c = self.config
    return tune.PopulationTask(self.lora, self.loss_fn, self.make_optimizer,
                               self.splits["train"], self.splits["validation"],
                               steps=c["steps"], batch_size=c["batch_size"],
                               eval_every=c["eval_every"], base_params=self.base,
                               hparams=tuple(self.space))

  def trained(self, params, tree):
    del params
    return tree

  def test_metric(self, member) -> float:
    merged = self.lora.merge(self.base, member)
    return math.exp(train.evaluate(self.loss_fn, merged, self.splits["test"], 64)["loss"])


def ensure_base(config: dict, workdir: str) -> str:
  """``finetune_lm``'s pretrained Llama in ``WORKDIR/base`` (pretrained on first use)."""
  base = os.path.join(workdir, "base")
  if not os.path.exists(os.path.join(base, "config.json")):
    tasks.pretrain_llama({**tasks.LLAMA_BASES[config["base_preset"]], "seed": 0}, workdir)
  return base


@functools.cache
def _build(name: str, frozen: tuple, workdir: str) -> Task:
  config = dict(frozen)
  n = config["eval_windows"]
  if name == "gpt":
    splits = tasks.load_text({"text": "", "block_size": config["block_size"]})
    space = {"learning_rate": ("log", 3e-4, 3e-2), "warmup_fraction": ("uniform", 0.0, 0.3),
             "n_layer": ("choice", list(config["n_layers"])),
             "n_embd": ("choice", list(config["widths"]))}
    splits = {k: v if k == "train" else _head(v, n) for k, v in splits.items()}
    return GPTTask(name, config, splits, space, "test_bits_per_byte")
  base_config = tasks.LLAMA_BASES[config["base_preset"]]
  splits = tasks.split_windows(tasks.stdlib_source(base_config["source_kb"]),
                            base_config["block_size"], "standard library source")
  splits = {k: v if k == "train" else _head(v, n) for k, v in splits.items()}
  space = {"learning_rate": ("log", 1e-4, 3e-2), "weight_decay": ("uniform", 0.0, 0.1),
           "warmup_fraction": ("uniform", 0.0, 0.3)}
  return LoRATask(name, {**config, "batch_size": base_config["batch_size"]}, splits, space,
                  "test_perplexity", base_dir=os.path.join(workdir, "base"))


def build(name: str, config: dict, workdir: str) -> Task:
  """The task ``name`` (``"gpt"`` or ``"lora"``) for ``config``, once per process."""
  frozen = tuple(sorted((k, tuple(v) if isinstance(v, list) else v) for k, v in config.items()))
  return _build(name, frozen, workdir)


def bt_space(task: Task) -> tune.Space:
  """The task's space as a ``bt.tune.Space``."""
  kinds = {"log": tune.LogUniform, "uniform": tune.Uniform}
  return tune.Space({name: tune.Choice(list(spec[1])) if spec[0] == "choice"
                     else kinds[spec[0]](spec[1], spec[2]) for name, spec in task.space.items()})
