"""The deadlines of every connection of a node on one loop timer.

Each connection has three timeouts (connect, half-close, idle), and a timer handle of the event
loop costs about 550 bytes under uvloop, plus a schedule and a cancel per use: on a proxy
of many short connections that was three of each per client, and on one of many idle
connections, the largest part of the memory each of them holds. Here a connection has one entry
at a time, for its nearest deadline, in a set of owners due at the same moment; one loop
timer is set for the earliest such moment.

A deadline fires at its time rounded *up* to a quantum of ``timeout / 64`` (at least 10
ms): never early, and late by at most that quantum, 1.6% of a long timeout. The coarse
quantum keeps the number of distinct moments small (about 64 per timeout in force, whatever
the number of connections), and so the heap that orders them.

An owner keeps the moment it is filed under in ``deadline_slot`` (None: not filed), and is
told ``deadline_reached()`` once that moment has passed; it works out itself which of its
timeouts is due, and files itself again for the next one.
"""

from __future__ import annotations

import asyncio
import heapq
import math
from typing import Protocol

MIN_QUANTUM_MS = 10
QUANTA_PER_TIMEOUT = 64


class Timed(Protocol):
    """An owner of deadlines: it keeps its own slot and is told when it has come."""

    deadline_slot: int | None

    def deadline_reached(self) -> None: ...


def slot_of(when: float, timeout: float) -> int:
    """The moment, in whole milliseconds, a deadline at loop time ``when`` fires at: rounded
    up to the quantum of its ``timeout``."""
    quantum = max(MIN_QUANTUM_MS, int(timeout * 1000) // QUANTA_PER_TIMEOUT)
    return -(-math.ceil(when * 1000) // quantum) * quantum


class Deadlines:
    """Owners (connections) filed by the moment their nearest deadline fires, and the one
    loop timer set for the earliest moment."""

    def __init__(self) -> None:
        self._slots: dict[int, set[Timed]] = {}
        # The slots' moments, earliest first; a moment whose set has emptied stays here
        # until it reaches the top (a heap cannot drop an inner item cheaply).
        self._order: list[int] = []
        self._timer: asyncio.TimerHandle | None = None
        self._armed: int | None = None  # the moment the loop timer is set for

    def __len__(self) -> int:
        return sum(len(owners) for owners in self._slots.values())

    def file(self, owner: Timed, when: float, timeout: float) -> None:
        """Tell ``owner`` at loop time ``when`` (of a ``timeout`` that long), instead of any
        moment it was filed under before."""
        slot = slot_of(when, timeout)
        old = owner.deadline_slot
        if old == slot:
            return
        if old is not None:
            self._remove(owner, old)
        owners = self._slots.get(slot)
        if owners is None:
            owners = self._slots[slot] = set()
            heapq.heappush(self._order, slot)
        owners.add(owner)
        owner.deadline_slot = slot
        if self._armed is None or slot < self._armed:
            self._arm(slot)

    def drop(self, owner: Timed) -> None:
        """``owner`` needs no deadline any more."""
        slot = owner.deadline_slot
        if slot is not None:
            owner.deadline_slot = None
            self._remove(owner, slot)

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._armed = None
        for owners in self._slots.values():
            for owner in owners:
                owner.deadline_slot = None
        self._slots.clear()
        self._order.clear()

    def _remove(self, owner: Timed, slot: int) -> None:
        owners = self._slots[slot]
        owners.discard(owner)
        if not owners:
            # The timer stays set: it finds nothing due, and sets itself for the next.
            del self._slots[slot]

    def _arm(self, slot: int) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._armed = slot
        self._timer = asyncio.get_running_loop().call_at(slot / 1000, self._fire)

    def _fire(self) -> None:
        self._timer = None
        self._armed = None
        # The loop's timers count whole milliseconds, and may round a delay down: a moment
        # less than one millisecond away counts as come. The owner checks its own times.
        now = asyncio.get_running_loop().time() * 1000 + 1
        order = self._order
        while order and order[0] <= now:
            owners = self._slots.pop(heapq.heappop(order), None)
            if not owners:
                continue
            for owner in owners:
                owner.deadline_slot = None
            for owner in owners:
                owner.deadline_reached()  # may file it again, for a later moment
        while order and order[0] not in self._slots:
            heapq.heappop(order)
        if order and (self._armed is None or order[0] < self._armed):
            self._arm(order[0])
