"""What every experiment shares: its command line, training through ``bt.train.fit`` and
its report.

  python -m experiments.NAME --workdir DIR [--preset small|full|tiny] [--set key=value ...]

``small`` (the default) finishes in about a minute on a 2-core CPU, ``full`` is the
seed's size for a GPU, and ``tiny`` is the smoke test that CI runs. ``--set`` overrides one
field of the preset, parsed with the type of its default (``--set hidden=128,64``). Running
again on the same workdir resumes from its last checkpoint. Each run writes
``DIR/summary.json`` with at least ``experiment, preset, steps, final_train_loss,
test_loss, devices, wall_s`` (plus ``test_accuracy`` for classifiers).
"""

import argparse
import json
import math
import os
import socket
import sys
import time
from collections.abc import Callable
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np
import optax

from bigtune_jax import data
from bigtune_jax import train
from bigtune_jax import tune

PRESETS = ("tiny", "small", "full")
# A search's part (--set role=): "all" searches, waits for the other workers of the study
# and then trains, tests and reports the best trial; a "worker" only searches.
ROLES = ("all", "worker")
# The settings of every searching experiment: its study's storage URL (empty: a journal in
# the workdir) and its role.
STUDY = {"storage": "", "role": "all"}


def _parse_value(key: str, text: str, default: Any) -> Any:
  """``text`` as the type of ``default`` (``eval_every``: an integer, or ``epoch``)."""
  try:
    if key == "eval_every":
      return None if text.lower() in ("epoch", "none") else int(text)
    if isinstance(default, bool):
      if text.lower() not in ("true", "false", "1", "0"):
        raise ValueError(text)
      return text.lower() in ("true", "1")
    if isinstance(default, tuple):
      return tuple(type(default[0])(x) if default else int(x) for x in text.split(",") if x)
    if default is None:
      return text
    return type(default)(text)
  except ValueError as error:
    raise ValueError(f"--set {key}={text}: expected a value of type "
                     f"{type(default).__name__} like {default!r}") from error


class Rule:
  """What a setting accepts: ``test(value)`` is True for an accepted value; ``accepted``
  says so in words (``an integer >= 1``)."""

  def __init__(self, test: Callable[[Any], bool], accepted: str):
    self.test, self.accepted = test, accepted

  def check(self, key: str, value: Any) -> None:
    try:
      ok = bool(self.test(value))
    except (TypeError, ValueError):
      ok = False
    if not ok:
      shown = ",".join(map(str, value)) if isinstance(value, tuple) else repr(value)
      raise ValueError(f"--set {key} must be {self.accepted}, got {shown or '(nothing)'}")


def _is_int(value) -> bool:
  return isinstance(value, int) and not isinstance(value, bool)


def _is_real(value) -> bool:
  return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def integer(low: int = 1) -> Rule:
  return Rule(lambda v: _is_int(v) and v >= low, f"an integer >= {low}")


def number(low: float, high: float = math.inf, *, low_open: bool = False,
           high_open: bool = True) -> Rule:
  """A finite number in the interval, written as ``[low, high)`` etc. in the message."""
  def test(v):
    return _is_real(v) and (v > low if low_open else v >= low) and (
        v < high if high_open else v <= high)
  if high == math.inf:
    return Rule(test, f"a finite number {'>' if low_open else '>='} {low:g}")
  return Rule(test, f"a number in {'(' if low_open else '['}{low:g}, {high:g}"
                    f"{')' if high_open else ']'}")


def fraction(*, low_open: bool = False, high_open: bool = True) -> Rule:
  return number(0.0, 1.0, low_open=low_open, high_open=high_open)


def integers(low: int = 1) -> Rule:
  return Rule(lambda v: len(v) > 0 and all(_is_int(x) and x >= low for x in v),
              f"one or more integers >= {low}, comma-separated")


def one_of(*options) -> Rule:
  return Rule(lambda v: v in options, f"one of {', '.join(map(str, options))}")


def some_of(*options) -> Rule:
  return Rule(lambda v: len(v) > 0 and all(x in options for x in v),
              f"one or more of {', '.join(map(str, options))}, comma-separated")


def log_range() -> Rule:
  return Rule(lambda v: len(v) == 2 and all(map(_is_real, v)) and 0 < v[0] < v[1],
              "a pair LOW,HIGH with 0 < LOW < HIGH (a log-uniform range)")


IMAGE_DATASETS = ("digits", "mnist", "fashion_mnist", "cifar10")

# The settings that mean the same in every experiment that has them; an experiment adds its
# own through ``parse_args(..., checks=)``.
RULES = {
    **{key: integer(1) for key in (
        "steps", "batch_size", "eval_batch_size", "search_steps", "search_batch_size",
        "pretrain_steps", "finetune_steps", "qat_steps", "updates", "epochs", "timing_steps",
        "micro_batch", "accumulation", "calibration_batches", "prune_every", "rounds",
        "leaders", "population", "search_epochs", "final_epochs", "checkpoint_every_evals",
        "num_examples", "block_size", "sample_bytes", "n_layer",
        "n_head", "n_embd", "hidden_size", "head_size", "nodes", "classifier_width",
        "final_tokens", "trial_tokens", "evals", "step_size", "base_batch_size", "fsdp",
        "tensor")},
    **{key: integer(0) for key in ("seed", "warmup_steps", "finetune_per_class")},
    "eval_every": Rule(lambda v: v is None or (_is_int(v) and v >= 1),
                       "an integer >= 1 (steps), or epoch (once per epoch)"),
    **{key: number(0.0, low_open=True) for key in (
        "learning_rate", "finetune_learning_rate", "head_learning_rate", "width")},
    **{key: number(0.0) for key in ("l1", "l2", "min_delta")},
    **{key: fraction() for key in ("momentum", "label_noise", "dropout", "dropout_rate")},
    "train_fraction": fraction(low_open=True, high_open=False),
    **{key: integers(1) for key in (
        "hidden", "batch_sizes", "ranks", "lora_ranks", "layers", "widths", "n_layers")},
    **{key: log_range() for key in ("lr_range", "weight_decay_range")},
    "dataset": one_of(*IMAGE_DATASETS),
    "sampler": one_of("tpe", "random"),
    "pruner": one_of("none", "median", "hyperband"),
    "role": one_of(*ROLES),
}


def check_settings(config: Mapping[str, Any],
                   checks: Mapping[str, Rule] | None = None) -> None:
  """Each setting of ``config`` against its rule (``RULES``, then ``checks``): one
  ``ValueError`` naming the first bad one, before any work or write."""
  rules = {**RULES, **(checks or {})}
  for key, value in config.items():
    if key in rules:
      rules[key].check(key, value)
  if config.get("dataset") == "digits" and config.get("data_dir"):
    raise ValueError(f"--set data_dir={config['data_dir']}: the digits are bundled and read "
                     "no files; leave data_dir empty, or pass --set dataset=mnist, "
                     "fashion_mnist or cifar10 with it")


def check_batch_size(key: str, batch_size: int, dataset,
                     what: str = "training examples") -> None:
  """``batch_size`` must not exceed the examples of ``dataset`` (no full batch otherwise)."""
  if batch_size > len(dataset):
    raise ValueError(f"--set {key} must be at most the number of {what} ({len(dataset)}), "
                     f"got {batch_size}")


def parse_args(argv, presets: Mapping[str, Mapping[str, Any]], description: str,
               checks: Mapping[str, Rule] | None = None):
  """Returns ``(workdir, preset name, config dict)``; errors name the bad flag. Every
  setting is checked (:func:`check_settings` with ``checks``): a bad one is a
  ``ValueError`` that :func:`run` prints as a usage error."""
  parser = argparse.ArgumentParser(description=description)
  parser.add_argument("--workdir", required=True, help="checkpoints, metrics and report")
  parser.add_argument("--preset", default="small", choices=sorted(presets))
  parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                      help="override one field of the preset")
  args = parser.parse_args(argv)
  if os.path.exists(args.workdir) and not os.path.isdir(args.workdir):
    parser.error(f"--workdir {args.workdir} is a file, not a directory")
  parent = os.path.dirname(os.path.abspath(args.workdir))
  while not os.path.exists(parent):
    parent = os.path.dirname(parent)
  if not os.path.isdir(parent):
    parser.error(f"--workdir {args.workdir}: {parent} is a file, not a directory")
  config = dict(presets[args.preset])
  for item in args.set:
    key, sep, text = item.partition("=")
    if not sep:
      parser.error(f"--set expects KEY=VALUE, got {item!r}")
    if key not in config:
      parser.error(f"--set {key}: unknown field; the fields are {sorted(config)}")
    try:
      config[key] = _parse_value(key, text, config[key])
    except ValueError as error:
      parser.error(str(error))
  check_settings(config, checks)
  return args.workdir, args.preset, config


# What a person can fix on the command line: a setting, a path, a workdir in use or one
# that cannot be written (PermissionError: a read-only folder or mount).
USER_ERRORS = (ValueError, FileNotFoundError, NotADirectoryError, PermissionError,
               train.WorkdirInUseError)


def _check_workdir_flag(argv: list[str]) -> None:
  """The ``--workdir`` of ``argv``, if given, can be written (``train.workdir``'s check),
  before ``main`` loads data or trains: a read-only workdir is named at once."""
  parser = argparse.ArgumentParser(add_help=False)
  parser.add_argument("--workdir")
  known, _ = parser.parse_known_args(argv)
  if known.workdir:
    try:
      train.workdir.check_writable(known.workdir)
    except ValueError:
      pass  # a file, not a directory: parse_args names it in argparse's words


def run(main: Callable[[], Any]) -> None:
  """Runs ``main()`` as a command: a bad setting, or a workdir that cannot be written,
  prints the usage and one ``error:`` line naming it (what argparse prints for a bad flag)
  and exits with status 2, no traceback, before any training. ``BIGTUNE_TRACEBACK=1``
  re-raises instead; called as a function, ``main(argv)`` keeps raising ``ValueError``."""
  try:
    _check_workdir_flag(sys.argv[1:])
    main()
  except USER_ERRORS as error:
    if os.environ.get("BIGTUNE_TRACEBACK"):
      raise
    spec = getattr(sys.modules["__main__"], "__spec__", None)
    prog = f"python -m {spec.name}" if spec is not None else os.path.basename(sys.argv[0])
    message = str(error).splitlines()[0] if str(error) else type(error).__name__
    print(f"usage: {prog} --workdir DIR [--preset NAME] [--set KEY=VALUE ...]\n"
          f"{prog}: error: {message}", file=sys.stderr)
    raise SystemExit(2) from None


def load_images(config: Mapping[str, Any], image_size: int) -> dict[str, data.ArrayDataset]:
  """The ``dataset`` of ``config``: the bundled digits at ``image_size``, or the files in
  ``data_dir`` (``mnist``, ``cifar10``, ...; nothing is downloaded), split by ``seed``."""
  check_settings({k: config[k] for k in ("dataset", "data_dir")})
  if config["dataset"] == "digits":
    return data.load_dataset("digits", seed=config["seed"], image_size=image_size)
  if not config["data_dir"]:
    raise ValueError(f"dataset {config['dataset']!r} is read from its files and nothing is "
                     "downloaded: pass --set data_dir=DIR (or --set dataset=digits)")
  if not os.path.exists(config["data_dir"]):
    raise ValueError(f"--set data_dir={config['data_dir']}: no such file or folder")
  return data.load_dataset(config["dataset"], config["data_dir"], seed=config["seed"])


def make_searcher(space: tune.Space, config: Mapping[str, Any], workdir: str, *,
                  study_name: str, mode: str = "max",
                  journal: str = "study.log") -> tune.Searcher:
  """The searcher of a tuning experiment (``tune``, ``tune_lm``, ``finetune_lm``): Optuna
  with the ``sampler`` and ``pruner`` settings of ``config``; or, where optuna is not
  installed, random search seeded by ``config["seed"]`` (it never prunes). ``mode`` says
  whether the searched value is best at its ``"max"`` (an accuracy) or ``"min"`` (a loss).

  The study lives in ``config["storage"]``: a URL that many workers share
  (``postgresql://user:password@host/db``, ``journal:/shared/study.log``), or, when empty,
  ``workdir/study.log`` (``journal``), so that a run started again resumes it. A ``worker``
  (``config["role"]``) draws from a seed of its own (``seed``, host and process), so that
  workers started together do not propose the same trials. Heartbeats every 10 s: a dead
  worker's trials fail after 30 s and run once more."""
  try:
    import optuna  # pylint: disable=g-import-not-at-top
  except ImportError:
    return tune.RandomSearch(space, seed=config["seed"], mode=mode)
  optuna.logging.set_verbosity(optuna.logging.WARNING)
  storage = config.get("storage") or f"journal:{os.path.join(workdir, journal)}"
  seed = config["seed"]
  if config.get("role") == "worker":
    entropy = [seed, os.getpid(), *socket.gethostname().encode()]
    seed = int(np.random.SeedSequence(entropy).generate_state(1)[0])
  if not config.get("storage"):
    os.makedirs(workdir, exist_ok=True)
  return tune.OptunaSearch(space, seed=seed, sampler=config["sampler"],
                           pruner=config["pruner"], storage=storage, study_name=study_name,
                           mode=mode, heartbeat_interval=10, grace_period=30)


def attrs(searcher: tune.Searcher, **values: float) -> dict[str, Any]:
  """``{"attrs": values}`` for a searcher that stores them with a trial (Optuna: every
  worker reads them back), else ``{}``: ``searcher.tell(..., **attrs(searcher, ...))``."""
  return {"attrs": values} if isinstance(searcher, tune.OptunaSearch) else {}


def budget(searcher: tune.Searcher, total: int, role: str = "all", poll_s: float = 2.0):
  """Yields how many trials to ask next, until the study holds ``total`` finished
  (complete or pruned) trials of any worker: ``total`` less the finished, running and
  waiting ones, plus the waiting ones (a dead worker's trials, queued again; ``ask`` hands
  them out first). Once the rest is in other workers' hands, a ``"worker"`` returns and
  role ``"all"`` waits for them (failing and re-running the trials of workers that die),
  so that it alone retrains the best trial and reports on the whole study. Workers asking
  at the same moment may each take the last trials: the study can end a population above
  ``total``, never below."""
  check_settings({"role": role})
  while True:
    counts = (searcher.progress() if isinstance(searcher, tune.OptunaSearch) else
              {"complete": len(searcher.results), "pruned": 0, "running": 0, "waiting": 0})
    left = total - sum(counts[k] for k in ("complete", "pruned", "running", "waiting"))
    if left > 0 or counts["waiting"]:
      yield max(left, 0) + counts["waiting"]
    elif counts["running"] and role == "all":
      time.sleep(poll_s)
    else:
      return


def with_logged_rate(make_optimizer: Callable[[Mapping[str, Any]], Any],
                     settings: Mapping[str, Any]):
  """``make_optimizer(settings)`` with its ``learning_rate`` injected
  (``optax.inject_hyperparams``): the rate then sits in the optimizer state, where
  ``bt.train.fit`` reads it for its log and the learning-rate plot."""
  return optax.inject_hyperparams(lambda learning_rate: make_optimizer(
      dict(settings, learning_rate=learning_rate)))(learning_rate=settings["learning_rate"])


def train_and_evaluate(experiment: str, preset: str, model, params, tx, loss_fn, splits,
                       fit_config: train.FitConfig, workdir: str, *, early_stopping=None,
                       extra: Mapping[str, Any] | None = None,
                       report: Callable[[train.TrainState], Mapping[str, Any]] | None = None
                       ) -> dict:
  """Trains with ``bt.train.fit`` (resuming from ``workdir``), evaluates on the test split
  and writes ``summary.json``; returns the summary. ``report(final_state)`` may add
  entries computed from the trained state (e.g. a learned slope)."""
  start = time.time()
  check_batch_size("batch_size", fit_config.batch_size, splits["train"])
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
