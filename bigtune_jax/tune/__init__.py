"""Hyperparameter, structure and training-strategy search (seed 003 §3).

One search-space description (:class:`Space`) shared by every searcher: grid, seeded
random and Optuna (TPE + median / Hyperband pruning, in-memory / journal / RDB storage)
search, all behind one ask / report / tell protocol; builders turning a sampled config
into a training strategy (optimizer, schedule, batch, accumulation, hypergradient) or an
MLP structure; many trials trained at once under ``jax.vmap`` (:func:`train_population`),
LoRA adapters over one frozen base (:func:`train_adapter_population`),
population-based training (:func:`pbt`) and differentiable architecture search
(:func:`darts_search`). Optuna is imported lazily, so this package imports without it.
"""

from bigtune_jax.tune.space import Choice
from bigtune_jax.tune.space import Conditional
from bigtune_jax.tune.space import Int
from bigtune_jax.tune.space import LogUniform
from bigtune_jax.tune.space import Space
from bigtune_jax.tune.space import Uniform
from bigtune_jax.tune.search import GridSearch
from bigtune_jax.tune.search import RandomSearch
from bigtune_jax.tune.search import Searcher
from bigtune_jax.tune.search import Trial
from bigtune_jax.tune.search import TrialPruned
from bigtune_jax.tune.search import TrialResult
from bigtune_jax.tune.optuna_search import OptunaSearch
from bigtune_jax.tune.strategy import Strategy
from bigtune_jax.tune.strategy import build_strategy
from bigtune_jax.tune.strategy import make_schedule
from bigtune_jax.tune.strategy import scaled_learning_rate
from bigtune_jax.tune.strategy import strategy_space
from bigtune_jax.tune.structure import build_structure
from bigtune_jax.tune.structure import structure_space
from bigtune_jax.tune.population import PopulationResult
from bigtune_jax.tune.population import train_population
from bigtune_jax.tune.adapter_population import AdapterPopulationResult
from bigtune_jax.tune.adapter_population import train_adapter_population
from bigtune_jax.tune.population_based import exploit_and_explore
from bigtune_jax.tune.population_based import pbt
from bigtune_jax.tune.darts import DartsResult
from bigtune_jax.tune.darts import DartsState
from bigtune_jax.tune.darts import arch_optimizer
from bigtune_jax.tune.darts import darts_search
from bigtune_jax.tune.darts import make_darts_step
from bigtune_jax.tune.darts import weight_optimizer

__all__ = (
    "AdapterPopulationResult",
    "Choice",
    "Conditional",
    "DartsResult",
    "DartsState",
    "PopulationResult",
    "GridSearch",
    "Int",
    "LogUniform",
    "OptunaSearch",
    "RandomSearch",
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
    "make_darts_step",
    "make_schedule",
    "pbt",
    "scaled_learning_rate",
    "strategy_space",
    "structure_space",
    "train_adapter_population",
    "train_population",
    "weight_optimizer",
)
