"""How every experiment draws its PNG: ``with plots.figure(path) as fig: ...``.

One place sets up matplotlib for the experiments: a ``Figure`` on the Agg canvas, never
``pyplot``, so no display is needed, the user's backend is left untouched and no figure
stays open in a global registry; the PNG is written atomically (a temporary file renamed
over ``path``), so a run killed while saving leaves the previous plot or none, never half a
file.
"""

import contextlib
import os
from collections.abc import Iterator

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure


@contextlib.contextmanager
def figure(path: str, *, size: tuple[float, float] = (6.4, 4.0), dpi: int = 100,
           layout: str | None = None) -> Iterator[Figure]:
  """Yields a ``Figure`` of ``size`` inches to draw on; when the block ends without an
  error it is saved to ``path`` as a PNG of ``dpi`` dots per inch.

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
