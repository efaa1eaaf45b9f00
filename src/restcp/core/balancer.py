"""Pickers: which backend a new client goes to.

A picker is asked for one backend at a time, with the ids already tried for this client
excluded, so the same call serves the first pick and every failover after a failed connect.
Pickers hold only their own cursor; the list of backends is passed in on each call because
it changes live.
"""

from __future__ import annotations

import random
from collections.abc import Collection, Sequence
from typing import Protocol

from restcp.model import Backend, Balance


class Picker(Protocol):
    def pick(self, backends: Sequence[Backend], tried: Collection[int]) -> Backend | None:
        """One backend of ``backends`` whose id is not in ``tried``, or None if none is left."""


class RandomPicker:
    """Uniform choice, as the original restcp did."""

    def __init__(self, rng: random.Random | None = None) -> None:
        self._rng = rng or random.Random()

    def pick(self, backends: Sequence[Backend], tried: Collection[int]) -> Backend | None:
        if not tried:
            return self._rng.choice(backends) if backends else None
        left = [b for b in backends if b.id not in tried]
        return self._rng.choice(left) if left else None


class RoundRobinPicker:
    """Each new client goes to the next backend in id order; failover continues the cycle.

    The cursor is the id last handed out, not a position in the list: when a backend is
    added or removed the positions shift, and a positional cursor would skip or repeat one.
    """

    def __init__(self) -> None:
        self._last_id = 0

    def pick(self, backends: Sequence[Backend], tried: Collection[int]) -> Backend | None:
        left = [b for b in backends if b.id not in tried]
        if not left:
            return None
        after = [b for b in left if b.id > self._last_id]
        chosen = min(after or left, key=_by_id)
        self._last_id = chosen.id
        return chosen


def _by_id(backend: Backend) -> int:
    return backend.id


def make_picker(balance: Balance, rng: random.Random | None = None) -> Picker:
    if balance == "round_robin":
        return RoundRobinPicker()
    return RandomPicker(rng)
