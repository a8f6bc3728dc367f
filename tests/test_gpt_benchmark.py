"""The GPT train-step benchmark runs end to end on a CPU (tiny preset) and reports sane rows."""

import json
import math

from benchmarks import gpt_step


def test_gpt_step_tiny_preset(tmp_path, capsys):
  out = tmp_path / "gpt_step.json"
  result = gpt_step.main(["--preset", "tiny", "--variants", "bigtune", "--steps", "2",
                          "--out", str(out)])
  table = capsys.readouterr().out
  assert "| framework | variant | ms/step | tokens/s | TFLOP/s | MFU | vs PyTorch |" in table
  assert json.loads(out.read_text())["rows"] == json.loads(json.dumps(result["rows"]))

  rows = {r["framework"]: r for r in result["rows"]}
  assert set(rows) == {"jax", "pytorch"} and rows["jax"]["variant"] == "bigtune"
  s = result["shape"]
  tokens = s["batch"] * s["block"]
  vocab = s["vocab"]
  assert result["flops_per_token"] > 6 * s["n_layer"] * 12 * s["n_embd"] ** 2
  assert result["peak_tflops"] > 0
  for r in rows.values():
    assert r["ms_per_step"] > 0 and len(r["window_s"]) >= 1
    assert math.isclose(r["tokens_per_s"] * r["ms_per_step"] / 1e3, tokens, rel_tol=1e-9)
    assert math.isclose(r["tflops"], result["flops_per_token"] * r["tokens_per_s"] / 1e12)
    assert 0 < r["mfu"] < 1.5  # the tiny CPU peak is a 256^3 product: a rough scale only
    assert abs(r["first_loss"] - math.log(vocab)) < 0.5  # random init, random tokens
    assert math.isfinite(r["last_loss"])
    assert f"| {r['framework']} | {r['variant']} | {r['ms_per_step']:.2f} |" in table
  assert rows["pytorch"]["vs_pytorch"] == 1.0
  assert math.isclose(rows["jax"]["vs_pytorch"],
                      rows["pytorch"]["ms_per_step"] / rows["jax"]["ms_per_step"])
