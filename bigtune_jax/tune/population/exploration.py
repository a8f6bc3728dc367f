"""Population-based training inside jit (Jaderberg et al., 2017, arXiv:1711.09846;
seed 003 §3.1), with the semantics of Ray Tune's ``PopulationBasedTraining`` in its
synchronous mode.

Every ``perturbation_interval`` steps the population is ranked by the validation metric
(ascending by :math:`\\pm`metric, a stable sort, NaN ranked worst). With
:math:`q = \\lceil N f \\rceil` (``quantile_fraction`` :math:`f`, at most
:math:`\\lfloor N/2 \\rfloor`), each of the :math:`q` bottom members

* **exploits**: copies the weights and optimizer state, and all hyperparameters, of a
  member drawn uniformly from the :math:`q` top ones;
* **explores**: each mutated hyperparameter :math:`h` of the copy is, with probability
  ``resample_probability`` (0.25), drawn afresh from its distribution (``Uniform`` or
  ``LogUniform`` of ``bigtune_jax.tune.search.space``), else multiplied by a factor drawn uniformly
  from ``perturbation_factors`` (0.8, 1.2):

.. math::
  h' = \\begin{cases} h_{new} \\sim D & u < p_{resample} \\\\
  \\text{clip}(h_{donor} \\cdot c,\\ D_{low},\\ D_{high}),\\ c \\sim U\\{0.8, 1.2\\} & \\text{else}
  \\end{cases}

The one difference from Ray: a perturbed value is clipped to its distribution's range
(Ray leaves it unclipped), so that a momentum of 0.95 never becomes 1.14. The exploit /
explore step :func:`exploit_and_explore` is a pure function of (population, hparams,
scores, rng), jitted once (:class:`Exploration`); the population runner
(``population.runner``) trains and evaluates the intervals and calls it after each
evaluation but the last: members are whole models or, for a ``finetune.LoRA``, adapters
over a frozen base, as in ``train_adapter_population``.
"""

from collections.abc import Mapping, Sequence
import dataclasses
import functools
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from bigtune_jax.data.pipeline import ArrayDataset
from bigtune_jax.train.step import LossFn
from bigtune_jax.train.step import mean_metrics
from bigtune_jax import validation
from bigtune_jax.tune.population import members as members_lib
from bigtune_jax.tune.population.runner import PopulationResult
from bigtune_jax.tune.population.runner import run_population

METRICS = ("val_accuracy", "val_loss")


def quantile_size(n: int, quantile_fraction: float) -> int:
  """Members in each of the bottom and top quantiles: Ray's ``ceil(n f)``, at most
  ``floor(n / 2)``; 0 for a population of one."""
  if n <= 1:
    return 0
  size = int(math.ceil(n * quantile_fraction))
  return int(math.floor(n / 2)) if size > n / 2 else size


def explore_draws(rng: jax.Array, n: int, num_hparams: int, quantile: int,
                  num_factors: int) -> dict[str, jax.Array]:
  """The random numbers of one exploit / explore step, one row per member: ``donor``
  (index into the top quantile, (n,)), ``resample`` and ``fresh`` (uniform [0, 1),
  (n, H)), ``factor`` (index into the perturbation factors, (n, H))."""
  k_donor, k_resample, k_factor, k_fresh = jax.random.split(rng, 4)
  shape = (n, num_hparams)
  return {"donor": jax.random.randint(k_donor, (n,), 0, max(quantile, 1)),
          "resample": jax.random.uniform(k_resample, shape),
          "factor": jax.random.randint(k_factor, shape, 0, num_factors),
          "fresh": jax.random.uniform(k_fresh, shape)}


def exploit_and_explore(members: Any, hparams: Mapping[str, jax.Array], scores: jax.Array,
                        rng: jax.Array, *, mutations: Mapping[str, Any],
                        quantile_fraction: float = 0.25, resample_probability: float = 0.25,
                        perturbation_factors: Sequence[float] = (0.8, 1.2),
                        mode: str = "max") -> tuple[Any, dict[str, jax.Array], jax.Array]:
  """One PBT step (see the module docstring); pure and jittable.

  Args:
    members: any pytree of stacked per-member arrays (leading axis N): weights and
      optimizer state; a bottom member's rows are replaced by its donor's.
    hparams: ``{name: (N,)}``; a bottom member gets its donor's values, then the names in
      ``mutations`` are explored.
    scores: (N,) the metric; higher is better for ``mode="max"``.
    rng: a ``jax.random`` key.
    mutations: ``{name: Uniform | LogUniform}``, the hyperparameters to explore.
    quantile_fraction, resample_probability, perturbation_factors, mode: as Ray's PBT.

  Returns:
    ``(members, hparams, source)``, ``source[i]`` the member whose state member i now has.
  """
  n = scores.shape[0]
  quantile = quantile_size(n, quantile_fraction)
  names = tuple(mutations)
  draws = explore_draws(rng, n, len(names), quantile, len(perturbation_factors))
  key = scores if mode == "max" else -scores
  key = jnp.where(jnp.isnan(key), -jnp.inf, key)
  order = jnp.argsort(key, stable=True)  # worst first
  bottom, top = order[:quantile], order[n - quantile:]
  source = jnp.arange(n).at[bottom].set(top[draws["donor"][bottom]])
  replaced = jnp.zeros(n, bool).at[bottom].set(True)
  members = jax.tree.map(lambda x: x[source], members)
  hparams = {name: h[source] for name, h in hparams.items()}
  factors = jnp.asarray(perturbation_factors, jnp.float32)
  for j, name in enumerate(names):
    dist, h = mutations[name], hparams[name]
    perturbed = jnp.clip(h * factors[draws["factor"][:, j]], dist.low, dist.high)
    fresh = dist.from_unit(draws["fresh"][:, j])
    explored = jnp.where(draws["resample"][:, j] < resample_probability, fresh, perturbed)
    hparams[name] = jnp.where(replaced, explored.astype(h.dtype), h)
  return members, hparams, source




def _continuous(dist) -> bool:
  """A distribution PBT can explore: ``tune.Uniform`` / ``tune.LogUniform`` (anything with
  ``low``, ``high`` and a traceable ``from_unit``; the search side is not imported)."""
  return all(hasattr(dist, a) for a in ("low", "high", "check")) and callable(
      getattr(dist, "from_unit", None))


@dataclasses.dataclass(frozen=True)
class Exploration:
  """How PBT ranks, exploits and explores (hashable: a static argument of its program).
  Called by the runner as ``exploration(states, hparams, sums, rng) -> (states, hparams,
  source)`` on the program's members, ``sums`` their summed eval metrics."""
  metric: str
  mutations: tuple[tuple[str, Any], ...]
  quantile_fraction: float
  resample_probability: float
  perturbation_factors: tuple[float, ...]
  mode: str

  def __call__(self, states, hparams, sums, rng):
    return _explore_states(self, states, hparams, sums, rng)


@functools.partial(jax.jit, static_argnames=("settings",), donate_argnames=("states",))
def _explore_states(settings: Exploration, states, hparams, sums, rng):
  """Ranks the members by ``settings.metric`` and exploits / explores their parameters,
  optimizer state and hyperparameters (one gather by ``source``)."""
  if settings.metric == "val_accuracy" and "correct" not in sums:
    raise ValueError("metric='val_accuracy' needs a classifier's loss_fn (it counts correct "
                     "rows); use metric='val_loss', mode='min'")
  scores = mean_metrics(sums)["accuracy" if settings.metric == "val_accuracy" else "loss"]
  members, hparams, source = exploit_and_explore(
      (states.params, states.opt_state), hparams, scores, rng,
      mutations=dict(settings.mutations), quantile_fraction=settings.quantile_fraction,
      resample_probability=settings.resample_probability,
      perturbation_factors=settings.perturbation_factors, mode=settings.mode)
  return states.replace(params=members[0], opt_state=members[1]), hparams, source


def _check_mutations(mutations, hparams) -> tuple[tuple[str, Any], ...]:
  if hasattr(mutations, "continuous_names"):  # a tune.Space
    mutations = {name: mutations.base(name) for name in mutations.continuous_names
                 if name in hparams}
  if not isinstance(mutations, Mapping) or not mutations:
    raise ValueError("mutations must be a non-empty mapping {name: Uniform | LogUniform} "
                     f"(or a Space), got {mutations!r}")
  for name, dist in mutations.items():
    if name not in hparams:
      raise ValueError(f"mutations[{name!r}]: unknown hyperparameter; hparams has "
                       f"{sorted(hparams)}")
    if not _continuous(dist):
      raise ValueError(f"mutations[{name!r}] must be a Uniform or LogUniform (continuous), "
                       f"got {dist!r}")
    dist.check(f"mutations[{name!r}]")
  return tuple(mutations.items())


def _check_mutation_ends(make_optimizer, values, mutation_items) -> None:
  """An explored value is clipped to its distribution's range, so both ends of it must be
  values the optimizer takes: each is built once on the host (member 0's other values)."""
  base = {name: np.float32(v[0]) for name, v in values.items()}
  for name, dist in mutation_items:
    for end in (dist.low, dist.high):
      try:
        make_optimizer({**base, name: np.float32(end)})
      except ValueError as error:
        raise ValueError(f"mutations[{name!r}] = {dist!r} explores up to its ends, and "
                         f"{name}={end:g} is refused: {error}") from None
      except Exception:  # pylint: disable=broad-except
        return  # a builder that needs traced arrays: the traced run reports its own errors


def _check_exploration(make_optimizer, values, mutations, metric, mode, quantile_fraction,
                       resample_probability, perturbation_factors) -> Exploration:
  """PBT's exploit-and-explore settings, each checked by name before any work."""
  mutation_items = _check_mutations(mutations, values)
  if "rank" in dict(mutation_items):
    raise ValueError("mutations: 'rank' cannot explore (a perturbed rank is not an "
                     "integer); give it in hparams only")
  members_lib.check_member_optimizers(make_optimizer, values, len(next(iter(values.values()))))
  _check_mutation_ends(make_optimizer, values, mutation_items)
  validation.check_choice("metric", metric, METRICS)
  mode = mode or ("max" if metric == "val_accuracy" else "min")
  validation.check_choice("mode", mode, ("max", "min"))
  validation.check_interval("quantile_fraction", quantile_fraction, 0.0, 0.5, high_closed=True)
  validation.check_interval("resample_probability", resample_probability, 0.0, 1.0,
                            high_closed=True)
  factors = tuple(float(c) for c in perturbation_factors)
  if not factors or not all(math.isfinite(c) and c > 0 for c in factors):
    raise ValueError(f"perturbation_factors must be a non-empty list of positive numbers, "
                     f"got {perturbation_factors!r}")
  return Exploration(metric, mutation_items, float(quantile_fraction),
                     float(resample_probability), factors, mode)


def pbt(model, loss_fn: LossFn, make_optimizer: members_lib.MakeOptimizer,
        hparams: Mapping[str, Sequence[float] | np.ndarray], mutations: Any,
        train_data: ArrayDataset, val_data: ArrayDataset, *, steps: int, batch_size: int,
        perturbation_interval: int, metric: str = "val_accuracy", mode: str | None = None,
        quantile_fraction: float = 0.25, resample_probability: float = 0.25,
        perturbation_factors: Sequence[float] = (0.8, 1.2), seed: int = 0,
        member_seeds: Sequence[int] | None = None, eval_batch_size: int = 512,
        input_key: str | None = None, member_chunk: int | None = None,
        base_params=None) -> PopulationResult:
  """Population-based training of N members (see the module docstring).

  Args:
    model: a flax module (each member a whole model), or a ``finetune.LoRA`` together with
      ``base_params`` (each member an adapter over that frozen base, held once, as in
      ``train_adapter_population``: ``alpha`` and ``rank`` in ``hparams`` set each adapter,
      ``rank`` does not explore, ``result.member(i)`` is a ``finetune.Adapters``). A LoRA
      without ``base_params``, ``base_params`` with a module, or anything else: ValueError.
    loss_fn, make_optimizer, hparams, train_data, val_data, batch_size, seed,
      member_seeds, eval_batch_size, input_key, member_chunk: as ``train_population``.
    mutations: ``{name: Uniform | LogUniform}`` (or a ``Space``: its continuous axes
      found in ``hparams``), the hyperparameters that explore.
    steps: training steps, >= 1.
    perturbation_interval: steps between evaluations; after each one but the last, the
      bottom quantile exploits and explores.
    metric: ``"val_accuracy"`` or ``"val_loss"``, the score that ranks the members.
    mode: ``"max"`` or ``"min"``; None: ``"max"`` for accuracy, ``"min"`` for the loss.
    quantile_fraction: in [0, 0.5]; resample_probability: in [0, 1];
    perturbation_factors: positive multipliers to draw from.

  Returns:
    A ``PopulationResult``; each history row adds ``hparams`` (after the step's explore)
    and ``source`` (the member each one copied, itself if none).
  """
  kind = members_lib.members_for(model, loss_fn, base_params)
  values, _ = members_lib.check_hparams(hparams)
  validation.check_int("perturbation_interval", perturbation_interval, 1)
  settings = _check_exploration(make_optimizer, values, mutations, metric, mode,
                                quantile_fraction, resample_probability, perturbation_factors)
  return run_population(
      kind, make_optimizer, hparams, train_data, val_data, steps=steps, batch_size=batch_size,
      eval_every=perturbation_interval, seed=seed, member_seeds=member_seeds,
      explore=settings, shared=base_params, eval_batch_size=eval_batch_size,
      input_key=input_key, member_chunk=member_chunk)
