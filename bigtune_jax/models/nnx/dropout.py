"""Dropout for the NNX modules, drawn from a key given at call time (no ``nnx.Rngs`` kept
in the module, so its state is its parameters only and the engine passes the step's key)."""

from collections.abc import Callable

from flax import nnx
import jax


def dropout_layers(count: int, rate: float, train: bool,
                   rng: jax.Array | None) -> list[Callable[[jax.Array], jax.Array]]:
  """``count`` dropout functions (``nnx.Dropout(rate)``, Srivastava et al., 2014), the
  ``i``-th drawing from ``fold_in(rng, i)``; the identity unless ``train`` and ``rate > 0``,
  which need ``rng``."""
  if not train or rate == 0.0:
    return [lambda x: x] * count
  if rng is None:
    raise ValueError(f"train=True with dropout_rate={rate} needs rng=, a jax.random key")
  dropout = nnx.Dropout(rate)
  return [lambda x, i=i: dropout(x, deterministic=False, rngs=jax.random.fold_in(rng, i))
          for i in range(count)]
