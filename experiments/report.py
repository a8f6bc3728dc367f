"""The fit-and-report skeleton every experiment shares: :func:`train_and_evaluate` (train
with ``bt.train.fit``, resuming from the workdir, then test), the run's facts and its
``DIR/summary.json``, which holds at least ``experiment, preset, steps,
final_train_loss, test_loss, devices, wall_s`` (plus ``test_accuracy`` for classifiers).
"""

import json
import os
import time
from collections.abc import Callable
from collections.abc import Mapping
from typing import Any

import jax

from bigtune_jax import train
from experiments import cli


def train_and_evaluate(experiment: str, preset: str, model, params, tx, loss_fn, splits,
                       fit_config: train.FitConfig, workdir: str, *, early_stopping=None,
                       extra: Mapping[str, Any] | None = None,
                       report: Callable[[train.TrainState], Mapping[str, Any]] | None = None
                       ) -> dict:
  """Trains with ``bt.train.fit`` (resuming from ``workdir``), evaluates on the test split
  and writes ``summary.json``; returns the summary. ``report(final_state)`` may add
  entries computed from the trained state (e.g. a learned slope)."""
  start = time.time()
  cli.check_batch_size("batch_size", fit_config.batch_size, splits["train"])
  state = train.create_train_state(model, params, tx, seed=fit_config.seed)
  result = train.fit(state, loss_fn, splits["train"], splits.get("validation"),
                     config=fit_config, workdir=workdir, early_stopping=early_stopping)
  test = train.evaluate(loss_fn, result.state.params,
                        splits["test"], fit_config.eval_batch_size)
  last = result.history[-1] if result.history else {}
  summary = {
      "experiment": experiment, "preset": preset, "steps": int(result.state.step),
      "final_train_loss": last.get("train_loss"), "test_loss": test["loss"],
      **({"test_accuracy": test["accuracy"]} if "accuracy" in test else {}),
      "val_loss": last.get("val_loss"), "stopped_early": result.stopped_early,
      "skipped_steps": int(result.state.skipped_steps), "resumed_from": result.resumed_from,
      **run_facts(start), **(extra or {}),
      **(report(result.state) if report is not None else {}),
  }
  write_summary(workdir, summary)
  return summary


def run_facts(start: float) -> dict[str, Any]:
  """``devices``, ``platform`` and ``wall_s`` (seconds since ``start``) of this run."""
  return {"devices": jax.device_count(), "platform": jax.default_backend(),
          "wall_s": round(time.time() - start, 2)}


def finish(workdir: str, summary: Mapping[str, Any], start: float, *,
           hide: tuple[str, ...] = ("config",)) -> dict[str, Any]:
  """Adds :func:`run_facts` before the ``hide`` entries, writes ``summary.json``, prints
  the entries not in ``hide``; returns the summary."""
  shown = {k: v for k, v in summary.items() if k not in hide}
  summary = {**shown, **run_facts(start), **{k: summary[k] for k in hide if k in summary}}
  write_summary(workdir, summary)
  print_summary({k: v for k, v in summary.items() if k not in hide})
  return summary


def write_summary(workdir: str, summary: Mapping[str, Any]) -> None:
  """Atomically writes ``workdir/summary.json``; only process 0 writes on many hosts."""
  if jax.process_index() != 0:
    return
  os.makedirs(workdir, exist_ok=True)
  path = os.path.join(workdir, "summary.json")
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    json.dump(summary, f, indent=2, default=float)
  os.replace(tmp, path)


def print_summary(summary: Mapping[str, Any]) -> None:
  width = max(len(k) for k in summary)
  for key, value in summary.items():
    if isinstance(value, float):
      value = f"{value:.4f}"
    print(f"{key:<{width}}  {value}")
