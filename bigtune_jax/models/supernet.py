"""DARTS supernet: a cell of mixed operations over a candidate set (seed 003 §3.2.1
"结构梯度下降", structure parameters learned by gradient; Liu et al., ICLR 2019, "DARTS:
Differentiable Architecture Search", arXiv:1806.09055).

A cell of ``nodes`` intermediate nodes over the input node :math:`h_0` (a linear stem, as
DARTS' stem convolution). Every edge :math:`(i \\to j)`, :math:`i < j`, is a mixed
operation, the softmax-weighted sum of every candidate :math:`o \\in \\mathcal{O}`:

.. math::
  \\bar o^{(i,j)}(h) = \\sum_{o \\in \\mathcal{O}}
      \\frac{\\exp \\alpha^{(i,j)}_o}{\\sum_{o'} \\exp \\alpha^{(i,j)}_{o'}}\\, o(h),
  \\qquad h_j = \\sum_{i<j} \\bar o^{(i,j)}(h_i),
  \\qquad \\text{logits} = W [h_1; \\dots; h_N] + b

(the output concatenates the intermediate nodes, as DARTS' cells do). The candidates suit
small inputs, an MLP-style search space: ``dense_relu`` / ``dense_tanh`` /
``dense_sigmoid`` / ``dense_gelu`` (a ``width``-unit Dense layer, then the activation of
``bigtune_jax.models.mlp.ACTIVATIONS``), ``skip`` (identity) and ``zero`` (no edge). Each
dense candidate of each edge has its own weights, as in DARTS.

**Architecture parameters** :math:`\\alpha` are one ``(edges, ops)`` matrix, the parameter
``params["arch"]`` (DARTS' ``alphas_normal``; initialized ``1e-3 * N(0, 1)`` as there).
:func:`split_arch` / :func:`merge_arch` separate it from the weights :math:`w`, so DARTS
(``bigtune_jax.tune.darts``) optimizes the two on different data with different
optimizers; trained with one optimizer on one loss (``bigtune_jax.train.fit``), both are
updated by the same gradient — the seed's single-level structure gradient descent.

**Derivation** (DARTS' ``genotype``): each node keeps the ``inputs_per_node`` incoming
edges whose strongest non-zero candidate has the largest softmax weight, and each kept
edge the argmax candidate, ``zero`` excluded. :class:`DerivedNet` is that discrete
network (parameter names as in the supernet), retrained from scratch.
"""

from collections.abc import Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from bigtune_jax.models.mlp import ACTIVATIONS
from bigtune_jax import validation

ARCH = "arch"  # the name of the architecture parameters in the params tree
ZERO, SKIP = "zero", "skip"
OPS = tuple(f"dense_{name}" for name in ACTIVATIONS) + (SKIP, ZERO)
DEFAULT_OPS = ("dense_relu", "dense_tanh", "dense_sigmoid", SKIP, ZERO)

# A discrete architecture: for node j = 1..N, its kept edges ((input node i < j, op), ...).
Architecture = tuple[tuple[tuple[int, str], ...], ...]


def cell_edges(nodes: int) -> tuple[tuple[int, int], ...]:
  """The edges ``(i, j)`` of a cell, ``i < j``, in the row order of ``params["arch"]``."""
  return tuple((i, j) for j in range(1, nodes + 1) for i in range(j))


def split_arch(params):
  """``(weights, alphas)``: the supernet's parameters without ``"arch"``, and ``"arch"``."""
  return {k: v for k, v in params.items() if k != ARCH}, params[ARCH]


def merge_arch(weights, alphas):
  """The inverse of :func:`split_arch`."""
  return {**weights, ARCH: alphas}


def _apply_op(op: str, width: int, name: str, h: jax.Array) -> jax.Array:
  """Candidate ``op`` (not ``zero``) on ``h`` ``(B, width)``; its Dense layer is ``name``."""
  if op == SKIP:
    return h
  return ACTIVATIONS[op.removeprefix("dense_")](nn.Dense(width, name=name)(h))


def _stem(x: jax.Array, width: int) -> jax.Array:
  return nn.Dense(width, name="stem")(x.reshape((x.shape[0], -1)))  # (B, width), linear


def _check_sizes(width, num_classes):
  validation.check_int("width", width, 1)
  validation.check_int("num_classes", num_classes, 1)


class Supernet(nn.Module):
  """A DARTS cell of mixed operations: ``(B, ...) -> (B, num_classes)`` logits.

  Attributes:
    nodes: intermediate nodes of the cell (``nodes * (nodes + 1) / 2`` edges).
    width: units of every node (and of every dense candidate).
    num_classes: outputs per example.
    ops: the candidate operations, names from ``OPS``; at least one besides ``zero``.
    inputs_per_node: edges each node keeps in :meth:`derive` (DARTS keeps 2).

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from bigtune_jax.models import Supernet
    >>> net = Supernet(nodes=2, width=16, num_classes=3)
    >>> params = net.init(jax.random.key(0), jnp.ones((4, 8)))["params"]
    >>> params["arch"].shape  # (edges, ops)
    (3, 5)
    >>> arch = net.derive(params)  # e.g. (((0, 'dense_tanh'),), ((0, 'skip'), (1, 'dense_relu')))
    >>> derived = net.discrete(arch)
    >>> derived.apply(derived.init(jax.random.key(1), jnp.ones((4, 8))), jnp.ones((4, 8))).shape
    (4, 3)
  """
  nodes: int = 2
  width: int = 64
  num_classes: int = 10
  ops: Sequence[str] = DEFAULT_OPS
  inputs_per_node: int = 2

  def __post_init__(self):
    validation.check_int("nodes", self.nodes, 1)
    _check_sizes(self.width, self.num_classes)
    validation.check_int("inputs_per_node", self.inputs_per_node, 1)
    if isinstance(self.ops, str) or len(set(self.ops)) != len(self.ops):
      raise ValueError(f"ops must be a sequence of distinct names from {OPS}, got {self.ops!r}")
    for op in self.ops:
      validation.check_choice("ops", op, OPS)
    if not set(self.ops) - {ZERO}:
      raise ValueError(f"ops must hold at least one candidate besides 'zero', got {self.ops!r}")
    super().__post_init__()

  @property
  def edges(self) -> tuple[tuple[int, int], ...]:
    return cell_edges(self.nodes)

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    alphas = self.param(ARCH, lambda key, shape: 1e-3 * jax.random.normal(key, shape),
                        (len(self.edges), len(self.ops)))
    weights = jax.nn.softmax(alphas, axis=-1)  # (edges, ops), rows sum to 1
    states = [_stem(x, self.width)]
    for e, (i, j) in enumerate(self.edges):  # grouped by j: inputs i < j are complete
      if i == 0:
        states.append(0.0)  # node j starts
      for k, op in enumerate(self.ops):
        if op != ZERO:  # zero adds nothing but its share of the softmax
          states[j] += weights[e, k] * _apply_op(op, self.width, f"edge_{i}_{j}_{op}", states[i])
    return nn.Dense(self.num_classes, name="head")(jnp.concatenate(states[1:], -1))

  def arch_weights(self, params) -> jax.Array:
    """The softmax of ``params["arch"]`` (or of an alpha matrix): ``(edges, ops)``."""
    alphas = params[ARCH] if isinstance(params, Mapping) else params
    return jax.nn.softmax(jnp.asarray(alphas), axis=-1)

  def derive(self, params) -> Architecture:
    """The discrete architecture of ``params`` (or of an alpha matrix), as DARTS'
    ``genotype``: per node the ``inputs_per_node`` strongest edges, each with its
    strongest candidate, ``zero`` excluded."""
    weights = np.asarray(self.arch_weights(params), np.float64)
    usable = [k for k, op in enumerate(self.ops) if op != ZERO]
    architecture = []
    for j in range(1, self.nodes + 1):
      rows = [(e, i) for e, (i, jj) in enumerate(self.edges) if jj == j]
      strength = {i: weights[e, usable].max() for e, i in rows}
      kept = sorted(rows, key=lambda row: -strength[row[1]])[:self.inputs_per_node]
      architecture.append(tuple(sorted(
          (i, self.ops[usable[int(np.argmax(weights[e, usable]))]]) for e, i in kept)))
    return tuple(architecture)

  def discrete(self, architecture: Architecture) -> "DerivedNet":
    """The :class:`DerivedNet` of ``architecture`` with this supernet's sizes."""
    return DerivedNet(architecture=architecture, width=self.width, num_classes=self.num_classes,
                      parent=None)  # a model of its own, not a submodule of this one


class DerivedNet(nn.Module):
  """The discrete network of a derived :data:`Architecture`: node ``j`` is the sum of
  its kept edges' operations, the logits a Dense layer on the concatenated nodes.

  Attributes:
    architecture: for node ``j = 1..N``, ``((i, op), ...)`` with ``0 <= i < j`` and ``op``
      in ``OPS`` other than ``zero`` (``Supernet.derive`` returns one).
    width: units of every node.
    num_classes: outputs per example.
  """
  architecture: Architecture
  width: int = 64
  num_classes: int = 10

  def __post_init__(self):
    _check_sizes(self.width, self.num_classes)
    if not self.architecture:
      raise ValueError("architecture must have at least one node, got ()")
    for j, node in enumerate(self.architecture, start=1):
      if not node:
        raise ValueError(f"architecture node {j} has no input edge")
      for edge in node:
        if (len(edge) != 2 or not isinstance(edge[0], (int, np.integer))
            or not 0 <= edge[0] < j or edge[1] not in OPS or edge[1] == ZERO):
          raise ValueError(f"architecture node {j}: edges must be (input node in [0, {j}), op "
                           f"in {tuple(o for o in OPS if o != ZERO)}), got {edge!r}")
    super().__post_init__()

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    states = [_stem(x, self.width)]
    for j, node in enumerate(self.architecture, start=1):
      states.append(sum(_apply_op(op, self.width, f"edge_{i}_{j}_{op}", states[i])
                        for i, op in node))
    return nn.Dense(self.num_classes, name="head")(jnp.concatenate(states[1:], -1))
