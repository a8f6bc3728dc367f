"""The data, model and optimizer recipes that several experiments share (experiments import
this module, the cli / searching / report modules, and never each other):

* images: :func:`load_images` (the bundled digits, or image files);
* linear regression (``linreg_*``): :data:`LINEAR_MODEL`, :func:`train_linear_regression`;
* a CPU-sized VGG16 (``grad_accum``, ``plateau``): :func:`vgg16`;
* noisy digits (``regularization``, ``early_stopping``): :func:`noisy_digits`;
* the digit tasks 0-4 / 5-9 (``finetune_basic``, ``finetune``): :func:`task_splits`;
* byte-level text and GPT (``lm``, ``tune_lm``, ``finetune_lm``): :func:`load_text`,
  :func:`split_windows`, :func:`gpt_config`;
* the searched GPT (``tune_lm``, ``benchmarks.search_quality``): :func:`gpt_and_loss`,
  :func:`gpt_optimizer`;
* the pretrained small Llama and its fine-tuning domain (``finetune_lm``,
  ``benchmarks.search_quality``): :data:`LLAMA_BASES`, :func:`pretrain_llama`,
  :func:`stdlib_source`, :func:`adapter_optimizer`;
* the tuned MLP (``tune``, ``benchmarks.search``): :func:`momentum_l2`, :func:`mlp_and_loss`;
* :func:`with_logged_rate`: an optimizer whose rate ``fit`` logs.
"""

import functools
import glob
import os
from collections.abc import Callable
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

import bigtune_jax as bt
from bigtune_jax import data
from bigtune_jax import hub
from bigtune_jax import models
from bigtune_jax import train
from bigtune_jax import tune
from bigtune_jax.tune.search import structure
from experiments import cli
from experiments import report


def load_images(config: Mapping[str, Any], image_size: int) -> dict[str, data.ArrayDataset]:
  """The ``dataset`` of ``config``: the bundled digits at ``image_size``, or the files in
  ``data_dir`` (``mnist``, ``cifar10``, ...; nothing is downloaded), split by ``seed``."""
  cli.check_settings({k: config[k] for k in ("dataset", "data_dir")})
  if config["dataset"] == "digits":
    return data.load_dataset("digits", seed=config["seed"], image_size=image_size)
  if not config["data_dir"]:
    raise ValueError(f"dataset {config['dataset']!r} is read from its files and nothing is "
                     "downloaded: pass --set data_dir=DIR (or --set dataset=digits)")
  if not os.path.exists(config["data_dir"]):
    raise ValueError(f"--set data_dir={config['data_dir']}: no such file or folder")
  return data.load_dataset(config["dataset"], config["data_dir"], seed=config["seed"])


def with_logged_rate(make_optimizer: Callable[[Mapping[str, Any]], Any],
                     settings: Mapping[str, Any]):
  """``make_optimizer(settings)`` with its ``learning_rate`` injected
  (``optax.inject_hyperparams``): the rate then sits in the optimizer state, where
  ``bt.train.fit`` reads it for its log and the learning-rate plot."""
  return optax.inject_hyperparams(lambda learning_rate: make_optimizer(
      dict(settings, learning_rate=learning_rate)))(learning_rate=settings["learning_rate"])


# Linear regression: the seed's toy y = 2 x + 0.1 eps (bigtune_jax/data/toy.py).
TRUE_SLOPE = 2.0
LINEAR_MODEL = models.LinearRegression(features=1)  # y = theta x + b, §4.4's nn.Linear(1, 1)


def least_squares_slope(split) -> float:
  """The closed-form slope of ``y ~ theta x + b`` on one split."""
  x, y = split["x"][:, 0].astype(np.float64), split["y"][:, 0].astype(np.float64)
  return float(np.polyfit(x, y, 1)[0])


def linear_params(seed: int = 0):
  """Fresh parameters of ``LINEAR_MODEL`` (give each run its own copy: ``fit`` donates them)."""
  return train.init_params(LINEAR_MODEL, jnp.zeros((1, 1), jnp.float32), seed)


def final_line(state: train.TrainState) -> dict:
  """``theta`` and ``bias`` of the trained line (the harness's ``report`` hook)."""
  line = state.params["linear"]
  return {"theta": float(line["kernel"][0, 0]), "bias": float(line["bias"][0])}


def train_linear_regression(experiment: str, preset: str, config: dict, splits, params, tx,
                            workdir: str, *, checkpoint_every_evals: int = 1, extra=None) -> dict:
  """Trains ``LINEAR_MODEL`` from ``params`` with ``tx`` on ``splits`` through the harness
  (resuming from ``workdir``) and returns its summary, with ``theta`` and ``bias``.

  ``config`` needs ``steps``, ``batch_size``, ``eval_every`` and ``seed``. ``fit`` logs
  the rate of a ``tx`` built by ``optax.inject_hyperparams``. ``params`` are donated.
  """
  fit_config = train.FitConfig(steps=config["steps"], batch_size=config["batch_size"],
                               eval_every=config["eval_every"], seed=config["seed"],
                               checkpoint_every_evals=checkpoint_every_evals,
                               progress=preset != "tiny")
  extra = {**(extra or {}), "true_slope": TRUE_SLOPE,
           "least_squares_slope": least_squares_slope(splits["train"])}
  return report.train_and_evaluate(experiment, preset, LINEAR_MODEL, params, tx,
                                   train.regression_loss(LINEAR_MODEL), splits, fit_config,
                                   workdir, extra=extra, report=final_line)


def he_classifier(params, seed: int):
  """``params`` with VGG16's dense kernels re-drawn He-normal (head: LeCun-normal).

  N(0, 2 / fan_in) keeps the activations' scale through each ReLU layer whatever the
  classifier width; torchvision's N(0, 0.01) does so only near fan_in = 25,088 and 4,096.
  Drawn with NumPy: nothing to compile.
  """
  rng = np.random.default_rng([seed, 1])
  params = dict(params)
  for name in ("fc0", "fc1", "head"):
    kernel = params[name]["kernel"]  # (fan_in, fan_out)
    gain = 1.0 if name == "head" else 2.0  # the head feeds a softmax, not a ReLU
    draw = rng.standard_normal(kernel.shape) * np.sqrt(gain / kernel.shape[0])
    params[name] = {**params[name], "kernel": jnp.asarray(draw, kernel.dtype)}
  return params


def vgg16(config, sample):
  """``(model, params)``: the configured VGG16 (``width``, ``classifier_width``,
  ``dropout_rate``, ``seed``) for inputs like ``sample``, its classifier He-normal."""
  model = models.VGG16(num_classes=10, width=config["width"],
                       classifier_width=config["classifier_width"],
                       dropout_rate=config["dropout_rate"], pool_size=None)
  # XLA:CPU compiles the init's threefry draws in ~20 s with jax's default partitionable
  # threefry and ~4 s without it; the draws differ, their distribution does not.
  with jax.threefry_partitionable(False):
    params = train.init_params(model, jnp.asarray(sample), config["seed"])
  return model, he_classifier(params, config["seed"])


def noisy_digits(config):
  """Digits splits whose "train" is a stratified subset with ``label_noise`` of its labels
  replaced by another class; "train_clean" holds the same images with their true labels.
  A ``train_fraction`` or ``label_noise`` out of range is a ValueError, before any work."""
  if not 0.0 < config["train_fraction"] <= 1.0:
    raise ValueError(f"train_fraction must lie in (0, 1], got {config['train_fraction']!r}")
  if not 0.0 <= config["label_noise"] < 1.0:
    raise ValueError(f"label_noise must lie in [0, 1), got {config['label_noise']!r}")
  splits = data.load_dataset("digits", seed=config["seed"], image_size=config["image_size"])
  subset = splits["train"].arrays
  if config["train_fraction"] < 1.0:
    fraction = config["train_fraction"]
    subset = data.split_arrays(subset, {"subset": fraction, "rest": 1.0 - fraction},
                               seed=config["seed"], stratify="label")["subset"]
  rng = np.random.default_rng(config["seed"])
  labels = subset["label"].copy()
  flip = rng.random(labels.shape[0]) < config["label_noise"]
  labels[flip] = (labels[flip] + rng.integers(1, 10, flip.sum())) % 10  # never the true class
  return {"train": data.ArrayDataset({"image": subset["image"], "label": labels}),
          "train_clean": data.ArrayDataset(subset),
          "validation": splits["validation"], "test": splits["test"]}


OLD_CLASSES = (0, 1, 2, 3, 4)  # the pretraining task of the fine-tuning experiments
NEW_CLASSES = (5, 6, 7, 8, 9)  # their fine-tuning task


def task_splits(splits, classes, per_class: int = 0) -> dict[str, data.ArrayDataset]:
  """The examples of ``classes``, relabelled ``0..len(classes)-1``; the training split keeps
  only the first ``per_class`` examples of each class when ``per_class > 0``."""
  out = {}
  for name, split in splits.items():
    labels = split["label"]
    keep = np.isin(labels, classes)
    if name == "train" and per_class > 0:
      rank = np.zeros_like(labels)  # rank[i]: how many earlier examples share i's label
      for c in classes:
        where = np.flatnonzero(labels == c)
        rank[where] = np.arange(where.size)
      keep &= rank < per_class
    relabel = np.searchsorted(np.asarray(classes), labels[keep]).astype(np.int32)
    out[name] = data.ArrayDataset({"image": split["image"][keep], "label": relabel})
  return out


def fit_config(config, steps: int, progress: bool) -> train.FitConfig:
  """``steps`` of ``batch_size``, evaluated every ``eval_every``, seeded by ``seed``."""
  return train.FitConfig(steps=steps, batch_size=config["batch_size"],
                         eval_every=config["eval_every"], seed=config["seed"],
                         progress=progress)


HELD_OUT = 0.05  # the fraction of a token stream for validation, and again for test


def load_text(config) -> dict[str, data.ArrayDataset]:
  """Train / validation / test windows of ``block_size`` bytes from contiguous parts of the
  ``text`` file or folder (empty: Python's pydoc topics, ``bt.data.stdlib_corpus()``)."""
  if config["text"] and not os.path.exists(config["text"]):
    raise ValueError(f"--set text={config['text']}: no such text file or folder")
  tokens = data.read_text(config["text"]) if config["text"] else data.stdlib_corpus()
  return split_windows(tokens, config["block_size"], "text")


def split_windows(tokens: np.ndarray, block_size: int, what: str) -> dict[str, data.ArrayDataset]:
  """Windows of ``block_size`` tokens from the contiguous train / validation / test parts of
  ``tokens`` (the first 90 %, then ``HELD_OUT`` and ``HELD_OUT``, cut by the library's
  ``bt.data.text_splits``), so that no window of one part overlaps another."""
  return data.text_splits(tokens, block_size, HELD_OUT, HELD_OUT, what=what)


def gpt_config(config) -> models.GPTConfig:
  """A byte-level GPT of ``n_layer``, ``n_head``, ``n_embd``, ``block_size``, ``dropout``;
  bf16 compute on an accelerator, fp32 on a CPU."""
  on_accelerator = jax.default_backend() != "cpu"
  return models.GPTConfig(vocab_size=data.VOCAB_SIZE, block_size=config["block_size"],
                          n_layer=config["n_layer"], n_head=config["n_head"],
                          n_embd=config["n_embd"], dropout=config["dropout"],
                          dtype=jnp.bfloat16 if on_accelerator else jnp.float32)


def momentum_l2(h):
  """The optimizer of one tuned member, from its (traced) continuous hyperparameters:
  ``chain(bt.l2(weight_decay), bt.momentum(learning_rate, momentum))``."""
  return optax.chain(bt.l2(h["weight_decay"]), bt.momentum(h["learning_rate"], h["momentum"]))


@functools.cache
def mlp_and_loss(hidden: int, layers: int):
  """One MLP and loss object per structure, so populations reuse its compiled programs."""
  model = structure.build_structure({"layers": layers, "hidden": hidden})
  return model, train.classification_loss(model)


@functools.cache
def gpt_and_loss(n_layer: int, n_embd: int, head_size: int, block_size: int):
  """One byte-level GPT (``n_head = n_embd / head_size``, no dropout) and loss object per
  structure: populations of it reuse their compiled programs."""
  model = models.GPT(gpt_config({"n_layer": n_layer, "n_head": max(n_embd // head_size, 1),
                                 "n_embd": n_embd, "block_size": block_size, "dropout": 0.0}))
  return model, train.language_model_loss(model)


GPT_FINAL_LR_FRACTION = 0.1  # every decaying schedule ends at a tenth of the peak, as lm.py


def gpt_strategy(params, total_steps: int, base_batch_size: int) -> tune.Strategy:
  """Adam on the schedule of ``params`` (``learning_rate``, ``batch_size``, ``schedule``,
  ``warmup_fraction``; values may be traced) with the linear scaling rule."""
  keys = ("learning_rate", "batch_size", "schedule", "warmup_fraction")
  return tune.build_strategy(
      {"optimizer": "adam", "final_lr_fraction": GPT_FINAL_LR_FRACTION,
       **{k: params[k] for k in keys if k in params}},
      total_steps=total_steps, base_batch_size=base_batch_size)


@functools.cache
def gpt_optimizer(schedule: str, batch_size: int, steps: int, base_batch_size: int):
  """``hparams -> optax transform`` for GPT populations (one object per program): global
  norm clipped at 1, then :func:`gpt_strategy`."""

  def make(h):
    params = {"schedule": schedule, "batch_size": batch_size, **h}
    return optax.chain(optax.clip_by_global_norm(1.0),
                       gpt_strategy(params, steps, base_batch_size).optimizer)

  return make


# The small Llamas pretrained on the pydoc topics, and the size of their fine-tuning domain.
LLAMA_BASES = {
    "tiny": dict(hidden_size=32, n_layer=1, n_head=2, block_size=32, pretrain_steps=40,
                 batch_size=8, learning_rate=3e-3, source_kb=48),
    "small": dict(hidden_size=96, n_layer=3, n_head=4, block_size=64, pretrain_steps=400,
                  batch_size=16, learning_rate=3e-3, source_kb=256),
}


def pretrain_llama(config, workdir: str) -> str:
  """A small Llama (``LLAMA_BASES`` keys, ``seed``) pretrained on the pydoc topics, saved
  as a Hugging Face checkpoint in ``workdir/base`` (its training in ``workdir/pretrain``)."""
  cfg = models.LlamaConfig(
      vocab_size=data.VOCAB_SIZE, hidden_size=config["hidden_size"],
      intermediate_size=4 * config["hidden_size"], num_hidden_layers=config["n_layer"],
      num_attention_heads=config["n_head"], num_key_value_heads=max(config["n_head"] // 2, 1),
      max_position_embeddings=config["block_size"], tie_word_embeddings=False,
      dtype=jnp.float32)
  model = models.Llama(cfg)
  splits = split_windows(data.stdlib_corpus(), config["block_size"], "pydoc topics")
  params = train.init_params(model, jnp.asarray(splits["train"]["inputs"][:1]), config["seed"])
  steps = config["pretrain_steps"]
  tx = optax.chain(optax.clip_by_global_norm(1.0), bt.adam(bt.warmup_cosine_decay(
      config["learning_rate"], steps // 10, steps, end_lr=config["learning_rate"] / 10)))
  result = train.fit(train.create_train_state(model, params, tx, seed=config["seed"]),
                     train.language_model_loss(model), splits["train"], splits["validation"],
                     config=train.FitConfig(steps=steps, batch_size=config["batch_size"],
                                            eval_every=steps, seed=config["seed"],
                                            progress=False),
                     workdir=os.path.join(workdir, "pretrain"))
  return hub.save_hf(os.path.join(workdir, "base"), model, result.state.params)


def stdlib_source(kilobytes: int) -> np.ndarray:
  """The standard library's own ``.py`` files (sorted by path) as bytes, the first KB: the
  fine-tuning domain (code) of the Llama pretrained on prose."""
  files = sorted(glob.glob(os.path.join(os.path.dirname(os.__file__), "*.py")))
  text = b"".join(open(f, "rb").read() for f in files)[:kilobytes * 1024]
  return np.frombuffer(text, np.uint8).astype(np.int32)


def adapter_optimizer(steps: int, schedule: str = "cosine"):
  """``hparams -> AdamW`` with linear warmup over ``warmup_fraction`` of the steps (default
  0.1), then ``"cosine"`` decay to a tenth of the peak ``learning_rate`` or ``"constant"``
  at the peak; every value may be traced (a population member's)."""
  def make(h):
    warmup = jnp.round(h.get("warmup_fraction", 0.1) * steps).astype(jnp.int32)
    end = h["learning_rate"] / 10 if schedule == "cosine" else h["learning_rate"]
    return optax.adamw(bt.warmup_cosine_decay(h["learning_rate"], warmup, steps, end_lr=end),
                       weight_decay=h["weight_decay"])
  return make
