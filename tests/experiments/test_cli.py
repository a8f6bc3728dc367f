"""The experiments answer like command lines: a bad flag, setting or workdir prints the
usage and one error line naming it, exits with status 2, shows no traceback and writes
nothing.

The command lines of the exit-2 tests run in one process (``tests/cli_worker.py`` runs each
as ``python -m`` would), not one process each: importing JAX and the experiments is most
of such a run. One test below runs a real ``python -m`` command line.
"""

import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

BAD_SETTINGS = [  # (module, arguments after --workdir DIR, the error named)
    ("tune", ["--set", "population=abc"], "--set population=abc: expected a value of type int"),
    ("tune", ["--set", "nope=1"], "--set nope: unknown field"),
    ("tune", ["--preset", "huge"], "argument --preset: invalid choice: 'huge'"),
    ("early_stopping", ["--set", "label_noise=1.5"],
     "--set label_noise must be a number in [0, 1), got 1.5"),
    ("mlp_sgd", ["--set", "dataset=mnist"], "pass --set data_dir=DIR"),
]
TUNE_SETTINGS = [  # (setting of the tiny tune preset, the error named)
    ("population=0", "--set population must be an integer >= 1, got 0"),
    ("rounds=0", "--set rounds must be an integer >= 1, got 0"),
    ("lr_range=0.1", "--set lr_range must be a pair LOW,HIGH with 0 < LOW < HIGH"),
    ("lr_range=0.5,0.1", "--set lr_range must be a pair LOW,HIGH"),
    ("momentum_max=1.0", r"--set momentum_max must lie in [0, 1), got 1.0"),
    ("batch_sizes=5000", "--set batch_sizes: 5000 is larger than the"),
]
SHARED_SETTINGS = [  # (module, setting of its tiny preset, the error named)
    ("compress", "ranks=0", "--set ranks must be one or more integers >= 1, comma-separated, "
                            "got 0"),
    ("mlp_sgd", "dataset=nope", "--set dataset must be one of digits, mnist, fashion_mnist, "
                                "cifar10, got 'nope'"),
    ("cnn_momentum", "data_dir=/tmp", "--set data_dir=/tmp: the digits are bundled and read "
                                      "no files"),
]


def _env():
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(ROOT)}
  env.pop("BIGTUNE_TRACEBACK", None)
  return env


def _run(module, *args):
  return subprocess.run([sys.executable, "-m", f"experiments.{module}", *args], cwd=ROOT,
                        env=_env(), capture_output=True, text=True, timeout=120)


def _command_lines():
  """Every command line of the exit-2 tests: (module, arguments after --workdir DIR)."""
  return ([(module, args) for module, args, _ in BAD_SETTINGS]
          + [("tune", ["--preset", "tiny", "--set", s]) for s, _ in TUNE_SETTINGS]
          + [(module, ["--preset", "tiny", "--set", s]) for module, s, _ in SHARED_SETTINGS])


@pytest.fixture(scope="module")
def command_lines(tmp_path_factory):
  """Runs every command line of :func:`_command_lines`, each on a workdir of its own, in one
  process; returns ``{(module, *args): (exit status, stderr, workdir)}``."""
  base = tmp_path_factory.mktemp("cli")
  cases, keys = [], []
  for i, (module, args) in enumerate(_command_lines()):
    workdir = base / str(i) / "run"
    workdir.parent.mkdir()
    cases.append([module, ["--workdir", str(workdir), *args]])
    keys.append(((module, *args), workdir))
  (base / "cases.json").write_text(json.dumps(cases))
  subprocess.run([sys.executable, "-m", "tests.cli_worker", str(base / "cases.json"),
                  str(base / "out.json")], cwd=ROOT, env=_env(), check=True, timeout=300)
  results = json.loads((base / "out.json").read_text())
  return {key: (r["returncode"], r["stderr"], workdir)
          for (key, workdir), r in zip(keys, results, strict=True)}


@pytest.mark.parametrize("module, args, named", BAD_SETTINGS)
def test_bad_settings_exit_2_with_one_error_line(command_lines, module, args, named):
  returncode, stderr, workdir = command_lines[(module, *args)]
  assert returncode == 2, stderr
  assert "Traceback" not in stderr
  errors = [line for line in stderr.splitlines() if "error:" in line]
  assert len(errors) == 1 and named in errors[0], stderr
  assert stderr.splitlines()[0].startswith("usage:")
  assert not workdir.exists() or not any(workdir.iterdir())  # nothing written


def test_a_workdir_that_is_a_file_is_named_in_those_words(tmp_path):
  (tmp_path / "file").write_text("not a folder")
  out = _run("mlp_sgd", "--workdir", str(tmp_path / "file"), "--preset", "tiny")
  assert out.returncode == 2 and "Traceback" not in out.stderr
  assert f"--workdir {tmp_path / 'file'} is a file, not a directory" in out.stderr


@pytest.mark.parametrize("setting, named", TUNE_SETTINGS)
def test_tune_checks_every_setting_before_writing(command_lines, setting, named):
  returncode, stderr, workdir = command_lines[("tune", "--preset", "tiny", "--set", setting)]
  assert returncode == 2 and "Traceback" not in stderr, stderr
  assert named in stderr
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


@pytest.mark.parametrize("module, setting, named", SHARED_SETTINGS)
def test_shared_settings_and_data_choices_exit_2(command_lines, module, setting, named):
  returncode, stderr, workdir = command_lines[(module, "--preset", "tiny", "--set", setting)]
  assert returncode == 2 and "Traceback" not in stderr, stderr
  errors = [line for line in stderr.splitlines() if "error:" in line]
  assert len(errors) == 1 and named in errors[0], stderr
  assert not workdir.exists()


def _main(module):
  return importlib.import_module(f"experiments.{module}").main


# Called as functions, the experiments raise ValueError naming the --set field, before any
# training or write (what the command line above turns into exit status 2).
@pytest.mark.parametrize("module, settings, match", [
    ("compress", ["ranks=1000"], r"--set ranks=1000: rank 1000 factors no layer"),
    ("compress", ["sparsities=0"], r"--set sparsities must be one or more fractions in \(0, 1\)"),
    ("compress", ["qat_steps=0"], "--set qat_steps must be an integer >= 1, got 0"),
    ("compress", ["calibration_batches=1000"], r"--set calibration_batches must be at most 19 "),
    ("compress", ["batch_size=5000"], r"--set batch_size must be at most the number of "
                                      r"training examples \(1258\), got 5000"),
    ("darts", ["search_batch_size=1000"], r"--set search_batch_size must be at most the number "
                                          r"of examples in a search half"),
    ("darts", ["learning_rate=-0.1"], r"--set learning_rate must be a finite number > 0"),
    ("finetune_basic", ["batch_size=60"], r"--set batch_size must be at most the number of "
                                          r"fine-tuning examples \(finetune_per_class x 5 "
                                          r"classes\) \(50\), got 60"),
    ("finetune", ["finetune_per_class=-1"], "--set finetune_per_class must be an integer >= 0"),
    ("grad_accum", ["micro_batch=0"], "--set micro_batch must be an integer >= 1, got 0"),
    ("tune", ["sampler=tpee"], "--set sampler must be one of tpe, random, got 'tpee'"),
    ("tune", ["pruner=medain"], "--set pruner must be one of none, median, hyperband"),
    ("tune_lm", ["population=0"], "--set population must be an integer >= 1, got 0"),
    ("tune_lm", ["schedules=cosine"], "--set schedules must be one or more of constant, "
                                      "exponential, step, warmup_cosine"),
    ("tune_lm", ["lr_range=0.1"], "--set lr_range must be a pair LOW,HIGH"),
    ("tune_lm", ["batch_sizes=100000"], r"--set batch_sizes must be at most the number of "
                                        r"training windows"),
    ("lm", ["text=/nonexistent.txt"], "--set text=/nonexistent.txt: no such text file"),
    ("lm", ["dropout=1.0"], r"--set dropout must be a number in \[0, 1\), got 1.0"),
    ("plateau", ["model=resnet"], "--set model must be one of cnn, vgg16, got 'resnet'"),
    ("data_parallel", ["data=0"], r"--set data must be -1 \(the devices fsdp leaves\) or an "
                                  r"integer >= 1, got 0"),
    ("mlp_sgd", ["batch_size=5000"], r"--set batch_size must be at most the number of "
                                     r"training examples"),
    ("mlp_sgd", ["dataset=mnist", "data_dir=/nonexistent"], "--set data_dir=/nonexistent: no "
                                                            "such file or folder"),
    ("early_stopping", ["momentum=1.0"], r"--set momentum must be a number in \[0, 1\)"),
    ("linreg_sgd", ["seed=-1"], "--set seed must be an integer >= 0, got -1"),
    ("regularization", ["hidden="], r"--set hidden must be one or more integers >= 1, "
                                    r"comma-separated, got \(nothing\)"),
])
def test_every_experiment_checks_its_settings_before_work(tmp_path, module, settings, match):
  workdir = tmp_path / "run"
  argv = ["--workdir", str(workdir), "--preset", "tiny"]
  for setting in settings:
    argv += ["--set", setting]
  with pytest.raises(ValueError, match=match):
    _main(module)(argv)
  assert not workdir.exists()


def test_optimizer_zoo_checks_its_flags_before_writing(tmp_path):
  main = _main("optimizer_zoo")
  with pytest.raises(ValueError, match=r"seed \(--seed\) must be an integer >= 0, got -1"):
    main(["--workdir", str(tmp_path / "run"), "--seed", "-1"])
  assert not (tmp_path / "run").exists()
  (tmp_path / "file").write_text("x")
  with pytest.raises(SystemExit) as exit_info:
    main(["--workdir", str(tmp_path / "file")])
  assert exit_info.value.code == 2


def test_a_workdir_under_a_file_is_refused_before_work(tmp_path, capsys):
  (tmp_path / "file").write_text("not a folder")
  with pytest.raises(SystemExit) as exit_info:
    _main("mlp_sgd")(["--workdir", str(tmp_path / "file" / "run"), "--preset", "tiny"])
  assert exit_info.value.code == 2
  assert f"{tmp_path / 'file'} is a file, not a directory" in capsys.readouterr().err
