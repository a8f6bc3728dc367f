"""One battery of property tests run over every optimizer in ``registry.CASES``: each
must work under jit and vmap (hyperparameters as traced arrays), inside
``optax.inject_hyperparams``, ``optax.chain`` (with extra args), ``optax.apply_if_finite``
and ``optax.MultiSteps``, initialize on abstract shapes, keep dtypes and state shapes."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import bigtune_jax as bt
from tests import registry
from tests.utils import assert_trees_close

CASES = pytest.mark.parametrize("case", registry.CASES, ids=repr)


def problem(dtype=jnp.float32, steps=3):
  params, curvature, noise = registry.quadratic_problem(seed=1, steps=steps)
  cast = lambda t: jax.tree.map(lambda x: jnp.asarray(x, dtype), t)
  return cast(params), cast(curvature), cast(noise)


def run(opt, steps=3, dtype=jnp.float32, jit=True, kwargs=None):
  """The trajectory of ``opt``; ``kwargs``: the case's extra update arguments."""
  params, curvature, noise = problem(dtype, steps)
  return registry.run_jax(opt, params, curvature, noise, kwargs) if jit else _run_eager(
      opt, params, curvature, noise, kwargs or {})


def _run_eager(opt, params, curvature, noise, kwargs):
  state, trajectory = opt.init(params), []
  for t in range(jax.tree.leaves(noise)[0].shape[0]):
    grads = jax.tree.map(lambda a, w, n: a * w + n[t], curvature, params, noise)
    updates, state = opt.update(grads, state, params, **kwargs)
    params = optax.apply_updates(params, updates)
    trajectory.append(params)
  return jax.tree.map(lambda *xs: jnp.stack(xs), *trajectory)


@CASES
def test_jit_equals_eager(case):
  assert_trees_close(run(case.make(case.learning_rate), kwargs=case.kwargs),
                     run(case.make(case.learning_rate), jit=False, kwargs=case.kwargs),
                     rtol=1e-5, atol=1e-6)


@CASES
def test_vmap_over_learning_rates_equals_separate_runs(case):
  rates = jnp.linspace(0.2, 2.0, 8) * case.learning_rate
  together = jax.vmap(lambda lr: run(case.make(lr), kwargs=case.kwargs))(rates)
  for i in (0, len(rates) - 1):
    lr = rates[i]
    assert_trees_close(jax.tree.map(lambda x: x[i], together),
                       run(case.make(float(lr)), kwargs=case.kwargs),
                       rtol=1e-5, atol=1e-6)


@CASES
def test_inside_inject_hyperparams(case):
  injected = optax.inject_hyperparams(case.make)(case.learning_rate)
  assert_trees_close(run(injected, kwargs=case.kwargs),
                     run(case.make(case.learning_rate), kwargs=case.kwargs), rtol=1e-5, atol=1e-6)
  params, _, _ = problem()
  state = injected.init(params)
  (name,) = state.hyperparams  # the registry's factories take the learning rate alone
  if case.accepts_schedule:  # the rate is read at every update: setting it to 0 stops training
    state.hyperparams[name] = jnp.zeros_like(state.hyperparams[name])
    updates, _ = injected.update(params, state, params, **case.kwargs)
    assert all(bool(jnp.all(u == 0)) for u in jax.tree.leaves(updates))


@CASES
def test_in_chain_with_extra_args(case):
  """A chain passes extra args (here the plateau metric) through every member."""
  chained = optax.chain(case.make(case.learning_rate), bt.reduce_on_plateau(patience=100))
  params, curvature, noise = problem()
  state, reference_state = chained.init(params), case.make(case.learning_rate).init(params)
  grads = jax.tree.map(lambda a, w: a * w, curvature, params)
  updates, _ = jax.jit(chained.update)(grads, state, params, **{"value": 1.0, **case.kwargs})
  expected, _ = case.make(case.learning_rate).update(grads, reference_state, params,
                                                     **case.kwargs)
  assert_trees_close(updates, expected, rtol=1e-6, atol=1e-7)


@CASES
def test_apply_if_finite_skips_a_nan_step_without_touching_the_state(case):
  opt = optax.apply_if_finite(case.make(case.learning_rate), max_consecutive_errors=3)
  params, curvature, _ = problem()
  grads = jax.tree.map(lambda a, w: a * w, curvature, params)
  state = opt.init(params)
  nan_grads = jax.tree.map(lambda g: g.at[(0,) * g.ndim].set(jnp.nan), grads)
  updates, bad_state = jax.jit(functools.partial(opt.update, **case.kwargs))(nan_grads, state,
                                                                            params)
  assert all(bool(jnp.all(u == 0)) for u in jax.tree.leaves(updates))
  assert int(bad_state.notfinite_count) == 1
  chex.assert_trees_all_equal(bad_state.inner_state, state.inner_state)
  updates, _ = jax.jit(functools.partial(opt.update, **case.kwargs))(grads, bad_state, params)
  expected, _ = case.make(case.learning_rate).update(grads, state.inner_state, params,
                                                     **case.kwargs)
  assert_trees_close(updates, expected, rtol=1e-6, atol=1e-7)


@CASES
def test_accumulate_every_step_is_the_optimizer_itself(case):
  assert_trees_close(run(bt.accumulate(case.make(case.learning_rate), 1), kwargs=case.kwargs),
                     run(case.make(case.learning_rate), kwargs=case.kwargs), rtol=1e-6, atol=1e-7)


@CASES
def test_init_on_abstract_shapes_and_stable_state(case):
  opt = case.make(case.learning_rate)
  params, curvature, _ = problem()
  abstract = jax.eval_shape(opt.init, jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), params))
  state = opt.init(params)
  chex.assert_trees_all_equal_shapes_and_dtypes(abstract, state)
  grads = jax.tree.map(lambda a, w: a * w, curvature, params)
  _, new_state = jax.jit(functools.partial(opt.update, **case.kwargs))(grads, state, params)
  chex.assert_trees_all_equal_shapes_and_dtypes(state, new_state)  # no retrace next step


@CASES
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_updates_keep_the_parameter_dtype(case, dtype):
  opt = case.make(case.learning_rate)
  params, curvature, _ = problem(dtype)
  grads = jax.tree.map(lambda a, w: a * w, curvature, params)
  updates, _ = jax.jit(functools.partial(opt.update, **case.kwargs))(grads, opt.init(params),
                                                                      params)
  chex.assert_trees_all_equal_dtypes(updates, params)
  assert all(bool(jnp.all(jnp.isfinite(u))) for u in jax.tree.leaves(updates))


@CASES
def test_schedules_go_wherever_a_learning_rate_does(case):
  if not case.accepts_schedule:
    with pytest.raises(ValueError, match="learning_rate"):
      case.make(bt.constant(case.learning_rate))
    return
  assert_trees_close(run(case.make(bt.constant(case.learning_rate)), kwargs=case.kwargs),
                     run(case.make(case.learning_rate), kwargs=case.kwargs), rtol=1e-6, atol=1e-7)
  decayed = run(case.make(bt.exponential_decay(case.learning_rate, 0.5)), steps=6,
                kwargs=case.kwargs)
  assert not np.allclose(decayed["scale"],
                         run(case.make(case.learning_rate), steps=6, kwargs=case.kwargs)["scale"])


def test_reduce_on_plateau_inside_inject_hyperparams_and_vmap_over_patience():
  """Integer hyperparameters become int32 arrays under inject_hyperparams, and may be
  traced: a population can differ in patience."""
  metrics = jnp.asarray([1.0, 1.0, 1.0, 1.0, 0.5, 0.5, 0.5])

  def scales(make):
    opt = make()
    def step(state, metric):
      _, state = opt.update(jnp.ones(()), state, value=metric)
      return state, state.inner_state.scale if hasattr(state, "inner_state") else state.scale
    return jax.lax.scan(step, opt.init(jnp.zeros(())), metrics)[1]

  injected = scales(lambda: optax.inject_hyperparams(bt.reduce_on_plateau)(factor=0.5, patience=1))
  plain = scales(lambda: bt.reduce_on_plateau(factor=0.5, patience=1))
  np.testing.assert_array_equal(injected, plain)
  population = jax.vmap(lambda p: scales(lambda: bt.reduce_on_plateau(factor=0.5, patience=p)))(
      jnp.arange(3))
  for patience in range(3):
    np.testing.assert_array_equal(
        population[patience], scales(lambda: bt.reduce_on_plateau(factor=0.5, patience=patience)))
  assert len({tuple(np.asarray(row)) for row in population}) == 3


def test_early_stopping_and_schedules_take_traced_counts():
  steps = jax.vmap(lambda w: bt.warmup_cosine_decay(1.0, w, 100)(jnp.asarray(5)))(jnp.asarray([0, 10]))
  np.testing.assert_allclose(steps, [bt.warmup_cosine_decay(1.0, 0, 100)(5),
                                     bt.warmup_cosine_decay(1.0, 10, 100)(5)], rtol=1e-6)

  def stops(patience):
    stopper = bt.EarlyStopping(patience=patience)
    state = jax.lax.fori_loop(0, 4, lambda i, s: stopper.update(s, 1.0), stopper.init())
    return state.should_stop
  np.testing.assert_array_equal(jax.vmap(stops)(jnp.asarray([2, 3, 5])), [True, True, False])


def test_public_api_of_the_design_contract():
  for name in ("sgd", "momentum", "ema_momentum", "adam", "adaptive_sgd", "hypergradient_sgd",
               "hypergradient_adam", "l1", "l2", "accumulate", "constant", "exponential_decay",
               "step_decay", "warmup_cosine_decay", "reduce_on_plateau", "EarlyStopping"):
    assert name in bt.__all__ and callable(getattr(bt, name)), name
  for name in ("LinearRegression", "MLP", "SimpleCNN", "VGG16", "LSTMClassifier", "GPT"):
    assert hasattr(bt.models, name), name
