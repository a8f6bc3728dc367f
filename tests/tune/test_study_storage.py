"""Many workers on one study (issue 24): a real PostgreSQL server (the ``postgres`` fixture,
``pgserver``) and a journal file, real worker processes (``tests/study_worker.py``)."""

import json
import os
import signal
import subprocess
import sys
import threading
import time
import warnings
import wsgiref.util

import optuna
import pytest

from bigtune_jax import tune
from experiments import finetune_lm
from experiments import searching
from experiments import tune as tune_experiment
from experiments import tune_lm
from tests import study_worker

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
KINDS = ("postgresql", "journal")
# One xdist worker runs this file, so that one PostgreSQL server (a session fixture, asked
# for by name inside `storage`) serves all of it.
pytestmark = pytest.mark.xdist_group("tests.tune.test_study_storage")


@pytest.fixture(params=KINDS)
def storage(request, tmp_path):
  """A URL of a new, empty study storage of each kind."""
  if request.param == "journal":
    return f"journal:{tmp_path}/study.log"
  return request.getfixturevalue("postgres").new_url()


def _start(storage, name, budget, *args):
  return subprocess.Popen(
      [sys.executable, "-m", "tests.study_worker", storage, name, str(budget), *args],
      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
      env=dict(os.environ, PYTHONPATH=REPO))


def _trials(storage):
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    return optuna.load_study(study_name="shared", storage=tune.search.storage.open_storage(
        storage)).get_trials(deepcopy=False)


def _told(output: str) -> list[int]:
  return [int(n) for line in output.splitlines() if line.startswith("told ")
          for n in line.split()[1:]]


def test_workers_started_together_share_the_budget_without_duplicates(storage, tmp_path):
  """Three workers released at once on an empty storage: all survive Optuna's table
  creation race (PostgreSQL refused two of three before), none trains a trial another has,
  and together they stop at the budget with no gap in the trial numbers."""
  budget, go = 24, tmp_path / "go"
  workers = [_start(storage, f"w{i}", budget, "--go", str(go), "--seed", str(i),
                    "--seconds", "0.5", "--grace", "30")  # none dies here, however slow
             for i in range(3)]
  for worker in workers:  # imports done: release them together
    assert worker.stdout.readline().strip() == "ready", worker.communicate()
  go.touch()
  outputs = [worker.communicate(timeout=120) for worker in workers]
  assert [w.returncode for w in workers] == [0, 0, 0], [err[-2000:] for _, err in outputs]
  told = [_told(out) for out, _ in outputs]
  assert sum(map(bool, told)) >= 2, told  # they trained side by side (all, but on a slow
  # machine the last to open the storage may find the budget taken)
  trials = _trials(storage)
  numbers = sorted(n for each in told for n in each)
  assert numbers == [t.number for t in trials] == list(range(len(trials)))  # no dup, no gap
  assert {t.state.name for t in trials} == {"COMPLETE"}
  assert budget <= len(trials) <= budget + 2 * study_worker.SIZE  # at most a last ask each
  for name, each in zip(("w0", "w1", "w2"), told):  # each trial stored by who trained it
    assert {trials[n].user_attrs["worker"] for n in each} == {name}
    assert all(trials[n].value == study_worker.value(trials[n].params) for n in each)


def test_a_killed_worker_loses_nothing_and_its_trials_run_once_more(storage, tmp_path):
  """SIGKILL in the middle of a population: the finished trials stay, the killed ones turn
  FAIL once their grace period (2 s) is over and run once more with their parameters in
  the other worker, which waits for them (role "all"), and the study completes its budget."""
  budget = 16
  victim = _start(storage, "victim", budget, "--hang-after", "1", "--seconds", "0.05")
  rescuer = _start(storage, "rescuer", budget, "--seconds", "0.05", "--go", f"{tmp_path}/go")
  assert rescuer.stdout.readline().strip() == "ready"
  lines = []
  while not (lines and lines[-1].startswith("hanging")):
    lines.append(victim.stdout.readline().strip())
    assert lines[-1] or victim.poll() is None, victim.communicate()
  killed = [int(n) for n in lines[-1].split()[1:]]
  time.sleep(0.3)  # heartbeats have started; the population is "training"
  victim.send_signal(signal.SIGKILL)
  killed_at = time.time()
  assert victim.wait() == -signal.SIGKILL
  before = {t.number: (t.params, t.value) for t in _trials(storage) if t.state.name == "COMPLETE"}
  assert sorted(before) == _told("\n".join(lines)) and before
  assert {_trials(storage)[n].state.name for n in killed} == {"RUNNING"}

  (tmp_path / "go").touch()  # the rescuer trains the rest, then waits for the dead trials
  out, err = rescuer.communicate(timeout=120)
  assert rescuer.returncode == 0 and "done" in out, err[-2000:]
  after = _trials(storage)
  for number, (params, value) in before.items():  # no finished trial lost or changed
    assert (after[number].params, after[number].value) == (params, value)
  assert [after[n].state.name for n in killed] == ["FAIL"] * len(killed)
  # Failed at the rescuer's first look after the grace period (2 s since the last beat,
  # which is at most 1 s old at the kill), never before.
  assert min(after[n].datetime_complete.timestamp() for n in killed) >= killed_at + 2 - 1
  retried = optuna.storages.RetryHeartbeatStaleTrialCallback.retried_trial_number
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    retries = {n: [t for t in after if retried(t) == n] for n in killed}
  assert all(len(r) == 1 and r[0].state.name == "COMPLETE" for r in retries.values())
  assert all(retries[n][0].params == after[n].params for n in killed)  # the same parameters
  assert not [t for t in after if t.state.name in ("RUNNING", "WAITING")]
  assert sum(t.state.name == "COMPLETE" for t in after) >= budget


def test_a_bad_url_or_password_fails_at_once_naming_the_masked_url(postgres, tmp_path):
  space = study_worker.SPACE
  wrong = postgres.new_url(password="wrong-secret")
  start = time.time()
  for url, reason in [(wrong, "refused user 'bigtune'"),
                      ("postgresql://bigtune:secret@127.0.0.1:1/db", "unreachable within")]:
    with pytest.raises(ValueError) as error:
      tune.OptunaSearch(space, storage=url, connect_timeout=2)
    assert str(error.value).startswith(f"storage '{tune.search.storage.masked(url)}' cannot be opened")
    assert reason in str(error.value) and "secret" not in str(error.value)
  assert time.time() - start < 10
  workdir = tmp_path / "run"  # every searching experiment: one error, before any work or file
  for experiment in (tune_experiment, tune_lm, finetune_lm):
    with pytest.raises(ValueError, match=r"storage 'postgresql://bigtune:\*\*\*@/study_"):
      experiment.main(["--workdir", str(workdir), "--preset", "tiny",
                       "--set", f"storage={wrong}"])
    assert not workdir.exists()
  with pytest.raises(ValueError, match="--set role must be one of all, worker, got 'boss'"):
    tune_experiment.main(["--workdir", str(workdir), "--set", "role=boss"])


def test_a_study_stored_with_another_direction_or_space_is_refused_by_name(storage):
  tune.OptunaSearch(study_worker.SPACE, storage=storage, study_name="s").run(
      lambda t: t.params["x"], 2)
  with pytest.raises(ValueError, match="mode='min' differs from the stored study 's'"):
    tune.OptunaSearch(study_worker.SPACE, storage=storage, study_name="s", mode="min")
  other = tune.Space({"x": tune.Uniform(-1.0, 2.0), "width": tune.Choice([8, 16])})
  with pytest.raises(ValueError, match=r"study 's' was stored with another search space: "
                                       r"axes \['x'\] differ"):
    tune.OptunaSearch(other, storage=storage, study_name="s")
  again = tune.OptunaSearch(study_worker.SPACE, storage=storage, study_name="s")
  assert len(again.results) == 2  # the same space resumes


def test_optuna_dashboard_opens_the_study(postgres):
  """``optuna-dashboard URL`` serves the study: its WSGI app, asked for the study list."""
  dashboard = pytest.importorskip("optuna_dashboard")
  url = postgres.new_url()
  search = tune.OptunaSearch(study_worker.SPACE, storage=url, study_name="seen")
  search.run(lambda t: t.params["x"], 3)
  environ = {"PATH_INFO": "/api/studies", "REQUEST_METHOD": "GET"}
  wsgiref.util.setup_testing_defaults(environ)
  status = []
  body = b"".join(dashboard.wsgi(url)(environ, lambda s, h, *a: status.append(s)))
  assert status == ["200 OK"]
  assert b'"study_name": "seen"' in body.replace(b'":"', b'": "')
  assert search.study.user_attrs[tune.search.optuna_search.SPACE_ATTR]["x"] == repr(
      study_worker.SPACE.distributions["x"])


def test_budget_counts_every_worker_and_a_worker_does_not_wait(tmp_path):
  """``searching.budget`` without processes: trials running elsewhere count against the
  budget; a worker then returns, role "all" waits until they are told."""
  url = f"journal:{tmp_path}/s.log"
  mine, other = (tune.OptunaSearch(study_worker.SPACE, storage=url, study_name="b",
                                   seed=seed) for seed in (0, 1))
  elsewhere = other.ask(3)
  assert next(searching.budget(mine, 4, "worker")) == 1
  assert list(searching.budget(mine, 3, "worker")) == []
  threading.Timer(0.5, lambda: [other.tell(t, 0.0) for t in elsewhere]).start()
  start = time.time()
  assert list(searching.budget(mine, 3, "all", poll_s=0.05)) == []
  assert time.time() - start >= 0.5 and len(mine.results) == 3


def test_a_live_worker_whose_trial_was_failed_drops_its_result(tmp_path):
  """Another worker failed this one's trial (its heartbeats were late: an overloaded
  machine): ``report`` says stop, ``tell`` warns and drops the result, nothing raises."""
  url = f"journal:{tmp_path}/s.log"
  search = tune.OptunaSearch(study_worker.SPACE, storage=url, study_name="late")
  late, kept = search.ask(2)
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    optuna.load_study(study_name="late", storage=tune.search.storage.open_storage(url)).tell(
        late.number, state=optuna.trial.TrialState.FAIL)
  assert search.report(late, 0, 0.5) is True and search.report(kept, 0, 0.5) is False
  with pytest.warns(UserWarning, match="trial 0 was failed by another worker"):
    search.tell(late, 0.5, attrs={"worker": "me"})
  search.tell(kept, 0.7)
  assert [(r.number, r.value) for r in search.results] == [(1, 0.7)]


def test_a_worker_only_searches_and_the_other_run_reports_the_whole_study(tmp_path,
                                                                          monkeypatch):
  """README's two commands, tiny: ``role=worker`` fills the study's budget and exits
  without a final model; the run without it finds the budget met, trains no trial, and
  retrains and reports the best of the worker's trials (read back from the study)."""
  url = f"journal:{tmp_path}/shared.log"
  worker = tune_experiment.main(["--workdir", str(tmp_path / "w1"), "--preset", "tiny",
                                 "--set", f"storage={url}", "--set", "role=worker"])
  assert worker["role"] == "worker" and worker["trials"] == 4
  assert not (tmp_path / "w1" / "final").exists()
  assert not (tmp_path / "w1" / "study.log").exists()  # the study is in the shared storage
  monkeypatch.setattr(tune.PopulationTask, "train", lambda *args, **kwargs: pytest.fail(
      "the budget was met: no trial trains again"))
  summary = tune_experiment.main(["--workdir", str(tmp_path / "all"), "--preset", "tiny",
                                  "--set", f"storage={url}"])
  assert summary["trials"] == 4 and (tmp_path / "all" / "report.md").exists()
  rows = [json.loads(line) for line in (tmp_path / "w1" / "trials.jsonl").read_text().splitlines()]
  best = max(rows, key=lambda r: (r["val_accuracy"], -r["val_loss"]))
  assert summary["best_config"] == {k: best[k] for k in summary["best_config"]}
