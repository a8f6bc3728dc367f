"""One writer per workdir, and a clean log after a kill: real subprocesses and SIGKILL."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bigtune_jax import train

ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONUNBUFFERED": "1"}


def _worker(workdir, mode, **kwargs):
  return subprocess.run([sys.executable, "-m", "tests.resume_worker", str(workdir), mode],
                        cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300,
                        **kwargs)


def _start_holder(workdir):
  holder = subprocess.Popen([sys.executable, "-m", "tests.resume_worker", str(workdir), "hold"],
                            cwd=ROOT, env=ENV, stdout=subprocess.PIPE, text=True)
  assert holder.stdout.readline().strip() == "held"
  return holder


def test_a_second_run_is_refused_at_once_and_a_killed_holder_blocks_nothing(tmp_path):
  workdir = tmp_path / "run"
  holder = _start_holder(workdir)
  try:
    started = time.time()
    refused = _worker(workdir, "none")
    assert refused.returncode != 0
    assert f"workdir {workdir} is in use by pid {holder.pid} on host" in refused.stderr
    assert time.time() - started < 60  # refused, not waiting on the holder
    assert sorted(p.name for p in workdir.iterdir()) == [".lock"]  # nothing written
  finally:
    holder.send_signal(signal.SIGKILL)
    holder.wait(timeout=30)
  assert _worker(workdir, "none").returncode == 0  # the dead holder's lock is gone
  assert len((workdir / "metrics.jsonl").read_text().splitlines()) == 4


def test_the_same_process_may_nest_and_another_lock_object_sees_it(tmp_path):
  with train.WorkdirLock(tmp_path):
    with train.WorkdirLock(tmp_path):  # nested in one process: allowed
      pass
    holder_text = (tmp_path / ".lock").read_text()
    assert f'"pid": {os.getpid()}' in holder_text
  code = ("import sys; from bigtune_jax import train; "
          "train.WorkdirLock(sys.argv[1]).acquire(); print('ok')")
  out = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True,
                       text=True, env=ENV, check=True)
  assert out.stdout.strip() == "ok"  # released after the outermost exit


def test_a_workdir_that_is_a_file_is_named(tmp_path):
  (tmp_path / "file").write_text("x")
  with pytest.raises(ValueError, match="workdir .*file is a file, not a directory"):
    train.WorkdirLock(tmp_path / "file").acquire()


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
  """An uninterrupted run's workdir, shared by the kill points."""
  workdir = tmp_path_factory.mktemp("straight") / "run"
  assert _worker(workdir, "none").returncode == 0
  return workdir


@pytest.mark.parametrize("mode", ["after_first_row", "during_first_save"])
def test_killed_before_the_first_checkpoint_commits_the_restart_logs_cleanly(tmp_path, mode,
                                                                               straight):
  killed = tmp_path / "killed"
  died = _worker(killed, mode)
  assert died.returncode == -signal.SIGKILL
  committed = [p for p in (killed / "checkpoints").iterdir() if p.name.isdigit()] if (
      killed / "checkpoints").is_dir() else []
  assert committed == []  # the kill came before the first commit
  assert (killed / "metrics.jsonl").read_text().strip()  # but a row was written
  if mode == "during_first_save":
    assert any("tmp" in p.name for p in (killed / "checkpoints").iterdir())
  assert _worker(killed, "none").returncode == 0
  assert (killed / "metrics.jsonl").read_text() == (straight / "metrics.jsonl").read_text()
