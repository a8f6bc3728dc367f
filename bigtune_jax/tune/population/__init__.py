"""The execution half of ``bigtune_jax.tune``: populations trained in one compiled program
(seed 003 §3.1-3.2). ONE runner (:func:`run_population`) over members that are whole models
or LoRA adapters over a frozen base (linen, or Flax NNX: ``nnx_members``), with on_eval
(report / prune / stop), compaction of stopped members, refill of freed slots
(:class:`Refill`: successive halving inside one program) and PBT's exploit / explore as
options; DARTS. Nothing here proposes a configuration, and nothing here imports
``tune.search``.
"""

from bigtune_jax.tune.population.darts import DartsResult
from bigtune_jax.tune.population.darts import DartsState
from bigtune_jax.tune.population.darts import arch_optimizer
from bigtune_jax.tune.population.darts import darts_search
from bigtune_jax.tune.population.darts import make_darts_step
from bigtune_jax.tune.population.darts import weight_optimizer
from bigtune_jax.tune.population.data import PopulationData
from bigtune_jax.tune.population.members import AdapterMembers
from bigtune_jax.tune.population.members import WholeModels
from bigtune_jax.tune.population.members import initial_state
from bigtune_jax.tune.population.nnx_members import NNXAdapters
from bigtune_jax.tune.population.nnx_members import NNXModels
from bigtune_jax.tune.population.exploration import exploit_and_explore
from bigtune_jax.tune.population.exploration import pbt
from bigtune_jax.tune.population.refill import Refill
from bigtune_jax.tune.population.runner import AdapterPopulationResult
from bigtune_jax.tune.population.runner import PopulationResult
from bigtune_jax.tune.population.runner import run_population
from bigtune_jax.tune.population.train import train_adapter_population
from bigtune_jax.tune.population.train import train_population

__all__ = (
    "AdapterMembers",
    "AdapterPopulationResult",
    "DartsResult",
    "DartsState",
    "NNXAdapters",
    "NNXModels",
    "PopulationData",
    "PopulationResult",
    "Refill",
    "WholeModels",
    "arch_optimizer",
    "darts_search",
    "exploit_and_explore",
    "initial_state",
    "make_darts_step",
    "pbt",
    "run_population",
    "train_adapter_population",
    "train_population",
    "weight_optimizer",
)
