"""Where an Optuna study lives, by URL: memory, a journal file, or a database server shared
by many workers (Optuna's "distributed optimization" guide; seed 003 §3.1).

* ``None``: in memory, one process.
* ``"journal:/path/study.log"``: Optuna's ``JournalFileBackend``, an append-only file; many
  processes on one machine, or on several machines through a shared filesystem.
* an RDB URL, ``"postgresql://user:password@host/db"``, ``"mysql://..."`` or
  ``"sqlite:///study.db"``: Optuna's ``RDBStorage``; workers on any machine that reaches the
  server. A URL without a driver takes the first installed one of :data:`DRIVERS`.

Both persistent kinds keep Optuna's heartbeat protocol (Optuna gives it to RDBs only; the
journal gets it here): a running trial records a beat every ``heartbeat_interval``
seconds, and a trial whose last beat is older than ``grace_period`` (its worker died) is
failed and its parameters queued once more (``RetryHeartbeatStaleTrialCallback``, called
``RetryFailedTrialCallback`` before Optuna 4.9, ``max_retry=1``).

Workers started together on an empty database race to create Optuna's tables: PostgreSQL
refuses all but one with ``UniqueViolation ... pg_type_typname_nsp_index``. Creation is
retried here (the tables then exist; Optuna creates only what is missing). Every other
failure is one ``ValueError`` naming the URL with its password masked and what went wrong
(no driver, unreachable, user or password refused). Optuna is imported lazily.
"""

import importlib.util
import os
import random
import re
import time
from typing import Any
import warnings

MAX_RETRY = 1  # a dead worker's trial runs once more with its parameters, then is left failed
HEARTBEAT_ATTR = "bigtune:heartbeat"
# The drivers tried, in order, for a URL that names none (``postgresql://``): SQLAlchemy's
# name and the module it imports.
DRIVERS = {"postgresql": (("psycopg", "psycopg"), ("psycopg2", "psycopg2")),
           "mysql": (("mysqldb", "MySQLdb"), ("pymysql", "pymysql"))}
_PIP = {"postgresql": 'pip install "psycopg[binary]"', "mysql": "pip install pymysql"}
_CREATE_TRIES = 8  # concurrent creators of the tables: each retry finds more of them made
_REFUSED = ("password authentication failed", "access denied", "authentication failed",
            "does not exist", "no password supplied", "no pg_hba.conf entry")
ACCEPTED = ("None, 'journal:/path/file.log', an RDB URL such as 'sqlite:///study.db' or "
            "'postgresql://user@host/db', or an optuna storage")


def quietly(make):
  """Calls ``make()`` hiding Optuna's ExperimentalWarning (multivariate TPE, heartbeats) and
  its warning that heartbeats need ``Study.optimize`` (bigtune records them itself)."""
  import optuna  # pylint: disable=g-import-not-at-top
  with warnings.catch_warnings():
    warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
    warnings.filterwarnings("ignore", "Heartbeat of storage is supposed to be used with")
    return make()


def _journal_with_heartbeat(backend, heartbeat_interval: int, grace_period: int | None):
  """A ``JournalStorage`` with Optuna's heartbeat protocol, which Optuna gives RDBs only.

  A running trial records ``time.time()`` as a system attribute every ``heartbeat_interval``
  seconds (one journal line each); ``fail_stale_trials`` then fails the running trials whose
  last beat (or start, before the first) is older than ``grace_period`` and re-queues their
  parameters, exactly as ``RDBStorage`` does.
  """
  import optuna  # pylint: disable=g-import-not-at-top
  from optuna.storages._heartbeat import BaseHeartbeat  # pylint: disable=g-import-not-at-top

  class HeartbeatJournalStorage(optuna.storages.JournalStorage, BaseHeartbeat):
    """Journal storage whose dead workers' trials go stale instead of running forever."""

    def record_heartbeat(self, trial_id: int) -> None:
      self.set_trial_system_attr(trial_id, HEARTBEAT_ATTR, time.time())

    def _get_stale_trial_ids(self, study_id: int) -> list[int]:
      grace = grace_period or 2 * heartbeat_interval
      now = time.time()
      running = self.get_all_trials(study_id, deepcopy=False,
                                    states=(optuna.trial.TrialState.RUNNING,))
      return [t._trial_id for t in running  # pylint: disable=protected-access
              if now - t.system_attrs.get(HEARTBEAT_ATTR, t.datetime_start.timestamp()) > grace]

    def get_heartbeat_interval(self) -> int:
      return heartbeat_interval

    def get_heartbeat_stale_trial_callback(self):
      return optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRY)

  return quietly(lambda: HeartbeatJournalStorage(backend))


def _open_journal(storage: str, heartbeat_interval: int, grace_period: int | None):
  import optuna  # pylint: disable=g-import-not-at-top
  path = os.path.abspath(os.path.expanduser(storage[len("journal:"):]))
  if not storage[len("journal:"):] or not os.path.isdir(os.path.dirname(path)):
    raise ValueError(f"storage {storage!r}: the journal file's folder must exist")
  try:
    return _journal_with_heartbeat(optuna.storages.journal.JournalFileBackend(path),
                                   heartbeat_interval, grace_period)
  except OSError as error:
    raise ValueError(f"storage {storage!r}: cannot open the journal file: {error}") from error


def masked(storage: str) -> str:
  """``storage`` as given, its password (``scheme://user:PASSWORD@host``) shown as ``***``."""
  return re.sub(r"^([^:/]+://[^:/@?]*:)[^/?#]*@", r"\1***@", storage)


def with_driver(url):
  """``url`` (a SQLAlchemy URL) with an installed driver where it names none; raises
  ``ValueError`` naming the package to install when there is none."""
  backend = url.get_backend_name()
  if "+" in url.drivername or backend not in DRIVERS:
    return url
  for driver, module in DRIVERS[backend]:
    if importlib.util.find_spec(module) is not None:
      return url.set(drivername=f"{backend}+{driver}")
  names = " or ".join(module for _, module in DRIVERS[backend])
  raise ValueError(f"no {backend} driver is installed ({names}); {_PIP[backend]}")


def _reason(error: Exception, url, connect_timeout: int) -> str:
  """What went wrong opening ``url``, in words, with the driver's first line (its password,
  if it appears there, masked)."""
  detail = str(getattr(error, "orig", None) or error).strip().splitlines()
  detail = detail[0] if detail else type(error).__name__
  if url.password:
    detail = detail.replace(str(url.password), "***")
  if any(text in detail.lower() for text in _REFUSED):
    what = (f"the server refused user {url.username!r} (a wrong password, or no such user "
            "or database)")
  elif url.get_backend_name() == "sqlite":
    what = "the database file cannot be created or read"
  else:
    what = f"the server is unreachable within connect_timeout={connect_timeout} s"
  return f"{what} ({type(error).__name__}: {detail})"


def _is_creation_race(error: Exception) -> bool:
  """True for the errors of two processes creating the same tables at once."""
  text = str(getattr(error, "orig", None) or error).lower()
  return "already exists" in text or "duplicate key" in text or "duplicate entry" in text


def _open_rdb(storage: str, heartbeat_interval: int, grace_period: int | None,
              connect_timeout: int):
  """``RDBStorage`` with heartbeats and one retry, its table creation retried when another
  worker creates the tables at the same moment."""
  import optuna  # pylint: disable=g-import-not-at-top
  import sqlalchemy  # pylint: disable=g-import-not-at-top
  try:
    url = sqlalchemy.engine.make_url(storage)
  except sqlalchemy.exc.ArgumentError as error:
    raise ValueError(f"storage must be {ACCEPTED}; got {storage!r}") from error
  shown = masked(storage)
  try:
    driven = with_driver(url)
  except ValueError as error:
    raise ValueError(f"storage {shown!r} cannot be opened: {error}") from None
  connect_args = {} if url.get_backend_name() == "sqlite" else {"connect_timeout": connect_timeout}
  for attempt in range(_CREATE_TRIES):
    try:
      return quietly(lambda: optuna.storages.RDBStorage(
          driven.render_as_string(hide_password=False),
          engine_kwargs={"connect_args": connect_args, "pool_pre_ping": True},
          heartbeat_interval=heartbeat_interval, grace_period=grace_period,
          heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(
              max_retry=MAX_RETRY)))
    except (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.ProgrammingError) as error:
      if not _is_creation_race(error) or attempt == _CREATE_TRIES - 1:
        reason = (f"Optuna's tables were still being created by another worker after "
                  f"{_CREATE_TRIES} tries ({error.orig!r})" if _is_creation_race(error)
                  else _reason(error, url, connect_timeout))
        raise ValueError(f"storage {shown!r} cannot be opened: {reason}") from None
      time.sleep(random.uniform(0.05, 0.3) * (attempt + 1))  # let the winner finish
    except (ImportError, sqlalchemy.exc.SQLAlchemyError, OSError) as error:
      raise ValueError(f"storage {shown!r} cannot be opened: "
                       f"{_reason(error, url, connect_timeout)}") from None
  raise AssertionError("unreachable")


def open_storage(storage: Any, *, heartbeat_interval: int = 60, grace_period: int | None = None,
                 connect_timeout: int = 10):
  """An Optuna storage for ``None`` (memory), ``"journal:PATH"`` or an RDB URL (returned
  unchanged when already an optuna storage).

  Raises:
    ValueError: before anything is written, for an unknown form, a journal whose folder is
      missing, an RDB URL whose driver is not installed, whose server is unreachable within
      ``connect_timeout`` seconds, or which refuses the user or password. The message shows
      the URL with its password masked.
  """
  import optuna  # pylint: disable=g-import-not-at-top
  if storage is None or isinstance(storage, optuna.storages.BaseStorage):
    return storage
  if not isinstance(storage, str):
    raise ValueError(f"storage must be {ACCEPTED}; got {storage!r}")
  if storage.startswith("journal:"):
    return _open_journal(storage, heartbeat_interval, grace_period)
  return _open_rdb(storage, heartbeat_interval, grace_period, connect_timeout)
