"""Hostile inputs to the engine (issue 21 items 3 and 7, issue 22 item 6): each is refused
with one error that names the thing (the split, the labels, the checkpoint, the workdir)
before any step or write. Before, each trained to NaN, failed inside Flax or Orbax, or
deleted the caller's arrays."""

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import bigtune_jax as bt
from bigtune_jax import data, models, train
from experiments import mlp_sgd

ROOT = Path(__file__).resolve().parents[2]


def _images(rng, n, classes, shape=(6, 6, 1)):
  return data.ArrayDataset({"image": rng.normal(size=(n, *shape)).astype(np.float32),
                            "label": rng.integers(0, classes, n).astype(np.int32)})


def _fit(state, loss_fn, train_data, val_data=None, workdir=None, steps=2, batch_size=8,
         **config):
  return train.fit(state, loss_fn, train_data, val_data, workdir=workdir,
                   config=train.FitConfig(steps=steps, batch_size=batch_size, progress=False,
                                          **config))


# Labels (item 7): fit checked them already; evaluate let them through.

def test_evaluate_refuses_labels_outside_a_five_class_head():
  rng = np.random.default_rng()
  model = models.MLP(hidden=(8,), num_classes=5)
  params = train.init_params(model, jnp.zeros((1, 6, 6, 1)), int(rng.integers(1000)))
  dataset = _images(rng, 40, 10)  # labels 0..9, a 5-class head
  high = int(dataset["label"].max())
  with pytest.raises(ValueError, match=rf"evaluate's dataset: labels \('label'\) must lie in "
                                       rf"\[0, 5\) \(the model's 5 classes\), got values "
                                       rf"from \d to {high}"):
    train.evaluate(train.classification_loss(model), params, dataset)
  with pytest.raises(ValueError, match=r"a population's train split: labels .* \[0, 5\)"):
    train.check_data(train.classification_loss(model), params,  # what a runner calls
                     {"a population's train split": dataset})


def test_float_labels_are_named_in_fit_and_evaluate(tmp_path):
  rng = np.random.default_rng()
  model = models.MLP(hidden=(8,), num_classes=3)
  params = train.init_params(model, jnp.zeros((1, 6, 6, 1)))
  good = _images(rng, 32, 3)
  floats = data.ArrayDataset({"image": good["image"], "label": good["label"] + 0.0})
  loss_fn = train.classification_loss(model)
  with pytest.raises(ValueError, match=r"evaluate's dataset: labels \('label'\) must be "
                                       r"integer class indices, got dtype float64"):
    train.evaluate(loss_fn, params, floats)
  with pytest.raises(ValueError, match=r"the validation split: labels \('label'\) must be "
                                       r"integer"):
    _fit(train.create_train_state(model, params, bt.sgd(0.1)), loss_fn, good, floats,
         workdir=tmp_path / "run")
  assert not (tmp_path / "run").exists()


# Parameters made from a sample without its batch axis (item 7).

@pytest.mark.parametrize("model", [models.MLP(hidden=(8,), num_classes=4),
                                   models.LSTMClassifier(hidden_size=4, num_classes=4)])
def test_params_from_a_sample_without_its_batch_axis_are_named_before_any_step(model,
                                                                              tmp_path):
  rng = np.random.default_rng()
  dataset = _images(rng, 32, 4)
  params = train.init_params(model, dataset["image"][0])  # (6, 6, 1): no batch axis
  with pytest.raises(ValueError, match=r"the parameters do not fit the train split \(examples "
                                       r"shaped [^:]*\(6, 6, 1\)[^:]*\): .*"
                                       r"batch axis.*x\[:1\], not x\[0\]"):
    _fit(train.create_train_state(model, params, bt.sgd(0.1)), train.classification_loss(model),
         dataset, workdir=tmp_path / "run")
  assert not (tmp_path / "run").exists()
  with pytest.raises(ValueError, match="sample_input must be a batch of examples"):
    train.init_params(model, jnp.float32(rng.normal()))


# Learning rates that overflow float32 (item 7).

@pytest.mark.parametrize("make", [
    bt.sgd, bt.momentum, bt.ema_momentum, bt.adam, lambda lr: bt.adaptive_sgd(lr, beta=0.1),
    lambda lr: bt.hypergradient_sgd(lr, hyper_lr=1e-3), bt.constant,
    lambda lr: bt.step_decay(lr, step_size=5, gamma=0.5),
])
def test_a_rate_that_overflows_float32_is_refused_at_construction(make):
  rate = float(np.finfo(np.float32).max) * (1 + np.random.default_rng().uniform(0.5, 1e6))
  with pytest.raises(ValueError, match=r"learning_rate must be a finite number >= 0 and <= "
                                       r"3.403e\+38 \(finite in float32\)"):
    make(rate)
  make(float(np.finfo(np.float32).max))  # the largest float32 itself is a rate


# Token ids outside the vocabulary (item 3).

class _TinyLM(nn.Module):
  """An unfused language model: (B, T) ids -> (B, T, vocab) logits (no config to read)."""
  vocab: int

  @nn.compact
  def __call__(self, ids):
    return nn.Dense(self.vocab)(nn.Embed(self.vocab, 8)(ids))


def _token_split(rng, n, high, bad=None):
  ids = rng.integers(0, high, (n, 5)).astype(np.int32)
  if bad is not None:
    ids[rng.integers(n), rng.integers(5)] = bad
  return data.ArrayDataset({"inputs": ids, "targets": np.roll(ids, -1, 1)})


@pytest.mark.parametrize("model", [models.GPT(models.GPTConfig.tiny()), _TinyLM(vocab=64)])
def test_fit_names_the_split_whose_token_ids_exceed_the_vocabulary(model, tmp_path):
  rng = np.random.default_rng()
  bad = int(rng.integers(64, 300))
  train_split, val_split = _token_split(rng, 16, 64), _token_split(rng, 8, 64, bad=bad)
  params = train.init_params(model, train_split["inputs"][:1])
  state = train.create_train_state(model, params, bt.adam(1e-3))
  with pytest.raises(ValueError, match=rf"the validation split \('inputs'\): token id {bad} "
                                       rf"at position .* outside the model's vocabulary "
                                       rf"\[0, 64\)"):
    _fit(state, train.language_model_loss(model), train_split, val_split,
         workdir=tmp_path / "run")
  assert not (tmp_path / "run").exists()


def test_a_token_corpus_from_a_larger_tokenizer_is_refused_before_any_step(tmp_path):
  """Bytes (ids up to 255) for a GPT with 64 tokens: memory-mapped blocks, read once."""
  rng = np.random.default_rng()
  small = "".join(chr(c) for c in rng.integers(32, 64, 3000))  # ids within [0, 64)
  (tmp_path / "small.txt").write_text(small)
  (tmp_path / "large.txt").write_text(small[:1500] + "z" + small[1500:])  # id 122
  model = models.GPT(models.GPTConfig.tiny())
  loss_fn = train.language_model_loss(model)
  for name in ("small", "large"):
    splits = data.load_token_dataset(tmp_path / f"{name}.txt", data.ByteTokenizer(),
                                     block_size=16, cache_dir=tmp_path / "cache")
    params = train.init_params(model, jnp.zeros((1, 16), jnp.int32))
    if name == "small":  # in range: passes (the check fit runs before its first step)
      loss_fn.check_data(params, {"the train split": splits["train"]})
      continue
    state = train.create_train_state(model, params, bt.adam(1e-3))
    with pytest.raises(ValueError, match=r"the (train|validation) split \('(inputs|targets)' "
                                         r"of batch 0 of 4096 blocks\): token id 122 at "
                                         r"position .* outside the model's vocabulary"):
      _fit(state, loss_fn, splits["train"], splits["validation"], workdir=tmp_path / "run")
    assert not (tmp_path / "run").exists()


# The caller's parameters after fit (issue 22 item 6).

def test_fit_leaves_the_callers_parameters_usable_unless_donated():
  rng = np.random.default_rng()
  model = models.MLP(hidden=(8,), num_classes=3)
  dataset = _images(rng, 64, 3)
  loss_fn = train.classification_loss(model)
  params = train.init_params(model, dataset["image"][:1], int(rng.integers(1000)))
  before = train.evaluate(loss_fn, params, dataset)
  result = _fit(train.create_train_state(model, params, bt.sgd(0.5)), loss_fn, dataset,
                steps=4)
  assert train.evaluate(loss_fn, params, dataset) == before  # untouched, still usable
  assert train.evaluate(loss_fn, result.state.params, dataset)["loss"] != before["loss"]
  _fit(train.create_train_state(model, params, bt.sgd(0.5)), loss_fn, dataset, steps=4,
       donate=True)
  assert all(leaf.is_deleted() for leaf in jax.tree.leaves(params))  # handed over
  with pytest.raises(ValueError, match="donate must be True or False"):
    train.FitConfig(steps=1, batch_size=1, donate="yes")


# A damaged checkpoint (item 7).

_SHORT = ["--preset", "tiny", "--set", "steps=4", "--set", "eval_every=2"]  # checkpoints 2, 4


def test_an_overwritten_manifest_names_the_damaged_checkpoint(tmp_path):
  workdir = tmp_path / "run"
  mlp_sgd.main(["--workdir", str(workdir), *_SHORT])
  steps = sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())
  latest = workdir / "checkpoints" / str(steps[-1])
  (latest / "default" / "manifest.ocdbt").write_bytes(os.urandom(64))
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(ROOT)}
  env.pop("BIGTUNE_TRACEBACK", None)
  out = subprocess.run([sys.executable, "-m", "experiments.mlp_sgd", "--workdir", str(workdir),
                        *_SHORT], cwd=ROOT, env=env, capture_output=True, text=True,
                       timeout=120)
  assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
  errors = [line for line in out.stderr.splitlines() if "error:" in line]
  assert len(errors) == 1 and errors[0].endswith(
      f"error: corrupt checkpoint {latest}: it is damaged, cannot read its manifest "
      f"({latest}/default/manifest.ocdbt does not start with the OCDBT magic bytes 0cdb3a2a, "
      f"but {(latest / 'default' / 'manifest.ocdbt').read_bytes()[:4].hex()}); delete "
      f"{latest} to resume from the previous checkpoint, step {steps[-2]}"), out.stderr


# A workdir that cannot be written (item 7).

# Root may write anywhere: run the command as nobody, so that permissions apply.
_OTHER_USER = dict(user=65534, group=65534, extra_groups=[]) if os.geteuid() == 0 else {}


def test_a_read_only_workdir_is_one_error_line_before_any_work():
  with tempfile.TemporaryDirectory() as folder:  # in /tmp: reachable by the other user
    os.chmod(folder, 0o755)
    _check_read_only_workdir(Path(folder) / "read_only")


def _check_read_only_workdir(read_only: Path) -> None:
  read_only.mkdir()
  read_only.chmod(0o555)
  workdir = read_only / "run"
  env = {k: v for k, v in os.environ.items() if not k.startswith(("JAX_COMPILATION",
                                                                    "BIGTUNE_TRACEBACK"))}
  out = subprocess.run([sys.executable, "-m", "experiments.mlp_sgd", "--workdir", str(workdir),
                        "--preset", "tiny"], cwd=ROOT,
                       env={**env, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(ROOT)},
                       capture_output=True, text=True, timeout=120, **_OTHER_USER)
  assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
  errors = [line for line in out.stderr.splitlines() if "error:" in line]
  assert len(errors) == 1 and errors[0].endswith(
      f"error: workdir {workdir} is not writable ({read_only} cannot be written): a run "
      "writes its lock, metrics and checkpoints there; choose a directory you can write to")
  assert out.stdout == "" and list(read_only.iterdir()) == []  # refused before any work
