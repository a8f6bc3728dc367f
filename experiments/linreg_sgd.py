"""Seed 002 §4.1 (with §3.1): linear regression by gradient descent; the slope -> 2.

  python -m experiments.linreg_sgd --workdir runs/linreg_sgd [--preset small|full|tiny]

What the seed's snippet does: it fits ``y_pred = theta * x`` to the single point
``x = 1, y = 2`` with ``optim.SGD([theta], lr=0.01)`` and ``nn.MSELoss`` for 1000
iterations, and prints ``theta`` (which reaches 2). The snippet runs as written (checked
with PyTorch 2.13); what we changed, and why:

* **One point is not a regression.** We fit the seed's own linear-regression toy
  (``data.load_dataset("linear_toy")``: ``y = 2 x + 0.1 eps``, 100 examples of §4.4's shape,
  70 for training, 10 validation, 20 test), so the learned slope ``theta`` -> 2 is
  estimated from noisy data and checked on held-out examples.
* **The model has a bias.** ``models.LinearRegression`` is §4.4's ``nn.Linear(1, 1)``
  (``y = theta x + b``); the true bias is 0, and the summary reports both.
* **Gradient descent as in §3.1.** Each step uses the whole training split
  (``batch_size=70``), so the update is exactly
  ``theta_{t+1} = theta_t - alpha grad J(theta_t)`` with the seed's ``alpha = 0.01`` and
  ``J`` the mean squared error. With ``mean(x^2) = 0.75`` on the training split the error
  of ``theta`` shrinks by about ``1 - 2 alpha 0.75 = 0.985`` a step: to ``0.985**400 ~ 2e-3``
  of its initial value after the tiny preset's 400 steps, ``~ 3e-7`` (the least-squares
  fit) after the seed's 1000. ``full`` is ``small``: the seed's run is already this size.

``summary.json`` adds ``theta``, ``bias``, ``true_slope`` and ``least_squares_slope`` (the
closed-form fit of the training split, the best any optimizer can do) to the harness's keys.

The model and its training (``tasks.train_linear_regression``) are shared with
``linreg_schedules`` and ``linreg_batch_size``.
"""


import optax

import bigtune_jax as bt
from bigtune_jax import data
from experiments import cli
from experiments import report
from experiments import tasks


PRESETS = {
    "tiny": dict(steps=400, batch_size=70, learning_rate=0.01, eval_every=200, seed=0),
    "small": dict(steps=1000, batch_size=70, learning_rate=0.01, eval_every=100, seed=0),
    "full": dict(steps=1000, batch_size=70, learning_rate=0.01, eval_every=50, seed=0),
}


def main(argv=None) -> dict:
  workdir, preset, config = cli.parse_args(argv, PRESETS, __doc__.split("\n\n")[0])
  splits = data.load_dataset("linear_toy", seed=config["seed"])
  summary = tasks.train_linear_regression("linreg_sgd", preset, config, splits,
                                    tasks.linear_params(config["seed"]),
                                    optax.inject_hyperparams(bt.sgd)(
                                        learning_rate=config["learning_rate"]), workdir,
                                    extra={"config": config})
  report.print_summary(summary)
  return summary


if __name__ == "__main__":
  cli.run(main)
