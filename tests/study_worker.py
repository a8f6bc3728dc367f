"""One worker of a shared study, for tests/tune/test_study_storage.py and
benchmarks/study_workers.py: the loop of the tuning experiments (``searching.budget``,
``ask_populations``, ``tell``) with a population that "trains" by sleeping.

  python -m tests.study_worker STORAGE NAME BUDGET [--role all|worker] [--seconds S]
      [--hang-after N] [--go FILE] [--seed N] [--study NAME] [--sampler tpe|random]
      [--grace S]

Prints ``told N N ...`` after each population it finished, ``hanging N ...`` when it stops
in the middle of its population number ``--hang-after`` (to be SIGKILLed), and ``done``.
With ``--go FILE`` it imports everything, prints ``ready``, then waits for FILE to exist,
so that a test starts several workers on the storage at the same moment.
"""

import argparse
import os
import time

from bigtune_jax import tune
from experiments import searching

SPACE = tune.Space({"x": tune.Uniform(-1.0, 1.0), "width": tune.Choice([8, 16])})
LEADERS, SIZE = 1, 4  # one population of 4 trials of one width per ask


def value(params) -> float:
  return -(params["x"] - 0.3) ** 2 + params["width"] / 100


def main(argv=None) -> None:
  parser = argparse.ArgumentParser()
  parser.add_argument("storage")
  parser.add_argument("name")
  parser.add_argument("budget", type=int)
  parser.add_argument("--role", default="all", choices=searching.ROLES)
  parser.add_argument("--seconds", type=float, default=0.2, help="one population's training")
  parser.add_argument("--hang-after", type=int, default=-1)
  parser.add_argument("--go", default="")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--study", default="shared", help="the study's name in the storage")
  parser.add_argument("--sampler", default="tpe", choices=tune.search.optuna_search.SAMPLERS)
  parser.add_argument("--grace", type=int, default=2,
                      help="seconds without heartbeat before a trial is failed (beats: 1 s)")
  args = parser.parse_args(argv)
  if args.go:
    print("ready", flush=True)
    while not os.path.exists(args.go):
      time.sleep(0.001)
  searcher = tune.OptunaSearch(SPACE, seed=args.seed, sampler=args.sampler,
                               storage=args.storage, study_name=args.study,
                               heartbeat_interval=1, grace_period=args.grace)
  populations = 0
  for want in searching.budget(searcher, args.budget, args.role, poll_s=0.2):
    for group in searcher.ask_populations(min(LEADERS, -(-want // SIZE)), SIZE):
      numbers = " ".join(str(t.number) for t in group)
      if populations == args.hang_after:
        print(f"hanging {numbers}", flush=True)
        time.sleep(600)
      time.sleep(args.seconds)
      for trial in group:
        searcher.tell(trial, value(trial.params), attrs={"worker": args.name})
      print(f"told {numbers}", flush=True)
      populations += 1
  print("done", flush=True)


if __name__ == "__main__":
  main()
