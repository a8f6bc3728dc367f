"""Optimizer formulas of the seeds as optax transforms."""

from bigtune_jax.transforms.accumulation import accumulate
from bigtune_jax.transforms.adaptive import adaptive_sgd
from bigtune_jax.transforms.adaptive import scale_by_accumulated_norm
from bigtune_jax.transforms.adaptive_moments import adam
from bigtune_jax.transforms.adaptive_moments import scale_by_low_precision_adam
from bigtune_jax.transforms.adaptive_moments import stochastic_round_to_bfloat16
from bigtune_jax.transforms.gradient_descent import sgd
from bigtune_jax.transforms.hypergradient import HypergradientState
from bigtune_jax.transforms.hypergradient import hypergradient_adam
from bigtune_jax.transforms.hypergradient import hypergradient_descent
from bigtune_jax.transforms.hypergradient import hypergradient_sgd
from bigtune_jax.transforms.momentum_forms import ema_momentum
from bigtune_jax.transforms.momentum_forms import momentum
from bigtune_jax.transforms.regularize import l1
from bigtune_jax.transforms.regularize import l2

__all__ = (
    "HypergradientState",
    "accumulate",
    "adam",
    "adaptive_sgd",
    "ema_momentum",
    "hypergradient_adam",
    "hypergradient_descent",
    "hypergradient_sgd",
    "l1",
    "l2",
    "momentum",
    "scale_by_accumulated_norm",
    "scale_by_low_precision_adam",
    "sgd",
    "stochastic_round_to_bfloat16",
)
