"""benchmarks.search runs end to end (tiny preset); part (a) needs no optuna."""

import sys

from benchmarks import search


def test_population_part_runs_without_optuna(monkeypatch):
  monkeypatch.setitem(sys.modules, "optuna", None)  # `import optuna` now raises ImportError
  result = search.main(["--preset", "tiny"])
  assert "samplers" not in result  # skipped, with a note
  part = result["population"]
  modes = [row["mode"] for row in part["rows"]]
  assert modes[0].startswith("population") and modes[-1] == "sequential"
  assert part["max_val_loss_difference"] < 1e-4  # the same configurations were trained
  assert part["speedup"] > 1.0  # never slower than one trial after another


def test_samplers_part_records_best_so_far_curves():
  result = search.main(["--preset", "tiny", "--part", "samplers"])
  curves = result["samplers"]["curves"]
  preset = search.PRESETS["tiny"]
  for sampler in ("tpe", "random"):
    assert len(curves[sampler]) == preset["tpe_seeds"]
    for curve in curves[sampler]:
      assert len(curve) == preset["tpe_trials"]
      assert all(a <= b for a, b in zip(curve, curve[1:])) and 0 < curve[-1] <= 1
