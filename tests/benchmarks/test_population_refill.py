"""benchmarks/population_refill.py: its configurations come from the task's space, and its
table's ratios are each row's speed over the sequential row's of its task."""

import re
import types

import numpy as np

from benchmarks import population_refill


def test_configs_are_drawn_from_the_space_and_the_gpt_keeps_one_structure():
  space = {"learning_rate": ("log", 1e-4, 3e-2), "warmup_fraction": ("uniform", 0.0, 0.3),
           "n_layer": ("choice", [1, 2])}
  seed = int(np.random.default_rng().integers(1000))
  for name in ("gpt", "lora"):
    drawn = population_refill.configs(types.SimpleNamespace(name=name, space=space), 16, seed)
    rates = np.array([c["learning_rate"] for c in drawn])
    assert len(drawn) == 16 and len(set(rates)) == 16
    assert (1e-4 <= rates).all() and (rates <= 3e-2).all()
    assert all(0 <= c["warmup_fraction"] <= 0.3 for c in drawn)
    structure = population_refill.GPT_STRUCTURE if name == "gpt" else {}
    assert all(c.items() >= structure.items() for c in drawn)
    assert all("n_layer" not in c or name == "gpt" for c in drawn)
  again = population_refill.configs(types.SimpleNamespace(name="lora", space=space), 16, seed)
  assert again == drawn  # seeded


def test_report_divides_by_the_sequential_row_of_the_task():
  rng = np.random.default_rng()
  speeds = rng.uniform(1, 100, 4)
  rows = [{"task": task, "method": method, "member_steps": 960, "cpu_s": 960 / speed,
           "wall_s": 1.0, "steps_per_cpu_s": speed}
          for (task, method), speed in zip([("gpt", "sequential"), ("gpt", "refill 4"),
                                            ("lora", "sequential"), ("lora", "refill 4")],
                                           speeds)]
  text = population_refill.report(rows, "cmd", "note")
  ratios = [float(x) for x in re.findall(r"\| ([0-9.]+)x \|", text)]
  np.testing.assert_allclose(ratios, [1.0, speeds[1] / speeds[0], 1.0, speeds[3] / speeds[2]],
                             atol=0.006)
