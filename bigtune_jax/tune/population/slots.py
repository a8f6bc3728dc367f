"""A population's bookkeeping: which member trains in which slot of the compiled program,
each member's own step, and the members that left it.

The program has S slots (its leading axis); the run has M members, in the order they
started. ``slots[j]`` is the member in slot j (-1: an empty slot). Without refill, M = S at
the start and slots only leave (compaction: the program shrinks). With refill (successive
halving / ASHA inside one program: Li et al., 2020, arXiv:1810.05934), the program keeps
its S slots for the whole run: a member that is stopped or has trained its ``steps``
leaves its slot, and a new member, at its own step 0, takes it. Each member :math:`m` has
its own step counter :math:`d_m`, so slot j trains at step t of an interval exactly when

.. math::  live_{j,t} = [\\text{slot } j \\text{ holds } m] \\wedge active_m \\wedge
           d_m + t < steps

and takes the batch of *its* step :math:`d_m + t` (``PopulationData.rows``): every member,
refilled or not, takes the steps it would take trained alone. Members' parameters that
left are kept on the host (``parked``).
"""

from collections.abc import Mapping
import functools
from typing import Any

import jax
import numpy as np

from bigtune_jax.tune.population import programs

_PER_MEMBER = ("member_step", "train_loss")  # history entries with one value per member


@functools.cache
def _slot_programs():
  """``take(tree, j)``: slot j's tree (``j`` an index array: those slots');
  ``place(tree, j, new)``: ``new`` written into slot j (donating ``tree``). The index is
  traced: one compile per structure, not one per leaf and slot. (Host arrays go to the
  device by ``jax.device_put``: ``jnp.asarray`` compiles a program per shape.)"""
  take = jax.jit(lambda tree, j: jax.tree.map(lambda x: x[j], tree))
  place = jax.jit(lambda tree, j, new: jax.tree.map(lambda x, y: x.at[j].set(y), tree, new),
                  donate_argnums=0)
  return take, place


class Population:
  """The members in the program and those that left (module docstring). ``own_rows``:
  each slot takes the batches of its member's own step (a refilled run); else one data
  order for all (every member at the same step)."""

  def __init__(self, states, values: Mapping[str, np.ndarray], seeds: np.ndarray,
               own_rows: bool = False):
    n = len(seeds)
    self.states, self.slots, self.own_rows = states, np.arange(n), own_rows
    self.hp = {name: jax.device_put(v) for name, v in values.items()}  # the slots' values
    self.values = {name: v.copy() for name, v in values.items()}  # (M,) each, on the host
    self.seeds, self.started = np.asarray(seeds).copy(), np.zeros(n, np.int64)
    self.done = np.zeros(n, np.int64)  # steps each member trained
    self.active = np.ones(n, bool)  # neither stopped nor finished
    self.stopped = np.zeros(n, bool)  # stopped by on_eval
    self.parked: dict[int, Any] = {}  # members' parameters that left, on the host
    self.final: dict[str, np.ndarray] = {}

  @property
  def size(self) -> int:
    """M: the members started so far."""
    return len(self.active)

  def _live(self, count: int, steps: int) -> np.ndarray:
    """``(S, count)``: slot j trains at step t of the interval (module docstring)."""
    held = self.slots >= 0
    member = np.where(held, self.slots, 0)
    left = np.where(held & self.active[member], steps - self.done[member], 0)
    return np.arange(count)[None, :] < left[:, None]

  def training(self, steps: int) -> bool:
    """Whether any slot has steps left to train."""
    return bool(self._live(1, steps).any())

  def interval(self, data, step: int, count: int, steps: int):
    """The ``(rows, live)`` of the ``count`` steps from the program's ``step``, for
    ``programs.train_members``, and each member's step counted; ``live`` is None while
    every slot trains every step (no select in the program) unless the program keeps one
    shape for the whole run (``own_rows``). Sets ``trained``: the slots that trained."""
    live = self._live(count, steps)
    if self.own_rows:
      start = np.where(self.slots >= 0, self.done[self.slots], 0)
      rows = np.stack([data.rows(int(s), count) for s in start])  # (S, count, batch)
    else:
      rows = data.rows(step, count)  # one data order: every member at ``step``
    self.trained = live.any(axis=1)
    self.done[self.slots[self.trained]] += live.sum(axis=1)[self.trained]
    if live.all() and not self.own_rows:
      return jax.device_put(rows), None
    return jax.device_put(rows), jax.device_put(live)

  def record(self, step: int, train_loss, sums) -> dict:
    """A history row over the M members (NaN where a member did not train): ``step`` the
    program's step, ``member_step`` (M,) each member's own step."""
    m, trained = self.size, self.trained
    members = self.slots[trained]
    row = {"step": step, "member_step": np.full(m, np.nan), "train_loss": np.full(m, np.nan)}
    row["member_step"][members] = self.done[members]
    row["train_loss"][members] = np.asarray(train_loss)[trained]
    for name, value in programs.mean_metrics(sums).items():
      row[name] = np.full(m, np.nan)
      row[name][members] = value[trained]
      self.final.setdefault(name, np.full(m, np.nan))[members] = value[trained]
    return row

  def stop(self, mask) -> None:
    """Stops the members where ``mask`` (on_eval's answer: None, or M bools) is True."""
    if mask is None:
      return
    if np.size(mask) != self.size:
      raise ValueError(f"on_eval must return None or a bool mask of the {self.size} members "
                       f"started so far, got {mask!r}")
    mask = np.asarray(mask, bool).reshape(self.size) & self.active
    self.stopped |= mask
    self.active &= ~mask

  def _park(self, j: int) -> None:
    take, _ = _slot_programs()
    self.parked[int(self.slots[j])] = jax.device_get(take(self.states.params, j))

  def free(self, steps: int) -> int:
    """Members stopped or done with their ``steps`` leave their slots; the free slots."""
    self.active &= self.done < steps
    for j in np.flatnonzero(self.slots >= 0):
      if not self.active[self.slots[j]]:
        self._park(j)
        self.slots[j] = -1
    return int((self.slots < 0).sum())

  def fill(self, states, values: Mapping[str, np.ndarray], seeds: np.ndarray,
           step: int) -> None:
    """New members (``states``: one unstacked state each; their ``values`` and ``seeds``)
    take the first free slots at their own step 0, at the program's ``step``."""
    _, place = _slot_programs()
    slot_values = {name: np.asarray(h).copy() for name, h in self.hp.items()}
    for k, (state, j) in enumerate(zip(states, np.flatnonzero(self.slots < 0))):
      self.states = place(self.states, j, state)
      self.slots[j] = self.size
      for name in self.values:
        slot_values[name][j] = values[name][k]
        self.values[name] = np.append(self.values[name], values[name][k])
      self.seeds = np.append(self.seeds, seeds[k])
      self.started, self.done = np.append(self.started, step), np.append(self.done, 0)
      self.active, self.stopped = np.append(self.active, True), np.append(self.stopped, False)
      self.final = {name: np.append(final, np.nan) for name, final in self.final.items()}
    self.hp = {name: jax.device_put(v) for name, v in slot_values.items()}

  def compact(self) -> np.ndarray | None:
    """Stopped members leave the program (their parameters kept aside); returns the kept
    slots' positions, or None when nothing changed."""
    keep = self.active[self.slots]
    if keep.all() or not keep.any():
      return None
    for j in np.flatnonzero(~keep):
      self._park(j)
    kept = np.flatnonzero(keep)
    take, _ = _slot_programs()  # one program per structure and size, not one per leaf
    self.states, self.hp = take((self.states, self.hp), jax.device_put(kept))
    self.slots = self.slots[keep]
    return kept

  def explore(self, explore, sums, key) -> np.ndarray:
    """Exploit / explore over the program's members; returns each member's source."""
    self.states, self.hp, source = explore(self.states, self.hp, sums, key)
    for name, h in self.hp.items():
      self.values[name][self.slots] = np.asarray(h)
    members = np.arange(self.size)
    members[self.slots] = self.slots[np.asarray(source)]
    return members

  def params(self):
    """All M members' parameters, stacked in the order they started."""
    if not self.parked and np.array_equal(self.slots, np.arange(self.size)):
      return self.states.params
    for j in np.flatnonzero(self.slots >= 0):
      self._park(j)
    members = [self.parked[i] for i in range(self.size)]
    return jax.tree.map(lambda *xs: jax.device_put(np.stack(xs)), *members)

  def pad(self, history: list[dict]) -> list[dict]:
    """History rows over all M members (rows written before a member started: NaN)."""
    for row in history:
      for name in [*_PER_MEMBER, *self.final]:
        if name in row and len(row[name]) < self.size:
          row[name] = np.append(row[name], np.full(self.size - len(row[name]), np.nan))
    return history
