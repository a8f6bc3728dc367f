"""The one integer check of the data package (sizes, counts, seeds, steps).

Integral floats such as ``100.0`` pass and come back as ``int``; anything else (``True``,
``2.5``, ``inf``, ``nan``, ``None``, ``"4"``) raises one ``ValueError`` naming the argument,
before any work. It lives here rather than in ``bigtune_jax.transforms.validation``, which
rejects integral floats, so that the data package keeps accepting them.
"""


def check_int(name: str, value, low: int, note: str = "") -> int:
  """``int(value)`` if ``value`` is an integer >= ``low``; ``note`` is added to the error."""
  try:
    integral = not isinstance(value, bool) and int(value) == value
  except (TypeError, ValueError, OverflowError):  # None, strings, inf, nan, ...
    integral = False
  if not integral or value < low:
    raise ValueError(f"{name} must be an integer >= {low}{note}, got {value!r}")
  return int(value)
