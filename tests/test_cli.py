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
