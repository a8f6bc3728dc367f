"""The search half of ``bigtune_jax.tune``: proposals only (seed 003 §3).

One search-space description (:class:`Space`) shared by every searcher: grid, seeded random
and Optuna (TPE + median / Hyperband pruning; storage by URL) search behind one ask /
report / tell protocol, and builders turning a sampled config into a training strategy or
an MLP structure. Nothing here trains, and nothing here imports ``tune.population``.
"""

from bigtune_jax.tune.search.space import Choice
from bigtune_jax.tune.search.space import Conditional
from bigtune_jax.tune.search.space import Int
from bigtune_jax.tune.search.space import LogUniform
from bigtune_jax.tune.search.space import Space
from bigtune_jax.tune.search.space import Uniform
from bigtune_jax.tune.search.searchers import GridSearch
from bigtune_jax.tune.search.searchers import RandomSearch
from bigtune_jax.tune.search.searchers import Searcher
from bigtune_jax.tune.search.searchers import Trial
from bigtune_jax.tune.search.searchers import TrialPruned
from bigtune_jax.tune.search.searchers import TrialResult
from bigtune_jax.tune.search.optuna_search import OptunaSearch
from bigtune_jax.tune.search.strategy import Strategy
from bigtune_jax.tune.search.strategy import build_strategy
from bigtune_jax.tune.search.strategy import make_schedule
from bigtune_jax.tune.search.strategy import scaled_learning_rate
from bigtune_jax.tune.search.strategy import strategy_space
from bigtune_jax.tune.search.structure import build_structure
from bigtune_jax.tune.search.structure import structure_space

__all__ = (
    "Choice",
    "Conditional",
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
    "build_strategy",
    "build_structure",
    "make_schedule",
    "scaled_learning_rate",
    "strategy_space",
    "structure_space",
)
