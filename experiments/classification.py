"""The skeleton of the seed 000 §4 classifiers (``mlp_sgd``, ``cnn_momentum``, ``lstm_adam``).

Each of them loads the digits (or image files), builds one model and one optimizer, trains
with ``bt.train.fit``, tests and reports; only the model, the optimizer and the presets
differ, so an experiment passes those and this module does the rest:

  def main(argv=None):
    return classification.main(argv, "mlp_sgd", PRESETS, __doc__, model=..., optimizer=...)
"""

from collections.abc import Callable
from collections.abc import Mapping
from typing import Any

import jax.numpy as jnp
import optax

from bigtune_jax import train
from experiments import cli
from experiments import report
from experiments import tasks

DEFAULT_IMAGE_SIZE = 28  # the upsampled digits, the size of MNIST (the seed's data)

Config = Mapping[str, Any]


def main(argv, experiment: str, presets: Mapping[str, Config], doc: str, *,
         model: Callable[[Config], Any],
         optimizer: Callable[[Config], optax.GradientTransformation],
         describe: Callable[[Any, Mapping[str, Any]], Mapping[str, Any]] | None = None) -> dict:
  """Parses ``argv`` against ``presets``, trains ``model(config)`` with
  ``optimizer(config)`` on cross-entropy, evaluates the test split, writes and prints
  ``summary.json`` and returns it.

  Args:
    argv: the command line (None: ``sys.argv``).
    experiment: the name ``summary.json`` gives the run.
    presets: preset name -> settings; the images are ``image_size`` pixels a side if the
      settings have one, else 28.
    doc: the experiment's docstring; its first paragraph is the ``--help`` description.
    model: ``config -> flax module`` (10 classes).
    optimizer: ``config -> optax transform``.
    describe: ``(params, splits) -> entries`` the summary adds before ``config`` (e.g. the
      parameter count).
  """
  workdir, preset, config = cli.parse_args(argv, presets, doc.split("\n\n")[0])
  splits = tasks.load_images(config, config.get("image_size", DEFAULT_IMAGE_SIZE))
  network = model(config)
  params = train.init_params(network, jnp.asarray(splits["train"]["image"][:1]),
                             config["seed"])
  fit_config = train.FitConfig(steps=config["steps"], batch_size=config["batch_size"],
                               eval_every=config["eval_every"], seed=config["seed"],
                               progress=preset != "tiny")
  tx = tasks.with_logged_rate(optimizer, config)
  summary = report.train_and_evaluate(
      experiment, preset, network, params, tx,
      train.classification_loss(network), splits, fit_config, workdir,
      extra={**(describe(params, splits) if describe is not None else {}), "config": config})
  report.print_summary(summary)
  return summary
