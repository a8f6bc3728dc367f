"""experiments.mlp_sgd (seed 000 §4.1): the small preset clears its accuracy bar, and the
test scores it reports are those of its trained parameters."""

import json

import jax.numpy as jnp
import pytest

from bigtune_jax import models
from bigtune_jax import train
from experiments import mlp_sgd
from experiments import tasks
from tests import reference
from tests import utils


def test_mlp_sgd_small_preset_reaches_the_bar(tmp_path):
  summary = mlp_sgd.main(["--workdir", str(tmp_path), "--preset", "small"])
  assert summary["test_accuracy"] >= 0.95
  assert json.loads((tmp_path / "summary.json").read_text())["test_accuracy"] == summary[
      "test_accuracy"]
  utils.assert_run_facts(summary, "mlp_sgd")
  assert summary["steps"] == mlp_sgd.PRESETS["small"]["steps"]
  # The reported test loss and accuracy, recomputed by a float64 NumPy forward pass of the
  # checkpointed parameters over every test image.
  test = tasks.load_images(summary["config"], image_size=28)["test"]
  model = models.MLP(hidden=summary["config"]["hidden"], num_classes=10)
  params = utils.trained_params(tmp_path, train.init_params(model, jnp.ones((1, 28, 28)), 0))
  loss, accuracy = reference.cross_entropy_and_accuracy(
      reference.mlp_logits(params, test["image"]), test["label"])
  assert summary["test_accuracy"] == pytest.approx(accuracy, abs=1e-6)
  assert summary["test_loss"] == pytest.approx(loss, rel=1e-4)
  utils.assert_loss_fits_accuracy(summary["test_loss"], summary["test_accuracy"], 10)
