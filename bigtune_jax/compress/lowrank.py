"""Low-rank factorization of Dense kernels by truncated SVD (seed 004 §3.1.1).

A kernel :math:`W \\in \\mathbb{R}^{m \\times n}` with SVD :math:`W = U \\Sigma V^\\top` is
replaced by its best rank-:math:`r` approximation (Eckart & Young, 1936)

.. math::
  W_r = U_r \\Sigma_r V_r^\\top = A B, \\quad A = U_r \\Sigma_r^{1/2} \\ (m \\times r), \\quad
  B = \\Sigma_r^{1/2} V_r^\\top \\ (r \\times n), \\qquad
  \\lVert W - W_r \\rVert_F^2 = \\sum_{i > r} \\sigma_i^2 ,

so a Dense layer :math:`xW + b` becomes two, :math:`(xA)B + b`, with :math:`r(m + n)`
weights instead of :math:`mn` (fewer when :math:`r < mn / (m + n)`); cf. Denton et al.,
"Exploiting Linear Structure Within Convolutional Networks" (NeurIPS 2014). The rank is
fixed, or the smallest :math:`r` keeping a fraction :math:`\\tau` of the energy,
:math:`\\sum_{i \\le r} \\sigma_i^2 / \\sum_i \\sigma_i^2 \\ge \\tau`. Splitting
:math:`\\Sigma^{1/2}` between the factors scales them alike, which suits fine-tuning both
with one learning rate afterwards (``bt.train.fit`` on the returned model).

:func:`factorize` turns a trained ``bigtune_jax.models.MLP`` into a :class:`LowRankMLP`
(the same layers and names, each chosen Dense layer a :class:`LowRankDense`) with
parameters initialized from the factors: before fine-tuning it computes the MLP with
every chosen kernel replaced by :math:`W_r`.
"""

from collections.abc import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from bigtune_jax.models.mlp import MLP
from bigtune_jax.models.mlp import resolve_activation
from bigtune_jax import validation


def rank_for_energy(singular_values, energy) -> int:
  """The smallest ``r`` with ``sum(σ[:r]²) / sum(σ²) >= energy``, ``energy`` in (0, 1]."""
  validation.check_interval("energy", energy, 0.0, 1.0, low_closed=False, high_closed=True)
  squares = np.asarray(singular_values, np.float64) ** 2
  kept = np.cumsum(squares) / squares.sum()
  return int(min(np.searchsorted(kept, energy - 1e-12) + 1, squares.size))


def _check_rank_or_energy(rank, energy) -> None:
  if (rank is None) == (energy is None):
    raise ValueError(f"give exactly one of rank and energy, got rank={rank!r}, "
                     f"energy={energy!r}")
  if rank is not None:
    validation.check_int("rank", rank, 1)
  else:
    validation.check_interval("energy", energy, 0.0, 1.0, low_closed=False, high_closed=True)


def _shrinks(rank: int, shape) -> bool:
  """Whether rank-``rank`` factors of an ``(m, n)`` kernel hold fewer weights than it."""
  return rank * (shape[0] + shape[1]) < shape[0] * shape[1]


def truncated_svd(kernel, *, rank: int | None = None,
                  energy: float | None = None) -> tuple[jax.Array, jax.Array]:
  """The factors ``(A, B)`` of ``kernel``'s best rank-``r`` approximation ``A @ B``.

  Args:
    kernel: an ``(m, n)`` matrix.
    rank: ``r`` in ``[1, min(m, n)]``; or
    energy: ``τ`` in ``(0, 1]``, choosing the smallest ``r`` that keeps it.

  Returns:
    ``A = U_r √Σ_r`` of shape ``(m, r)`` and ``B = √Σ_r V_rᵀ`` of shape ``(r, n)``, in
    ``kernel``'s dtype (computed on the host in float64 with NumPy's LAPACK SVD).
  """
  if jnp.ndim(kernel) != 2:
    raise ValueError(f"kernel must be a matrix (2-D), got shape {jnp.shape(kernel)}")
  _check_rank_or_energy(rank, energy)
  smaller = min(jnp.shape(kernel))
  if rank is not None and rank > smaller:
    raise ValueError(f"rank must be in [1, {smaller}] (the smaller dimension of the "
                     f"{jnp.shape(kernel)} kernel), got {rank}")
  matrix = np.asarray(kernel, np.float64)
  u, s, vt = np.linalg.svd(matrix, full_matrices=False)  # host-side, float64
  if energy is not None:
    rank = rank_for_energy(s, energy)
  root = np.sqrt(s[:rank])
  dtype = jnp.asarray(kernel).dtype
  return (jnp.asarray(u[:, :rank] * root, dtype), jnp.asarray(root[:, None] * vt[:rank], dtype))


class LowRankDense(nn.Module):
  """``x -> (x @ down) @ up + bias``: a Dense layer whose kernel has rank ``rank``.

  Parameters: ``down/kernel`` ``(in, rank)``, ``up/kernel`` ``(rank, features)`` and
  ``up/bias`` ``(features,)``.
  """
  features: int
  rank: int

  def __post_init__(self):
    validation.check_int("features", self.features, 1)
    validation.check_int("rank", self.rank, 1)
    super().__post_init__()

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    x = nn.Dense(self.rank, use_bias=False, name="down")(x)  # (B, rank)
    return nn.Dense(self.features, name="up")(x)  # (B, features)


class LowRankMLP(nn.Module):
  """``bigtune_jax.models.MLP`` with chosen Dense layers factored (:class:`LowRankDense`).

  Attributes:
    hidden, num_classes, activation, dropout_rate: as in ``MLP``.
    ranks: one entry per Dense layer (the hidden ones, then the head): a rank, or ``None``
      to keep that layer a plain Dense.
  """
  hidden: Sequence[int] = (256,)
  num_classes: int = 10
  ranks: Sequence[int | None] = (None, None)
  activation: str | Callable[[jax.Array], jax.Array] = "relu"
  dropout_rate: float = 0.0

  def __post_init__(self):
    if len(self.ranks) != len(self.hidden) + 1:
      raise ValueError(f"ranks must have one entry per Dense layer ({len(self.hidden) + 1}: "
                       f"the hidden layers and the head), got {self.ranks!r}")
    validation.check_interval("dropout_rate", self.dropout_rate, 0.0, 1.0)
    super().__post_init__()

  def _dense(self, features: int, rank: int | None, name: str) -> nn.Module:
    if rank is None:
      return nn.Dense(features, name=name)
    return LowRankDense(features, rank, name=name)

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
    act = resolve_activation("activation", self.activation)
    x = x.reshape((x.shape[0], -1))  # (B, D)
    for i, width in enumerate(self.hidden):
      x = act(self._dense(width, self.ranks[i], f"hidden_{i}")(x))  # (B, hidden[i])
      x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
    return self._dense(self.num_classes, self.ranks[-1], "head")(x)  # (B, num_classes)


def factorize(model: nn.Module, params, *, rank: int | None = None,
              energy: float | None = None, layers: Sequence[str] | None = None
              ) -> tuple[LowRankMLP, dict]:
  """A :class:`LowRankMLP` and its parameters from a trained ``MLP`` (module docstring).

  Args:
    model: a ``bigtune_jax.models.MLP`` (other models are not supported).
    params: its parameters.
    rank: the rank of every factored layer; or
    energy: ``τ`` in ``(0, 1]``, each layer's rank chosen to keep that energy.
    layers: names of the Dense layers to factor (``"hidden_0"``, ..., ``"head"``); a rank
      above a chosen kernel's smaller dimension is an error. Default: every layer that
      factoring makes smaller (``r (m + n) < m n``).

  Returns:
    ``(low_rank_model, low_rank_params)``; the full rank ``min(m, n)`` of the ``layers``
    named reproduces the MLP.
  """
  if type(model) is not MLP:
    raise ValueError("model must be a bigtune_jax.models.MLP (low-rank factorization "
                     f"supports its Dense layers only), got {type(model).__name__}")
  names = [f"hidden_{i}" for i in range(len(model.hidden))] + ["head"]
  if layers is not None:
    unknown = sorted(set(layers) - set(names))
    if unknown:
      raise ValueError(f"layers must name Dense layers of the MLP, one of {names}; "
                       f"got {unknown}")
  _check_rank_or_energy(rank, energy)
  for name in layers or ():
    smaller = min(params[name]["kernel"].shape)
    if rank is not None and rank > smaller:
      raise ValueError(f"rank must be in [1, {smaller}] for layer {name!r} (the smaller "
                       f"dimension of its {params[name]['kernel'].shape} kernel), got {rank}")
  if layers is None and rank is not None and not any(
      _shrinks(rank, params[name]["kernel"].shape) for name in names):
    useful = max((m * n - 1) // (m + n) for m, n in (params[k]["kernel"].shape for k in names))
    raise ValueError(f"rank {rank} factors no layer of this MLP (a rank-r factorization of an "
                     f"m x n kernel saves weights only while r (m + n) < m n; the largest "
                     f"such rank here is {useful}): the model would stay dense")
  ranks, new_params = [], {}
  for name in names:
    kernel = params[name]["kernel"]
    factors = None
    if layers is not None:
      if name in layers:
        factors = truncated_svd(kernel, rank=rank, energy=energy)
    elif rank is None or _shrinks(rank, kernel.shape):
      factors = truncated_svd(kernel, rank=rank, energy=energy)
      if not _shrinks(factors[0].shape[1], kernel.shape):
        factors = None  # the energy asks for a rank that would not make it smaller
    if factors is None:
      ranks.append(None)
      new_params[name] = params[name]
    else:
      ranks.append(int(factors[0].shape[1]))
      new_params[name] = {"down": {"kernel": factors[0]},
                          "up": {"kernel": factors[1], "bias": params[name]["bias"]}}
  if all(r is None for r in ranks):
    raise ValueError(f"energy {energy} keeps, in every layer, a rank at which the factors "
                     "are no smaller than the kernel (r (m + n) >= m n): the model would stay "
                     "dense; lower the energy or name the layers")
  low_rank = LowRankMLP(hidden=tuple(model.hidden), num_classes=model.num_classes,
                        ranks=tuple(ranks), activation=model.activation,
                        dropout_rate=model.dropout_rate)
  return low_rank, new_params
