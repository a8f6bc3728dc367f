"""The training engine: state, jit-compiled steps, sharding over a device mesh, many
hosts, the fit loop, checkpoints, metrics."""

from bigtune_jax.train.checkpoint import Checkpointer
from bigtune_jax.train.checkpoint import abstract_like
from bigtune_jax.train.compile_cache import enable_compile_cache
from bigtune_jax.train.data_checks import check_data
from bigtune_jax.train.distributed import global_batch
from bigtune_jax.train.distributed import maybe_initialize
from bigtune_jax.train.loop import FitConfig
from bigtune_jax.train.loop import FitResult
from bigtune_jax.train.loop import evaluate
from bigtune_jax.train.loop import fit
from bigtune_jax.train.metrics import MetricsLog
from bigtune_jax.train.workdir import WorkdirInUseError
from bigtune_jax.train.workdir import WorkdirLock
from bigtune_jax.train.workdir import WorkdirNotWritableError
from bigtune_jax.train.metrics import Progress
from bigtune_jax.train.metrics import plot_metrics
from bigtune_jax.train.metrics import png_figure
from bigtune_jax.train.sharding import LOGICAL_RULES
from bigtune_jax.train.sharding import MeshConfig
from bigtune_jax.train.sharding import ReplicatedParameterWarning
from bigtune_jax.train.sharding import batch_sharding
from bigtune_jax.train.sharding import jit_eval_step
from bigtune_jax.train.sharding import jit_train_step
from bigtune_jax.train.sharding import make_mesh
from bigtune_jax.train.sharding import param_sharding
from bigtune_jax.train.sharding import shard_state
from bigtune_jax.train.sharding import state_sharding
from bigtune_jax.train.state import TrainState
from bigtune_jax.train.state import create_train_state
from bigtune_jax.train.state import init_params
from bigtune_jax.train.state import traced_optimizer
from bigtune_jax.train.step import classification_loss
from bigtune_jax.train.step import language_model_loss
from bigtune_jax.train.step import make_eval_step
from bigtune_jax.train.step import make_train_step
from bigtune_jax.train.step import regression_loss

__all__ = (
    "Checkpointer",
    "FitConfig",
    "FitResult",
    "LOGICAL_RULES",
    "MeshConfig",
    "MetricsLog",
    "WorkdirInUseError",
    "WorkdirLock",
    "WorkdirNotWritableError",
    "Progress",
    "ReplicatedParameterWarning",
    "TrainState",
    "abstract_like",
    "batch_sharding",
    "check_data",
    "classification_loss",
    "create_train_state",
    "enable_compile_cache",
    "evaluate",
    "fit",
    "global_batch",
    "init_params",
    "jit_eval_step",
    "jit_train_step",
    "language_model_loss",
    "make_eval_step",
    "make_mesh",
    "make_train_step",
    "maybe_initialize",
    "param_sharding",
    "plot_metrics",
    "png_figure",
    "regression_loss",
    "shard_state",
    "state_sharding",
    "traced_optimizer",
)
