"""Model compression (seed 004 §3.1.1): pruning, int8 quantization, low-rank factorization.

* ``prune`` (optax wrapper; one-shot, gradual with ``polynomial_sparsity``, global or
  per-layer, N:M structured), ``magnitude_prune``, ``sparsity_report``;
* ``quantize`` (int8 post-training, calibrated) and ``qat_model`` (quantization-aware
  training), through Google's qwix, imported lazily;
* ``factorize`` / ``truncated_svd`` / ``LowRankMLP`` (truncated SVD of Dense kernels);
* ``dense_nbytes`` / ``bitmask_nbytes``: the real bytes a compressed tree takes.
"""

from bigtune_jax.compress.lowrank import LowRankDense
from bigtune_jax.compress.lowrank import LowRankMLP
from bigtune_jax.compress.lowrank import factorize
from bigtune_jax.compress.lowrank import rank_for_energy
from bigtune_jax.compress.lowrank import truncated_svd
from bigtune_jax.compress.pruning import PruneState
from bigtune_jax.compress.pruning import apply_masks
from bigtune_jax.compress.pruning import default_prunable
from bigtune_jax.compress.pruning import magnitude_masks
from bigtune_jax.compress.pruning import magnitude_prune
from bigtune_jax.compress.pruning import n_of_m_mask
from bigtune_jax.compress.pruning import prune
from bigtune_jax.compress.quantization import QuantizedModel
from bigtune_jax.compress.quantization import kernels
from bigtune_jax.compress.quantization import qat_model
from bigtune_jax.compress.quantization import quantize
from bigtune_jax.compress.sparsity_schedule import polynomial_sparsity
from bigtune_jax.compress.storage import LayerSparsity
from bigtune_jax.compress.storage import bitmask_nbytes
from bigtune_jax.compress.storage import dense_nbytes
from bigtune_jax.compress.storage import format_sparsity_report
from bigtune_jax.compress.storage import sparsity_report

__all__ = (
    "LayerSparsity",
    "LowRankDense",
    "LowRankMLP",
    "PruneState",
    "QuantizedModel",
    "apply_masks",
    "bitmask_nbytes",
    "default_prunable",
    "dense_nbytes",
    "factorize",
    "format_sparsity_report",
    "kernels",
    "magnitude_masks",
    "magnitude_prune",
    "n_of_m_mask",
    "polynomial_sparsity",
    "prune",
    "qat_model",
    "quantize",
    "rank_for_energy",
    "sparsity_report",
    "truncated_svd",
)
