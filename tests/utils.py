"""Assertions and test data behind one small module, so the backend (chex) could change."""

import collections
import contextlib
import math
import os

import chex
import jax
import numpy as np

from bigtune_jax import train


def assert_trees_close(actual, expected, *, rtol=1e-9, atol=0.0):
  """Asserts two pytrees have the same structure and allclose leaves."""
  chex.assert_trees_all_close(actual, expected, rtol=rtol, atol=atol)


def random_tree(rng: np.random.Generator, dtype=np.float64):
  """A nested pytree with leaves of several shapes (scalar, vector, matrix, 3-d)."""
  return {
      "dense": {"kernel": rng.standard_normal((5, 3)).astype(dtype),
                "bias": rng.standard_normal((3,)).astype(dtype)},
      "conv": [rng.standard_normal((2, 3, 4)).astype(dtype)],
      "scale": np.asarray(rng.standard_normal(), dtype=dtype),
  }


def assert_run_facts(summary, experiment: str) -> None:
  """What every experiment's summary reports, against what the test knows itself: the
  experiment's name, this process's devices, a duration, and finite, non-negative losses."""
  assert summary["experiment"] == experiment
  assert summary["devices"] == jax.device_count()
  assert summary["wall_s"] >= 0
  for key in ("final_train_loss", "test_loss"):
    assert math.isfinite(summary[key]) and summary[key] >= 0, (key, summary[key])


def assert_loss_fits_accuracy(loss: float, accuracy: float, classes: int) -> None:
  """A classifier's mean cross-entropy against its accuracy: a misclassified example gave
  its label a probability of at most 1/2 (another class had more), so ``loss >= (1 -
  accuracy) ln 2``; a model that learned anything beats the uniform guess, ``ln(classes)``."""
  assert (1 - accuracy) * math.log(2) <= loss < math.log(classes), (loss, accuracy)


def trained_params(workdir, target):
  """The parameters of the latest checkpoint that ``bt.train.fit`` wrote in ``workdir``,
  read into ``target``'s structure, as NumPy arrays."""
  with train.Checkpointer(os.path.join(workdir, "checkpoints"), read_only=True) as saved:
    return jax.device_get(saved.restore_params(target))


@contextlib.contextmanager
def count_compiles():
  """A Counter of jax's backend compiles and jaxpr traces while in the block, by function
  name: ``counts["compile", "jit(f)"]``, ``counts["trace", "f"]`` (from jax.monitoring)."""
  counts = collections.Counter()

  def listen(event, duration, fun_name="", **kwargs):
    del duration, kwargs
    if event.endswith("backend_compile_duration"):
      counts["compile", fun_name] += 1
    elif event.endswith("jaxpr_trace_duration"):
      counts["trace", fun_name] += 1

  jax.monitoring.register_event_duration_secs_listener(listen)
  try:
    yield counts
  finally:
    jax.monitoring.unregister_event_duration_listener(listen)
