"""The searcher every tuning experiment (``tune``, ``tune_lm``, ``finetune_lm``) gets, the
same way: :func:`make_searcher` (its study in ``WORKDIR/study.log`` or a shared storage
URL), the workers' :data:`ROLES` and :data:`budget` (how many trials to ask next; the
experiments search through ``bt.tune.search_populations``, which follows it).
"""

import os
import socket
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


# How many trials to ask next until the study's budget (every worker's trials counted; a
# worker returns, role "all" waits for the others): the library's rule, which
# bt.tune.search_populations follows.
budget = tune.population_search.budget
