"""bigtune_jax: optimization and tuning for large models as composable JAX pieces.

``import bigtune_jax as bt``; every optimizer is an ``optax.GradientTransformation``:
``optax.chain(bt.l2(1e-4), bt.momentum(0.1, gamma=0.9))``.
"""

from bigtune_jax.control import EarlyStopping
from bigtune_jax.control import EarlyStoppingState
from bigtune_jax.control import ReduceOnPlateauState
from bigtune_jax.control import reduce_on_plateau
from bigtune_jax.schedules import constant
from bigtune_jax.schedules import exponential_decay
from bigtune_jax.schedules import step_decay
from bigtune_jax.schedules import warmup_cosine_decay
from bigtune_jax.transforms import HypergradientState
from bigtune_jax.transforms import accumulate
from bigtune_jax.transforms import adam
from bigtune_jax.transforms import adaptive_sgd
from bigtune_jax.transforms import ema_momentum
from bigtune_jax.transforms import hypergradient_adam
from bigtune_jax.transforms import hypergradient_descent
from bigtune_jax.transforms import hypergradient_sgd
from bigtune_jax.transforms import l1
from bigtune_jax.transforms import l2
from bigtune_jax.transforms import momentum
from bigtune_jax.transforms import sgd

# Subpackages, after the transforms they use: bt.models.MLP, bt.data.load_dataset.
from bigtune_jax import data  # noqa: E402
from bigtune_jax import models  # noqa: E402

__version__ = "0.1.0"

# Imported on first use (PEP 562), so a plain ``import bigtune_jax`` stays as fast as the
# transforms: bt.train.fit, bt.tune.OptunaSearch, bt.compress.prune, bt.finetune.LoRA,
# bt.hub.load_hf.
_LAZY_SUBPACKAGES = ("compress", "finetune", "hub", "train", "tune")


def __getattr__(name: str):
  if name in _LAZY_SUBPACKAGES:
    import importlib  # pylint: disable=import-outside-toplevel
    module = importlib.import_module(f"bigtune_jax.{name}")
    globals()[name] = module  # later lookups skip __getattr__
    return module
  raise AttributeError(f"module 'bigtune_jax' has no attribute {name!r}")


def __dir__():
  return sorted(set(globals()) | set(_LAZY_SUBPACKAGES))

__all__ = (
    "EarlyStopping",
    "EarlyStoppingState",
    "HypergradientState",
    "ReduceOnPlateauState",
    "accumulate",
    "adam",
    "adaptive_sgd",
    "compress",
    "constant",
    "data",
    "ema_momentum",
    "exponential_decay",
    "finetune",
    "hub",
    "hypergradient_adam",
    "hypergradient_descent",
    "hypergradient_sgd",
    "l1",
    "l2",
    "models",
    "momentum",
    "reduce_on_plateau",
    "sgd",
    "step_decay",
    "train",
    "tune",
    "warmup_cosine_decay",
)
