"""bt.finetune: freezing, per-group learning rates, LoRA, loading a pretrained checkpoint."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import bigtune_jax as bt
from bigtune_jax import data
from bigtune_jax import finetune as ft
from bigtune_jax import models
from bigtune_jax import train
from tests.utils import assert_trees_close


def _bits(tree):
  return [np.asarray(x).tobytes() for x in jax.tree.leaves(tree)]


def _mlp_params(widths=(12, 16, 8, 3), seed=0):
  """Parameters of ``models.MLP(hidden=widths[1:-1], num_classes=widths[-1])`` for inputs of
  ``widths[0]`` features, drawn in NumPy (no XLA compilation: fast tests)."""
  rng = np.random.default_rng(seed)
  names = [f"hidden_{i}" for i in range(len(widths) - 2)] + ["head"]
  return {name: {"kernel": jnp.asarray(rng.standard_normal((n_in, n_out)) / np.sqrt(n_in),
                                       jnp.float32),
                 "bias": jnp.asarray(0.1 * rng.standard_normal(n_out), jnp.float32)}
          for name, n_in, n_out in zip(names, widths[:-1], widths[1:])}


def _random_batch(rng, n=32, features=12, classes=3):
  return {"image": jnp.asarray(rng.standard_normal((n, features)), jnp.float32),
          "label": jnp.asarray(rng.integers(0, classes, n), jnp.int32)}


def _train(state, step, batches):
  for batch in batches:
    state, _ = step(state, batch)
  return state


# --- freeze -------------------------------------------------------------------------------


def test_frozen_parameters_stay_bit_for_bit_through_many_steps():
  rng = np.random.default_rng(0)
  model = models.MLP(hidden=(16, 8), num_classes=3)
  params = _mlp_params(seed=0)
  backbone = {k: v for k, v in params.items() if k != "head"}
  before, head_before = _bits(backbone), jax.tree.map(np.asarray, params["head"])
  # AdamW decays every parameter it sees: a frozen one must not even be decayed.
  tx = ft.freeze(optax.adamw(0.05, weight_decay=0.1), trainable=("head",))
  state = train.create_train_state(model, params, tx)
  step = jax.jit(train.make_train_step(train.classification_loss(model)))
  state = _train(state, step, [_random_batch(rng) for _ in range(60)])
  assert _bits({k: v for k, v in state.params.items() if k != "head"}) == before
  for new, old in zip(jax.tree.leaves(state.params["head"]), jax.tree.leaves(head_before)):
    assert np.all(np.asarray(new) != old)  # every head entry moved
  # optax.masked is not a freeze: it passes the masked-out gradients through as updates.
  grads = jax.tree.map(jnp.ones_like, params)
  masked = optax.masked(optax.sgd(0.1), {"head": {"bias": True, "kernel": True},
                                         "hidden_0": {"bias": False, "kernel": False},
                                         "hidden_1": {"bias": False, "kernel": False}})
  updates, _ = masked.update(grads, masked.init(params), params)
  assert np.all(np.asarray(updates["hidden_0"]["kernel"]) == 1.0)


def test_freeze_selections_agree_and_keep_no_state_for_frozen():
  params = {"body": {"kernel": jnp.ones((3, 2)), "bias": jnp.ones(2)},
            "head": {"kernel": jnp.ones((2, 2))}}
  grads = jax.tree.map(lambda p: jnp.full_like(p, 0.5), params)
  mask = {"body": {"kernel": False, "bias": False}, "head": {"kernel": True}}
  outs = []
  for trainable in ("head", ("head",), lambda p: p.startswith("head/"), mask):
    tx = ft.freeze(optax.adam(0.1), trainable)
    state = tx.init(params)
    updates, _ = tx.update(grads, state, params)
    outs.append(jax.tree.map(np.asarray, updates))
    adam_mu = state.inner_states["train"].inner_state[0].mu
    assert isinstance(adam_mu["body"]["kernel"], optax.MaskedNode)
  for out in outs[1:]:
    jax.tree.map(np.testing.assert_array_equal, out, outs[0])
  assert np.all(outs[0]["body"]["kernel"] == 0) and np.all(outs[0]["head"]["kernel"] != 0)
  assert ft.trainable_parameter_count(params, "head") == 4
  assert ft.trainable_parameter_count(params) == 12


@pytest.mark.parametrize("trainable, match", [
    (("heads",), "trainable: no parameter path is or starts with 'heads'"),
    (lambda path: False, "trainable selects no parameter"),
    ({"head": True}, "trainable: a mask must have the parameters' tree structure"),
])
def test_freeze_rejects_bad_selections(trainable, match):
  params = {"body": {"kernel": jnp.ones((3, 2))}, "head": {"kernel": jnp.ones((2, 2))}}
  with pytest.raises(ValueError, match=match):
    ft.freeze(optax.sgd(0.1), trainable).init(params)


def test_freeze_rejects_a_selection_of_the_wrong_type():
  with pytest.raises(ValueError, match="trainable must be a predicate"):
    ft.freeze(optax.sgd(0.1), 3)


# --- param_groups -------------------------------------------------------------------------


def test_param_groups_match_a_numpy_reference_per_group(x64):
  rng = np.random.default_rng(1)
  params = {"embed": {"table": rng.standard_normal((4, 3))},
            "body": {"kernel": rng.standard_normal((3, 3)), "bias": rng.standard_normal(3)},
            "head": {"kernel": rng.standard_normal((3, 2))}}
  rates = {"body": 0.05, "head": 0.3, "embed": None}
  label = lambda path: path.split("/")[0]
  gamma = 0.9
  tx = ft.param_groups(rates, label, optimizer=functools.partial(bt.momentum, gamma=gamma))
  jax_params = jax.tree.map(jnp.asarray, params)
  state = tx.init(jax_params)
  update = jax.jit(tx.update)
  expected = jax.tree.map(np.copy, params)
  velocity = jax.tree.map(np.zeros_like, params)
  for _ in range(6):
    grads = jax.tree.map(lambda p: rng.standard_normal(p.shape), params)
    updates, state = update(jax.tree.map(jnp.asarray, grads), state, jax_params)
    jax_params = optax.apply_updates(jax_params, updates)
    for group, inner in expected.items():  # v <- gamma v + lr g; w <- w - v (per group lr)
      for name in inner:
        if rates[group] is None:
          continue
        velocity[group][name] = gamma * velocity[group][name] + rates[group] * grads[group][name]
        inner[name] = inner[name] - velocity[group][name]
  assert_trees_close(jax.tree.map(np.asarray, jax_params), expected, rtol=1e-12, atol=1e-12)
  np.testing.assert_array_equal(jax_params["embed"]["table"], params["embed"]["table"])


@pytest.mark.parametrize("rates, labels, match", [
    ({"backbone": 0.1}, lambda p: "head" if p.startswith("head") else "backbone",
     "labels: parameter 'head/kernel' is in group 'head', which learning_rates lacks"),
    ({"backbone": 0.1, "head": 0.1, "extra": 0.1},
     lambda p: "head" if p.startswith("head") else "backbone",
     "learning_rates: group 'extra' has no parameter"),
    ({"backbone": 0.1}, {"backbone": "backbone"}, "labels must be a function path -> group"),
])
def test_param_groups_reject_unknown_or_unused_groups(rates, labels, match):
  params = {"body": {"kernel": jnp.ones((3, 2))}, "head": {"kernel": jnp.ones((2, 2))}}
  with pytest.raises(ValueError, match=match):
    ft.param_groups(rates, labels).init(params)


@pytest.mark.parametrize("rates, match", [
    ({"a": -1.0}, r"learning_rates\['a'\] must be a finite number >= 0"),
    ({}, "learning_rates must be a non-empty mapping"),
])
def test_param_groups_reject_bad_rates_at_construction(rates, match):
  with pytest.raises(ValueError, match=match):
    ft.param_groups(rates, lambda p: "a")


# --- LoRA ---------------------------------------------------------------------------------


def _mlp_lora(widths=(12, 16, 8, 3), seed=0, **kwargs):
  """An MLP, its parameters, an input batch, and ``LoRA(**kwargs)`` on it."""
  model = models.MLP(hidden=widths[1:-1], num_classes=widths[-1])
  x = jnp.asarray(np.random.default_rng(seed).standard_normal((5, widths[0])), jnp.float32)
  return model, _mlp_params(widths, seed), x, ft.LoRA(model, **kwargs)


def test_lora_with_zero_b_is_the_base_model_and_also_train_copies_the_head():
  model, params, x, lora = _mlp_lora(seed=2, targets=("hidden_0", "hidden_1"), rank=4,
                                     alpha=8.0, also_train=("head",))
  tree = lora.init(jax.random.key(3), params, x)
  assert set(tree) == {"hidden_0", "hidden_1", "head"}
  assert set(tree["hidden_0"]) == {"lora_a", "lora_b"} and set(tree["head"]) == {"kernel", "bias"}
  assert not np.any(np.asarray(tree["hidden_0"]["lora_b"]))
  assert np.any(np.asarray(tree["hidden_0"]["lora_a"]))
  assert _bits(tree["head"]) == _bits(params["head"])
  assert tree["head"]["kernel"] is not params["head"]["kernel"]  # a copy: fit donates
  merged = lora.merge(params, tree)
  assert _bits(merged) == _bits(params)
  np.testing.assert_array_equal(lora.apply(params, tree, x), model.apply({"params": params}, x))
  # r (in + out) per adapted layer, plus the head trained in full.
  assert ft.adapter_parameter_count(tree) == 4 * (12 + 16) + 4 * (16 + 8) + 8 * 3 + 3
  assert ft.adapter_parameter_count(ft.Adapters(tree, rank=4, alpha=8.0)) == 235


def test_lora_merged_kernel_is_w_plus_alpha_over_r_a_b_and_the_trained_head(x64):
  rng = np.random.default_rng(4)
  model, params, x, lora = _mlp_lora((7, 5, 2), seed=4, targets="hidden_0", rank=3,
                                     alpha=6.0, also_train="head")
  params = jax.tree.map(lambda v: jnp.asarray(v, jnp.float64), params)
  a, b = rng.standard_normal((7, 3)), rng.standard_normal((3, 5))
  head = {"kernel": rng.standard_normal((5, 2)), "bias": rng.standard_normal(2)}
  tree = {"hidden_0": {"lora_a": jnp.asarray(a), "lora_b": jnp.asarray(b)},
          "head": jax.tree.map(jnp.asarray, head)}
  merged = jax.jit(lora.merge)(params, tree)
  np.testing.assert_allclose(merged["hidden_0"]["kernel"],
                             np.asarray(params["hidden_0"]["kernel"]) + (6.0 / 3) * (a @ b),
                             rtol=1e-12, atol=1e-12)
  np.testing.assert_array_equal(merged["hidden_0"]["bias"], params["hidden_0"]["bias"])
  jax.tree.map(np.testing.assert_array_equal, merged["head"], head)
  np.testing.assert_allclose(model.apply({"params": merged}, x.astype(jnp.float64)),
                             lora.apply(params, tree, x.astype(jnp.float64)), rtol=1e-12)
  # Adapters carry their own alpha (and rank): the LoRA's are not used for them.
  own = lora.merge(params, ft.Adapters(tree, rank=3, alpha=1.5))
  np.testing.assert_allclose(own["hidden_0"]["kernel"],
                             np.asarray(params["hidden_0"]["kernel"]) + (1.5 / 3) * (a @ b),
                             rtol=1e-12, atol=1e-12)


def test_lora_training_moves_only_the_adapters_and_the_head():
  rng = np.random.default_rng(6)
  model, params, x, lora = _mlp_lora((12, 16, 3), seed=6, targets="hidden_0", rank=2,
                                     alpha=4.0, also_train=("head",))
  base_bits = _bits(params)
  tree = lora.init(jax.random.key(7), params, x)
  initial = jax.tree.map(np.asarray, tree)
  loss_fn = lora.loss(train.classification_loss(model), params)
  state = train.create_train_state(model, tree, optax.adam(0.02))
  # Adam holds two moments for what trains (A, B, the head), nothing for the frozen base.
  moments = sum(x.size for x in jax.tree.leaves(state.opt_state) if x.ndim > 0)
  assert moments == 2 * ft.adapter_parameter_count(tree) == 2 * (2 * (12 + 16) + 16 * 3 + 3)
  batches = [_random_batch(rng) for _ in range(30)]
  loss_of = jax.jit(lambda p: loss_fn(p, batches[0], jax.random.key(0), False)[0])
  first = loss_of(tree)
  trained = _train(state, jax.jit(train.make_train_step(loss_fn)), batches).params
  assert jax.tree.structure(trained) == jax.tree.structure(initial)
  assert np.all(np.asarray(trained["hidden_0"]["lora_b"]) != 0)
  assert not np.array_equal(trained["hidden_0"]["lora_a"], initial["hidden_0"]["lora_a"])
  assert not np.array_equal(trained["head"]["kernel"], initial["head"]["kernel"])
  assert _bits(params) == base_bits
  merged = lora.merge(params, trained)
  assert _bits(merged["head"]) == _bits(trained["head"])
  np.testing.assert_allclose(model.apply({"params": merged}, x), lora.apply(params, trained, x),
                             rtol=1e-5, atol=1e-6)
  assert loss_of(trained) < first


@pytest.mark.parametrize("kwargs, match", [
    (dict(rank=0), "rank must be an integer >= 1"),
    (dict(targets="all-linear", rank=9, also_train="head"),
     r"rank must be in \[1, min\(in, out\)\] = \[1, 8\] for hidden_1 \(16 -> 8\)"),
    (dict(targets=("hiden_0",)), "targets: 'hiden_0' names no Dense layer of this model"),
    (dict(targets=("hidden_0",), also_train=("hidden_0",)), "'hidden_0/bias' is both adapted"),
    (dict(targets="all-linear", also_train=("haed",)), "also_train: no parameter path is or "
                                                       "starts with 'haed'"),
])
def test_lora_rejects_bad_ranks_targets_and_also_train(kwargs, match):
  _, params, x, _ = _mlp_lora()
  with pytest.raises(ValueError, match=match):
    ft.LoRA(models.MLP(hidden=(16, 8), num_classes=3), **kwargs).init(jax.random.key(0), params, x)


def test_all_linear_leaves_out_what_trains_in_full_and_merge_refuses_misfit_trees():
  _, params, x, lora = _mlp_lora(targets="all-linear", rank=2, also_train="head")
  assert set(lora.init(jax.random.key(0), params, x)) == {"hidden_0", "hidden_1", "head"}
  assert [layer.path for layer in lora.layers(params, x)] == ["hidden_0", "hidden_1"]
  with pytest.raises(ValueError, match="'nope/kernel' is not a parameter of params"):
    lora.merge(params, {"nope": {"lora_a": jnp.zeros((3, 2)), "lora_b": jnp.zeros((2, 2))}})
  with pytest.raises(ValueError, match="'head/scale' is not a parameter of params"):
    lora.merge(params, {"head": {"scale": jnp.zeros(3)},
                        "hidden_0": {"lora_a": jnp.zeros((12, 2)), "lora_b": jnp.zeros((2, 16))}})
  with pytest.raises(ValueError, match=r"'head/bias' has shape \(4,\); params' 'head/bias' has \(3,\)"):
    lora.merge(params, {"head": {"bias": jnp.zeros(4)},
                        "hidden_0": {"lora_a": jnp.zeros((12, 2)), "lora_b": jnp.zeros((2, 16))}})
  with pytest.raises(ValueError, match=r"Adapters\(rank=3\) hold lora_a of rank 2"):
    lora.merge(params, ft.Adapters(lora.init(jax.random.key(0), params, x), rank=3, alpha=1.0))
  with pytest.raises(ValueError, match="example must be given for MLP"):
    lora.init(jax.random.key(0), params)


# --- load_pretrained ----------------------------------------------------------------------


def _pairs(split):
  """A new task on the same digits: which pair {0,1}, {2,3}, ..., {8,9} (5 classes)."""
  return data.ArrayDataset({"image": split["image"], "label": split["label"] // 2})


@pytest.fixture(scope="module")
def pretrained_run(tmp_path_factory):
  """An MLP trained on the 10 digits by bt.train.fit; its workdir and final parameters."""
  workdir = tmp_path_factory.mktemp("pretrain")
  splits = data.load_dataset("digits", seed=0)
  model = models.MLP(hidden=(32,), num_classes=10)
  state = train.create_train_state(model, train.init_params(model, splits["train"]["image"][:1]),
                                   optax.adam(1e-2))
  config = train.FitConfig(steps=60, batch_size=32, eval_every=30, progress=False)
  result = train.fit(state, train.classification_loss(model), splits["train"], config=config,
                     workdir=str(workdir))
  return workdir, jax.tree.map(np.asarray, result.state.params), splits


def test_load_pretrained_copies_the_backbone_and_keeps_the_new_head(pretrained_run):
  workdir, final, splits = pretrained_run
  fresh = _mlp_params((64, 32, 5), seed=11)  # a new 5-way head
  for where in (workdir, workdir / "checkpoints"):
    loaded = ft.load_pretrained(where, fresh)
    assert _bits(loaded["hidden_0"]) == _bits(final["hidden_0"])
    assert _bits(loaded["head"]) == _bits(fresh["head"])
  earlier = ft.load_pretrained(workdir, fresh, step=30)
  assert _bits(earlier["hidden_0"]) != _bits(final["hidden_0"])
  with pytest.raises(FileNotFoundError, match=r"no checkpoint for step 7 .* \[30, 60\]"):
    ft.load_pretrained(workdir, fresh, step=7)


@pytest.mark.parametrize("widths, kwargs, match", [
    ((64, 33, 5), {}, r"does not fit the target: hidden_0/bias: stored \(32,\) float32, "
     r"target \(33,\) float32"),
    ((64, 32, 16, 5), {}, "hidden_1/bias: in the target, not in the checkpoint"),
    ((64, 32, 5), {"skip": ()}, r"head/bias: stored \(10,\) float32, target \(5,\) float32"),
    ((64, 32, 5), {"skip": ("heads",)}, "skip: no parameter path is or starts with 'heads'"),
])
def test_load_pretrained_names_the_first_mismatching_path(pretrained_run, widths, kwargs,
                                                          match):
  target = _mlp_params(widths)
  with pytest.raises(ValueError, match=match):
    ft.load_pretrained(pretrained_run[0], target, **kwargs)


def test_load_pretrained_rejects_a_missing_directory(tmp_path):
  with pytest.raises(FileNotFoundError, match="no checkpoint directory"):
    ft.load_pretrained(tmp_path / "nothing", {"w": jnp.ones(2)})


def test_finetuning_from_the_checkpoint_beats_scratch_in_few_steps(pretrained_run):
  workdir, _, splits = pretrained_run
  model = models.MLP(hidden=(32,), num_classes=5)
  fresh = _mlp_params((64, 32, 5), seed=12)
  # A zero head (as big_vision's fine-tuning does): the large pretrained features then
  # start from uniform logits instead of a random head's large ones.
  fresh["head"] = jax.tree.map(jnp.zeros_like, fresh["head"])
  pretrained = ft.load_pretrained(workdir, fresh)
  loss_fn = train.classification_loss(model)
  task, test = _pairs(splits["train"]), _pairs(splits["test"])
  batches = list(task.batches(32, seed=0, epoch=0))[:20]
  step, losses = jax.jit(train.make_train_step(loss_fn)), {}
  for name, params in (("pretrained", pretrained), ("scratch", fresh)):
    state = train.create_train_state(model, jax.tree.map(jnp.copy, params), optax.adam(3e-3))
    state = _train(state, step, batches)
    losses[name] = train.evaluate(loss_fn, state.params, test, 512)["loss"]
  assert losses["pretrained"] < losses["scratch"] - 0.1, losses
