"""The experiments answer like command lines: a bad flag, setting or workdir prints the
usage and one error line naming it, exits with status 2, shows no traceback and writes
nothing."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _run(module, *args):
  env = {**os.environ, "JAX_PLATFORMS": "cpu"}
  env.pop("BIGTUNE_TRACEBACK", None)
  return subprocess.run([sys.executable, "-m", f"experiments.{module}", *args], cwd=ROOT,
                        env=env, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("module, args, named", [
    ("tune", ["--set", "population=abc"], "--set population=abc: expected a value of type int"),
    ("tune", ["--set", "nope=1"], "--set nope: unknown field"),
    ("tune", ["--preset", "huge"], "argument --preset: invalid choice: 'huge'"),
    ("early_stopping", ["--set", "label_noise=1.5"], r"label_noise must lie in [0, 1), got 1.5"),
    ("mlp_sgd", ["--set", "dataset=mnist"], "pass --set data_dir=DIR"),
])
def test_bad_settings_exit_2_with_one_error_line(tmp_path, module, args, named):
  workdir = tmp_path / "run"
  out = _run(module, "--workdir", str(workdir), *args)
  assert out.returncode == 2, out.stderr
  assert "Traceback" not in out.stderr
  errors = [line for line in out.stderr.splitlines() if "error:" in line]
  assert len(errors) == 1 and named in errors[0], out.stderr
  assert out.stderr.splitlines()[0].startswith("usage:")
  assert not workdir.exists() or not any(workdir.iterdir())  # nothing written


def test_a_workdir_that_is_a_file_is_named_in_those_words(tmp_path):
  (tmp_path / "file").write_text("not a folder")
  out = _run("mlp_sgd", "--workdir", str(tmp_path / "file"), "--preset", "tiny")
  assert out.returncode == 2 and "Traceback" not in out.stderr
  assert f"--workdir {tmp_path / 'file'} is a file, not a directory" in out.stderr


@pytest.mark.parametrize("setting, named", [
    ("population=0", "--set population must be an integer >= 1, got 0"),
    ("rounds=0", "--set rounds must be an integer >= 1, got 0"),
    ("lr_range=0.1", "--set lr_range must be a pair LOW,HIGH with 0 < LOW < HIGH"),
    ("lr_range=0.5,0.1", "--set lr_range must be a pair LOW,HIGH"),
    ("momentum_max=1.0", r"--set momentum_max must lie in [0, 1), got 1.0"),
    ("batch_sizes=5000", "--set batch_sizes: 5000 is larger than the"),
])
def test_tune_checks_every_setting_before_writing(tmp_path, setting, named):
  workdir = tmp_path / "run"
  out = _run("tune", "--workdir", str(workdir), "--preset", "tiny", "--set", setting)
  assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
  assert named in out.stderr
  assert not workdir.exists()


def test_population_members_out_of_range_are_refused_on_the_host():
  import bigtune_jax as bt  # pylint: disable=import-outside-toplevel
  from bigtune_jax import data, models, train, tune  # pylint: disable=import-outside-toplevel
  splits = data.load_dataset("digits")
  model = models.MLP(hidden=(8,), num_classes=10)
  with pytest.raises(ValueError, match=r"member 1 of the population \{'learning_rate': 0.1, "
                                       r"'momentum': 1.5\}: gamma must be in \[0.0, 1.0\)"):
    tune.train_population(model, train.classification_loss(model),
                          lambda h: bt.momentum(h["learning_rate"], gamma=h["momentum"]),
                          {"learning_rate": [0.1, 0.1], "momentum": [0.5, 1.5]},
                          splits["train"], splits["validation"], steps=2, batch_size=8)
