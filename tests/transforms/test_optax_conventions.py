"""optax's conventions, over every transform of the registry (``registry.ALL``: the
optimizers and the pieces they are made of), as optax's own ``alias_test.py`` checks its
optimizers: extra keyword arguments to ``update``, ``init`` on abstract parameters
(``jax.ShapeDtypeStruct``), complex parameters, and -- in ``tests/conventions_worker.py`` on
8 fake CPU devices -- state shardings under a mesh with ``AxisType.Explicit`` axes."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import bigtune_jax as bt
from tests import multiprocess
from tests import registry

ALL = pytest.mark.parametrize("case", registry.ALL, ids=repr)


def _params(seed=0, dtype=jnp.float32, scalar=True):
  rng = np.random.default_rng(seed)
  draw = lambda *shape: (rng.standard_normal(shape) + 1j * rng.standard_normal(shape)
                         if jnp.issubdtype(dtype, jnp.complexfloating) else rng.standard_normal(shape))
  tree = {"dense": {"kernel": jnp.asarray(draw(4, 3), dtype), "bias": jnp.asarray(draw(3), dtype)}}
  if scalar:
    tree["scale"] = jnp.asarray(draw(), dtype)
  return tree


def _describe(tree):
  return jax.tree.map(lambda x: (jnp.shape(x), jnp.result_type(x)), tree)


@ALL
def test_update_accepts_extra_keyword_arguments(case):
  """optax's ``test_optimizers_accept_extra_args``: no ``with_extra_args_support`` needed by
  the caller, under jit, twice (the second call must not fail on the state it made)."""
  opt = case.make(case.learning_rate)
  params, grads = _params(), _params(1)
  extra = {"unexpected_extra_args_your_optimizer_doesnt_expect": 1, "value": jnp.float32(1.0),
           **case.kwargs}
  plain_state = with_state = opt.init(params)
  update = jax.jit(lambda g, s, p: opt.update(g, s, p, **extra))
  for _ in range(2):
    plain, plain_state = opt.update(grads, plain_state, params, **case.kwargs)
    with_extra, with_state = update(grads, with_state, params)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7),
                 with_extra, plain)


@ALL
def test_init_works_on_shape_dtype_structs(case):
  """``jax.eval_shape(opt.init, abstract)`` (how a sharded model builds its optimizer state
  without materializing it) and ``opt.init(abstract)`` itself, as optax's transforms allow."""
  opt = case.make(case.learning_rate)
  params = _params()
  abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), params)
  concrete = _describe(opt.init(params))
  assert _describe(jax.eval_shape(opt.init, abstract)) == concrete
  assert _describe(opt.init(abstract)) == concrete


@ALL
def test_complex_parameters_are_trained_or_refused_at_init(case):
  """Complex parameters: either refused by ``init`` with an error that says so, or handled
  as optax does: the updates keep the complex dtype, every scalar of the state (rates,
  scales, norms, counts) stays real, and turning every parameter and gradient by one phase
  turns the updates by that phase and nothing else. That holds for |g|^2 and Re(g . d) and
  fails for g * g (a complex "second moment") or a cast to a real dtype."""
  opt = case.make(case.learning_rate)
  params, grads = _params(dtype=jnp.complex64, scalar=False), _params(1, jnp.complex64, False)
  try:
    opt.init(params)
  except ValueError as error:
    assert "complex" in str(error) and "params" in str(error)
    return
  update = jax.jit(lambda g, s, p: opt.update(g, s, p, **case.kwargs))
  phase = np.exp(0.7j).astype(np.complex64)
  turn = lambda tree: jax.tree.map(lambda x: x * phase, tree)
  state, turned_state = opt.init(params), opt.init(turn(params))
  for _ in range(3):
    updates, state = update(grads, state, params)
    turned, turned_state = update(turn(grads), turned_state, turn(params))
    assert _describe(updates) == _describe(params)
    assert all(bool(jnp.all(jnp.isfinite(u))) for u in jax.tree.leaves(updates))
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-4, atol=1e-6),
                 turned, turn(updates))
    for leaf in jax.tree.leaves(state):
      if jnp.ndim(leaf) == 0:
        assert not jnp.iscomplexobj(leaf), (case, leaf)


def test_adam_second_moment_is_the_squared_modulus_for_complex_parameters():
  """v_1 = (1 - b2) |g|^2, so the first step is -lr g / (|g| + eps) elementwise (optax's
  convention; g * g would be complex and the step would not follow the gradient)."""
  w = _params(dtype=jnp.complex64, scalar=False)
  g = _params(1, jnp.complex64, False)
  updates, _ = bt.adam(0.1, eps=1e-8).update(g, bt.adam(0.1).init(w))
  for u, grad in zip(jax.tree.leaves(updates), jax.tree.leaves(g)):
    grad = np.asarray(grad, np.complex128)
    np.testing.assert_allclose(u, -0.1 * grad / (np.abs(grad) + 1e-8), rtol=1e-5)


def test_accumulated_norm_sums_squared_moduli_for_complex_parameters():
  g = _params(1, jnp.complex64, False)
  opt = bt.adaptive_sgd(0.1, beta=0.5)
  _, state = opt.update(g, opt.init(g))
  expected = sum(float(np.sum(np.abs(np.asarray(x, np.complex128)) ** 2))
                 for x in jax.tree.leaves(g))
  assert not jnp.iscomplexobj(state[0].sum_squared_norm)
  np.testing.assert_allclose(float(state[0].sum_squared_norm), expected, rtol=1e-5)


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


@pytest.fixture(scope="module")
def sharded(tmp_path_factory):
  out = tmp_path_factory.mktemp("conventions")
  multiprocess.finish(multiprocess.start("tests.conventions_worker", out, devices=8))
  return json.loads((out / "result.json").read_text())


@ALL
@pytest.mark.parametrize("jit", [False, True], ids=["eager", "jit"])
def test_state_sharding_is_stable_under_an_explicit_mesh(sharded, case, jit):
  """optax's ``test_state_shape_dtype_shard_stability`` on a mesh of 8 devices whose axis is
  ``AxisType.Explicit``: init and update run (no ``ShardingTypeError``), the state has the
  same shardings, shapes and dtypes after two updates as after init, and every state leaf
  shaped like a parameter is sharded like it."""
  result = sharded["eager" if not jit else "jit"][case.name]
  assert result["mesh_axis_types"] == ["Explicit"]
  assert "error" not in result, result.get("error")
  assert result["changed_after_update"] == [], result["changed_after_update"]
  assert result["unlike_its_parameter"] == [], result["unlike_its_parameter"]
  assert result["param_like_leaves"] > 0 or case.name in sharded["no_param_like_state"]
