"""The search space shared by every searcher (seed 003 §3: parameter, structure and
training-strategy tuning all search one description of the candidate configurations).

A :class:`Space` maps hyperparameter names to distributions:

.. math::
  \\text{Uniform}(a, b):\\ x \\sim U[a, b] \\qquad
  \\text{LogUniform}(a, b):\\ \\log x \\sim U[\\log a, \\log b] \\qquad
  \\text{Int}(a, b):\\ x \\in \\{a, a + s, \\dots, b\\} \\qquad
  \\text{Choice}(v_1..v_k):\\ x \\in \\{v_1, \\dots, v_k\\}

and ``Conditional(parent, values, dist)`` makes a hyperparameter exist only when
``config[parent] in values`` (Adam's ``b1`` only for ``optimizer="adam"``), the
define-by-run conditional spaces of Optuna (Akiba et al., KDD 2019) and the tree of
TPE (Bergstra et al., NeurIPS 2011). Grid search discretizes continuous axes into
``points_per_axis`` points (geometric for log scales) and enumerates ``Int`` and
``Choice``; random search samples each active axis independently (Bergstra & Bengio,
JMLR 2012). ``Uniform`` and ``LogUniform`` are the *continuous* axes: a population of
configurations differing only in them can be trained in one ``jax.vmap`` program.
"""

from collections.abc import Mapping, Sequence
import dataclasses
import itertools
import math
import numbers
import types
from typing import Any

import jax.numpy as jnp
import numpy as np


def _is_real(x: Any) -> bool:
  return isinstance(x, numbers.Real) and not isinstance(x, bool) and math.isfinite(x)


def _is_int(x: Any) -> bool:
  return isinstance(x, numbers.Integral) and not isinstance(x, bool)


def _equal(a: Any, b: Any) -> bool:
  """``a == b``, but ``True`` is not ``1`` and a failing comparison is ``False``."""
  if isinstance(a, (bool, np.bool_)) != isinstance(b, (bool, np.bool_)):
    return False
  try:
    return bool(a == b)
  except (TypeError, ValueError):
    return False


@dataclasses.dataclass(frozen=True)
class Uniform:
  """A real number drawn uniformly from ``[low, high]``."""
  low: float
  high: float

  def check(self, name: str) -> None:
    if not (_is_real(self.low) and _is_real(self.high) and self.low < self.high):
      raise ValueError(f"{name}: {type(self).__name__} needs finite numbers low < high, "
                       f"got low={self.low!r}, high={self.high!r}")

  def contains(self, x: Any) -> bool:
    return _is_real(x) and self.low <= x <= self.high

  def sample(self, rng: np.random.Generator) -> float:
    return float(rng.uniform(self.low, self.high))

  def from_unit(self, u):
    """The value at ``u`` in [0, 1) (traceable): ``low + (high - low) u``."""
    return self.low + (self.high - self.low) * u

  def grid(self, points: int) -> list[float]:
    if points == 1:
      return [0.5 * (self.low + self.high)]
    return [float(x) for x in np.linspace(self.low, self.high, points)]


@dataclasses.dataclass(frozen=True)
class LogUniform(Uniform):
  """A positive real number whose logarithm is uniform on ``[log low, log high]``."""

  def check(self, name: str) -> None:
    super().check(name)
    if self.low <= 0:
      raise ValueError(f"{name}: LogUniform needs low > 0 (log scale), got low={self.low!r}")

  def sample(self, rng: np.random.Generator) -> float:
    return float(np.exp(rng.uniform(np.log(self.low), np.log(self.high))))

  def from_unit(self, u):
    """The value at ``u`` in [0, 1) (traceable): ``exp(log low + (log high - log low) u)``."""
    low, high = math.log(self.low), math.log(self.high)
    return jnp.exp(low + (high - low) * u)

  def grid(self, points: int) -> list[float]:
    if points == 1:
      return [math.sqrt(self.low * self.high)]
    return [float(x) for x in np.geomspace(self.low, self.high, points)]


@dataclasses.dataclass(frozen=True)
class Int:
  """An integer in ``{low, low + step, ..., high}`` (both ends included).

  ``log=True`` (with ``step=1``) samples on a log scale, as ``optuna``'s ``suggest_int``;
  a grid then takes ``points_per_axis`` geometrically spaced integers instead of all.
  """
  low: int
  high: int
  log: bool = False
  step: int = 1

  def check(self, name: str) -> None:
    if not (_is_int(self.low) and _is_int(self.high) and self.low < self.high):
      raise ValueError(f"{name}: Int needs integers low < high, got low={self.low!r}, "
                       f"high={self.high!r}")
    if not (_is_int(self.step) and self.step >= 1 and (self.high - self.low) % self.step == 0):
      raise ValueError(f"{name}: Int step must be an integer >= 1 dividing high - low = "
                       f"{self.high - self.low}, got step={self.step!r}")
    if not isinstance(self.log, bool) or (self.log and (self.low < 1 or self.step != 1)):
      raise ValueError(f"{name}: Int(log=True) needs low >= 1 and step=1, got low={self.low!r}, "
                       f"step={self.step!r}, log={self.log!r}")

  def contains(self, x: Any) -> bool:
    return _is_int(x) and self.low <= x <= self.high and (x - self.low) % self.step == 0

  def sample(self, rng: np.random.Generator) -> int:
    if self.log:  # optuna's rule: log-uniform on [low - 1/2, high + 1/2], then rounded
      x = np.exp(rng.uniform(np.log(self.low - 0.5), np.log(self.high + 0.5)))
      return int(np.clip(np.round(x), self.low, self.high))
    return int(self.low + self.step * rng.integers(0, (self.high - self.low) // self.step + 1))

  def grid(self, points: int) -> list[int]:
    if self.log:
      return sorted({int(round(x)) for x in LogUniform(self.low, self.high).grid(points)})
    return list(range(self.low, self.high + 1, self.step))


@dataclasses.dataclass(frozen=True)
class Choice:
  """One of a fixed, ordered list of distinct values (numbers, strings, tuples, ...)."""
  values: Sequence[Any]

  def check(self, name: str) -> None:
    if isinstance(self.values, (str, bytes)) or not isinstance(self.values, Sequence) or (
        not self.values):
      raise ValueError(f"{name}: Choice needs a non-empty list of values, got {self.values!r}")
    for i, j in itertools.combinations(range(len(self.values)), 2):
      if _equal(self.values[i], self.values[j]):
        raise ValueError(f"{name}: Choice values must be distinct, {self.values[i]!r} repeats")

  def contains(self, x: Any) -> bool:
    return any(_equal(x, v) for v in self.values)

  def sample(self, rng: np.random.Generator) -> Any:
    return self.values[int(rng.integers(0, len(self.values)))]

  def grid(self, points: int) -> list[Any]:
    del points
    return list(self.values)


Distribution = Uniform | LogUniform | Int | Choice


@dataclasses.dataclass(frozen=True)
class Conditional:
  """``dist``, present only when the hyperparameter ``parent`` takes one of ``values``.

  ``parent`` must be an ``Int`` or ``Choice`` (possibly conditional itself) listed
  earlier in the space.
  """
  parent: str
  values: Sequence[Any]
  dist: Distribution


class Space:
  """Named distributions, in order; the one description every searcher reads.

  Args:
    distributions: ``{name: Uniform | LogUniform | Int | Choice | Conditional}``, not
      empty; a ``Conditional``'s parent must come before it.

  Raises:
    ValueError: naming the hyperparameter, for an empty space or an invalid distribution.
  """

  def __init__(self, distributions: Mapping[str, Distribution | Conditional]):
    if not isinstance(distributions, Mapping) or not distributions:
      raise ValueError("space must be a non-empty mapping {name: distribution}, got "
                       f"{distributions!r}")
    for position, (name, dist) in enumerate(distributions.items()):
      if not isinstance(name, str) or not name:
        raise ValueError(f"space names must be non-empty strings, got {name!r}")
      inner = dist.dist if isinstance(dist, Conditional) else dist
      if not isinstance(inner, (Uniform, Int, Choice)):
        raise ValueError(f"space[{name!r}] must be Uniform, LogUniform, Int, Choice or a "
                         f"Conditional of one, got {dist!r}")
      inner.check(f"space[{name!r}]")
      if isinstance(dist, Conditional):
        self._check_conditional(name, dist, list(distributions)[:position], distributions)
    self._distributions = types.MappingProxyType(dict(distributions))

  @staticmethod
  def _check_conditional(name, dist, earlier, distributions):
    if dist.parent not in earlier:
      raise ValueError(f"space[{name!r}]: Conditional parent {dist.parent!r} must be a "
                       f"hyperparameter listed before {name!r}; earlier ones: {earlier}")
    parent = distributions[dist.parent]
    parent = parent.dist if isinstance(parent, Conditional) else parent
    if not isinstance(parent, (Int, Choice)):
      raise ValueError(f"space[{name!r}]: Conditional parent {dist.parent!r} must be an Int "
                       f"or Choice, got {parent!r}")
    values = dist.values
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence) or not values:
      raise ValueError(f"space[{name!r}]: Conditional values must be a non-empty list of "
                       f"values of {dist.parent!r}, got {values!r}")
    for value in values:
      if not parent.contains(value):
        raise ValueError(f"space[{name!r}]: Conditional value {value!r} is not a value of "
                         f"{dist.parent!r} = {parent!r}")

  @property
  def distributions(self) -> Mapping[str, Distribution | Conditional]:
    return self._distributions

  @property
  def names(self) -> tuple[str, ...]:
    return tuple(self._distributions)

  @property
  def continuous_names(self) -> tuple[str, ...]:
    """Names of the ``Uniform`` / ``LogUniform`` axes (conditional ones included: they are
    in a config only when active)."""
    return tuple(n for n in self.names if isinstance(self.base(n), Uniform))

  def base(self, name: str) -> Distribution:
    """The distribution of ``name``, without its ``Conditional`` wrapper."""
    dist = self._distributions[name]
    return dist.dist if isinstance(dist, Conditional) else dist

  def is_active(self, name: str, config: Mapping[str, Any]) -> bool:
    """Whether ``name`` belongs in ``config``, given the values of its parents."""
    dist = self._distributions[name]
    if not isinstance(dist, Conditional):
      return True
    return (dist.parent in config and self.is_active(dist.parent, config)
            and any(_equal(config[dist.parent], v) for v in dist.values))

  def validate(self, config: Mapping[str, Any]) -> dict[str, Any]:
    """Checks one configuration; returns it as a dict in the space's order.

    Raises:
      ValueError: naming the hyperparameter: unknown name, missing active one, inactive
        one present, or a value outside its distribution.
    """
    if not isinstance(config, Mapping):
      raise ValueError(f"config must be a mapping {{name: value}}, got {config!r}")
    for name in config:
      if name not in self._distributions:
        raise ValueError(f"unknown hyperparameter {name!r}; the space has {list(self.names)}")
    for name in self.names:
      dist = self._distributions[name]
      active = self.is_active(name, config)
      if active and name not in config:
        raise ValueError(f"config is missing hyperparameter {name!r} ({dist!r})")
      if not active and name in config:
        raise ValueError(f"hyperparameter {name!r} is only used when {dist.parent!r} is one "
                         f"of {list(dist.values)}, got {dist.parent!r}="
                         f"{config.get(dist.parent, '<absent>')!r}")
      if active and not self.base(name).contains(config[name]):
        raise ValueError(f"hyperparameter {name!r} must be in {self.base(name)!r}, got "
                         f"{config[name]!r}")
    return {name: config[name] for name in self.names if name in config}

  def sample(self, rng: np.random.Generator | int,
             fixed: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """One configuration with every active axis drawn independently, except those given
    in ``fixed`` (e.g. the discrete values of another configuration), which are kept."""
    rng = np.random.default_rng(rng)
    fixed = fixed or {}
    config = {}
    for name in self.names:
      if self.is_active(name, config):
        config[name] = fixed[name] if name in fixed else self.base(name).sample(rng)
    return config

  def grid(self, points_per_axis: int = 3) -> list[dict[str, Any]]:
    """Every configuration of the grid: the product of the axes, expanding a conditional
    axis only in the configurations where it is active."""
    if not _is_int(points_per_axis) or points_per_axis < 1:
      raise ValueError(f"points_per_axis must be an integer >= 1, got {points_per_axis!r}")
    configs = [{}]
    for name in self.names:
      values = self.base(name).grid(points_per_axis)
      expanded = []
      for config in configs:
        if self.is_active(name, config):
          expanded.extend({**config, name: value} for value in values)
        else:
          expanded.append(config)
      configs = expanded
    return configs

  def partition(self, config: Mapping[str, Any]) -> tuple[dict[str, float], dict[str, Any]]:
    """Splits a configuration into its continuous values and the rest.

    Configurations with equal rest differ only in continuous values, so they can be
    trained as one vmapped population.
    """
    names = self.continuous_names
    continuous = {k: v for k, v in config.items() if k in names}
    return continuous, {k: v for k, v in config.items() if k not in continuous}

  def __repr__(self) -> str:
    items = ", ".join(f"{k!r}: {v!r}" for k, v in self._distributions.items())
    return f"Space({{{items}}})"
