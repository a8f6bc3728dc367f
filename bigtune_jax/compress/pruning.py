"""Magnitude pruning as an optax wrapper that keeps pruned weights exactly zero (seed 004 §3.1.1).

``prune(inner, sparsity)`` runs the ``inner`` optimizer, then masks its update ``u`` with
the binary mask ``m`` kept in its state so that every pruned weight lands on exactly 0:

.. math::
  u' = m \\odot u - (1 - m) \\odot w, \\qquad w + u' = m \\odot (w + u)

(``w + (-w)`` is exactly ``+0.0`` in IEEE arithmetic, so pruned weights are bit-exact zeros
at every step and need no storage). This is the design of Google's jaxpruner (Lee et al.,
2023), which is not on PyPI and fails on current JAX, hence written here; optax has no
pruning transform.

**Masks.** Whenever the target sparsity ``s`` changes (a float: once, at the first update
-- one-shot pruning followed by fine-tuning; a schedule such as
:func:`~bigtune_jax.compress.polynomial_sparsity`: at each of its steps -- gradual pruning,
Zhu & Gupta 2017), the mask is rebuilt from the magnitudes of the candidate weights
``m ⊙ (w + u)``: the ``round(s·n)`` smallest ``|w|`` are pruned (ties by position). Weights
already pruned are 0, the smallest magnitude, so they stay pruned while ``s`` grows.

* ``scope="layer"``: a threshold per prunable leaf (``n`` its size): every layer gets ``s``.
* ``scope="global"``: one threshold over all prunable leaves together; layers with small
  weights (often the wide first layer) lose more than ``s``, the small head less.
* ``structure=(n, m)``: N:M structured sparsity (2:4 for NVIDIA's sparse tensor cores,
  Mishra et al., 2021, arXiv:2104.08378): in every group of ``m`` consecutive weights along
  the input axis (axis -2: the rows of a Dense ``(in, out)`` kernel, the input channels of
  a Conv ``(h, w, in, out)`` kernel) the ``n`` largest are kept; one-shot.

**Prunable leaves**: by default the kernels (``ndim >= 2``); biases and norm scales stay
dense. ``prunable(path, leaf) -> bool`` chooses others (``path`` like ``"hidden_0/kernel"``).

**Composition.** The exact-zero identity needs ``u'`` to reach the weights unscaled, so
whatever scales the updates goes *inside* ``prune``: ``prune(optax.chain(bt.sgd(0.1),
bt.reduce_on_plateau()), 0.5)``, not ``optax.chain(prune(...), bt.reduce_on_plateau())``,
which would leave ``(1 - c) w`` on the weights pruned at a step with plateau scale ``c``.
``prune`` hands its extra arguments (``value=``) on to ``inner``.
"""

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from bigtune_jax import validation
from bigtune_jax.tree_paths import path_name

Prunable = Callable[[str, jax.Array], bool]
SCOPES = ("layer", "global")


def default_prunable(path: str, leaf: jax.Array) -> bool:
  """Kernels (``ndim >= 2``) are pruned; biases, scales and scalars are not."""
  del path
  return jnp.ndim(leaf) >= 2


def _flags(params, prunable: Prunable | None):
  prunable = prunable or default_prunable
  return jax.tree_util.tree_map_with_path(lambda p, w: bool(prunable(path_name(p), w)), params)


def _check_structure(structure) -> None:
  if structure is None:
    return
  if not (isinstance(structure, tuple) and len(structure) == 2):
    raise ValueError(f"structure must be a pair (n, m) with 1 <= n < m, got {structure!r}")
  validation.check_int("structure[0] (n)", structure[0], 1)
  validation.check_int("structure[1] (m)", structure[1], structure[0] + 1)


def _check_groups(params, flags, m: int) -> None:
  """Every prunable leaf's input axis (-2) must split into groups of ``m``."""
  for (path, w), flag in zip(jax.tree_util.tree_leaves_with_path(params),
                             jax.tree.leaves(flags)):
    if flag and (jnp.ndim(w) < 2 or jnp.shape(w)[-2] % m):
      raise ValueError(f"structure (n, {m}) needs the input axis (-2) of every prunable leaf "
                       f"to be a multiple of {m}; {path_name(path)!r} has shape {jnp.shape(w)}")


def _keep_largest(scores: jax.Array, sparsity) -> jax.Array:
  """Bool mask of ``scores``' shape pruning the ``round(sparsity·n)`` smallest entries."""
  flat = scores.reshape(-1)
  pruned = jnp.round(sparsity * flat.size).astype(jnp.int32)
  order = jnp.argsort(flat, stable=True)  # smallest first; ties by position
  return jnp.zeros(flat.shape, bool).at[order].set(jnp.arange(flat.size) >= pruned).reshape(
      scores.shape)


def n_of_m_mask(weights: jax.Array, n: int, m: int) -> jax.Array:
  """Keeps the ``n`` largest ``|w|`` of every ``m`` consecutive weights along axis -2."""
  scores = jnp.moveaxis(jnp.abs(weights), -2, -1)  # (..., out, in)
  groups = scores.reshape(*scores.shape[:-1], scores.shape[-1] // m, m)
  rank = jnp.argsort(jnp.argsort(groups, axis=-1, stable=True), axis=-1)  # 0: smallest
  return jnp.moveaxis((rank >= m - n).reshape(scores.shape), -1, -2)


def _masks(params, flags, sparsity, scope: str, structure):
  """Bool masks for the prunable leaves, a scalar ``True`` for the others."""
  leaves, treedef = jax.tree.flatten(params)
  flat_flags = jax.tree.leaves(flags)
  masks = [jnp.ones((), bool)] * len(leaves)
  chosen = [i for i, flag in enumerate(flat_flags) if flag]
  if structure is not None:
    for i in chosen:
      masks[i] = n_of_m_mask(leaves[i], *structure)
  elif scope == "layer":
    for i in chosen:
      masks[i] = _keep_largest(jnp.abs(leaves[i]), sparsity)
  elif chosen:
    scores = jnp.concatenate([jnp.abs(leaves[i]).reshape(-1).astype(jnp.float32)
                              for i in chosen])
    keep = _keep_largest(scores, sparsity)
    ends = np.cumsum([leaves[i].size for i in chosen])
    for i, part in zip(chosen, jnp.split(keep, ends[:-1])):
      masks[i] = part.reshape(leaves[i].shape)
  return jax.tree.unflatten(treedef, masks)


def magnitude_masks(params, sparsity=None, *, structure: tuple[int, int] | None = None,
                    scope: str = "layer", prunable: Prunable | None = None):
  """One-shot magnitude masks: like ``params``, True where a weight is kept.

  Args:
    params: the parameter tree.
    sparsity: the fraction pruned, in ``[0, 1)``; may be traced. Not with ``structure``.
    structure: ``(n, m)`` for N:M structured sparsity instead (e.g. ``(2, 4)``).
    scope: ``"layer"`` (a threshold per leaf) or ``"global"`` (one for all).
    prunable: ``(path, leaf) -> bool``; default: leaves with ``ndim >= 2``.

  Returns:
    Bool masks for the prunable leaves, a scalar ``True`` (broadcasting) for the others.
  """
  _check_args(sparsity, structure, scope)
  if callable(sparsity):
    raise ValueError("sparsity must be a number in [0, 1) for one-shot masks (schedules are "
                     "for prune)")
  flags = _flags(params, prunable)
  if structure is not None:
    _check_groups(params, flags, structure[1])
  return _masks(params, flags, sparsity, scope, structure)


def apply_masks(params, masks):
  """``params`` with the masked-out weights set to exactly 0."""
  return jax.tree.map(lambda w, m: jnp.where(m, w, jnp.zeros_like(w)), params, masks)


def magnitude_prune(params, sparsity=None, **kwargs):
  """``params`` pruned once by magnitude (no training); ``kwargs`` as in
  :func:`magnitude_masks`."""
  return apply_masks(params, magnitude_masks(params, sparsity, **kwargs))


def _check_args(sparsity, structure, scope) -> None:
  _check_structure(structure)
  if (sparsity is None) == (structure is None):
    raise ValueError("give exactly one of sparsity (a fraction in [0, 1) or a schedule) and "
                     f"structure (n, m); got sparsity={sparsity!r}, structure={structure!r}")
  if sparsity is not None and not callable(sparsity):
    validation.check_interval("sparsity", sparsity, 0.0, 1.0)
  validation.check_choice("scope", scope, SCOPES)


class PruneState(NamedTuple):
  count: jax.Array  # shape=(), int32: updates done
  sparsity: jax.Array  # shape=(), float32: the target the masks were built for (-1: none yet)
  masks: Any  # like params: bool masks on prunable leaves, a scalar True on the others
  inner_state: optax.OptState


def prune(inner: optax.GradientTransformation, sparsity=None, *,
          structure: tuple[int, int] | None = None, scope: str = "layer",
          prunable: Prunable | None = None) -> optax.GradientTransformationExtraArgs:
  """Wraps ``inner`` so that it trains a magnitude-pruned network (module docstring).

  Args:
    inner: the optimizer of the kept weights, e.g. ``bt.sgd(0.1)``.
    sparsity: the fraction of prunable weights pruned: a number in ``[0, 1)`` (one-shot at
      the first update; may be a traced array) or a schedule ``step -> sparsity`` such as
      ``polynomial_sparsity(0.9, begin_step, end_step, update_every=...)`` (gradual).
    structure: ``(n, m)`` (e.g. ``(2, 4)``) for N:M structured sparsity instead of
      ``sparsity``, one-shot at the first update.
    scope: ``"layer"`` or ``"global"`` magnitude threshold.
    prunable: ``(path, leaf) -> bool`` choosing the pruned leaves; default ``ndim >= 2``.

  Returns:
    A transform whose ``update(updates, state, params)`` needs ``params``; the masks are
    ``state.masks``.

  Example:
    >>> import jax.numpy as jnp, optax
    >>> tx = prune(optax.sgd(0.1), 0.5)
    >>> params = {"kernel": jnp.array([[1.0, -2.0], [0.1, 3.0]]), "bias": jnp.ones(2)}
    >>> state = tx.init(params)
    >>> grads = jax.tree.map(jnp.zeros_like, params)
    >>> updates, state = tx.update(grads, state, params)
    >>> optax.apply_updates(params, updates)["kernel"]
    Array([[ 0., -2.],
           [ 0.,  3.]], dtype=float32)
  """
  _check_args(sparsity, structure, scope)
  inner = optax.with_extra_args_support(inner)
  if structure is not None:
    target = lambda step: 1.0 - structure[0] / structure[1]
  elif callable(sparsity):
    target = sparsity
  else:
    target = lambda step: sparsity

  def init_fn(params):
    flags = _flags(params, prunable)
    if structure is not None:
      _check_groups(params, flags, structure[1])
    masks = jax.tree.map(lambda w, flag: jnp.ones(jnp.shape(w) if flag else (), bool),
                         params, flags)
    return PruneState(count=jnp.zeros([], jnp.int32), sparsity=jnp.full([], -1.0, jnp.float32),
                      masks=masks, inner_state=inner.init(params))

  def update_fn(updates, state, params=None, **extra_args):
    if params is None:
      raise ValueError("prune needs the parameters: call update(updates, state, params)")
    flags = _flags(params, prunable)
    inner_updates, inner_state = inner.update(updates, state.inner_state, params, **extra_args)
    count = optax.safe_int32_increment(state.count)
    new_sparsity = jnp.asarray(target(count), jnp.float32)  # the sparsity after this update

    def rebuild():  # only on the steps where the target changes: candidates, sorts, masks
      candidate = jax.tree.map(lambda w, u, m: jnp.where(m, w + u, jnp.zeros_like(w)),
                               params, inner_updates, state.masks)
      return _masks(candidate, flags, new_sparsity, scope, structure)

    masks = jax.lax.cond(new_sparsity != state.sparsity, rebuild, lambda: state.masks)
    masked = jax.tree.map(lambda w, u, m: jnp.where(m, u, -w).astype(u.dtype),
                          params, inner_updates, masks)
    return masked, PruneState(count=count, sparsity=new_sparsity, masks=masks,
                              inner_state=inner_state)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)
