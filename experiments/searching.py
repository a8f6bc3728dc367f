"""The searcher every tuning experiment (``tune``, ``tune_lm``, ``finetune_lm``) gets, the
same way: :func:`make_searcher` (its study in ``WORKDIR/study.log`` or a shared storage
URL), the workers' :data:`ROLES`, :func:`budget` (how many trials to ask next) and
:func:`attrs` (values stored with a trial).
"""

import os
import socket
import time
from collections.abc import Mapping
from typing import Any

import numpy as np

from bigtune_jax import tune
from experiments import cli

ROLES = cli.ROLES  # the --set role values; the rule that checks them is cli's
# The settings of every searching experiment: its study's storage URL (empty: a journal in
# the workdir) and its role.
STUDY = {"storage": "", "role": "all"}


def make_searcher(space: tune.Space, config: Mapping[str, Any], workdir: str, *,
                  study_name: str, mode: str = "max") -> tune.Searcher:
  """The searcher of a tuning experiment (``tune``, ``tune_lm``, ``finetune_lm``): Optuna
  with the ``sampler`` and ``pruner`` settings of ``config``; or, where optuna is not
  installed, random search seeded by ``config["seed"]`` (it never prunes). ``mode`` says
  whether the searched value is best at its ``"max"`` (an accuracy) or ``"min"`` (a loss).

  The study lives in ``config["storage"]``: a URL that many workers share
  (``postgresql://user:password@host/db``, ``journal:/shared/study.log``), or, when empty,
  ``workdir/study.log``, so that a run started again resumes it. A ``worker``
  (``config["role"]``) draws from a seed of its own (``seed``, host and process), so that
  workers started together do not propose the same trials. Heartbeats every 10 s: a dead
  worker's trials fail after 30 s and run once more."""
  try:
    import optuna  # pylint: disable=g-import-not-at-top
  except ImportError:
    return tune.RandomSearch(space, seed=config["seed"], mode=mode)
  optuna.logging.set_verbosity(optuna.logging.WARNING)
  storage = config.get("storage") or f"journal:{os.path.join(workdir, 'study.log')}"
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
  cli.check_settings({"role": role})
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
