"""MetricsLog (JSON lines, torn-line tolerance, atomic truncation), plot_metrics, Progress."""

import importlib.util
import os
import pathlib
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest

from bigtune_jax.train import metrics
from bigtune_jax.train.metrics import MetricsLog, Progress, plot_metrics

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _log(tmp_path, rows=((1, 0.5), (2, 0.4), (3, 0.3), (4, 0.2))):
  log = MetricsLog(tmp_path / "work" / "metrics.jsonl")
  for step, loss in rows:
    log.append(step, train_loss=loss)
  return log


def test_append_and_rows_round_trip_python_numpy_and_jax_scalars(tmp_path):
  log = MetricsLog(tmp_path / "new" / "dir" / "metrics.jsonl")
  assert log.rows() == []  # nothing written yet, and no folder created by reading
  assert not log.path.parent.exists()
  log.append(jnp.int32(10), train_loss=jnp.float32(0.25), lr=np.float64(0.1),
             correct=np.int64(7), epoch=2, nan=float("nan"))
  log.append(20, val_loss=jnp.asarray(0.5, jnp.bfloat16))
  rows = log.rows()
  assert [type(r["step"]) for r in rows] == [int, int]
  assert rows[0]["train_loss"] == 0.25 and type(rows[0]["train_loss"]) is float
  assert rows[0]["lr"] == 0.1
  assert rows[0]["correct"] == 7 and type(rows[0]["correct"]) is int
  assert rows[0]["epoch"] == 2
  assert np.isnan(rows[0]["nan"])
  assert rows[1] == {"step": 20, "val_loss": 0.5}
  assert log.path.read_text().count("\n") == 2


@pytest.mark.parametrize("step, values, match", [
    (-1, {}, r"step must be an integer >= 0, got -1"),
    (1.5, {}, r"step must be an integer >= 0, got 1\.5"),
    (1, {"loss": jnp.zeros(3)}, r"metric 'loss' must be a scalar"),
    (1, {"loss": "low"}, r"metric 'loss' must be a real number")])
def test_append_rejects_bad_steps_and_values_before_writing(tmp_path, step, values, match):
  log = MetricsLog(tmp_path / "metrics.jsonl")
  with pytest.raises(ValueError, match=match):
    log.append(step, **values)
  assert not log.path.exists()


def test_torn_last_line_is_ignored_and_dropped_by_the_next_append(tmp_path):
  log = _log(tmp_path, rows=[(1, 0.5), (2, 0.4)])
  with open(log.path, "a") as f:
    f.write('{"step": 3, "train_lo')  # a kill in the middle of a write
  assert [r["step"] for r in log.rows()] == [1, 2]
  log.append(3, train_loss=0.3)
  assert [r["step"] for r in log.rows()] == [1, 2, 3]
  assert len(log.path.read_text().splitlines()) == 3  # the torn fragment is gone, not glued


def test_malformed_middle_line_names_file_and_line_number(tmp_path):
  log = _log(tmp_path)
  lines = log.path.read_text().splitlines()
  lines[2] = '{"step": 3, "train_loss": 0.'
  log.path.write_text("\n".join(lines) + "\n")
  with pytest.raises(ValueError, match=r"metrics\.jsonl line 3"):
    log.rows()
  log.path.write_text('{"step": 1}\n["not", "an", "object"]\n{"step": 2}\n')
  with pytest.raises(ValueError, match=r"metrics\.jsonl line 2.*integer \"step\""):
    log.rows()


def test_truncate_after_keeps_rows_up_to_step_atomically(tmp_path):
  log = _log(tmp_path)
  with open(log.path, "a") as f:
    f.write('{"step": 5, "tr')
  log.truncate_after(jnp.int32(2))
  assert log.rows() == [{"step": 1, "train_loss": 0.5}, {"step": 2, "train_loss": 0.4}]
  assert log.path.read_text().endswith("\n")  # the torn line is gone too
  assert sorted(p.name for p in log.path.parent.iterdir()) == ["metrics.jsonl"]  # no tmp left
  log.append(3, train_loss=0.35)  # the resumed run continues the file
  assert [r["step"] for r in log.rows()] == [1, 2, 3]
  MetricsLog(tmp_path / "absent.jsonl").truncate_after(3)  # nothing to truncate: no file made
  assert not (tmp_path / "absent.jsonl").exists()


def test_truncate_after_leaves_the_file_alone_if_it_is_malformed(tmp_path):
  log = _log(tmp_path)
  log.path.write_text('{"step": 1}\nnot json\n{"step": 2}\n')
  with pytest.raises(ValueError, match="line 2"):
    log.truncate_after(1)
  assert log.path.read_text() == '{"step": 1}\nnot json\n{"step": 2}\n'
  assert sorted(p.name for p in log.path.parent.iterdir()) == ["metrics.jsonl"]


def test_series_returns_only_rows_with_the_key(tmp_path):
  log = _log(tmp_path, rows=[(1, 0.5), (2, 0.4)])
  log.append(2, val_loss=0.45)
  steps, values = log.series("val_loss")
  np.testing.assert_array_equal(steps, [2])
  np.testing.assert_array_equal(values, [0.45])
  steps, values = log.series("train_loss")
  assert steps.dtype == np.int64 and values.dtype == np.float64
  np.testing.assert_array_equal(steps, [1, 2])
  steps, values = log.series("missing")
  assert steps.shape == values.shape == (0,)


def _is_png(path):
  return pathlib.Path(path).read_bytes()[:8] == PNG_SIGNATURE


def test_plot_metrics_writes_pngs_only_for_present_keys(tmp_path):
  log = _log(tmp_path)
  log.append(4, val_loss=0.25, val_accuracy=0.9, lr=1e-3)
  paths = plot_metrics(log, tmp_path / "plots", title="mlp")
  assert [pathlib.Path(p).name for p in paths] == ["loss.png", "accuracy.png", "learning_rate.png"]
  assert all(_is_png(p) for p in paths)

  rows = [{"step": s, "train_loss": -float(s)} for s in range(100)]  # not log-scalable
  paths = plot_metrics(rows, tmp_path / "only_loss")
  assert [pathlib.Path(p).name for p in paths] == ["loss.png"]
  assert _is_png(paths[0])
  assert sorted(os.listdir(tmp_path / "only_loss")) == ["loss.png"]
  assert plot_metrics([], tmp_path / "empty") == []


def test_progress_disabled_prints_nothing(capsys):
  with Progress(total=10, enabled=False) as bar:
    for _ in range(10):
      bar.update(loss=jnp.float32(0.5), lr=1e-3)
  out, err = capsys.readouterr()
  assert out == err == ""


def test_progress_enabled_writes_to_stderr(capsys):
  if os.environ.get("TQDM_DISABLE"):
    pytest.skip("TQDM_DISABLE is set in this environment")
  with Progress(total=10, initial=2, desc="fit") as bar:
    for _ in range(8):
      bar.update(loss=jnp.float32(0.123), lr=1e-3)
  out, err = capsys.readouterr()
  assert out == ""
  assert "fit" in err and "10/10" in err
  assert "loss=0.123" in err and "lr=1.0e-03" in err


def test_fresh_interpreter_honours_tqdm_disable_and_never_imports_pyplot(tmp_path):
  # tqdm reads TQDM_* when first imported, and pyplot would pick a backend when imported: both
  # need a fresh interpreter. The module is loaded from its file to skip importing jax.
  spec = importlib.util.find_spec("bigtune_jax.train.metrics")
  code = ("import importlib.util as u, sys;"
          f"s = u.spec_from_file_location('metrics', {spec.origin!r});"
          "m = u.module_from_spec(s); s.loader.exec_module(m);"
          "b = m.Progress(total=3); b.update(3, loss=0.5); b.close();"
          f"m.plot_metrics([{{'step': 0, 'loss': 1.0, 'lr': 0.1}}], {str(tmp_path)!r});"
          "sys.stdout.write(str('matplotlib.pyplot' in sys.modules))")
  env = {**os.environ, "TQDM_DISABLE": "1"}
  result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          timeout=60, check=True)
  assert (result.stdout, result.stderr) == ("False", "")
  assert sorted(os.listdir(tmp_path)) == ["learning_rate.png", "loss.png"]


@pytest.mark.parametrize("value, text", [
    (0.123456, "0.1235"), (1e-3, "1.0e-03"), (0.1, "0.1"), (12345.0, "1.2e+04"), (7, "7"),
    (0.0, "0"), (float("nan"), "nan"), ("x", "x")])
def test_compact_postfix_format(value, text):
  assert metrics._compact(value) == text
