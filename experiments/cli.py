"""The command line every experiment shares: its flags, presets, the rules of ``--set``,
and :func:`run`, which turns a bad setting into a usage error.

  python -m experiments.NAME --workdir DIR [--preset small|full|tiny] [--set key=value ...]

``small`` (the default) finishes in about a minute on a 2-core CPU, ``full`` is the
seed's size for a GPU, and ``tiny`` is the smoke test that CI runs. ``--set`` overrides one
field of the preset, parsed with the type of its default (``--set hidden=128,64``), and is
checked against its :class:`Rule` before any work. Running again on the same workdir
resumes from its last checkpoint (``report.py`` writes ``DIR/summary.json``).
"""

import argparse
import math
import os
import sys
from collections.abc import Callable
from collections.abc import Mapping
from typing import Any

from bigtune_jax import train
from bigtune_jax.tune import population_search

PRESETS = ("tiny", "small", "full")
# A search's part (--set role=): "all" searches, waits for the other workers of the study
# and then trains, tests and reports the best trial; a "worker" only searches.
ROLES = population_search.ROLES  # the roles of a shared study's processes


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
