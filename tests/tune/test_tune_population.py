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
from bigtune_jax.tune.population import members
from tests.utils import assert_trees_close
from tests.utils import count_compiles

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


def test_compaction_of_whole_models_equals_masking_at_fewer_member_steps(splits):
  hparams = random_hparams(np.random.default_rng(5), momentum_l2, 3)
  stop_first = lambda step, metrics: np.array([step == EVAL_EVERY, False, False])
  runs = {compact: population.train_population(
      MODEL, LOSS, momentum_l2, hparams, splits["train"], splits["validation"], steps=STEPS,
      batch_size=BATCH, eval_every=EVAL_EVERY, on_eval=stop_first, compact=compact)
          for compact in (True, False)}
  compacted, masked = runs[True], runs[False]
  assert compacted.program_sizes == [3, 2] and compacted.member_steps == 45 + 30
  assert masked.program_sizes == [3, 3] and masked.member_steps == 90
  np.testing.assert_array_equal(compacted.stopped, [True, False, False])
  assert np.isnan(compacted.history[1]["val_loss"][0])  # not trained after its stop
  assert np.isfinite(compacted.history[1]["val_loss"][1:]).all()
  np.testing.assert_allclose(compacted.final["val_loss"], masked.final["val_loss"], rtol=1e-5)
  np.testing.assert_allclose(compacted.final["val_loss"][0],
                             compacted.history[0]["val_loss"][0])  # its last evaluation
  assert_trees_close(compacted.params, masked.params, rtol=2e-5, atol=2e-6)
  for i in range(3):  # member(i) is the i-th slice of the stacked parameters
    assert_trees_close(compacted.member(i), jax.tree.map(lambda x, i=i: x[i], masked.params),
                       rtol=2e-5, atol=2e-6)
  with pytest.raises(ValueError, match=r"member index must be an integer in \[0, 3\), got 3"):
    compacted.member(3)


def test_initial_state_is_the_members_start_compiled_once(splits):
  traces = []

  def make_optimizer(h):
    traces.append(isinstance(h["learning_rate"], jax.core.Tracer))
    return momentum_l2(h)

  rng = np.random.default_rng(6)
  h = {k: float(v[0]) for k, v in random_hparams(rng, momentum_l2, 1).items()}
  seed = int(rng.integers(100))
  state = bt.tune.initial_state(MODEL, LOSS, make_optimizer, h, splits["train"], seed=seed)
  # init_params' draw (compiled at another XLA level: within an ulp) ...
  assert_trees_close(state.params, initial_params(seed), rtol=1e-6, atol=1e-7)
  fresh = train.create_train_state(MODEL, initial_params(seed), momentum_l2(h), seed=seed)
  assert_trees_close(state.opt_state, fresh.opt_state, rtol=0, atol=0)
  np.testing.assert_array_equal(state.rng, fresh.rng)
  traced = sum(traces)
  other = {k: v * 0.5 for k, v in h.items()}
  again = bt.tune.initial_state(MODEL, LOSS, make_optimizer, other, splits["train"], seed=seed + 1)
  assert sum(traces) == traced  # other values and seed: the init already compiled
  # ... and bit for bit a population's member with that seed (the same program)
  stacked = members.init_states(members.WholeModels(MODEL, LOSS), make_optimizer,
                                {k: np.float32([h[k], v]) for k, v in other.items()},
                                np.int32([seed, seed + 1]),
                                jnp.asarray(splits["train"]["image"][:1]), None)
  assert sum(traces) == traced  # two members: the same program called twice, no new trace
  assert_trees_close(jax.tree.map(lambda x: x[1], stacked.params), again.params, rtol=0, atol=0)
  steps = jax.jit(train.make_train_step(LOSS))  # fit can continue from it: tx is built
  assert np.isfinite(steps(state, next(splits["train"].batches(BATCH, seed=0)))[1]["loss"])
  with pytest.raises(ValueError, match="base_params is only for a finetune.LoRA"):
    bt.tune.initial_state(MODEL, LOSS, make_optimizer, h, splits["train"], base_params={})


def test_language_model_token_ids_are_checked_naming_the_split():
  model = models.GPT(models.GPTConfig(vocab_size=32, block_size=8, n_layer=1, n_head=2,
                                      n_embd=16, dropout=0.0))
  rng = np.random.default_rng(7)
  tokens = rng.integers(0, 32, (24, 9)).astype(np.int32)
  bad = int(rng.integers(32, 1000))
  tokens[20, 3] = bad
  make = lambda rows: data.ArrayDataset({"inputs": rows[:, :-1], "targets": rows[:, 1:]})
  traced = []

  def make_optimizer(h):
    traced.append(isinstance(h["learning_rate"], jax.core.Tracer))
    return bt.sgd(h["learning_rate"])

  with pytest.raises(ValueError, match=rf"val_data\['inputs'\]: token id {bad} at position "
                                       r"\(4, 3\) is outside the model's vocabulary \[0, 32\)"):
    population.train_population(model, train.language_model_loss(model), make_optimizer,
                                {"learning_rate": [0.1, 0.2]}, make(tokens[:16]),
                                make(tokens[16:]), steps=2, batch_size=4)
  tokens[20, 3], tokens[2, 8] = 0, -1
  with pytest.raises(ValueError, match=r"train_data\['targets'\]: token id -1 at position "
                                       r"\(2, 7\)"):
    population.train_population(model, train.language_model_loss(model), make_optimizer,
                                {"learning_rate": [0.1, 0.2]}, make(tokens[:16]),
                                make(tokens[16:]), steps=2, batch_size=4)
  assert not any(traced)  # refused before any program was traced


def test_refilled_members_each_equal_their_run_alone(splits):
  # 25 steps a member, evaluated every 10: a member ends inside an interval (masked there)
  rng = np.random.default_rng()
  hparams = random_hparams(rng, momentum_l2, 4)  # members 0, 1 start; 2 and 3 refill
  first = {k: v[:2] for k, v in hparams.items()}
  proposals = [population.Refill({k: v[2:3] for k, v in hparams.items()}, seeds=[5]),
               {k: v[3:] for k, v in hparams.items()}]  # a bare mapping: the run's seed
  calls = []

  def refill(step, free):
    calls.append((step, free))
    return proposals.pop(0) if proposals else None

  def on_eval(step, metrics):
    assert metrics["val_loss"].shape == metrics["member_step"].shape
    return metrics["member_step"] == [10, np.nan, np.nan, np.nan][:len(metrics["val_loss"])]

  result = population.train_population(MODEL, LOSS, momentum_l2, first, splits["train"],
                                       splits["validation"], steps=25, batch_size=BATCH,
                                       eval_every=10, on_eval=on_eval, refill=refill)
  assert calls == [(10, 1), (30, 1), (40, 1), (50, 1), (60, 2)]
  np.testing.assert_array_equal(result.started, [0, 0, 10, 30])
  np.testing.assert_array_equal(result.trained, [10, 25, 25, 25])
  np.testing.assert_array_equal(result.stopped, [True, False, False, False])
  assert result.program_sizes == [2] * 6 and result.steps == 25
  assert [row["step"] for row in result.history] == [10, 20, 30, 40, 50, 60]
  np.testing.assert_array_equal(result.history[2]["member_step"], [np.nan, 25, 20, np.nan])
  for name, values in hparams.items():
    np.testing.assert_array_equal(result.hparams[name], np.float32(values))
  for i, (seed, steps) in enumerate([(0, 10), (0, 25), (5, 25), (0, 25)]):
    h = {k: jnp.float32(v[i]) for k, v in hparams.items()}
    alone = train_alone(splits, h, seed, 0, steps)
    assert_trees_close(result.member(i), alone, rtol=2e-5, atol=2e-6)
    metrics = train.evaluate(LOSS, alone, splits["validation"], 512)
    np.testing.assert_allclose(result.final["val_loss"][i], metrics["loss"], rtol=1e-5)
    last = [row["val_loss"][i] for row in result.history if np.isfinite(row["val_loss"][i])]
    assert last[-1] == result.final["val_loss"][i] and len(last) == -(-steps // 10)


def test_refill_compiles_each_program_once_and_a_second_run_nothing(splits):
  model = models.MLP(hidden=(12,), num_classes=10)  # programs no other test has compiled
  loss_fn = train.classification_loss(model)
  rng = np.random.default_rng()

  def run(total):
    started = [3]

    def refill(step, free):  # one or two new members at a time, up to ``total``
      k = min(free, 2, total - started[0])
      started[0] += k
      return random_hparams(rng, momentum_l2, k) if k else None

    stop_worst = lambda step, m: m["val_loss"] == np.nanmax(m["val_loss"])  # a rung
    return population.train_population(model, loss_fn, momentum_l2,
                                       random_hparams(rng, momentum_l2, 3), splits["train"],
                                       splits["validation"], steps=12, batch_size=32,
                                       eval_every=5, on_eval=stop_worst, refill=refill)

  with count_compiles() as counts:
    first = run(8)
  assert len(first.stopped) == 8 and first.stopped.any() and set(first.program_sizes) == {3}
  for program in ("train_members", "evaluate_members", "_init_member"):
    assert counts["compile", f"jit({program})"] == 1, (program, counts)
  with count_compiles() as counts:
    second = run(6)  # the same structure and size, other values and member count
  assert len(second.stopped) == 6 and not counts, counts
  assert np.isfinite(second.final["val_loss"]).all()


def test_bad_refill_is_named_before_its_members_start(splits):
  hparams = random_hparams(np.random.default_rng(), momentum_l2, 2)
  one = {k: v[:1] for k, v in hparams.items()}
  run = lambda refill, **kw: population.train_population(
      MODEL, LOSS, momentum_l2, hparams, splits["train"], splits["validation"], steps=10,
      batch_size=BATCH, eval_every=10, refill=refill, **kw)  # the program of the test above
  with pytest.raises(ValueError, match="refill must be None or a callable"):
    run("asha")
  with pytest.raises(ValueError, match=r"refill and explore \(PBT\) cannot be combined"):
    population.run_population(members.WholeModels(MODEL, LOSS), momentum_l2, hparams,
                              splits["train"], splits["validation"], steps=4, batch_size=BATCH,
                              refill=lambda step, free: None, explore=object())
  for answer, match in [
      ({"lr": [0.1]}, r"refill\(10, 2\) returned a bad proposal: hparams names must be the "
                      r"run's \['learning_rate', 'momentum', 'weight_decay'\], got \['lr'\]"),
      ({k: np.repeat(v, 3) for k, v in one.items()},
       r"refill\(10, 2\) .* at most 2 new members .* got 3"),
      (one | {"momentum": [1.5]}, r"refill\(10, 2\) .* member 0 of the population"),
      (population.Refill(one, seeds=[-1]), r"refill\(10, 2\) .*: seeds must be 1 integers"),
      ([0.1], r"refill\(10, 2\) must return None, a Refill or a mapping")]:
    with pytest.raises(ValueError, match=match):
      run(lambda step, free, answer=answer: answer)
  with pytest.raises(ValueError, match=r"on_eval must return None or a bool mask of the 2 "):
    run(lambda step, free: None, on_eval=lambda step, metrics: [True])
