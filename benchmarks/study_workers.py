"""Many workers on one study: trials per minute with 1, 2 and 4 worker processes against one
PostgreSQL study and one journal file, and the storage's own cost per trial.

  python -m benchmarks.study_workers [--workers 1,2,4] [--budget 48] [--seconds 0.4]
      [--postgres URL] [--out FILE.json]

Each worker is ``tests/study_worker.py``: the tuning experiments' loop (``searching.budget``,
``ask_populations`` of 4 trials, ``tell``) around a population that "trains" for
``--seconds`` (a sleep: the compute a real population would take, here free, so that the
workers measure the study, not the CPU). The workers are released together once imported;
the time runs from their release until the last exits, and trials per minute are the
study's finished trials over it. The ideal is ``workers x 4 x 60 / seconds``; the gap is
the storage and the sampler.

The storage's own cost per trial: one process asks and tells trials (random sampler, no
training) against each storage and against memory; the difference is the storage's. TPE's
own cost, in memory, is given beside it.

Without ``--postgres`` a private PostgreSQL 16 server is started (``pgserver``, the test
extra) in a temporary folder and removed at the end.
"""

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid

from benchmarks import common
from bigtune_jax import tune
from tests import study_worker

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_workers(url: str, workers: int, budget: int, seconds: float, sampler: str) -> dict:
  """``workers`` processes released together on a new study at ``url``."""
  barrier = tempfile.mkdtemp(prefix="bigtune-go-")
  go = os.path.join(barrier, "go")
  study = f"bench_{uuid.uuid4().hex[:8]}"  # a new study, even on a given server
  procs = [subprocess.Popen(
      [sys.executable, "-m", "tests.study_worker", url, f"w{i}", str(budget), "--seed", str(i),
       "--seconds", str(seconds), "--go", go, "--study", study,
       "--sampler", sampler, "--grace", "30"], stdout=subprocess.PIPE,
      text=True, cwd=REPO, env=dict(os.environ, PYTHONPATH=REPO)) for i in range(workers)]
  for proc in procs:
    if proc.stdout.readline().strip() != "ready":
      raise RuntimeError(f"a worker failed to start: {proc.communicate()}")
  start = time.perf_counter()
  open(go, "w").close()
  outputs = [proc.communicate()[0] for proc in procs]
  wall = time.perf_counter() - start
  shutil.rmtree(barrier)
  if any(proc.returncode for proc in procs):
    raise RuntimeError(f"a worker failed: {[p.returncode for p in procs]}")
  trials = sum(line.count(" ") for out in outputs for line in out.splitlines()
               if line.startswith("told "))
  return {"workers": workers, "trials": trials, "wall_s": round(wall, 2),
          "trials_per_min": round(trials / wall * 60, 1),
          "ideal_per_min": round(workers * study_worker.SIZE * 60 / seconds, 1)}


def storage_cost(url: str | None, trials: int, sampler: str = "random") -> float:
  """Milliseconds per trial of ask + tell (heartbeats on) in one process."""
  search = tune.OptunaSearch(study_worker.SPACE, sampler=sampler, storage=url,
                             study_name="cost", heartbeat_interval=60)
  start = time.perf_counter()
  for _ in range(trials // study_worker.SIZE):
    for group in search.ask_populations(1, study_worker.SIZE):
      for trial in group:
        search.tell(trial, study_worker.value(trial.params))
  return round((time.perf_counter() - start) / trials * 1000, 2)


def new_database(server) -> str:
  name = f"bench_{uuid.uuid4().hex[:8]}"
  server.psql(f"CREATE DATABASE {name};")
  return server.get_uri(name)


def main(argv=None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--workers", default="1,2,4")
  parser.add_argument("--budget", type=int, default=48)
  parser.add_argument("--seconds", type=float, default=0.4)
  parser.add_argument("--cost-trials", type=int, default=40)
  parser.add_argument("--sampler", default="random", choices=("random", "tpe"),
                      help="the workers' sampler (random: the storage is what is measured)")
  parser.add_argument("--postgres", default="", help="a server URL; default: start one")
  parser.add_argument("--out", default="")
  args = parser.parse_args(argv)
  folder = tempfile.mkdtemp(prefix="bigtune-bench-")
  server = None
  if not args.postgres:
    import pgserver  # pylint: disable=g-import-not-at-top
    server = pgserver.get_server(os.path.join(folder, "pg"), cleanup_mode="delete")
  urls = {"postgresql": (lambda: args.postgres) if args.postgres else (
              lambda: new_database(server)),
          "journal": lambda: f"journal:{folder}/{uuid.uuid4().hex[:8]}.log"}
  rows = []
  try:
    for kind, url in urls.items():
      for workers in map(int, args.workers.split(",")):
        rows.append({"storage": kind, **run_workers(url(), workers, args.budget, args.seconds,
                                                       args.sampler)})
        print(rows[-1], flush=True)
    cost = {kind: storage_cost(url(), args.cost_trials) for kind, url in urls.items()}
    cost["memory"] = storage_cost(None, args.cost_trials)
    cost["memory, tpe"] = storage_cost(None, args.cost_trials, "tpe")  # the sampler's own
  finally:
    if server is not None:
      server.cleanup()
    shutil.rmtree(folder, ignore_errors=True)
  result = {"command": common.command("benchmarks.study_workers", argv), "rows": rows,
            "ask_tell_ms_per_trial": cost, "load_average": os.getloadavg()}
  print(result["ask_tell_ms_per_trial"])
  common.save(args.out, result)
  return result


if __name__ == "__main__":
  main()
