"""The seed 002 linear-regression experiments: each tiny preset runs, reports, plots, and
resumes from its workdir to the same result."""

import json

import pytest

from experiments import linreg_batch_size
from experiments import linreg_schedules
from experiments import linreg_sgd

REQUIRED = {"experiment", "steps", "final_train_loss", "test_loss", "devices", "wall_s"}


def run_twice(module, workdir, png):
  """Runs the tiny preset, checks its report and plot, runs it again on the same workdir."""
  argv = ["--workdir", str(workdir), "--preset", "tiny"]
  first = module.main(argv)
  on_disk = json.loads((workdir / "summary.json").read_text())
  assert REQUIRED <= set(on_disk), REQUIRED - set(on_disk)
  assert on_disk["final_train_loss"] == pytest.approx(first["final_train_loss"])
  assert (workdir / png).stat().st_size > 0
  assert first["resumed_from"] is None
  second = module.main(argv)
  assert second["resumed_from"] == first["steps"]
  for key in ("steps", "final_train_loss", "val_loss", "test_loss", "theta", "bias"):
    assert second[key] == pytest.approx(first[key], rel=1e-6), key
  return first, second


def test_linreg_sgd_learns_slope_two_and_resumes(tmp_path):
  first, _ = run_twice(linreg_sgd, tmp_path, "loss.png")
  assert first["true_slope"] == 2.0
  assert abs(first["theta"] - 2.0) < 0.1
  assert abs(first["bias"]) < 0.1
  assert first["test_loss"] < 0.05  # the noise floor is 0.1**2 = 0.01


def test_linreg_schedules_compares_three_and_resumes(tmp_path):
  first, second = run_twice(linreg_schedules, tmp_path, "schedules.png")
  results = first["results"]
  assert set(results) == {"fixed", "exponential", "step"}
  assert first["selected"] in results
  assert first["val_loss"] == min(run["val_loss"] for run in results.values())
  lr = {name: run["final_lr"] for name, run in results.items()}
  assert lr["step"] < lr["exponential"] < lr["fixed"] == pytest.approx(0.1)
  for name in results:
    assert (tmp_path / name / "summary.json").exists()
    assert second["results"][name]["resumed_from"] == results[name]["steps"]


def test_linreg_batch_size_sweeps_and_resumes(tmp_path):
  first, second = run_twice(linreg_batch_size, tmp_path, "batch_size.png")
  config = linreg_batch_size.PRESETS["tiny"]
  num_train = round(0.7 * config["num_examples"])
  results = first["results"]
  assert [int(b) for b in results] == list(config["batch_sizes"])
  for b, run in results.items():
    assert run["steps"] == config["epochs"] * (num_train // int(b))
    assert run["examples_per_s"] > 0 and run["step_us"] > 0
    assert second["results"][b]["resumed_from"] == run["steps"]
  # Same epochs: the smaller batch makes more updates and ends nearer the fit.
  small, large = (results[str(b)] for b in config["batch_sizes"])
  assert small["val_loss"] < large["val_loss"]
