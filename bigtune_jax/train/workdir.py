"""One writer per workdir: an advisory lock held for as long as a run writes into it.

Two runs on one workdir interleave their metrics rows and race for the same checkpoint
steps (Orbax then waits minutes on ``step_directory_creation``). ``fit`` therefore takes
``workdir/.lock`` with ``fcntl.flock(LOCK_EX | LOCK_NB)`` before it writes anything: a second
run is refused at once with the holder's pid, host and start time. The kernel releases a
``flock`` when its process dies, however it dies, so a run killed with SIGKILL leaves no
stale lock and the restart proceeds; the file itself stays and only says who held it last.
On many hosts (``jax.distributed``) only process 0 takes it, since only process 0 writes
the logs (a shared filesystem sees one holder per run). A process may take the lock of a
workdir it already holds again (nested calls); the last release frees it.
"""

import datetime
import fcntl
import json
import os
import socket
import threading
from pathlib import Path

LOCK_NAME = ".lock"
_HELD: dict[str, list] = {}  # resolved workdir -> [file object, depth]: this process's locks
_GUARD = threading.Lock()


class WorkdirInUseError(RuntimeError):
  """Another live process holds the workdir."""


class WorkdirNotWritableError(PermissionError):
  """The workdir cannot be created or written (permissions, a read-only file system)."""


def check_writable(workdir: str | os.PathLike) -> None:
  """Raises before anything is written unless ``workdir`` is, or can be created as, a
  directory this process may write: ``ValueError`` when it (or a parent) is a file,
  :class:`WorkdirNotWritableError` naming the directory that refuses the write
  (``os.access``: permissions and read-only mounts)."""
  workdir = Path(workdir)
  existing = workdir
  while not existing.exists() and existing != existing.parent:
    existing = existing.parent
  if not existing.is_dir():
    what = "is a file" if existing == workdir else f"is under {existing}, a file"
    raise ValueError(f"workdir {workdir} {what}, not a directory")
  if not os.access(existing, os.W_OK | os.X_OK):
    where = "" if existing == workdir else f" ({existing} cannot be written)"
    raise WorkdirNotWritableError(
        f"workdir {workdir} is not writable{where}: a run writes its lock, metrics and "
        "checkpoints there; choose a directory you can write to")


def _holder(path: Path) -> str:
  try:
    info = json.loads(path.read_text())
    return (f"pid {info['pid']} on host {info['host']} (since {info['started']})")
  except (OSError, ValueError, KeyError, TypeError):
    return "another process"


class WorkdirLock:
  """``with WorkdirLock(workdir): ...``: this process is the workdir's only writer."""

  def __init__(self, workdir: str | os.PathLike):
    self.workdir = Path(workdir)
    self.path = self.workdir / LOCK_NAME
    self._key = str(self.workdir.resolve())

  def acquire(self) -> "WorkdirLock":
    with _GUARD:
      if self._key in _HELD:
        _HELD[self._key][1] += 1
        return self
      check_writable(self.workdir)
      try:
        self.workdir.mkdir(parents=True, exist_ok=True)
        handle = open(self.path, "a+", encoding="utf-8")  # pylint: disable=consider-using-with
      except PermissionError as error:  # e.g. a read-only mount that os.access missed
        raise WorkdirNotWritableError(f"workdir {self.workdir} is not writable: "
                                      f"{error}") from error
      try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
      except BlockingIOError:
        handle.close()
        raise WorkdirInUseError(
            f"workdir {self.workdir} is in use by {_holder(self.path)}: one run writes to a "
            "workdir at a time; wait for it, stop it, or choose another workdir") from None
      handle.seek(0)
      handle.truncate()
      handle.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                               "started": datetime.datetime.now().isoformat(timespec="seconds")}))
      handle.flush()
      _HELD[self._key] = [handle, 1]
    return self

  def release(self) -> None:
    with _GUARD:
      held = _HELD.get(self._key)
      if held is None:
        return
      held[1] -= 1
      if held[1] == 0:
        del _HELD[self._key]
        fcntl.flock(held[0].fileno(), fcntl.LOCK_UN)
        held[0].close()

  def __enter__(self) -> "WorkdirLock":
    return self.acquire()

  def __exit__(self, *exc_info) -> None:
    self.release()
