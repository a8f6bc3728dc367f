"""Adapter populations (tune.train_adapter_population): every member equals its adapter
trained alone; pruned members leave the program (compaction), each as it stopped, at fewer
member-steps; a second population of a structure compiles nothing."""

import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import bigtune_jax as bt
from bigtune_jax import data
from bigtune_jax import models
from bigtune_jax import train
from bigtune_jax.finetune import Adapters
from bigtune_jax.finetune import LoRA
from bigtune_jax.tune import train_adapter_population
from tests.utils import count_compiles

MODEL = models.Llama(models.LlamaConfig.tiny())
PARAMS = MODEL.init(jax.random.key(0), jnp.zeros((1, 1), jnp.int32))["params"]
LOSS = train.language_model_loss(MODEL)
LORA = LoRA(MODEL, targets=("q_proj", "v_proj", "down_proj"), rank=4, alpha=8.0)
_TOKENS = np.random.default_rng(0).integers(0, 64, (80, 17)).astype(np.int32)
TRAIN = data.ArrayDataset({"inputs": _TOKENS[:64, :-1], "targets": _TOKENS[:64, 1:]})
VAL = data.ArrayDataset({"inputs": _TOKENS[64:, :-1], "targets": _TOKENS[64:, 1:]})
HPARAMS = {"learning_rate": [1e-2, 3e-3, 3e-2, 1e-2], "weight_decay": [0.0, 0.1, 0.0, 0.01],
           "alpha": [8.0, 16.0, 4.0, 2.0], "rank": [4, 3, 1, 2]}


def make_optimizer(h):
  return optax.adamw(h["learning_rate"], weight_decay=h["weight_decay"])


@functools.lru_cache
def _alone(i, steps, eval_every):
  """Member i's adapter trained by itself: a LoRA of its own rank and alpha, fit's batches."""
  h = {k: v[i] for k, v in HPARAMS.items()}
  lora = LoRA(MODEL, targets=LORA.targets, rank=h["rank"], alpha=h["alpha"])
  state = train.create_train_state(MODEL, lora.init(jax.random.key(0), PARAMS),
                                   make_optimizer(h), seed=0)
  loss = lora.loss(LOSS, PARAMS)
  step = jax.jit(train.make_train_step(loss))
  evaluate = jax.jit(lambda p, b: loss(p, b, jax.random.key(0), False)[0])
  batches = itertools.chain.from_iterable(TRAIN.batches(8, seed=0, epoch=e)
                                          for e in itertools.count())
  val = {k: jnp.asarray(a) for k, a in VAL.arrays.items()} | {"mask": jnp.ones(len(VAL), bool)}
  curve, losses = [], []
  for t in range(steps):
    batch = {k: jnp.asarray(a) for k, a in next(batches).items()}
    state, metrics = step(state, batch)
    losses.append(float(metrics["loss"]))
    if (t + 1) % eval_every == 0:
      curve.append((np.mean(losses), float(evaluate(state.params, val))))
      losses = []
  return np.asarray(curve), state.params


@pytest.fixture(scope="module")
def full():
  """The population trained 8 steps, evaluated every 4."""
  return train_adapter_population(LORA, LOSS, PARAMS, make_optimizer, HPARAMS, TRAIN, VAL,
                                  steps=8, batch_size=8, eval_every=4)


def test_every_member_equals_its_adapter_trained_alone(full):
  result = full
  assert result.program_sizes == [4, 4] and result.member_steps == 32
  i = 1  # rank 3 of a stored 4, its own alpha, learning rate and weight decay
  curve, params = _alone(i, 8, 4)
  ours = np.asarray([(row["train_loss"][i], row["val_loss"][i]) for row in result.history])
  np.testing.assert_allclose(ours, curve, rtol=1e-5)
  member = result.member(i)  # sliced to its own rank: exactly the adapter trained alone
  assert isinstance(member, Adapters) and (member.rank, member.alpha) == (3, 16.0)
  assert jax.tree.structure(member.params) == jax.tree.structure(params)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
               member.params, params)


def test_pruned_members_leave_the_program_each_as_it_stopped(full):
  def prune_two(step, metrics):
    assert metrics["val_loss"].shape == (4,)
    return np.asarray([False, True, False, True]) if step == 4 else None

  pruned = train_adapter_population(
      LORA, LOSS, PARAMS, make_optimizer, HPARAMS, TRAIN, VAL, steps=8, batch_size=8,
      eval_every=4, on_eval=prune_two)
  # the members stopped at step 4: a population trained 4 steps (the program of ``full``)
  short = train_adapter_population(LORA, LOSS, PARAMS, make_optimizer, HPARAMS, TRAIN, VAL,
                                   steps=4, batch_size=8, eval_every=4)
  assert pruned.program_sizes == [4, 2] and pruned.member_steps == 16 + 2 * 4
  np.testing.assert_array_equal(pruned.stopped, [False, True, False, True])
  expected_final = np.where(pruned.stopped, short.final["val_loss"], full.final["val_loss"])
  np.testing.assert_allclose(pruned.final["val_loss"], expected_final, rtol=1e-5)
  for row in pruned.history[1:]:
    assert np.isnan(row["val_loss"][[1, 3]]).all() and np.isfinite(row["val_loss"][[0, 2]]).all()
  for i in range(4):  # the survivors as in ``full``, the pruned as they stopped
    expected = (short if pruned.stopped[i] else full).member(i).params
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
                 pruned.member(i).params, expected)


def test_a_second_population_of_the_structure_traces_and_compiles_nothing(full):
  hparams = {k: list(np.random.default_rng().permutation(v)) for k, v in HPARAMS.items()}
  with count_compiles() as counts:
    again = train_adapter_population(LORA, LOSS, PARAMS, make_optimizer, hparams, TRAIN, VAL,
                                     steps=8, batch_size=8, eval_every=4)
  assert not counts, counts  # init, adapted layers, programs: all served from the caches
  assert not np.allclose(again.final["val_loss"], full.final["val_loss"])


def test_a_refilled_adapter_equals_its_adapter_trained_alone():
  first = {k: [v[0], v[2]] for k, v in HPARAMS.items()}
  later = [{k: [v[1], v[3]] for k, v in HPARAMS.items()}]  # they take the freed slots
  result = train_adapter_population(
      LORA, LOSS, PARAMS, make_optimizer, first, TRAIN, VAL, steps=8, batch_size=8,
      eval_every=4, refill=lambda step, free: later.pop() if later else None)
  np.testing.assert_array_equal(result.started, [0, 0, 8, 8])
  # HPARAMS' member 1 (rank 3), started at the program's step 8 on the batches of its own
  # steps 0-7: as trained alone (the reference of the first test)
  curve, params = _alone(1, 8, 4)
  ours = np.asarray([(row["train_loss"][2], row["val_loss"][2]) for row in result.history[2:]])
  np.testing.assert_allclose(ours, curve, rtol=1e-5)
  member = result.member(2)
  assert (member.rank, member.alpha) == (3, 16.0)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
               member.params, params)


def test_bad_population_settings_are_named_before_any_work():
  run = lambda **kw: train_adapter_population(
      LORA, LOSS, PARAMS, make_optimizer, {**HPARAMS, **kw}, TRAIN, VAL, steps=2,
      batch_size=8)
  with pytest.raises(ValueError, match=r"hparams\['rank'\] must be integers in \[1, 4\]"):
    run(rank=[4, 5, 1, 1])
  with pytest.raises(ValueError, match=r"hparams\['rank'\] must be integers"):
    run(rank=[1.5, 2, 1, 1])
  with pytest.raises(ValueError, match=r"hparams\['alpha'\] must be > 0"):
    run(alpha=[1.0, 0.0, 1.0, 1.0])
  with pytest.raises(ValueError, match="member 1 of the population"):
    train_adapter_population(
        LORA, LOSS, PARAMS, lambda h: bt.momentum(h["learning_rate"], h["momentum"]),
        {"learning_rate": [0.1, 0.1], "momentum": [0.9, 1.5]}, TRAIN, VAL, steps=2,
        batch_size=8)


def test_pbt_explores_adapter_populations_over_the_frozen_base():
  rates = {"learning_rate": [1e-5, 1e-5, 1e-5, 3e-2], "weight_decay": [0.0] * 4,
           "alpha": [8.0] * 4, "rank": [4, 4, 2, 2]}
  mutations = {"learning_rate": bt.tune.LogUniform(1e-5, 1e-1)}
  run = lambda steps: bt.tune.pbt(
      LORA, LOSS, make_optimizer, rates, mutations, TRAIN, VAL, steps=steps, batch_size=8,
      perturbation_interval=4, metric="val_loss", quantile_fraction=0.5,
      resample_probability=0.0, base_params=PARAMS)
  result = run(8)
  source = result.history[0]["source"]
  assert source[3] == 3 and (source != np.arange(4)).sum() == 2  # the best is kept, 2 copy
  from_best = np.flatnonzero((source == 3) & (np.arange(4) != 3))
  assert len(from_best) >= 1
  np.testing.assert_allclose(result.hparams["learning_rate"][from_best] / 3e-2, 1.0, atol=0.21)
  assert (result.final["val_loss"][from_best] < result.history[0]["val_loss"][from_best]).all()
  assert jax.tree.structure(result.params) == jax.tree.structure(
      LORA.init(jax.random.key(0), PARAMS))
  for i in range(4):  # through the adapter path: Adapters at the rank each member ends with
    member, rank = result.member(i), int(result.hparams["rank"][i])
    assert isinstance(member, Adapters) and (member.rank, member.alpha) == (rank, 8.0)
    assert member.params["layers"]["self_attn"]["q_proj"]["lora_a"].shape[-1] == rank
  assert result.member(3).rank == 2  # the best, kept
  kwargs = dict(steps=4, batch_size=8, perturbation_interval=2, metric="val_loss")
  with pytest.raises(ValueError, match="base_params: the frozen parameters the LoRA"):
    bt.tune.pbt(LORA, LOSS, make_optimizer, rates, mutations, TRAIN, VAL, **kwargs)
  with pytest.raises(ValueError, match="base_params is only for a finetune.LoRA"):
    bt.tune.pbt(MODEL, LOSS, make_optimizer, rates, mutations, TRAIN, VAL,
                base_params=PARAMS, **kwargs)
  with pytest.raises(ValueError, match="model must be a flax.linen.Module .* or a "
                                       "bigtune_jax.finetune.LoRA with base_params"):
    bt.tune.pbt(LORA.targets, LOSS, make_optimizer, rates, mutations, TRAIN, VAL,
                base_params=PARAMS, **kwargs)
  with pytest.raises(ValueError, match="'rank' cannot explore"):
    bt.tune.pbt(LORA, LOSS, make_optimizer, rates, {"rank": bt.tune.Uniform(1, 4)}, TRAIN,
                VAL, steps=4, batch_size=8, perturbation_interval=2, metric="val_loss",
                base_params=PARAMS)


def test_token_ids_outside_the_vocabulary_are_refused_naming_the_split():
  vocab = MODEL.config.vocab_size
  tokens = np.random.default_rng(8).integers(0, vocab, (24, 17)).astype(np.int32)
  tokens[3, 5] = vocab + 7
  bad = data.ArrayDataset({"inputs": tokens[:, :-1], "targets": tokens[:, 1:]})
  with pytest.raises(ValueError, match=rf"train_data\['inputs'\]: token id {vocab + 7} at "
                                       r"position \(3, 5\)"):
    train_adapter_population(LORA, LOSS, PARAMS, make_optimizer, HPARAMS, bad, VAL, steps=2,
                             batch_size=8)
  with pytest.raises(ValueError, match=r"val_data\['inputs'\]: token id"):
    train_adapter_population(LORA, LOSS, PARAMS, make_optimizer, HPARAMS, TRAIN, bad, steps=2,
                             batch_size=8)
