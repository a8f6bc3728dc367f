"""Population training: each member equals its configuration trained alone; no recompiles."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import bigtune_jax as bt
from bigtune_jax import data
from bigtune_jax import models
from bigtune_jax import train
from bigtune_jax.tune import population
from tests.utils import assert_trees_close

STEPS, BATCH, EVAL_EVERY = 30, 64, 15  # 19 steps per epoch: the run crosses an epoch
MODEL = models.MLP(hidden=(16,), num_classes=10)
LOSS = train.classification_loss(MODEL)
ALONE_STEP = jax.jit(train.make_train_step(LOSS))  # one compile for every reference run


def momentum_l2(h):
  return optax.chain(bt.l2(h["weight_decay"]), bt.momentum(h["learning_rate"], h["momentum"]))


def adam(h):
  return bt.adam(h["learning_rate"], b1=h["b1"], b2=h["b2"])


@pytest.fixture(scope="module")
def splits():
  return data.load_dataset("digits", seed=0)


def random_hparams(rng, make_optimizer, n):
  if make_optimizer is adam:
    return {"learning_rate": 10 ** rng.uniform(-3, -1.5, n), "b1": rng.uniform(0.8, 0.95, n),
            "b2": rng.uniform(0.9, 0.999, n)}
  return {"learning_rate": 10 ** rng.uniform(-2, -0.5, n), "momentum": rng.uniform(0, 0.95, n),
          "weight_decay": 10 ** rng.uniform(-5, -2, n)}


# The same optimizer for every reference run, its hyperparameters in its state: one compile.
REFERENCE_TX = optax.inject_hyperparams(
    lambda learning_rate, momentum, weight_decay: momentum_l2(
        {"learning_rate": learning_rate, "momentum": momentum, "weight_decay": weight_decay}))(
            learning_rate=0.0, momentum=0.0, weight_decay=0.0)


@functools.lru_cache
def initial_params(seed):
  sample = data.load_dataset("digits", seed=0)["train"]["image"][:1]
  return train.init_params(MODEL, sample, seed)  # compiles on every call: once per seed


def train_alone(splits, h, seed, data_seed, steps):
  """The reference: one configuration, a plain loop over make_train_step."""
  params = initial_params(seed)
  state = train.create_train_state(MODEL, params, REFERENCE_TX, seed=seed)
  state = state.replace(opt_state=state.opt_state._replace(hyperparams=h))
  done, epoch = 0, 0
  while done < steps:
    for batch in splits["train"].batches(BATCH, seed=data_seed, epoch=epoch):
      state, _ = ALONE_STEP(state, batch)
      done += 1
      if done == steps:
        break
    epoch += 1
  return state.params


OPTAX_ADAM = optax.inject_hyperparams(optax.adam)  # hyperparameters in the state: one compile


@jax.jit
def optax_step(params, opt_state, batch):
  grads = jax.grad(lambda p: LOSS(p, batch, jax.random.key(0), True)[0])(params)
  updates, opt_state = OPTAX_ADAM(learning_rate=0.0).update(grads, opt_state, params)
  return optax.apply_updates(params, updates), opt_state


def train_alone_optax(splits, h, steps):
  """The reference for Adam: plain optax, grad and apply_updates."""
  params = initial_params(0)
  opt_state = OPTAX_ADAM(learning_rate=h["learning_rate"], b1=h["b1"], b2=h["b2"]).init(params)
  batches = [b for e in range(2) for b in splits["train"].batches(BATCH, seed=0, epoch=e)]
  for batch in batches[:steps]:
    params, opt_state = optax_step(params, opt_state, batch)
  return params


@pytest.mark.parametrize("make_optimizer", [momentum_l2, adam])
def test_each_member_equals_its_configuration_trained_alone(splits, make_optimizer):
  rng = np.random.default_rng(1)
  hparams = random_hparams(rng, make_optimizer, 3)
  result = population.train_population(MODEL, LOSS, make_optimizer, hparams, splits["train"],
                                       splits["validation"], steps=STEPS, batch_size=BATCH,
                                       eval_every=EVAL_EVERY)
  assert result.steps == STEPS and [row["step"] for row in result.history] == [15, 30]
  for i in range(3):
    h = {k: jnp.float32(v[i]) for k, v in hparams.items()}
    if make_optimizer is adam:
      alone = train_alone_optax(splits, h, STEPS)
    else:
      alone = train_alone(splits, h, 0, 0, STEPS)
    member = jax.tree.map(lambda x, i=i: x[i], result.params)
    assert_trees_close(member, alone, rtol=2e-5, atol=2e-6)
    metrics = train.evaluate(LOSS, alone, splits["validation"], 512)
    np.testing.assert_allclose(result.final["val_loss"][i], metrics["loss"], rtol=1e-5)
    np.testing.assert_allclose(result.final["val_accuracy"][i], metrics["accuracy"])


def test_member_seeds_data_seed_and_chunks(splits):
  hparams = random_hparams(np.random.default_rng(2), momentum_l2, 3)
  result = population.train_population(MODEL, LOSS, momentum_l2, hparams, splits["train"],
                                       splits["validation"], steps=STEPS, batch_size=BATCH,
                                       eval_every=EVAL_EVERY, seed=3, member_seeds=[5, 7, 5],
                                       member_chunk=1)  # one member at a time: lax.map
  for i, member_seed in enumerate((5, 7)):
    h = {k: jnp.float32(v[i]) for k, v in hparams.items()}
    alone = train_alone(splits, h, member_seed, 3, STEPS)
    assert_trees_close(jax.tree.map(lambda x, i=i: x[i], result.params), alone, rtol=2e-5,
                       atol=2e-6)


def test_other_hyperparameter_values_do_not_recompile(splits):
  traces = {"optimizer": 0, "loss": 0}
  model = models.MLP(hidden=(8,), num_classes=10)  # programs no other test has compiled
  base_loss = train.classification_loss(model)

  def loss_fn(*args):
    traces["loss"] += 1  # runs only while jax traces
    return base_loss(*args)

  def make_optimizer(h):
    # Traced calls only: train_population also builds each member once on the host with
    # concrete values, to check them.
    traces["optimizer"] += isinstance(next(iter(h.values())), jax.core.Tracer)
    return momentum_l2(h)

  def run(hparams):
    return population.train_population(model, loss_fn, make_optimizer, hparams,
                                       splits["train"], splits["validation"], steps=10,
                                       batch_size=32, eval_every=5)

  rng = np.random.default_rng(3)
  first = run(random_hparams(rng, momentum_l2, 4))
  assert traces["optimizer"] > 0 and traces["loss"] > 0
  seen = dict(traces)
  second = run(random_hparams(rng, momentum_l2, 4))
  assert traces == seen  # hit the jit cache: nothing traced again
  assert not np.allclose(first.final["val_loss"], second.final["val_loss"])


def test_on_eval_stops_members(splits):
  hparams = random_hparams(np.random.default_rng(4), momentum_l2, 3)
  calls = []

  def on_eval(step, metrics):
    calls.append((step, metrics["val_accuracy"].shape))
    return np.array([True, False, False]) if step == EVAL_EVERY else np.ones(3, bool)

  kwargs = dict(batch_size=BATCH, eval_every=EVAL_EVERY)
  result = population.train_population(MODEL, LOSS, momentum_l2, hparams, splits["train"],
                                       splits["validation"], steps=4 * EVAL_EVERY,
                                       on_eval=on_eval, **kwargs)
  assert calls == [(15, (3,)), (30, (3,))] and result.steps == 30
  assert result.stopped.all()
  short = population.train_population(MODEL, LOSS, momentum_l2, hparams, splits["train"],
                                      splits["validation"], steps=EVAL_EVERY, **kwargs)
  assert_trees_close(jax.tree.map(lambda x: x[0], result.params),
                     jax.tree.map(lambda x: x[0], short.params), rtol=0, atol=0)
  assert not np.allclose(result.params["head"]["kernel"][1], short.params["head"]["kernel"][1])


@pytest.mark.parametrize("kwargs, match", [
    (dict(hparams={}), "hparams must be a non-empty"),
    (dict(hparams={"learning_rate": [0.1, 0.2], "momentum": [0.9]}), "same length"),
    (dict(hparams={"learning_rate": [0.1, float("nan")]}), r"hparams\['learning_rate'\]"),
    (dict(member_seeds=[1, 2, 3]), "member_seeds"),
    (dict(steps=0), "steps"),
    (dict(eval_every=0), "eval_every"),
    (dict(batch_size=5000), "larger than the training set"),
    (dict(input_key="pixels"), "input_key"),
    (dict(member_chunk=3), "member_chunk must be a divisor"),
])
def test_bad_arguments_raise_before_work(splits, kwargs, match):
  args = dict(hparams={"learning_rate": [0.1, 0.2]}, steps=5, batch_size=BATCH)
  args.update(kwargs)
  hparams = args.pop("hparams")
  with pytest.raises(ValueError, match=match):
    population.train_population(MODEL, LOSS, lambda h: bt.sgd(h["learning_rate"]), hparams,
                                splits["train"], splits["validation"], **args)
