"""Hyperparameter, structure and training-strategy search (seed 003 §3), in two halves that
do not import each other:

* ``tune.search``: proposals only. One search-space description (:class:`Space`) shared by
  every searcher: grid, seeded random and Optuna (TPE + median / Hyperband pruning;
  in-memory / journal / RDB storage) search behind one ask / report / tell protocol, and
  builders turning a sampled config into a training strategy or an MLP structure. Optuna is
  imported lazily, so this package imports without it.
* ``tune.population``: execution only. One runner trains N members in one compiled program:
  whole models (:func:`train_population`), LoRA adapters over one frozen base
  (:func:`train_adapter_population`), population-based training (:func:`pbt`); a member's
  initial state (:func:`initial_state`); differentiable architecture search
  (:func:`darts_search`).

Beside them, using both: :func:`search_populations` (``tune.population_search``), the
recommended search as one call: the searcher asks populations, each trained as one program,
reported and pruned at every evaluation, told, until a budget in trials or seconds.
"""

from bigtune_jax.tune.search import Choice
from bigtune_jax.tune.search import Conditional
from bigtune_jax.tune.search import GridSearch
from bigtune_jax.tune.search import Int
from bigtune_jax.tune.search import LogUniform
from bigtune_jax.tune.search import OptunaSearch
from bigtune_jax.tune.search import RandomSearch
from bigtune_jax.tune.search import Searcher
from bigtune_jax.tune.search import Space
from bigtune_jax.tune.search import Strategy
from bigtune_jax.tune.search import Trial
from bigtune_jax.tune.search import TrialPruned
from bigtune_jax.tune.search import TrialResult
from bigtune_jax.tune.search import Uniform
from bigtune_jax.tune.search import build_strategy
from bigtune_jax.tune.search import build_structure
from bigtune_jax.tune.search import make_schedule
from bigtune_jax.tune.search import scaled_learning_rate
from bigtune_jax.tune.search import strategy_space
from bigtune_jax.tune.search import structure_space
from bigtune_jax.tune.population import AdapterPopulationResult
from bigtune_jax.tune.population import DartsResult
from bigtune_jax.tune.population import DartsState
from bigtune_jax.tune.population import PopulationResult
from bigtune_jax.tune.population import arch_optimizer
from bigtune_jax.tune.population import darts_search
from bigtune_jax.tune.population import exploit_and_explore
from bigtune_jax.tune.population import initial_state
from bigtune_jax.tune.population import make_darts_step
from bigtune_jax.tune.population import pbt
from bigtune_jax.tune.population import train_adapter_population
from bigtune_jax.tune.population import train_population
from bigtune_jax.tune.population import weight_optimizer
from bigtune_jax.tune.population_search import PopulationTask
from bigtune_jax.tune.population_search import SearchResult
from bigtune_jax.tune.population_search import search_populations

__all__ = (
    "AdapterPopulationResult",
    "Choice",
    "Conditional",
    "DartsResult",
    "DartsState",
    "PopulationResult",
    "PopulationTask",
    "GridSearch",
    "Int",
    "LogUniform",
    "OptunaSearch",
    "RandomSearch",
    "SearchResult",
    "Searcher",
    "Space",
    "Strategy",
    "Trial",
    "TrialPruned",
    "TrialResult",
    "Uniform",
    "arch_optimizer",
    "build_strategy",
    "build_structure",
    "darts_search",
    "exploit_and_explore",
    "initial_state",
    "make_darts_step",
    "make_schedule",
    "pbt",
    "scaled_learning_rate",
    "search_populations",
    "strategy_space",
    "structure_space",
    "train_adapter_population",
    "train_population",
    "weight_optimizer",
)
