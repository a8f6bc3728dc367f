"""Training-strategy search (seed 003 §3.3 "训练策略调优"): the optimizer, its learning-rate
schedule, the batch size and gradient accumulation, built from one searchable config.

Batch: ``batch_size`` examples per micro-batch (what one step holds in memory) and
``accumulation_steps`` :math:`k` micro-batches per optimizer update (``bt.accumulate``),
so an update sees :math:`B = \\text{batch\\_size} \\cdot k` examples. The learning rate
follows the linear scaling rule (Goyal et al., 2017, "Accurate, Large Minibatch SGD"):

.. math::
  \\eta = \\eta_{base} \\cdot B / B_{base}

Schedule families (``bigtune_jax.schedules``) over :math:`T` optimizer updates, each
decaying family ending at :math:`f \\eta` (``final_lr_fraction``), so one space fits
runs of any length:

.. math::
  \\text{constant: } \\eta_t = \\eta \\qquad
  \\text{exponential: } \\eta_t = \\eta\\, \\gamma^{t},\\ \\gamma = f^{1/T} \\qquad
  \\text{step: } \\eta_t = \\eta\\, \\gamma^{\\lfloor t/s \\rfloor},\\ \\gamma = f^{1/n},\\
  s = \\lceil T/(n+1) \\rceil

and ``warmup_cosine`` (linear warmup over :math:`\\lfloor wT \\rceil` updates, then cosine
to :math:`f\\eta`). Instead of a schedule, ``lr_adaptation="hypergradient"`` learns the rate
online (Baydin et al., ICLR 2018; ``bt.hypergradient_sgd`` / ``bt.hypergradient_adam``;
for heavy-ball momentum the hypergradient wraps ``optax.trace``), starting from
:math:`\\eta`: the seed's "strategy gradient descent" :math:`p_{t+1} = p_t - \\beta
\\nabla_p J` with :math:`p` the learning rate.

Continuous values (``learning_rate``, ``momentum``, ``final_lr_fraction``,
``warmup_fraction``, ``hyper_lr``, ``weight_decay``) may be traced arrays, so a vmapped
population can call :func:`build_strategy` inside its ``make_optimizer``.
"""

from collections.abc import Callable, Mapping, Sequence
import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
import optax

from bigtune_jax import schedules
from bigtune_jax.transforms import accumulate
from bigtune_jax.transforms import adam
from bigtune_jax.transforms import hypergradient
from bigtune_jax.transforms import l2
from bigtune_jax.transforms import momentum
from bigtune_jax.transforms import sgd
from bigtune_jax import validation
from bigtune_jax.tune.search.space import Choice
from bigtune_jax.tune.search.space import Conditional
from bigtune_jax.tune.search.space import Int
from bigtune_jax.tune.search.space import LogUniform
from bigtune_jax.tune.search.space import Space
from bigtune_jax.tune.search.space import Uniform

SCHEDULES = ("constant", "exponential", "step", "warmup_cosine")
OPTIMIZERS = ("sgd", "momentum", "adam")
ADAPTATIONS = ("schedule", "hypergradient")
DEFAULTS = {  # every key build_strategy reads, with the value it takes when absent
    "optimizer": "sgd", "momentum": 0.9, "lr_adaptation": "schedule", "schedule": "constant",
    "final_lr_fraction": 0.01, "num_decays": 2, "warmup_fraction": 0.05,
    "hyper_lr": None,  # Baydin et al.'s 1e-3 for SGD-HD, 1e-7 for Adam-HD
    "accumulation_steps": 1, "weight_decay": None}
REQUIRED = ("learning_rate", "batch_size")


def scaled_learning_rate(base_lr: Any, batch_size: int, base_batch_size: int) -> Any:
  """The linear scaling rule, ``base_lr * batch_size / base_batch_size`` (Goyal et al. 2017)."""
  validation.check_learning_rate("learning_rate", base_lr)
  validation.check_int("batch_size", batch_size, 1)
  validation.check_int("base_batch_size", base_batch_size, 1)
  return base_lr * (batch_size / base_batch_size)


def make_schedule(family: str, learning_rate: Any, total_steps: int, *,
                  final_lr_fraction: Any = 0.01, num_decays: int = 2,
                  warmup_fraction: Any = 0.05) -> schedules.Schedule:
  """The ``bigtune_jax.schedules`` schedule of one family over ``total_steps`` updates."""
  validation.check_choice("schedule", family, SCHEDULES)
  validation.check_int("total_steps", total_steps, 1)
  validation.check_interval("final_lr_fraction", final_lr_fraction, 0.0, 1.0,
                            low_closed=False, high_closed=True)
  validation.check_int("num_decays", num_decays, 1)
  validation.check_interval("warmup_fraction", warmup_fraction, 0.0, 1.0)
  if family == "constant":
    return schedules.constant(learning_rate)
  if family == "exponential":
    return schedules.exponential_decay(learning_rate, final_lr_fraction ** (1.0 / total_steps))
  if family == "step":
    return schedules.step_decay(learning_rate, math.ceil(total_steps / (num_decays + 1)),
                                final_lr_fraction ** (1.0 / num_decays))
  if total_steps < 2:
    raise ValueError(f"total_steps must be >= 2 for schedule='warmup_cosine', got {total_steps}")
  if isinstance(warmup_fraction, jax.core.Tracer):
    warmup = jnp.minimum(jnp.round(warmup_fraction * total_steps), total_steps - 1)
  else:
    warmup = min(int(round(float(warmup_fraction) * total_steps)), total_steps - 1)
  return schedules.warmup_cosine_decay(learning_rate, warmup, total_steps,
                                       end_lr=learning_rate * final_lr_fraction)


@dataclasses.dataclass(frozen=True)
class Strategy:
  """What a config decides about training; feeds ``create_train_state`` and ``FitConfig``."""
  optimizer: optax.GradientTransformation  # accumulation included when k > 1
  learning_rate: Callable | Any  # schedule over updates, or hypergradient's initial rate
  batch_size: int  # micro-batch per step: FitConfig.batch_size
  accumulation_steps: int  # micro-batches per optimizer update
  fit_steps: int  # micro-batch steps for total_steps updates: FitConfig.steps

  @property
  def effective_batch_size(self) -> int:
    return self.batch_size * self.accumulation_steps


def _base_optimizer(config, learning_rate, total_steps):
  """The optimizer of ``config`` before weight decay and accumulation."""
  name, gamma = config["optimizer"], config["momentum"]
  if config["lr_adaptation"] == "hypergradient":
    hyper_lr = config["hyper_lr"]
    if hyper_lr is None:
      hyper_lr = 1e-7 if name == "adam" else 1e-3
    if name == "adam":
      return hypergradient.hypergradient_adam(learning_rate, hyper_lr), learning_rate
    if name == "momentum":
      validation.check_interval("momentum", gamma, 0.0, 1.0)
      return hypergradient.hypergradient_descent(optax.trace(decay=gamma), learning_rate,
                                                 hyper_lr), learning_rate
    return hypergradient.hypergradient_sgd(learning_rate, hyper_lr), learning_rate
  schedule = make_schedule(config["schedule"], learning_rate, total_steps,
                           final_lr_fraction=config["final_lr_fraction"],
                           num_decays=config["num_decays"],
                           warmup_fraction=config["warmup_fraction"])
  if name == "adam":
    return adam(schedule), schedule
  if name == "momentum":
    return momentum(schedule, gamma), schedule
  return sgd(schedule), schedule


def build_strategy(config: Mapping[str, Any], *, total_steps: int,
                   base_batch_size: int = 256) -> Strategy:
  """Builds optimizer, schedule and batch setup from a strategy config.

  Args:
    config: ``learning_rate`` (the rate at ``base_batch_size``) and ``batch_size`` (per
      micro-batch), and optionally ``accumulation_steps``, ``optimizer``
      (``"sgd"|"momentum"|"adam"``), ``momentum``, ``weight_decay`` (L2),
      ``lr_adaptation`` (``"schedule"|"hypergradient"``), ``schedule`` (``"constant"|
      "exponential"|"step"|"warmup_cosine"``), ``final_lr_fraction``, ``num_decays``,
      ``warmup_fraction``, ``hyper_lr``; see ``DEFAULTS``. Keys of an inactive branch
      (``momentum`` with ``optimizer="adam"``) are ignored.
    total_steps: optimizer updates in the run (the schedule's length), >= 1.
    base_batch_size: the batch at which ``learning_rate`` is meant (linear scaling rule).

  Raises:
    ValueError: naming the key, for an unknown or missing key or a value out of range.
  """
  if not isinstance(config, Mapping):
    raise ValueError(f"config must be a mapping, got {config!r}")
  for key in config:
    if key not in DEFAULTS and key not in REQUIRED:
      raise ValueError(f"unknown strategy key {key!r}; accepted: "
                       f"{sorted(set(DEFAULTS) | set(REQUIRED))}")
  for key in REQUIRED:
    if key not in config:
      raise ValueError(f"strategy config is missing {key!r}")
  config = {**DEFAULTS, **config}
  validation.check_int("total_steps", total_steps, 1)
  validation.check_choice("optimizer", config["optimizer"], OPTIMIZERS)
  validation.check_choice("lr_adaptation", config["lr_adaptation"], ADAPTATIONS)
  validation.check_int("batch_size", config["batch_size"], 1)
  validation.check_int("accumulation_steps", config["accumulation_steps"], 1)
  batch_size, k = config["batch_size"], config["accumulation_steps"]
  learning_rate = scaled_learning_rate(config["learning_rate"], batch_size * k, base_batch_size)
  optimizer, learning_rate = _base_optimizer(config, learning_rate, total_steps)
  if config["weight_decay"] is not None:
    optimizer = optax.chain(l2(config["weight_decay"]), optimizer)
  if k > 1:
    optimizer = accumulate(optimizer, k)
  return Strategy(optimizer, learning_rate, int(batch_size), int(k), int(total_steps * k))


def strategy_space(batch_sizes: Sequence[int] = (32, 64, 128, 256),
                   accumulation_steps: Sequence[int] = (1, 2, 4)) -> Space:
  """A default space over training strategies for :func:`build_strategy`."""
  decaying = ("exponential", "step", "warmup_cosine")
  return Space({
      "learning_rate": LogUniform(1e-4, 1.0),
      "optimizer": Choice(list(OPTIMIZERS)),
      "momentum": Conditional("optimizer", ("momentum",), Uniform(0.5, 0.99)),
      "lr_adaptation": Choice(list(ADAPTATIONS)),
      "schedule": Conditional("lr_adaptation", ("schedule",), Choice(list(SCHEDULES))),
      "final_lr_fraction": Conditional("schedule", decaying, LogUniform(1e-3, 1.0)),
      "num_decays": Conditional("schedule", ("step",), Int(1, 4)),
      "warmup_fraction": Conditional("schedule", ("warmup_cosine",), Uniform(0.0, 0.3)),
      "hyper_lr": Conditional("lr_adaptation", ("hypergradient",), LogUniform(1e-8, 1e-2)),
      "batch_size": Choice(list(batch_sizes)),
      "accumulation_steps": Choice(list(accumulation_steps)),
  })
