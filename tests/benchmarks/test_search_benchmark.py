"""benchmarks.search runs end to end (tiny preset); part (a) needs no optuna."""

import sys

from benchmarks import search


def test_population_part_runs_without_optuna(monkeypatch):
  monkeypatch.setitem(sys.modules, "optuna", None)  # `import optuna` now raises ImportError
  # One timed repeat: the speed-up is the benchmark's to measure (RESULTS.md), not a test's.
  result = search.main(["--preset", "tiny", "--repeats", "1"])
  assert "samplers" not in result  # skipped, with a note
  part = result["population"]
  modes = [row["mode"] for row in part["rows"]]
  assert modes[0].startswith("population") and modes[-1] == "sequential"
  assert part["max_val_loss_difference"] < 1e-4  # the same configurations were trained
  assert 0.1 < part["best_val_accuracy"] <= 1  # 10 digits: above chance after 20 steps


def test_samplers_part_records_best_so_far_curves():
  result = search.main(["--preset", "tiny", "--part", "samplers"])
  curves = result["samplers"]["curves"]
  preset = search.PRESETS["tiny"]
  for sampler in ("tpe", "random"):
    assert len(curves[sampler]) == preset["tpe_seeds"]
    for curve in curves[sampler]:
      assert len(curve) == preset["tpe_trials"]
      assert all(a <= b for a, b in zip(curve, curve[1:])) and 0 < curve[-1] <= 1
