"""Every setting is checked before work or writes, naming the setting (issue: nothing
confusing). Each case failed late, or with another library's error, before."""

import jax.numpy as jnp
import numpy as np
import optax
import pytest

import bigtune_jax as bt
from bigtune_jax import compress, data, models, train


@pytest.mark.parametrize("bad", [None, "low", True])
def test_controls_refuse_a_metric_that_is_not_a_number(bad):
  stopper = bt.EarlyStopping(patience=2)
  with pytest.raises(ValueError, match=f"metric must be a real number .*got {bad!r}"):
    stopper.update(stopper.init(), bad)
  plateau = bt.reduce_on_plateau()
  with pytest.raises(ValueError, match=f"value must be a real number .*got {bad!r}"):
    plateau.update({"w": jnp.ones(2)}, plateau.init({"w": jnp.ones(2)}), value=bad)


def test_eval_every_has_one_meaning_in_fit_and_populations():
  """None: once per epoch; an integer >= 1: steps; 0 is refused (it meant 'per epoch' in
  FitConfig only). train_population's check: test_tune_population.py."""
  train.FitConfig(steps=1, batch_size=1, eval_every=None)
  with pytest.raises(ValueError, match=r"eval_every must be .* or None \(once per epoch\)"):
    train.FitConfig(steps=1, batch_size=1, eval_every=0)


@pytest.fixture(scope="module")
def digits_setup():
  splits = data.load_dataset("digits")
  model = models.MLP(hidden=(8,), num_classes=10)
  return splits, model, train.classification_loss(model)


def _state(model, splits):
  return train.create_train_state(model, train.init_params(model, splits["train"]["image"][:1]),
                                  optax.sgd(0.1))


def test_fit_refuses_a_monitor_the_run_never_writes_before_any_step(digits_setup, tmp_path):
  splits, model, loss_fn = digits_setup
  with pytest.raises(ValueError, match=r"monitor 'val_acc' is not a metric this run writes; "
                                       r"it writes \[.*'val_accuracy', 'val_loss'\]"):
    train.fit(_state(model, splits), loss_fn, splits["train"], splits["validation"],
              workdir=tmp_path / "run", config=train.FitConfig(
                  steps=5, batch_size=8, monitor="val_acc", progress=False))
  assert not (tmp_path / "run").exists()  # refused before the workdir was touched


def test_fit_refuses_an_empty_validation_split(digits_setup):
  splits, model, loss_fn = digits_setup
  empty = data.load_dataset("digits", validation_fraction=0.0)["validation"]
  with pytest.raises(ValueError, match="val_data has no examples"):
    train.fit(_state(model, splits), loss_fn, splits["train"], empty,
              config=train.FitConfig(steps=2, batch_size=8, progress=False))


def test_simple_cnn_names_the_smallest_image_it_takes():
  with pytest.raises(ValueError, match=r"at least 16 x 16 pixels .* got shape \(1, 8, 8, 1\)"):
    train.init_params(models.SimpleCNN(), jnp.zeros((1, 8, 8, 1)))
  train.init_params(models.SimpleCNN(), jnp.zeros((1, 16, 16, 1)))  # the smallest that fits


@pytest.mark.parametrize("kwargs, match", [
    ({"validation_fraction": "0.1"}, r"validation_fraction must lie in \[0, 1\), got '0.1'"),
    ({"test_fraction": True}, r"test_fraction must lie in \[0, 1\), got True"),
    ({"seed": -1}, "seed must be an integer >= 0, got -1"),
    ({"seed": 1.5}, "seed must be an integer >= 0, got 1.5"),
])
def test_dataset_fractions_and_seeds_are_checked_by_name(kwargs, match):
  with pytest.raises(ValueError, match=match):
    data.load_dataset("digits", **kwargs)


def test_text_shorter_than_one_window_is_named():
  with pytest.raises(ValueError, match=r"train part .* is shorter than one window of "
                                       r"block_size \+ 1 = 1000001 bytes"):
    data.load_dataset("text", block_size=1_000_000)


def test_factorize_with_a_rank_that_factors_nothing_is_refused():
  model = models.MLP(hidden=(8,), num_classes=2)
  params = train.init_params(model, jnp.zeros((1, 4)))
  with pytest.raises(ValueError, match="rank 100 factors no layer of this MLP .* largest such "
                                       "rank here is 2"):
    compress.factorize(model, params, rank=100)
  _, low = compress.factorize(model, params, rank=1)  # rank 1 does factor the 4 x 8 layer
  assert "kernel" not in low["hidden_0"]
  with pytest.raises(ValueError, match="energy 1.0 keeps, in every layer, a rank .* would "
                                       "stay dense"):
    compress.factorize(model, params, energy=1.0)


def test_evaluate_on_an_empty_split_is_named():
  model = models.MLP(hidden=(8,), num_classes=2)
  params = train.init_params(model, jnp.zeros((1, 4)))
  loss_fn = train.classification_loss(model)
  empty = data.ArrayDataset({"image": np.zeros((0, 4), np.float32),
                             "label": np.zeros((0,), np.int32)})
  with pytest.raises(ValueError, match="dataset has no examples"):
    train.evaluate(loss_fn, params, empty, 8)
  with pytest.raises(ValueError, match="batch_size must be an integer >= 1"):
    train.evaluate(loss_fn, params, empty, 0)


@pytest.mark.parametrize("labels, match", [
    (lambda y: np.where(y == 9, 12, y),
     r"labels \('label'\) must lie in \[0, 10\) .* from 0 to 12"),
    (lambda y: y - 1, r"the train split: labels .* must lie in \[0, 10\) .* from -1 to 8"),
    (lambda y: y.astype(np.float32), r"labels \('label'\) must be integer class indices, got "
                                     r"dtype float32"),
])
def test_fit_checks_labels_against_the_model_before_training(digits_setup, tmp_path, labels,
                                                              match):
  splits, model, loss_fn = digits_setup
  bad = data.ArrayDataset({"image": splits["train"]["image"],
                           "label": labels(splits["train"]["label"])})
  with pytest.raises(ValueError, match=match):
    train.fit(_state(model, splits), loss_fn, bad, splits["validation"],
              workdir=tmp_path / "run", config=train.FitConfig(steps=2, batch_size=8,
                                                               progress=False))
  assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("call, match", [
    (lambda: data.split_indices(10, [0.5, 0.5], seed=-1), "seed must be an integer >= 0, got -1"),
    (lambda: data.split_indices(10, [0.5, 0.5], seed=1.5), "seed must be an integer >= 0, got 1.5"),
    (lambda: data.split_arrays({"x": np.zeros(10)}, {"a": "0.5", "b": 0.5}),
     "fractions must be a non-empty sequence of numbers"),
    (lambda: data.split_tokens(np.zeros(10, np.uint8), "0.1"),
     r"validation_fraction must lie in \[0, 1\), got '0.1'"),
    (lambda: data.load_dataset("digits", stratify="yes"), "stratify must be True or False"),
])
def test_splits_seeds_and_rates_are_checked_by_name(call, match):
  with pytest.raises(ValueError, match=match):
    call()


@pytest.fixture(scope="module")
def pbt_setup():
  splits = data.load_dataset("digits")
  model = models.MLP(hidden=(8,), num_classes=10)
  return splits, model, train.classification_loss(model)


def test_pbt_refuses_out_of_range_members_and_mutation_ends_on_the_host(pbt_setup):
  from bigtune_jax.tune.population.exploration import pbt  # pylint: disable=import-outside-toplevel
  from bigtune_jax.tune.search.space import Uniform  # pylint: disable=import-outside-toplevel
  splits, model, loss_fn = pbt_setup
  make = lambda h: bt.momentum(h["learning_rate"], gamma=h["momentum"])
  kwargs = dict(steps=2, batch_size=8, perturbation_interval=1)
  with pytest.raises(ValueError, match=r"member 1 of the population .*'momentum': 1.5\}: "
                                       r"gamma must be in \[0.0, 1.0\)"):
    pbt(model, loss_fn, make, {"learning_rate": [0.1, 0.1], "momentum": [0.5, 1.5]},
        {"momentum": Uniform(0.0, 0.9)}, splits["train"], splits["validation"], **kwargs)
  with pytest.raises(ValueError, match=r"mutations\['momentum'\] = .* explores up to its ends, "
                                       r"and momentum=1.2 is refused: gamma must be"):
    pbt(model, loss_fn, make, {"learning_rate": [0.1, 0.1], "momentum": [0.5, 0.9]},
        {"momentum": Uniform(0.0, 1.2)}, splits["train"], splits["validation"], **kwargs)
