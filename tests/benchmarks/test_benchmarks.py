"""The optimizer-step benchmark runs end to end (tiny preset) and reports every row."""

import math

import os

from benchmarks import optimizer_step
from tests import multiprocess


def test_optimizer_step_benchmark_smoke(monkeypatch):
  # The JAX rows run in a spawned process, which compiles ~20 tiny programs: LLVM -O0 there.
  flags = f"{os.environ.get('XLA_FLAGS', '')} {multiprocess.FAST_COMPILE}".strip()
  monkeypatch.setenv("XLA_FLAGS", flags)
  result = optimizer_step.main(["--preset", "tiny", "--steps", "1", "--warmup", "1"])
  names = {(row["name"], row["layout"]) for row in result["rows"]}
  for layout in ("separate", "stacked"):
    for name in ("bt.adam", "optax.adam", "bt.adam bf16 moments", "bt.momentum",
                 "bt.adaptive_sgd", "copy (x + 1)"):
      assert (name, layout) in names
    assert any(n.startswith("torch.AdamW") and l == layout for n, l in names)
  for row in result["rows"]:
    assert row["median_ms"] > 0 and math.isfinite(row["gb_per_s"])
  assert result["ratios"]


def test_engine_benchmark_smoke():
  from benchmarks import engine  # pylint: disable=g-import-not-at-top
  result = engine.main(["--repeats", "1", "--batch-sizes", "64"])
  assert [(r["what"], r["case"]) for r in result["rows"]] == [
      ("init_params", "MLP 256-256"), ("init_params", "GPT 2x64"),
      ("evaluate", "1258 digits, batch 64")]
  for row in result["rows"]:
    assert row["ms"] > 0 and row["baseline_ms"] > 0 and math.isfinite(row["speedup"])
