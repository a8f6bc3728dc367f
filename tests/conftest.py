"""Shared pytest fixtures and settings."""

import os
import shutil
import tempfile
import uuid

import jax
import pytest

_CACHE_VARIABLE = "JAX_COMPILATION_CACHE_DIR"
_MIN_TIME_VARIABLE = "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"


def pytest_configure(config):
  """One JAX compilation cache for the whole run, in a fresh temporary folder: the suite's
  subprocesses (a SIGKILLed run and its restart, the two processes of a distributed test,
  the 8-device workers) and xdist workers compile many identical programs, and each is
  then compiled once. Set by the controller before xdist starts its workers, so they and
  every subprocess inherit it; removed when the run ends."""
  if not hasattr(config, "workerinput") and _CACHE_VARIABLE not in os.environ:
    os.environ[_CACHE_VARIABLE] = tempfile.mkdtemp(prefix="bigtune-jax-cache-")
    os.environ.setdefault(_MIN_TIME_VARIABLE, "0.2")  # most of the suite's compiles are short
    config.stash[_OWNED_CACHE] = os.environ[_CACHE_VARIABLE]
  if _CACHE_VARIABLE in os.environ:
    jax.config.update("jax_compilation_cache_dir", os.environ[_CACHE_VARIABLE])
    jax.config.update("jax_persistent_cache_min_compile_time_secs",
                      float(os.environ.get(_MIN_TIME_VARIABLE, 1.0)))


def pytest_unconfigure(config):
  cache = config.stash.get(_OWNED_CACHE, None)
  if cache is not None:
    shutil.rmtree(cache, ignore_errors=True)


_OWNED_CACHE = pytest.StashKey[str]()


@pytest.fixture
def x64():
  """Runs a test with float64 enabled (formula checks), restoring the flag after."""
  previous = jax.config.jax_enable_x64
  jax.config.update("jax_enable_x64", True)
  try:
    yield
  finally:
    jax.config.update("jax_enable_x64", previous)


class PostgresServer:
  """A private PostgreSQL 16 server (``pgserver``: its binaries, a data folder of our own,
  a Unix socket, no TCP port). A password-checked user ``bigtune`` (password ``right``)
  owns every database of :meth:`new_url`, so that a wrong password is refused."""

  USER, PASSWORD = "bigtune", "right"

  def __init__(self, folder: str):
    import pgserver  # pylint: disable=g-import-not-at-top
    self.server = pgserver.get_server(folder, cleanup_mode="delete")  # as root: user pgserver
    self.socket = str(self.server.get_postmaster_info().socket_dir)
    hba = os.path.join(folder, "pg_hba.conf")  # password check for bigtune, trust for the rest
    with open(hba) as f:
      rules = f.read()
    with open(hba, "w") as f:
      f.write(f"local all {self.USER} scram-sha-256\n" + rules)
    self.server.psql(f"CREATE ROLE {self.USER} LOGIN PASSWORD '{self.PASSWORD}';"
                     "SELECT pg_reload_conf();")

  def new_url(self, password: str = PASSWORD) -> str:
    """The URL of a new, empty database."""
    name = f"study_{uuid.uuid4().hex[:12]}"
    self.server.psql(f"CREATE DATABASE {name} OWNER {self.USER};")
    return f"postgresql://{self.USER}:{password}@/{name}?host={self.socket}"


@pytest.fixture(scope="session")
def postgres():
  """One PostgreSQL server for the session, in a temporary folder removed at the end
  (skipped where the test extra's ``pgserver`` is not installed)."""
  pytest.importorskip("pgserver", reason="pip install -e '.[test]' installs pgserver")
  pytest.importorskip("psycopg", reason="pip install -e '.[test]' installs psycopg[binary]")
  folder = tempfile.mkdtemp(prefix="bigtune-pg-")  # short: the socket path has a limit
  try:
    server = PostgresServer(folder)
    yield server
    server.server.cleanup()
  finally:
    shutil.rmtree(folder, ignore_errors=True)


@pytest.hookimpl(tryfirst=True)  # before xdist reads the groups
def pytest_collection_modifyitems(config, items):
  """Tests that share an expensive module- or session-scoped fixture of this suite (an
  8-device subprocess, a set of transformers checkpoints) run on one xdist worker
  (``--dist loadgroup``, set in pyproject.toml), so the fixture is built once, not once per
  worker."""
  del config
  for item in items:
    info = getattr(item, "_fixtureinfo", None)
    if info is None:
      continue
    for name in info.names_closure:
      definitions = info.name2fixturedefs.get(name) or ()
      if any(d.scope in ("module", "session") and getattr(d.func, "__module__", "")
             .startswith(("tests", "test_", "conftest")) for d in definitions):
        item.add_marker(pytest.mark.xdist_group(item.module.__name__))
        break
