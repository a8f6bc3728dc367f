"""A GPT language model trained on the bundled text (seed 003 §4.1, "tuning a large
language model"; the model every large-model technique of the seeds is for).

Seed 003 §4.1 sketches tuning a GPT-style model with no runnable code (its model, data and
loop are placeholders). This experiment is the model and the run that the tuning
experiments (``tune_lm``) search over: ``bt.models.GPT`` (decoder-only, pre-LayerNorm,
tied embeddings, layers stacked with ``nn.scan``; fp32 parameters, bf16 compute on an
accelerator), trained with ``bt.adam`` on ``bt.warmup_cosine_decay`` — linear warmup then
cosine decay to a tenth of the peak, the schedule of GPT-2/3 and nanoGPT — with global-norm
gradient clipping at 1.0 (``optax.clip_by_global_norm``), on next-byte prediction:

.. math:: J(\\theta) = -\\frac{1}{BT} \\sum_{b,t} \\log p_\\theta(x_{b,t+1} \\mid x_{b,\\le t})

**Data.** The text is Python's own pydoc help topics (466 KB of English, shipped with every
Python: ``bt.data.stdlib_corpus()``), read byte by byte (vocabulary 256: no tokenizer, no
download); ``--set text=PATH`` reads a ``.txt`` file or a folder of them instead. The byte
stream is cut into contiguous parts — train (the first 90%), validation (the next 5%), test
(the last 5%), cut by ``bt.data.text_splits`` — so that no window of one part overlaps
another, then tiled into windows of ``block_size`` bytes (targets shifted by one).

``summary.json`` adds ``val_loss``, ``test_perplexity`` = exp(test loss), ``test_bits_per_byte``
= test loss / ln 2 (a unigram byte model of English scores ~4.5-5 bits; a good small model
on this corpus gets well under 2.5), the parameter count, and ``sample``: 200 bytes drawn
from the trained model (temperature 0.8) after a prompt from the test text.

Presets: ``tiny`` (seconds, CI), ``small`` (a 4-layer, 128-wide model: about a minute on a
2-core CPU), ``full`` (GPT-2 124M shapes — 12 layers, 12 heads, width 768 — with a 1024-byte
context on a GPU; vocabulary 256, as the data are bytes).

Devices: every visible device, data-parallel, by default; ``--set fsdp=4 --set tensor=2``
shards the parameters and Adam moments over 4 devices (FSDP) and each layer's heads and MLP
over 2 (tensor parallel), the rest data-parallel (``bt.train.MeshConfig``). Many hosts: the
same command on each with ``--coordinator_address HOST0:PORT --num_processes N
--process_id I`` (``jax.distributed``).

  python -m experiments.lm --workdir runs/lm [--preset small|full|tiny] [--set text=PATH]
"""

import argparse
import math
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

import bigtune_jax as bt
from bigtune_jax import models
from bigtune_jax import train
from bigtune_jax.train import distributed
from experiments import cli
from experiments import report
from experiments import tasks

PRESETS = {
    "tiny": dict(n_layer=1, n_head=2, n_embd=32, block_size=32, steps=20, batch_size=16,
                 learning_rate=3e-3, warmup_steps=5, eval_every=10, dropout=0.0, text="",
                 sample_bytes=32, seed=0, fsdp=1, tensor=1),
    "small": dict(n_layer=4, n_head=4, n_embd=128, block_size=64, steps=400, batch_size=16,
                  learning_rate=3e-3, warmup_steps=40, eval_every=100, dropout=0.0, text="",
                  sample_bytes=200, seed=0, fsdp=1, tensor=1),
    "full": dict(n_layer=12, n_head=12, n_embd=768, block_size=1024, steps=5000, batch_size=16,
                 learning_rate=6e-4, warmup_steps=200, eval_every=250, dropout=0.0, text="",
                 sample_bytes=200, seed=0, fsdp=1, tensor=1),
}


def optimizer(config) -> optax.GradientTransformation:
  """Clipped Adam on warmup + cosine; the rate is injected, so ``fit`` logs it."""
  schedule = bt.warmup_cosine_decay(config["learning_rate"], config["warmup_steps"],
                                    config["steps"], end_lr=config["learning_rate"] / 10)
  return optax.chain(optax.clip_by_global_norm(1.0),
                     optax.inject_hyperparams(bt.adam)(learning_rate=schedule))


def sample(model, params, prompt: np.ndarray, n: int, *, temperature: float = 0.8,
           seed: int = 0) -> str:
  """``n`` bytes drawn after ``prompt`` (its last ``block_size`` bytes are the context)."""
  block = model.config.block_size

  @jax.jit
  def next_byte(params, window, key):  # params an argument, not constants baked into the program
    logits = model.apply({"params": params}, window[None])[0, -1].astype(jnp.float32)
    return jax.random.categorical(key, logits / temperature)

  window = jnp.asarray(prompt[-block:], jnp.int32)
  key, out = jax.random.key(seed), []
  for _ in range(n):
    key, draw = jax.random.split(key)
    byte = next_byte(params, window, draw)
    out.append(int(byte))
    window = jnp.concatenate([window[1:], byte[None].astype(jnp.int32)])
  return bytes(out).decode("utf-8", errors="replace")


def main(argv=None) -> dict:
  flags, argv = distributed.add_flags(argparse.ArgumentParser(add_help=False)).parse_known_args(
      argv)
  distributed.initialize_from_flags(flags)  # before any JAX computation
  workdir, preset, config = cli.parse_args(argv, PRESETS, __doc__.split("\n\n")[0])
  splits = tasks.load_text(config)
  model = models.GPT(tasks.gpt_config(config))
  params = train.init_params(model, jnp.asarray(splits["train"]["inputs"][:1]), config["seed"])
  tx = optimizer(config)
  fit_config = train.FitConfig(steps=config["steps"], batch_size=config["batch_size"],
                               eval_every=config["eval_every"], eval_batch_size=64,
                               seed=config["seed"], progress=preset != "tiny",
                               mesh=train.MeshConfig(fsdp=config["fsdp"],
                                                     tensor=config["tensor"]))

  def with_sample(state):
    prompt = np.asarray(splits["test"]["inputs"][0])
    return {"prompt": bytes(prompt.tolist()).decode("utf-8", errors="replace"),
            "sample": sample(model, state.params, prompt, config["sample_bytes"],
                             seed=config["seed"])}

  start = time.time()
  summary = report.train_and_evaluate(
      "lm", preset, model, params, tx, train.language_model_loss(model), splits, fit_config,
      workdir, report=with_sample,
      extra={"params": models.count_params(params), "config": config,
             "mesh": dict(fit_config.mesh.make_mesh().shape)})
  summary.update(test_perplexity=math.exp(summary["test_loss"]),
                 test_bits_per_byte=summary["test_loss"] / math.log(2))
  return report.finish(workdir, summary, start, hide=("prompt", "config"))


if __name__ == "__main__":
  cli.run(main)
