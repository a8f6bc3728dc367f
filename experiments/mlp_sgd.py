"""Seed 000 §4.1: an MLP 784-256-10 trained with plain SGD (lr 0.1).

The seed trains ``SimpleMLP(784, 256, 10)`` with ``optim.SGD(lr=0.1)`` and
``F.cross_entropy`` for 10 epochs over an MNIST ``train_loader`` it never defines (and
without importing ``F``). Here the 784 inputs are the bundled digits in their 28x28
upsampled view (``bt.data.load_dataset("digits", image_size=28)``); ``--set
dataset=mnist --set data_dir=DIR`` trains on real MNIST IDX files instead.

  python -m experiments.mlp_sgd --workdir runs/mlp_sgd [--preset small|full|tiny]
"""

import bigtune_jax as bt
from bigtune_jax import models
from experiments import classification
from experiments import cli

PRESETS = {
    "tiny": dict(steps=40, batch_size=32, hidden=(32,), learning_rate=0.1, eval_every=20,
                 dataset="digits", data_dir="", seed=0),
    "small": dict(steps=600, batch_size=64, hidden=(256,), learning_rate=0.1, eval_every=60,
                  dataset="digits", data_dir="", seed=0),
    "full": dict(steps=9380, batch_size=64, hidden=(256,), learning_rate=0.1, eval_every=938,
                 dataset="digits", data_dir="", seed=0),  # 10 epochs of MNIST's 60k at 64
}


def main(argv=None) -> dict:
  return classification.main(
      argv, "mlp_sgd", PRESETS, __doc__,
      model=lambda config: models.MLP(hidden=config["hidden"], num_classes=10),
      optimizer=lambda config: bt.sgd(config["learning_rate"]))


if __name__ == "__main__":
  cli.run(main)
