"""DARTS structure search on the bundled digits, then the derived network retrained
(seed 003 §3.2, gradient-based structure tuning; Liu et al., ICLR 2019).

As DARTS' ``train_search.py``: the training split is cut in two halves (stratified), the
weights of ``bt.models.Supernet`` train on one and the architecture parameters on the other
(``bt.tune.darts_search``: first-order, Adam lr 3e-4 with betas (0.5, 0.999) and L2
1e-3 for the architecture; SGD momentum 0.9, cosine 0.025 -> 0.001, L2 3e-4, clipping at 5
for the weights). The derived architecture (per node the 2 strongest non-zero edges, each
its strongest candidate) is then trained from scratch on the whole training split with the
same weight recipe through ``bt.train.fit``, and evaluated on the held-out test split.

``summary.json`` adds ``arch`` (per node, its ``[input node, op]`` edges), ``final_alphas``
(the softmax weights per edge and candidate), the supernet's accuracy on the search
half it never trained its weights on, and the search's wall time.

  python -m experiments.darts --workdir runs/darts [--preset small|full|tiny]
"""

import time

import jax.numpy as jnp

from bigtune_jax import data
from bigtune_jax import models
from bigtune_jax import train
from bigtune_jax.tune.population import darts
from experiments import cli
from experiments import report

PRESETS = {
    "tiny": dict(nodes=1, width=16, search_steps=20, search_batch_size=32, steps=20,
                 batch_size=32, learning_rate=0.1, eval_every=10, image_size=8, seed=0),
    "small": dict(nodes=3, width=64, search_steps=2000, search_batch_size=64, steps=1000,
                  batch_size=64, learning_rate=0.1, eval_every=100, image_size=8, seed=0),
    "full": dict(nodes=4, width=256, search_steps=20000, search_batch_size=64, steps=10000,
                 batch_size=64, learning_rate=0.1, eval_every=500, image_size=28, seed=0),
}


def search_halves(train_split: data.ArrayDataset, seed: int) -> tuple[data.ArrayDataset, ...]:
  """The training split cut in two stratified halves: weights' and architecture's."""
  halves = data.split_arrays(train_split.arrays, {"weights": 0.5, "arch": 0.5}, seed=seed,
                             stratify="label")
  return data.ArrayDataset(halves["weights"]), data.ArrayDataset(halves["arch"])


def main(argv=None) -> dict:
  workdir, preset, config = cli.parse_args(argv, PRESETS, __doc__.split("\n\n")[0])
  start = time.time()
  splits = data.load_dataset("digits", seed=config["seed"], image_size=config["image_size"])
  supernet = models.Supernet(nodes=config["nodes"], width=config["width"], num_classes=10)
  weights_half, arch_half = search_halves(splits["train"], config["seed"])
  cli.check_batch_size("search_batch_size", config["search_batch_size"],
                       min(weights_half, arch_half, key=len), "examples in a search half")
  cli.check_batch_size("batch_size", config["batch_size"], splits["train"])
  result = darts.darts_search(supernet, weights_half, arch_half, steps=config["search_steps"],
                              batch_size=config["search_batch_size"], seed=config["seed"])
  model = supernet.discrete(result.arch)
  params = train.init_params(model, jnp.asarray(splits["train"]["image"][:1]), config["seed"])
  tx = darts.weight_optimizer(config["steps"], learning_rate=config["learning_rate"])
  fit_config = train.FitConfig(steps=config["steps"], batch_size=config["batch_size"],
                               eval_every=config["eval_every"], seed=config["seed"],
                               progress=preset != "tiny")
  summary = report.train_and_evaluate(
      "darts", preset, model, params, tx, train.classification_loss(model), splits,
      fit_config, workdir, extra={
          "arch": [[list(edge) for edge in node] for node in result.arch],
          "final_alphas": {f"{i}->{j}": dict(zip(supernet.ops, map(float, row)))
                           for (i, j), row in zip(supernet.edges, result.alphas[-1])},
          "search_steps": result.steps, "search_val_accuracy": result.val.get("accuracy"),
          "search_wall_s": round(result.wall_s, 2),
          "params": models.count_params(params), "config": config})
  # wall_s: the search and the retraining
  return report.finish(workdir, summary, start, hide=("final_alphas", "config"))


if __name__ == "__main__":
  cli.run(main)
