"""optax's conventions, over every transform of the registry (optax's own alias_test kind
of battery): extra keyword arguments to ``update``, ``init`` on abstract parameters."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import bigtune_jax as bt
from tests import registry

EXTRA = [registry.Case("reduce_on_plateau", lambda lr: bt.reduce_on_plateau(), None),
         registry.Case("accumulate", lambda lr: bt.accumulate(bt.sgd(lr), 2), None)]
CASES = registry.CASES + EXTRA + [
    registry.Case("l1_alone", lambda lr: bt.l1(0.1), None, uses_params=True),
    registry.Case("l2_alone", lambda lr: bt.l2(0.1), None, uses_params=True)]


def _params(seed=0):
  rng = np.random.default_rng(seed)
  return {"dense": {"kernel": jnp.asarray(rng.standard_normal((4, 3)), jnp.float32),
                    "bias": jnp.asarray(rng.standard_normal(3), jnp.float32)},
          "scale": jnp.asarray(rng.standard_normal(), jnp.float32)}


@pytest.mark.parametrize("case", CASES, ids=repr)
def test_update_accepts_extra_keyword_arguments(case):
  opt = case.make(case.learning_rate)
  params = _params()
  grads = _params(1)
  extra = {"value": jnp.float32(0.5), "unused_by_anyone": 3}
  if case.name == "reduce_on_plateau":
    plain, _ = opt.update(grads, opt.init(params), params, value=jnp.float32(0.5))
  else:
    plain, _ = opt.update(grads, opt.init(params), params)
  with_extra, _ = jax.jit(lambda g, s, p: opt.update(g, s, p, **extra))(
      grads, opt.init(params), params)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6), with_extra, plain)


@pytest.mark.parametrize("case", CASES, ids=repr)
def test_init_works_on_shape_dtype_structs(case):
  opt = case.make(case.learning_rate)
  params = _params()
  abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), params)
  concrete = jax.tree.map(lambda x: (x.shape, x.dtype), opt.init(params))
  traced = jax.tree.map(lambda x: (x.shape, x.dtype), jax.eval_shape(opt.init, abstract))
  assert traced == concrete
  direct = opt.init(abstract)  # called on the structs themselves, as optax's own allow
  assert jax.tree.map(lambda x: (jnp.shape(x), jnp.result_type(x)), direct) == concrete


def test_hypergradient_rate_stays_real_for_complex_parameters():
  """alpha_t = alpha_{t-1} + beta Re(g_t . d_{t-1}) (optax's convention for complex vdot)."""
  rng = np.random.default_rng(0)
  w = jnp.asarray(rng.standard_normal(5) + 1j * rng.standard_normal(5), jnp.complex64)
  opt = bt.hypergradient_sgd(0.1, hyper_lr=0.01)
  state = opt.init({"w": w})
  grads = [jnp.asarray(rng.standard_normal(5) + 1j * rng.standard_normal(5), jnp.complex64)
           for _ in range(3)]
  alpha, previous = 0.1, np.zeros(5, np.complex128)
  for g in grads:
    _, state = opt.update({"w": g}, state, {"w": w})
    alpha += 0.01 * float(np.real(np.vdot(np.asarray(g, np.complex128), previous)))
    previous = np.asarray(g, np.complex128)
  assert not jnp.iscomplexobj(state.learning_rate)
  np.testing.assert_allclose(float(state.learning_rate), alpha, rtol=1e-5)
