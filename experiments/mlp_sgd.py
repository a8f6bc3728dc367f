"""Seed 000 §4.1: an MLP 784-256-10 trained with plain SGD (lr 0.1).

The seed trains ``SimpleMLP(784, 256, 10)`` with ``optim.SGD(lr=0.1)`` and
``F.cross_entropy`` for 10 epochs over an MNIST ``train_loader`` it never defines (and
without importing ``F``). Here the 784 inputs are the bundled digits in their 28x28
upsampled view (``bt.data.load_dataset("digits", image_size=28)``); ``--set
dataset=mnist --set data_dir=DIR`` trains on real MNIST IDX files instead.

  python -m experiments.mlp_sgd --workdir runs/mlp_sgd [--preset small|full|tiny]
"""

import jax.numpy as jnp
import optax

import bigtune_jax as bt
from bigtune_jax import models
from bigtune_jax import train
from experiments import common

PRESETS = {
    "tiny": dict(steps=40, batch_size=32, hidden=(32,), learning_rate=0.1, eval_every=20,
                 dataset="digits", data_dir="", seed=0),
    "small": dict(steps=600, batch_size=64, hidden=(256,), learning_rate=0.1, eval_every=60,
                  dataset="digits", data_dir="", seed=0),
    "full": dict(steps=9380, batch_size=64, hidden=(256,), learning_rate=0.1, eval_every=938,
                 dataset="digits", data_dir="", seed=0),  # 10 epochs of MNIST's 60k at 64
}


def main(argv=None) -> dict:
  workdir, preset, config = common.parse_args(argv, PRESETS, __doc__.split("\n\n")[0])
  splits = common.load_images(config, image_size=28)
  model = models.MLP(hidden=config["hidden"], num_classes=10)
  params = train.init_params(model, jnp.asarray(splits["train"]["image"][:1]), config["seed"])
  fit_config = train.FitConfig(steps=config["steps"], batch_size=config["batch_size"],
                               eval_every=config["eval_every"], seed=config["seed"],
                               progress=preset != "tiny")
  # inject_hyperparams: the rate sits in the optimizer state, where fit reads it to log it
  summary = common.train_and_evaluate(
      "mlp_sgd", preset, model, params,
      optax.inject_hyperparams(bt.sgd)(learning_rate=config["learning_rate"]),
      train.classification_loss(model), splits, fit_config, workdir,
      extra={"config": config})
  common.print_summary(summary)
  return summary


if __name__ == "__main__":
  common.run(main)
