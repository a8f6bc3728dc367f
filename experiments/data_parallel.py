"""Seed 004 §4.1.2: data-parallel training of an MLP 784-512-10 (log-softmax + NLL, SGD 0.01).

The seed starts 4 processes (``torch.multiprocessing``), joins them with
``dist.init_process_group("gloo")``, gives each a quarter of MNIST through
``DistributedSampler`` and trains ``Linear(784, 512) -> ReLU -> Linear(512, 10) ->
LogSoftmax`` with ``NLLLoss`` and ``SGD(lr=0.01)``, batch 64 per process, for 10 epochs.
Here the same network and optimizer train on every visible device with the engine's one
train step (``bt.train.fit``; ``sharding.py``): the global batch of 64 is split by rows
over the devices, each computes the gradient of its rows, and XLA all-reduces them, so
every step is the gradient of the mean loss over the 64 rows (what DDP computes):

.. math:: g = \\frac{1}{64} \\sum_{d=1}^{D} \\sum_{i \\in B_d} \\nabla \\ell_i(w), \\quad
   w \\leftarrow w - 0.01\\, g

The loss ``-log_softmax(logits)[label]`` is ``NLLLoss(LogSoftmax(x))``, computed in one piece
by ``train.classification_loss`` (optax's softmax cross-entropy). ``--set fsdp=2`` shards
the parameters too (FSDP; plain SGD keeps no optimizer state); the result is the same.
``summary.json`` reports ``devices`` and the ``mesh``. Data: the bundled digits in their
upsampled 28 x 28 view, as ``mlp_sgd`` (``--set dataset=mnist --set data_dir=DIR`` for MNIST).

Seed bugs fixed here (stated, as they are not kept):

* **Nothing is averaged.** The model is never wrapped in ``DistributedDataParallel``, so
  the 4 processes train 4 independent models, each on its own quarter of the data, and
  never exchange a gradient: it is 4 single-device runs, not one distributed run. Here the
  gradient of every step is reduced over all devices and the replicas stay identical.
* ``mp`` is used (``mp.Process``) but never imported (``torch.multiprocessing``).
* ``model.to(rank)`` puts process ``rank`` on GPU ``rank`` although the backend is Gloo and
  no GPU is required; on a CPU machine it fails. Here devices are whatever JAX sees.
* ``init_method="file:///tmp/tmpfile"``: a file left by an earlier run makes the next one
  hang or fail; ``jax.distributed`` uses a coordinator address instead.
* The batch is 64 *per process*, so the global batch (and the learning rate's meaning)
  changes with the number of processes (256 with 4). Here 64 is the global batch, and
  the run is the same on 1, 2, 4 or 8 devices up to rounding.

Many hosts: start the same command on each host with ``--coordinator_address HOST0:PORT
--num_processes N --process_id I`` (or ``JAX_COORDINATOR_ADDRESS`` / ``JAX_NUM_PROCESSES`` /
``JAX_PROCESS_ID``); each loads its rows of every batch.

  python -m experiments.data_parallel --workdir runs/data_parallel [--preset small|full|tiny]
"""

import argparse

import jax
import jax.numpy as jnp
import optax

import bigtune_jax as bt
from bigtune_jax import models
from bigtune_jax import train
from bigtune_jax.train import distributed
from experiments import cli
from experiments import report
from experiments import tasks

PRESETS = {
    "tiny": dict(steps=20, batch_size=64, hidden=(512,), learning_rate=0.01, eval_every=10,
                 data=-1, fsdp=1, dataset="digits", data_dir="", seed=0),
    "small": dict(steps=1500, batch_size=64, hidden=(512,), learning_rate=0.01,
                  eval_every=150, data=-1, fsdp=1, dataset="digits", data_dir="", seed=0),
    "full": dict(steps=9380, batch_size=64, hidden=(512,), learning_rate=0.01, eval_every=938,
                 data=-1, fsdp=1, dataset="digits", data_dir="",
                 seed=0),  # 10 epochs of MNIST's 60k at a global batch of 64
}


# Settings of this experiment only (cli.RULES checks the shared ones).
CHECKS = {"data": cli.Rule(lambda v: v == -1 or v >= 1,
                               "-1 (the devices fsdp leaves) or an integer >= 1")}


def main(argv=None) -> dict:
  flags, argv = distributed.add_flags(argparse.ArgumentParser(add_help=False)).parse_known_args(
      argv)
  distributed.initialize_from_flags(flags)  # before any JAX computation
  workdir, preset, config = cli.parse_args(argv, PRESETS, __doc__.split("\n\n")[0],
                                           checks=CHECKS)
  mesh = train.MeshConfig(data=config["data"], fsdp=config["fsdp"])
  splits = tasks.load_images(config, image_size=28)
  model = models.MLP(hidden=config["hidden"], num_classes=10)
  params = train.init_params(model, jnp.asarray(splits["train"]["image"][:1]), config["seed"])
  fit_config = train.FitConfig(steps=config["steps"], batch_size=config["batch_size"],
                               eval_every=config["eval_every"], seed=config["seed"], mesh=mesh,
                               progress=preset != "tiny")
  devices = mesh.make_mesh().shape
  # inject_hyperparams: the rate sits in the optimizer state, where fit reads it to log it
  summary = report.train_and_evaluate(
      "data_parallel", preset, model, params,
      optax.inject_hyperparams(bt.sgd)(learning_rate=config["learning_rate"]),
      train.classification_loss(model), splits, fit_config, workdir,
      extra={"mesh": dict(devices), "processes": jax.process_count(),
             "rows_per_device": config["batch_size"] // (devices["data"] * devices["fsdp"]),
             "config": config})
  report.print_summary({k: v for k, v in summary.items() if k != "config"})
  return summary


if __name__ == "__main__":
  cli.run(main)
