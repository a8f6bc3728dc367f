"""The optimizer zoo runs end to end on the bundled digits and every optimizer learns."""

import json
import math

import pytest

from experiments import optimizer_zoo


def test_zoo_trains_every_optimizer_and_writes_its_report(tmp_path, capsys):
  summary = optimizer_zoo.main(["--workdir", str(tmp_path), "--steps", "150"])
  assert json.loads((tmp_path / "summary.json").read_text()) == summary
  assert (tmp_path / "loss_curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  assert set(summary["results"]) == set(optimizer_zoo.OPTIMIZERS)
  for key in ("experiment", "steps", "devices", "wall_s"):
    assert key in summary
  for name, result in summary["results"].items():
    assert result["final_train_loss"] < 0.5 * math.log(10), name  # from chance, 2.30
    assert result["test_accuracy"] > 0.8, name
  assert summary["results"]["sgd_hd"]["final_learning_rate"] > 0.02  # learned up from 0.01
  assert "sgd_hd" in capsys.readouterr().out


def test_unknown_optimizer_is_rejected_before_any_work(tmp_path):
  with pytest.raises(ValueError, match="unknown optimizer"):
    optimizer_zoo.run_zoo(str(tmp_path / "zoo"), names=["GD", "lbfgs"])
  assert not (tmp_path / "zoo").exists()
