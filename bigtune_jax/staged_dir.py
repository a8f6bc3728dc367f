"""Saving a set of files into a folder that may hold other files: ours replaced, the rest kept.

What transformers' ``save_pretrained`` and peft's do to an existing folder: the files a save
writes replace their old versions and every other file (a tokenizer, a README, a subfolder)
stays. Ours are first written to a staging directory beside the folder, so a save that fails
while writing (bad input, a full disk) leaves the folder as it was. Then each file is moved in
with ``os.replace`` (one atomic ``rename(2)`` per file), those named in ``last`` at the end
(the config or index that says what the checkpoint is: a reader never sees a new index
before its shards), and finally the files of ours that the new save no longer uses
(``stale``, e.g. an older save's shards) are removed; nothing else is ever removed. Every
file replaced or removed is hard-linked into a backup first, so an error while moving puts
the old files back.
"""

import contextlib
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def staged_directory(path: str | os.PathLike, *, last: tuple[str, ...] = (),
                     stale: str | None = None) -> Iterator[Path]:
  """Yields an empty directory beside ``path`` to write our files into.

  On success they are moved into ``path`` (created if new) as the module describes; files
  in ``path`` whose names fully match the regex ``stale`` and that this save did not write
  are removed. On an error, or if the caller raises, ``path`` is left as it was.

  Raises:
    ValueError: ``path`` exists and is not a directory (before anything is written).
  """
  path = Path(path)
  if path.exists() and not path.is_dir():
    raise ValueError(f"{path} exists and is not a directory")
  path.parent.mkdir(parents=True, exist_ok=True)
  staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
  try:
    yield staging
    new = not path.exists()
    path.mkdir(exist_ok=True)  # the usual permissions, not the staging directory's 0700
    try:
      _move_in(staging, path, last, stale)
    except BaseException:
      if new:
        path.rmdir()  # empty again: _move_in took its files back out
      raise
  finally:
    shutil.rmtree(staging, ignore_errors=True)


def _move_in(staging: Path, path: Path, last: tuple[str, ...], stale: str | None) -> None:
  """Moves the staged files into ``path`` (``last`` at the end), then removes our stale
  files; on an error every file touched is restored from its hard-linked backup."""
  new = sorted(p.name for p in staging.iterdir())
  order = [n for n in new if n not in last] + [n for n in last if n in new]
  remove = sorted(p.name for p in path.iterdir() if stale is not None and p.name not in new
                  and re.fullmatch(stale, p.name) and (p.is_file() or p.is_symlink()))
  backup = staging / ".backup"
  backup.mkdir()
  touched = [n for n in order + remove if os.path.lexists(path / n)]
  for name in touched:
    _link_or_copy(path / name, backup / name)
  moved = []
  try:
    for name in order:
      os.replace(staging / name, path / name)
      moved.append(name)
    for name in remove:
      os.remove(path / name)
  except BaseException:
    for name in moved:
      if name not in touched:
        os.remove(path / name)
    for name in touched:
      os.replace(backup / name, path / name)
    raise


def _link_or_copy(source: Path, target: Path) -> None:
  """A hard link (no bytes copied), or a copy where the file system has none."""
  try:
    os.link(source, target, follow_symlinks=False)
  except OSError:
    shutil.copy2(source, target, follow_symlinks=False)
