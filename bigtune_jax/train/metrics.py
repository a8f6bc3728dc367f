"""Training metrics: an append-only JSON-lines log, its plots, and a progress bar.

The workdir holds ``metrics.jsonl``, one JSON object a line, each with an integer ``"step"``
and named numbers::

  {"step": 100, "train_loss": 0.3, "lr": 0.1}
  {"step": 100, "val_loss": 0.35, "val_accuracy": 0.91}

Choices:

* Every line is flushed and ``os.fsync``-ed as it is written, so a run killed at any moment
  (SIGKILL, preemption) loses at most the line being written. Such a torn last line (no
  newline at its end) is ignored by the reader and dropped by the next write.
* On resume from a checkpoint at step ``s``, ``truncate_after(s)`` drops the rows logged after
  it, so the resumed run does not log those steps twice. The file is rewritten atomically
  (temporary file + ``os.replace``): a kill leaves either the old file or the new one.
* NaN and infinity are kept (a diverged loss is worth seeing); they are written as Python's
  ``json`` writes them (``NaN``, ``Infinity``), which ``json`` reads back but strict JSON
  parsers do not.
* One writer: on several hosts only process 0 should log (the caller decides).
* Plots use matplotlib's ``Figure`` and the Agg canvas directly, never ``pyplot``: no display
  is needed and a user's own pyplot backend is left alone.
* ``Progress`` is a thin tqdm bar. tqdm's defaults are kept (it writes to stderr, terminal or
  not); pass ``enabled=False`` in tests and CI, or set ``TQDM_DISABLE=1`` in the environment
  before Python starts (tqdm reads it when first imported; any non-empty value disables).
"""

import contextlib
import json
import math
import os
import pathlib
import tempfile
from collections.abc import Iterable, Iterator, Mapping

import numpy as np
import tqdm
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure


def _to_number(key, value):
  """A Python int or float from a Python, numpy or jax scalar (a jax one is read from device)."""
  array = np.asarray(value)
  if array.ndim != 0:
    raise ValueError(f"metric {key!r} must be a scalar, got shape {array.shape}")
  if array.dtype.kind in "biu":
    return int(array)
  if array.dtype.kind in "fV":  # "V": ml_dtypes floats such as bfloat16 and float8
    try:
      return float(array.astype(np.float64))
    except (TypeError, ValueError):
      pass
  raise ValueError(f"metric {key!r} must be a real number, got {array.dtype} ({value!r})")


def _to_step(step):
  number = _to_number("step", step)
  if not isinstance(number, int) or number < 0:
    raise ValueError(f"step must be an integer >= 0, got {step!r}")
  return number


def _series(rows, key):
  pairs = [(row["step"], row[key]) for row in rows if key in row]
  steps = np.array([s for s, _ in pairs], dtype=np.int64)
  values = np.array([v for _, v in pairs], dtype=np.float64)
  return steps, values


class MetricsLog:
  """Append-only JSON-lines log of training metrics: workdir/metrics.jsonl, one object per line
  with "step" (int) and named float values, e.g. {"step": 100, "train_loss": 0.3, "lr": 0.1}.

  Args:
    path: the ``.jsonl`` file; it and its parent folder are created by the first ``append``.
  """

  def __init__(self, path: str | os.PathLike):
    self.path = pathlib.Path(path)

  def __repr__(self):
    return f"MetricsLog({str(self.path)!r})"

  def append(self, step: int, **values) -> None:
    """Writes one row: ``step`` and ``values`` (Python, numpy or jax scalars) as numbers."""
    row = {"step": _to_step(step)}
    row.update((key, _to_number(key, value)) for key, value in values.items())
    line = (json.dumps(row) + "\n").encode("utf-8")
    self.path.parent.mkdir(parents=True, exist_ok=True)
    with open(self.path, "a+b") as f:
      size = f.seek(0, os.SEEK_END)
      if size:
        f.seek(size - 1)
        if f.read(1) != b"\n":  # a torn line left by a killed writer: drop it
          f.seek(0)
          f.truncate(f.read().rfind(b"\n") + 1)
      f.write(line)  # one write of the whole line: a kill cannot interleave two rows
      f.flush()
      os.fsync(f.fileno())

  def _lines(self):
    """(text, row) for every complete line; the unterminated tail, if any, is ignored."""
    try:
      text = self.path.read_bytes().decode("utf-8", errors="replace")
    except FileNotFoundError:
      return []
    out = []
    # split("\n")[:-1] drops "" after the last newline, or the torn line without one.
    for number, line in enumerate(text.split("\n")[:-1], start=1):
      if not line.strip():
        continue
      try:
        row = json.loads(line)
      except json.JSONDecodeError as e:
        raise ValueError(
            f"{self.path} line {number}: not valid JSON ({e.msg}): {line[:80]!r}") from None
      if not isinstance(row, dict) or not isinstance(row.get("step"), int):
        raise ValueError(f'{self.path} line {number}: expected an object with an integer "step", '
                         f"got {line[:80]!r}")
      out.append((line, row))
    return out

  def rows(self) -> list[dict]:
    """All rows in file order; ``[]`` if the file does not exist yet.

    Raises:
      ValueError: a line other than a torn last one is malformed (the message names the file
        and the 1-based line number).
    """
    return [row for _, row in self._lines()]

  def truncate_after(self, step: int) -> None:
    """Keeps only rows with ``row["step"] <= step`` (and drops a torn last line), atomically."""
    step = _to_step(step)
    if not self.path.exists():
      return
    kept = "".join(line + "\n" for line, row in self._lines() if row["step"] <= step)
    fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=self.path.name + ".", suffix=".tmp")
    try:
      with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(kept)
        f.flush()
        os.fsync(f.fileno())
      os.replace(tmp, self.path)
    except BaseException:
      pathlib.Path(tmp).unlink(missing_ok=True)
      raise
    try:  # make the rename itself durable; not every platform can fsync a folder
      dir_fd = os.open(self.path.parent, os.O_RDONLY)
    except OSError:
      return
    try:
      os.fsync(dir_fd)
    except OSError:
      pass
    finally:
      os.close(dir_fd)

  def series(self, key: str) -> tuple[np.ndarray, np.ndarray]:
    """(steps int64, values float64) of the rows that have ``key``; both empty if none do."""
    return _series(self.rows(), key)


def _is_loss(key):
  return key == "loss" or key.endswith("_loss")


def _plot(path, rows, keys, *, ylabel, title, log_if_positive):
  with png_figure(str(path), layout="constrained") as fig:
    ax = fig.add_subplot()
    all_values = []
    for key in keys:
      steps, values = _series(rows, key)
      marker = "o" if len(steps) <= 30 else None  # sparse series (per-epoch evals) get dots
      ax.plot(steps, values, label=key, marker=marker, markersize=3)
      all_values.append(values[np.isfinite(values)])
    finite = np.concatenate(all_values)
    if log_if_positive and finite.size and np.all(finite > 0):
      ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    ax.set_title(f"{title}: {ylabel}" if title else ylabel)
    ax.grid(True, alpha=0.3)
    ax.legend()
  return str(path)


@contextlib.contextmanager
def png_figure(path: str, *, size: tuple[float, float] = (6.4, 4.0), dpi: int = 100,
           layout: str | None = None) -> Iterator[Figure]:
  """Yields a ``Figure`` of ``size`` inches to draw on; when the block ends without an
  error it is saved to ``path`` as a PNG of ``dpi`` dots per inch. The one way this
  library and its experiments draw: a ``Figure`` on the Agg canvas, never ``pyplot`` (no
  display, the user's backend untouched, no figure left open in a global registry), and
  the PNG written atomically (a temporary file renamed over ``path``), so a run killed
  while saving leaves the previous plot or none, never half a file.

  Args:
    path: the PNG to write (its folder must exist).
    size: (width, height) in inches.
    dpi: the resolution of the PNG.
    layout: matplotlib's layout engine, None (as placed) or ``"constrained"``; for a tight
      layout call ``fig.tight_layout()`` once the figure is drawn (it places the axes at
      this figure's own dpi, as pyplot's ``tight_layout`` does).
  """
  fig = Figure(figsize=size, layout=layout)
  FigureCanvasAgg(fig)  # attaches the Agg canvas: PNG output without pyplot
  yield fig
  tmp = f"{path}.tmp"
  fig.savefig(tmp, dpi=dpi, format="png")
  os.replace(tmp, path)


def plot_metrics(log_or_rows: MetricsLog | Iterable[Mapping], workdir: str | os.PathLike, *,
                 title: str = "") -> list[str]:
  """Writes PNG plots of the metrics into ``workdir`` and returns their paths.

  * ``loss.png``: every key ``loss`` or ending in ``_loss`` (train_loss, val_loss, ...) against
    the step; log-scale y when all finite values are positive.
  * ``accuracy.png``: every key ending in ``accuracy``, if any.
  * ``learning_rate.png``: ``lr`` and/or ``learning_rate``, if present; log-scale y when positive.

  A plot whose keys are all absent is not written (an empty log writes nothing).

  Args:
    log_or_rows: a ``MetricsLog`` or rows as ``MetricsLog.rows()`` returns them.
    workdir: folder for the PNGs (created if missing).
    title: prefixed to each plot's title, e.g. the experiment name.
  """
  rows = log_or_rows.rows() if isinstance(log_or_rows, MetricsLog) else list(log_or_rows)
  keys = list(dict.fromkeys(key for row in rows for key in row if key != "step"))
  groups = [
      ("loss.png", [k for k in keys if _is_loss(k)], "loss", True),
      ("accuracy.png", [k for k in keys if k.endswith("accuracy")], "accuracy", False),
      ("learning_rate.png", [k for k in keys if k in ("lr", "learning_rate")], "learning rate",
       True),
  ]
  workdir = pathlib.Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  return [_plot(workdir / name, rows, group, ylabel=ylabel, title=title, log_if_positive=log)
          for name, group, ylabel, log in groups if group]


def _compact(value):
  """Short text for a number: 0.123, 12.3, 1.0e-03; anything else as str()."""
  try:
    value = _to_number("postfix", value)
  except ValueError:
    return str(value)
  if isinstance(value, int):
    return str(value)
  if value == 0 or not math.isfinite(value) or 1e-2 <= abs(value) < 1e4:
    return f"{value:.4g}"
  return f"{value:.1e}"


class Progress:
  """tqdm progress bar over training steps showing loss and learning rate.

  Args:
    total: the last step of the run.
    initial: the step it starts from (a resumed run starts from its checkpoint's step).
    enabled: False shows and prints nothing. True keeps tqdm's defaults, including its
      ``TQDM_DISABLE`` environment variable (see the module docstring).
    desc: the bar's label.

  Example::

    with Progress(total=1000, initial=start) as bar:
      for step in range(start, 1000):
        ...
        bar.update(loss=loss, lr=lr)  # jax scalars are read from the device here
  """

  def __init__(self, total: int, initial: int = 0, *, enabled: bool = True, desc: str = "train"):
    # Pass `disable` only to turn the bar off: an explicit argument would override TQDM_DISABLE.
    options = {} if enabled else {"disable": True}
    self._bar = tqdm.tqdm(total=total, initial=initial, desc=desc, unit="step", **options)

  def update(self, n: int = 1, **postfix) -> None:
    """Advances ``n`` steps and, if given, shows ``postfix`` values (e.g. ``loss=0.123``)."""
    if postfix and not self._bar.disable:  # a disabled bar never reads values off the device
      self._bar.set_postfix_str(", ".join(f"{k}={_compact(v)}" for k, v in postfix.items()),
                                refresh=False)
    self._bar.update(n)

  def close(self) -> None:
    self._bar.close()

  def __enter__(self):
    return self

  def __exit__(self, *exc_info):
    self.close()
