"""The monitored metric of ``EarlyStopping.update`` and of ``reduce_on_plateau``'s
``value=`` must be a real number: anything else (None, a string, an object, a complex, a
bool, a vector) is one clear ValueError naming the argument, not a TypeError from deep
inside JAX or a silent cast."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import bigtune_jax as bt

NOT_METRICS = [None, "0.5", b"0.5", object(), {"loss": 0.5}, 1 + 2j, True, np.bool_(False)]
# Stable ids (an object's repr holds its address, which differs between xdist workers).
IDS = ["None", "str", "bytes", "object", "dict", "complex", "bool", "np_bool"]


@pytest.mark.parametrize("metric", NOT_METRICS, ids=IDS)
def test_early_stopping_refuses_what_is_not_a_metric(metric):
  stopper = bt.EarlyStopping(patience=2)
  with pytest.raises(ValueError, match="metric must be a real number"):
    stopper.update(stopper.init(), metric)


@pytest.mark.parametrize("metric", NOT_METRICS, ids=IDS)
def test_reduce_on_plateau_refuses_what_is_not_a_metric(metric):
  opt = bt.reduce_on_plateau()
  params = {"w": jnp.ones(3)}
  with pytest.raises(ValueError, match="value must be a real number"):
    opt.update(params, opt.init(params), params, value=metric)


def test_reduce_on_plateau_without_a_value_says_which_argument_is_missing():
  opt = bt.reduce_on_plateau()
  params = {"w": jnp.ones(3)}
  with pytest.raises(ValueError, match="value must be a real number .* got None"):
    opt.update(params, opt.init(params), params)


def test_a_vector_is_not_a_metric():
  with pytest.raises(ValueError, match="metric must be a scalar metric, got shape"):
    bt.EarlyStopping(patience=1).update(bt.EarlyStopping(patience=1).init(), [0.5, 0.4])


@pytest.mark.parametrize("metric", [3, 0.5, np.float32(0.5), np.int64(2), jnp.asarray(0.5)],
                         ids=repr)
def test_numbers_and_traced_values_are_metrics(metric):
  stopper = bt.EarlyStopping(patience=1)
  assert float(stopper.update(stopper.init(), metric).best) == float(metric)
  assert float(jax.jit(stopper.update)(stopper.init(), metric).best) == float(metric)
  opt = bt.reduce_on_plateau()
  _, state = jax.jit(lambda s, v: opt.update({}, s, value=v))(opt.init({}), metric)
  assert float(state.best) == float(metric)
