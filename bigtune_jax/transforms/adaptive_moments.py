"""Adam (seed 000 §3.3; Kingma & Ba 2015), with an option for bfloat16 moments.

.. math::
  m_t = \\beta_1 m_{t-1} + (1-\\beta_1) g_t, \\qquad
  v_t = \\beta_2 v_{t-1} + (1-\\beta_2) g_t^2 \\\\
  \\hat m_t = m_t / (1-\\beta_1^t), \\qquad \\hat v_t = v_t / (1-\\beta_2^t) \\\\
  w_{t+1} = w_t - \\alpha_t \\, \\hat m_t / (\\sqrt{\\hat v_t} + \\epsilon)

with :math:`\\epsilon` outside the square root, as in the paper and ``torch.optim.Adam``.
In full precision this is ``optax.scale_by_adam`` followed by the learning rate.

Low-precision moments (``moment_dtype="bfloat16"``): for large models the optimizer step
is memory-bound. Per fp32 parameter an Adam step reads w, g, m, v and writes w, m, v:
28 bytes; with m and v stored in bfloat16 it moves 20 bytes, and the state is half the
size. optax's ``mu_dtype`` only lowers :math:`m`, so this option is written here.
The moments are updated in float32 and rounded to bfloat16 *stochastically* (Gupta et
al. 2015; Zamirai et al. 2020): with :math:`\\beta_2 = 0.999` each step changes
:math:`v` by 0.1 %, below half a bfloat16 ulp (0.39 %), so round-to-nearest would freeze
:math:`v`; stochastic rounding is unbiased, ``E[round(x)] = x``. The random bits are a counter-based hash of (seed,
step, leaf, element index) -- Wellons' ``lowbias32``, five integer operations per
element that fuse into the update kernel -- rather than ``jax.random``: threefry made the
step 10x slower than float32 Adam on CPU and slow to compile, while rounding needs only
uniform, decorrelated bits, not a cryptographic generator. The step stays pure and
reproducible.
"""

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from bigtune_jax.transforms import dtypes
from bigtune_jax import validation


class ScaleByLowPrecisionAdamState(NamedTuple):
  """State of :func:`scale_by_low_precision_adam`."""
  count: jax.Array  # shape=(), dtype=int32: steps taken
  mu: optax.Updates  # like params, dtype=moment_dtype: first moment
  nu: optax.Updates  # like params, dtype=moment_dtype: second moment


def hash32(x: jax.Array) -> jax.Array:
  """Wellons' ``lowbias32`` integer hash (bias 0.17, among the best 2-multiply hashes)."""
  x = x.astype(jnp.uint32)
  x = (x ^ (x >> 16)) * jnp.uint32(0x7FEB352D)
  x = (x ^ (x >> 15)) * jnp.uint32(0x846CA68B)
  return x ^ (x >> 16)


def _uint32(x) -> jax.Array:
  """``x mod 2**32`` as uint32, for a Python int or an integer array (a seed injected by
  ``optax.inject_hyperparams`` is an int32 array, traced inside the update)."""
  return jnp.uint32(x % 2**32) if isinstance(x, int) else jnp.asarray(x).astype(jnp.uint32)


def random_bits(shape, seed: int, step: jax.Array, leaf: int) -> jax.Array:
  """Uniform uint32 bits for one leaf and step: ``hash32(index ^ key(seed, step, leaf))``."""
  key = hash32(hash32(jnp.asarray(step, jnp.uint32) ^ (_uint32(seed) * jnp.uint32(0x9E3779B9)))
               ^ jnp.uint32(leaf * 0x85EBCA6B % 2**32))
  size = int(np.prod(shape, dtype=np.int64))
  return hash32(jax.lax.iota(jnp.uint32, size).reshape(shape) ^ key)


def stochastic_round_to_bfloat16(x: jax.Array, bits: jax.Array) -> jax.Array:
  """Rounds float32 ``x`` to bfloat16, up in magnitude with probability equal to the
  fraction of an ulp that truncation drops.

  bfloat16 is the top 16 bits of float32: adding 16 uniform random bits to the low half
  of the float32 pattern and truncating rounds stochastically (carries propagate into
  the exponent correctly). Non-finite values are rounded to nearest.

  Args:
    x: float32 array.
    bits: uint32 array of ``x``'s shape whose low 16 bits are uniform random.
  """
  pattern = jax.lax.bitcast_convert_type(x.astype(jnp.float32), jnp.uint32)
  top = ((pattern + (bits & jnp.uint32(0xFFFF))) >> 16).astype(jnp.uint16)
  y = jax.lax.bitcast_convert_type(top, jnp.bfloat16)  # the top half *is* the bfloat16
  return jnp.where(jnp.isfinite(x), y, x.astype(jnp.bfloat16))


def scale_by_low_precision_adam(b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8, *,
                                seed: int = 0) -> optax.GradientTransformation:
  """Adam's direction :math:`\\hat m/(\\sqrt{\\hat v}+\\epsilon)` with bfloat16 moments.

  The arithmetic is done in float32 (or the gradient's dtype if wider); only the stored
  moments are bfloat16, rounded stochastically.
  """

  def init_fn(params):
    for leaf in jax.tree.leaves(params):
      if jnp.issubdtype(dtypes.leaf_dtype(leaf), jnp.complexfloating):
        raise ValueError("params must be real for bfloat16 moments (moment_dtype='bfloat16'), "
                         f"got a {dtypes.leaf_dtype(leaf)} leaf; use moment_dtype=None, whose "
                         "second moment is |g|^2 as in optax")
    # zeros_like keeps each parameter's sharding (and takes jax.ShapeDtypeStruct leaves).
    zeros = lambda p: jnp.zeros_like(p, dtype=jnp.bfloat16)
    return ScaleByLowPrecisionAdamState(
        count=jnp.zeros([], jnp.int32),
        mu=jax.tree.map(zeros, params), nu=jax.tree.map(zeros, params))

  def update_fn(updates, state, params=None):
    del params
    count = optax.safe_increment(state.count)
    leaves, treedef = jax.tree.flatten(updates)
    mus, nus = treedef.flatten_up_to(state.mu), treedef.flatten_up_to(state.nu)
    out, new_mu, new_nu = [], [], []
    for i, (g, m, v) in enumerate(zip(leaves, mus, nus)):
      dtype = jnp.promote_types(g.dtype, jnp.float32)
      g32 = g.astype(dtype)
      m32 = (1 - b1) * g32 + b1 * m.astype(dtype)
      v32 = (1 - b2) * g32 * g32 + b2 * v.astype(dtype)
      m_hat = m32 / (1 - b1 ** count).astype(dtype)
      v_hat = v32 / (1 - b2 ** count).astype(dtype)
      out.append((m_hat / (jnp.sqrt(v_hat) + eps)).astype(g.dtype))
      # One 32-bit draw per element: low half rounds m, high half rounds v.
      bits = random_bits(jnp.shape(g), seed, count, i)
      new_mu.append(stochastic_round_to_bfloat16(m32, bits))
      new_nu.append(stochastic_round_to_bfloat16(v32, bits >> 16))
    unflatten = lambda xs: jax.tree.unflatten(treedef, xs)
    return unflatten(out), ScaleByLowPrecisionAdamState(count, unflatten(new_mu), unflatten(new_nu))

  return optax.with_extra_args_support(optax.GradientTransformation(init_fn, update_fn))


def adam(learning_rate: optax.ScalarOrSchedule = 1e-3, b1: float = 0.9, b2: float = 0.999,
         eps: float = 1e-8, *, moment_dtype: Any = None,
         seed: int = 0) -> optax.GradientTransformation:
  """Bias-corrected Adam; equals ``torch.optim.Adam(lr, betas=(b1, b2), eps)``.

  Args:
    learning_rate: a scalar >= 0, a traced array, or a schedule ``step -> lr``.
    b1: first-moment decay in ``[0, 1)``.
    b2: second-moment decay in ``[0, 1)``.
    eps: added to :math:`\\sqrt{\\hat v}`, >= 0.
    moment_dtype: ``None`` keeps the moments in the parameters' dtype
      (``optax.scale_by_adam``); ``"bfloat16"`` stores both moments in bfloat16 with
      stochastic rounding (28 -> 20 bytes moved per fp32 parameter and step).
    seed: seed of the stochastic rounding (bfloat16 moments only), an integer >= 0.

  Returns:
    An ``optax.GradientTransformation``.

  References:
    Kingma & Ba, "Adam: A Method for Stochastic Optimization", ICLR 2015.
    Zamirai et al., "Revisiting BFloat16 Training", 2020 (stochastic rounding).
  """
  validation.check_learning_rate("learning_rate", learning_rate)
  validation.check_interval("b1", b1, 0.0, 1.0)
  validation.check_interval("b2", b2, 0.0, 1.0)
  validation.check_non_negative("eps", eps)
  validation.check_int("seed", seed, 0)
  try:
    bfloat16_moments = moment_dtype is not None and jnp.dtype(moment_dtype) == jnp.bfloat16
  except TypeError:  # not a dtype at all
    bfloat16_moments = False
  if moment_dtype is None:
    direction = optax.scale_by_adam(b1=b1, b2=b2, eps=eps)
  elif bfloat16_moments:
    direction = scale_by_low_precision_adam(b1, b2, eps, seed=seed)
  else:
    raise ValueError(f"moment_dtype must be None or 'bfloat16', got {moment_dtype!r}")
  return optax.chain(direction, optax.scale_by_learning_rate(learning_rate))
