"""LoRA: low-rank adapters on Dense kernels, as a transformation of the parameter tree
(Hu et al., 2021, "LoRA: Low-Rank Adaptation of Large Language Models"; seed 001 §3.2 step
3, updating the pretrained model's parameters on the new loss, and §6.2, the choice of a
fine-tuning strategy).

Every adapted Dense kernel ``K`` (flax's layout: ``(in, out)``, ``y = x K + b``) is frozen
and trained through a rank-``r`` correction:

.. math:: K' = K + \\frac{\\alpha}{r} A B, \\qquad A \\in \\mathbb{R}^{in \\times r}
          \\sim \\mathcal{N}(0, 1/in), \\quad B \\in \\mathbb{R}^{r \\times out} = 0

which is the paper's :math:`W' = W + \\frac{\\alpha}{r} B A` transposed (the paper's ``W`` is
``(out, in)``; here ``A`` is its ``A^T`` and ``B`` its ``B^T``). ``B = 0`` at the start, so
the adapted model begins exactly at the pretrained one; ``alpha / r`` keeps the size of
the update comparable across ranks. Only ``A`` and ``B`` (``r (in + out)`` numbers per layer
instead of ``in * out``) are trained, and biases stay frozen.

No model code changes, so this works with any flax linen model whose Dense layers hold a
2-D ``kernel``:

* ``lora_init(params, rank, rng)`` -> the trainable tree: ``{layer: {"lora_a", "lora_b"}}``
  for every adapted layer, plus a copy of any parameter trained in full alongside
  (``also_train``, e.g. a new head);
* ``lora_merge(params, lora_params, alpha=...)`` -> the effective parameters for
  ``model.apply``: adapters added to their kernels, fully trained entries replacing theirs;
* ``lora_loss(loss_fn, params, alpha=...)`` -> the loss as a function of the trainable
  tree, for ``bt.train.create_train_state`` / ``fit``: the train step differentiates and
  the optimizer holds state for ``A``, ``B`` (and ``also_train``) only.

The merge is recomputed at every step (``in * r * out`` multiply-adds per layer, small
next to a batch's forward pass); ``lora_merge`` once gives a plain model to deploy.
"""

import math

import jax
import jax.numpy as jnp

from bigtune_jax import tree_paths
from bigtune_jax.finetune import paths
from bigtune_jax.train.step import LossFn
from bigtune_jax import validation

_A, _B = "lora_a", "lora_b"


def _join(layer: str, name: str) -> str:
  return f"{layer}/{name}" if layer else name


def _adapted_kernels(flat: dict, targets, full: set[str]) -> list[str]:
  """The paths of the kernels to adapt; ValueError for unsupported or conflicting ones."""
  is_kernel = lambda path: path.rpartition("/")[2] == "kernel"
  if targets is None:
    kernels = [p for p in flat if is_kernel(p) and jnp.ndim(flat[p]) == 2 and p not in full]
    if not kernels:
      raise ValueError("params have no Dense kernel (a 2-D 'kernel') to adapt outside "
                       f"also_train; the paths are: {paths.describe(list(flat))}")
    return kernels
  selected = paths.select(flat, targets, "targets")
  kernels = [p for p in flat if p in selected and is_kernel(p)]
  if not kernels:
    raise ValueError(f"targets select no layer kernel, only: {paths.describe(sorted(selected))}")
  for path in kernels:
    if jnp.ndim(flat[path]) != 2:
      raise ValueError(f"targets: {path!r} has shape {jnp.shape(flat[path])}; LoRA adapts "
                       "Dense kernels of shape (in, out), not this layer type (a convolution "
                       "or DenseGeneral kernel)")
    if path in full:
      raise ValueError(f"{path!r} is both adapted (targets) and trained in full (also_train)")
  return kernels


def lora_init(params, rank: int, rng: jax.Array, *, targets: paths.Selection | None = None,
              also_train: paths.Selection = ()) -> dict:
  """The trainable tree of a LoRA fine-tuning of ``params``.

  Args:
    params: the pretrained parameters (a flax parameter tree), frozen from now on.
    rank: ``r``, in ``[1, min(in, out)]`` for every adapted kernel.
    rng: a JAX random key, drawn for the ``A`` matrices.
    targets: a selection (``paths``) of the kernels to adapt; None: every 2-D ``kernel``
      not in ``also_train``.
    also_train: a selection of parameters trained in full alongside the adapters (a new
      head); their current values are copied into the tree.

  Returns:
    ``{layer path: {"lora_a": (in, r) ~ N(0, 1/in), "lora_b": (r, out) zeros}}`` nested
    like ``params``, plus the ``also_train`` entries.
  """
  validation.check_int("rank", rank, 1)
  flat = tree_paths.flatten(params)
  full = paths.select(flat, also_train, "also_train") if also_train else set()
  kernels = _adapted_kernels(flat, targets, full)
  for path in kernels:
    n_in, n_out = jnp.shape(flat[path])
    if rank > min(n_in, n_out):
      raise ValueError(f"rank must be in [1, min(in, out)] = [1, {min(n_in, n_out)}] for "
                       f"{path!r} of shape {(n_in, n_out)}, got {rank}")
  trainable = {path: jnp.copy(flat[path]) for path in sorted(full)}  # copies: fit donates
  for path, key in zip(kernels, jax.random.split(rng, len(kernels))):
    kernel = flat[path]
    n_in, n_out = kernel.shape
    layer = path.rpartition("/")[0]
    trainable[_join(layer, _A)] = (jax.random.normal(key, (n_in, rank), kernel.dtype)
                                   / math.sqrt(n_in))
    trainable[_join(layer, _B)] = jnp.zeros((rank, n_out), kernel.dtype)
  return tree_paths.unflatten(trainable)


def _check_adapter(path: str, kernel, a, b) -> None:
  layer = path.rpartition("/")[0]
  if kernel is None:
    raise ValueError(f"lora_params: {_join(layer, _A)!r} adapts {path!r}, which params lack")
  if b is None:
    raise ValueError(f"lora_params: {_join(layer, _A)!r} has no {_join(layer, _B)!r}")
  rank = jnp.shape(a)[-1]
  if (jnp.ndim(kernel) != 2 or jnp.shape(a) != (kernel.shape[0], rank)
      or jnp.shape(b) != (rank, kernel.shape[1])):
    raise ValueError(f"lora_params: adapter of {path!r} {jnp.shape(kernel)} has "
                     f"{_A} {jnp.shape(a)} and {_B} {jnp.shape(b)}; expected (in, r) and "
                     "(r, out)")


def lora_merge(params, lora_params, *, alpha):
  """The effective parameters ``K + (alpha / r) A B`` for every adapter of ``lora_params``,
  its other entries replacing ``params``' (in ``params``' tree structure).

  ``alpha`` > 0 (may be traced); ``r`` is each adapter's own rank. Raises ValueError
  naming the path of an entry that ``params`` lacks or whose shape does not fit.
  """
  validation.check_interval("alpha", alpha, 0.0, math.inf, low_closed=False)
  flat, lora = tree_paths.flatten(params), tree_paths.flatten(lora_params)
  adapters, replaced = {}, {}
  for path, leaf in lora.items():
    layer, _, name = path.rpartition("/")
    if name == _B:
      if _join(layer, _A) not in lora:
        raise ValueError(f"lora_params: {path!r} has no {_join(layer, _A)!r}")
    elif name == _A:
      kernel_path = _join(layer, "kernel")
      b = lora.get(_join(layer, _B))
      _check_adapter(kernel_path, flat.get(kernel_path), leaf, b)
      adapters[kernel_path] = (leaf, b)
    elif path not in flat or jnp.shape(flat[path]) != jnp.shape(leaf):
      where = (f"of shape {jnp.shape(flat[path])}" if path in flat else "missing")
      raise ValueError(f"lora_params: {path!r} {jnp.shape(leaf)} replaces no parameter of "
                       f"params (there it is {where})")
    else:
      replaced[path] = leaf

  def merged(key_path, kernel):
    path = tree_paths.path_name(key_path)
    if path in replaced:
      return replaced[path]
    if path not in adapters:
      return kernel
    a, b = adapters[path]
    return (kernel + (alpha / a.shape[-1]) * (a @ b)).astype(kernel.dtype)

  return jax.tree_util.tree_map_with_path(merged, params)


def lora_loss(loss_fn: LossFn, params, *, alpha) -> LossFn:
  """``loss_fn`` (a ``bt.train`` loss) as a function of the LoRA trainable tree, the
  pretrained ``params`` held fixed: ``loss(lora_params, batch, rng, train)``."""
  validation.check_interval("alpha", alpha, 0.0, math.inf, low_closed=False)

  def loss(lora_params, batch, rng, train):
    return loss_fn(lora_merge(params, lora_params, alpha=alpha), batch, rng, train)

  return loss
