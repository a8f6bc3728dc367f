"""The training engine: state, jit-compiled steps, the fit loop, checkpoints, metrics."""

from bigtune_jax.train.checkpoint import Checkpointer
from bigtune_jax.train.checkpoint import abstract_like
from bigtune_jax.train.fit import FitConfig
from bigtune_jax.train.fit import FitResult
from bigtune_jax.train.fit import evaluate
from bigtune_jax.train.fit import fit
from bigtune_jax.train.metrics import MetricsLog
from bigtune_jax.train.metrics import Progress
from bigtune_jax.train.metrics import plot_metrics
from bigtune_jax.train.state import TrainState
from bigtune_jax.train.state import create_train_state
from bigtune_jax.train.state import init_params
from bigtune_jax.train.step import classification_loss
from bigtune_jax.train.step import language_model_loss
from bigtune_jax.train.step import make_eval_step
from bigtune_jax.train.step import make_train_step
from bigtune_jax.train.step import regression_loss

__all__ = (
    "Checkpointer",
    "FitConfig",
    "FitResult",
    "MetricsLog",
    "Progress",
    "TrainState",
    "abstract_like",
    "classification_loss",
    "create_train_state",
    "evaluate",
    "fit",
    "init_params",
    "language_model_loss",
    "make_eval_step",
    "make_train_step",
    "plot_metrics",
    "regression_loss",
)
