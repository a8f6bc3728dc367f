"""The GPT train-step benchmark: its derived columns against hand arithmetic, and one run end
to end on a CPU (tiny preset) that reports sane rows."""

import json
import math

import pytest

from benchmarks import gpt_step

# The tiny preset (L 2, H 2, d 64, vocab 256, T 64), counted by hand: per block ln_1 128,
# c_attn 64*192 + 192, c_proj 64*64 + 64, ln_2 128, c_fc 64*256 + 256, mlp c_proj 256*64 + 64
# = 49,984; two blocks, ln_f 128 and the tied token embedding 256*64 (the position embedding
# left out): N = 116,480. 6 N + 12 L H Q T = 698,880 + 12*2*2*32*64 = 797,184.
TINY_FLOPS_PER_TOKEN = 797_184


def test_summarise_derives_the_columns_from_the_median_window():
  """Windows whose mean differs from their median; the larger peak is the second row's.
  By hand: 4 x 64 = 256 tokens a step; jax 0.2 s -> 200 ms, 1,280 tokens/s, 1.28 TFLOP/s
  at 1 GFLOP/token, MFU 1.28 / 2.56 = 0.5; pytorch 0.5 s -> 512 tokens/s, 0.512 TFLOP/s,
  MFU 0.2; jax runs 500 / 200 = 2.5x as fast."""
  result = {"shape": {"batch": 4, "block": 64}, "flops_per_token": 1e9, "rows": [
      {"framework": "jax", "window_s": [0.1, 0.6, 0.2], "peak_tflops": 1.0},
      {"framework": "pytorch", "window_s": [1.5, 0.4, 0.5], "peak_tflops": 2.56}]}
  jax_row, torch_row = gpt_step.summarise(result)["rows"]
  assert result["peak_tflops"] == 2.56
  expected = {"jax": (200, 1280, 1.28, 0.5, 2.5), "pytorch": (500, 512, 0.512, 0.2, 1.0)}
  for row in (jax_row, torch_row):
    actual = tuple(row[k] for k in ("ms_per_step", "tokens_per_s", "tflops", "mfu",
                                    "vs_pytorch"))
    assert actual == pytest.approx(expected[row["framework"]], rel=1e-12), row["framework"]


def test_gpt_step_tiny_preset(tmp_path, capsys):
  out = tmp_path / "gpt_step.json"
  result = gpt_step.main(["--preset", "tiny", "--variants", "bigtune", "--steps", "2",
                          "--out", str(out)])
  table = capsys.readouterr().out
  assert "| framework | variant | ms/step | tokens/s | TFLOP/s | MFU | vs PyTorch |" in table
  assert json.loads(out.read_text())["rows"] == json.loads(json.dumps(result["rows"]))

  rows = {r["framework"]: r for r in result["rows"]}
  assert set(rows) == {"jax", "pytorch"} and rows["jax"]["variant"] == "bigtune"
  assert result["flops_per_token"] == TINY_FLOPS_PER_TOKEN
  assert result["peak_tflops"] > 0
  for r in rows.values():
    assert len(r["window_s"]) == 1  # 2 timed steps in windows of 2
    assert r["ms_per_step"] == pytest.approx(1e3 * r["window_s"][0])
    assert r["mfu"] > 0
    assert abs(r["first_loss"] - math.log(256)) < 0.5  # random init, random tokens
    assert math.isfinite(r["last_loss"])
    assert f"| {r['framework']} | {r['variant']} | {r['ms_per_step']:.2f} |" in table
  assert rows["pytorch"]["vs_pytorch"] == 1.0
