"""Which parameters train, and how fast: freezing and per-group learning rates (seed 001
§3.2 step 3, "update the model's parameters with an optimizer on the new loss", and §6.4,
"the fine-tuning parameters to adjust include the learning rate").

**Freezing.** ``freeze(optimizer, trainable)`` routes the trainable parameters through
``optimizer`` and the others through ``optax.set_to_zero()`` (``optax.partition``):

.. math:: u_i = \\begin{cases} \\text{optimizer}(g)_i & i \\text{ trainable} \\\\
          0 & \\text{otherwise} \\end{cases}

so a frozen parameter gets an update of exactly 0 and stays bit for bit what it was, and
the optimizer keeps no state for it (no Adam moments, no weight decay). Note that
``optax.masked(optimizer, mask)`` does *not* freeze: it passes the masked-out gradients
through unchanged, and ``apply_updates`` would then take a raw gradient step on them.
(``optax.selective_transform`` is the same partition for a precomputed mask; ``freeze``
also takes a path predicate or prefixes, resolved against the parameters at ``init``.)

**Per-group learning rates** (discriminative fine-tuning, Howard & Ruder 2018, "ULMFiT"):
``param_groups({"backbone": 1e-4, "head": 1e-2}, labels)`` gives every group its own
``optimizer(learning_rate)`` (``optax.partition``); a rate of ``None`` freezes the group.
"""

from collections.abc import Callable
from collections.abc import Mapping

import jax
import optax

from bigtune_jax import transforms
from bigtune_jax import tree_paths
from bigtune_jax.finetune import paths
from bigtune_jax import validation

_TRAIN, _FROZEN = "train", "frozen"


def freeze(optimizer: optax.GradientTransformation,
           trainable: paths.Selection) -> optax.GradientTransformationExtraArgs:
  """``optimizer`` on the ``trainable`` parameters; the others never change.

  Args:
    optimizer: any optax transform (its state covers the trainable parameters only).
    trainable: a selection (``paths``): prefixes such as ``("head",)``, a predicate
      ``path -> bool``, or a pytree of booleans. Checked against the parameters at
      ``init``: a prefix that matches nothing, or a selection of no parameter, is a
      ``ValueError``.

  Example::

    tx = freeze(bt.adam(1e-3), trainable=("head",))  # train the new head only
  """
  if not isinstance(trainable, Mapping):
    paths.check_selection("trainable", trainable)

  def labels(params):
    mask = paths.selection_mask(params, trainable, "trainable")
    if not any(jax.tree.leaves(mask)):
      raise ValueError("trainable selects no parameter: everything would be frozen; the "
                       f"paths are: {paths.describe(tree_paths.leaf_paths(params))}")
    return jax.tree.map(lambda t: _TRAIN if t else _FROZEN, mask)

  return optax.partition({_TRAIN: optimizer, _FROZEN: optax.set_to_zero()}, labels)


def _label_tree(params, labels, learning_rates: Mapping[str, object]):
  """The group label of every parameter, checked: each is a group, each group is used."""
  if callable(labels):
    tree = jax.tree_util.tree_map_with_path(lambda p, _: labels(tree_paths.path_name(p)), params)
  else:
    if jax.tree.structure(labels) != jax.tree.structure(params):
      raise ValueError(f"labels must be a function path -> group or a tree of group names "
                       f"with the parameters' structure {jax.tree.structure(params)}, got "
                       f"{jax.tree.structure(labels)}")
    tree = labels
  named = dict(zip(tree_paths.leaf_paths(params), jax.tree.leaves(tree)))
  for path, label in named.items():
    if label not in learning_rates:
      raise ValueError(f"labels: parameter {path!r} is in group {label!r}, which "
                       f"learning_rates lacks; the groups are {sorted(learning_rates)}")
  unused = sorted(set(learning_rates) - set(named.values()))
  if unused:
    raise ValueError(f"learning_rates: group {unused[0]!r} has no parameter (no path is "
                     f"labelled with it)")
  return tree


def param_groups(learning_rates: Mapping[str, float | Callable | None],
                 labels: Callable[[str], str] | Mapping, *,
                 optimizer: Callable[[float | Callable], optax.GradientTransformation]
                 = transforms.adam) -> optax.GradientTransformationExtraArgs:
  """One optimizer per group of parameters, each with its own learning rate.

  Args:
    learning_rates: group name -> learning rate (a number >= 0 or a schedule), or None
      to freeze that group.
    labels: a function ``path -> group name`` (e.g. ``lambda p: "head" if
      p.startswith("head/") else "backbone"``) or a tree of group names shaped like the
      parameters. Checked at ``init``: every label must be a group, every group used.
    optimizer: ``learning_rate -> optax transform`` (default ``bt.adam``; e.g. ``bt.sgd``
      or ``functools.partial(optax.adamw, weight_decay=0.01)``).
  """
  if not isinstance(learning_rates, Mapping) or not learning_rates:
    raise ValueError(f"learning_rates must be a non-empty mapping group -> learning rate, "
                     f"got {learning_rates!r}")
  for group, rate in learning_rates.items():
    if rate is not None:
      validation.check_learning_rate(f"learning_rates[{group!r}]", rate)
  if not callable(labels) and not isinstance(labels, Mapping):
    raise ValueError(f"labels must be a function path -> group or a tree of group names, "
                     f"got {labels!r}")
  groups = {group: optax.set_to_zero() if rate is None else optimizer(rate)
            for group, rate in learning_rates.items()}
  return optax.partition(groups, lambda params: _label_tree(params, labels, learning_rates))


def trainable_parameter_count(params, trainable: paths.Selection | None = None) -> int:
  """How many scalars of ``params`` are trained: all of them, or those ``trainable``
  selects (the same selection as ``freeze``'s). Works on arrays or ``ShapeDtypeStruct``s."""
  leaves = jax.tree.leaves(params)
  if trainable is not None:
    mask = jax.tree.leaves(paths.selection_mask(params, trainable, "trainable"))
    leaves = [leaf for leaf, keep in zip(leaves, mask) if keep]
  return sum(int(leaf.size) for leaf in leaves)
