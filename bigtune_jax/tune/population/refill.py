"""Refilling a population's freed slots: the answer of a ``refill`` callable, checked.

``run_population(..., refill=f)`` calls ``f(step, free)`` after each evaluation (after
``on_eval``) while ``free`` >= 1 slots are free (their members stopped or done with their
steps). ``f`` answers None (nothing now) or up to ``free`` new members, as a
:class:`Refill` or, without seeds, a bare ``{name: k values}`` mapping. This is how
successive halving / ASHA runs inside one compiled program (Li et al., 2020,
arXiv:1810.05934; Jamieson & Talwalkar, 2016): ``on_eval`` stops the worst members at a
rung, and the searcher's next proposals take their slots at once, so the program never
idles and never changes size. A budget is the callables' business: ``refill`` answers
None once it is spent (and ``on_eval`` may stop the members still running).
"""

from collections.abc import Callable, Mapping, Sequence
import dataclasses
from typing import Any

import numpy as np

from bigtune_jax.tune.population import members as members_lib


@dataclasses.dataclass(frozen=True)
class Refill:
  """New members for freed slots: ``hparams`` ``{name: k values}`` with the run's names,
  ``seeds`` k init / dropout seeds (None: the run's ``seed`` for each)."""
  hparams: Mapping[str, Sequence[float]]
  seeds: Sequence[int] | None = None


RefillFn = Callable[[int, int], "Refill | Mapping[str, Sequence[float]] | None"]


def check_callable(refill, explore) -> None:
  """ValueError unless ``refill`` is None or a callable, and not combined with PBT."""
  if refill is not None and not callable(refill):
    raise ValueError(f"refill must be None or a callable refill(step, free), got {refill!r}")
  if refill is not None and explore is not None:
    raise ValueError("refill and explore (PBT) cannot be combined: PBT's members copy each "
                     "other at one common step, refilled members are at steps of their own")


def new_members(answer: Any, step: int, free: int, names: Sequence[str], seed: int, kind,
                shared, make_optimizer) -> tuple[dict[str, np.ndarray], np.ndarray] | None:
  """``refill(step, free)``'s ``answer`` as ``(values {name: (k,)}, seeds (k,))``, or None
  for no new member; ValueError naming refill, the step and what is wrong, before the new
  members start."""
  if answer is None:
    return None
  where = f"refill({step}, {free})"
  if isinstance(answer, Mapping):
    answer = Refill(answer)
  if not isinstance(answer, Refill):
    raise ValueError(f"{where} must return None, a Refill or a mapping {{name: values}}, got "
                     f"{answer!r}")
  if all(len(np.atleast_1d(v)) == 0 for v in answer.hparams.values()):
    return None  # an empty proposal: nothing now
  try:
    values, k = members_lib.check_hparams(answer.hparams)
    if sorted(values) != sorted(names):
      raise ValueError(f"hparams names must be the run's {sorted(names)}, got {sorted(values)}")
    if k > free:
      raise ValueError(f"at most {free} new members (the free slots), got {k}")
    kind.check(values, shared)
    members_lib.check_member_optimizers(make_optimizer, values, k)
    seeds = members_lib.check_seeds(answer.seeds, seed, k, "seeds")
  except ValueError as error:
    raise ValueError(f"{where} returned a bad proposal: {error}") from None
  return values, seeds
