"""A run killed with SIGKILL and started again on its workdir ends exactly where an
uninterrupted run ends; a mismatched checkpoint is refused without harming the good ones."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from experiments import mlp_sgd

ROOT = Path(__file__).resolve().parents[2]
# Enough steps that the run is still going when the first checkpoint lands (1,350 steps,
# seconds, after it), and few evaluations: each writes a checkpoint, which costs ~25 steps.
ARGS = ["--preset", "tiny", "--set", "steps=1500", "--set", "eval_every=150"]


def command(workdir):
  return [sys.executable, "-m", "experiments.mlp_sgd", "--workdir", str(workdir), *ARGS]


def committed_checkpoints(workdir: Path) -> list[int]:
  directory = workdir / "checkpoints"
  if not directory.is_dir():
    return []
  return sorted(int(p.name) for p in directory.iterdir() if p.is_dir() and p.name.isdigit())


def test_sigkill_then_restart_matches_an_uninterrupted_run(tmp_path):
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONUNBUFFERED": "1"}
  straight = tmp_path / "straight"  # uninterrupted, in this process: one start of JAX fewer
  mlp_sgd.main(["--workdir", str(straight), *ARGS])

  killed = tmp_path / "killed"
  process = subprocess.Popen(command(killed), cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
  deadline = time.time() + 240
  while not committed_checkpoints(killed) and process.poll() is None and time.time() < deadline:
    time.sleep(0.05)
  assert process.poll() is None, "the run ended before its first checkpoint: make it longer"
  process.send_signal(signal.SIGKILL)
  process.wait(timeout=30)
  assert process.returncode == -signal.SIGKILL
  assert not (killed / "summary.json").exists()
  interrupted_at = committed_checkpoints(killed)
  assert interrupted_at and max(interrupted_at) < 1500

  subprocess.run(command(killed), cwd=ROOT, env=env, check=True, capture_output=True,
                 timeout=300)
  expected = json.loads((straight / "summary.json").read_text())
  actual = json.loads((killed / "summary.json").read_text())
  assert actual["resumed_from"] is not None and actual["resumed_from"] >= max(interrupted_at)
  for key in ("steps", "final_train_loss", "test_loss", "test_accuracy", "val_loss"):
    assert actual[key] == expected[key], key  # bit for bit: exact float equality
  rows = lambda d: (d / "metrics.jsonl").read_text().splitlines()
  assert rows(killed) == rows(straight)


def test_mismatched_checkpoint_is_refused_and_the_good_ones_survive(tmp_path):
  mlp_sgd.main(["--workdir", str(tmp_path), "--preset", "tiny"])
  before = committed_checkpoints(tmp_path)
  with pytest.raises(ValueError, match="kernel"):
    mlp_sgd.main(["--workdir", str(tmp_path), "--preset", "tiny", "--set", "hidden=64"])
  assert committed_checkpoints(tmp_path) == before
  again = mlp_sgd.main(["--workdir", str(tmp_path), "--preset", "tiny"])
  assert again["resumed_from"] == max(before)
