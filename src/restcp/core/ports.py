"""Which port a new route gets when it does not ask for one.

Ports are handed out in order from a cursor that only moves forward, so a port freed by a
deleted route is not handed out again until the range wraps (clients that still hold the old
address then find nothing rather than somebody else's route).
"""

from __future__ import annotations

from collections.abc import Collection, Iterator


def candidates(lo: int, hi: int, cursor: int, used: Collection[int]) -> Iterator[int]:
    """The ports of ``lo..hi`` to try in order, starting at ``cursor`` and wrapping once."""
    if not lo <= cursor <= hi:
        cursor = lo
    for offset in range(hi - lo + 1):
        port = lo + (cursor - lo + offset) % (hi - lo + 1)
        if port not in used:
            yield port


def next_cursor(lo: int, hi: int, port: int) -> int:
    """Where the search for the next free port starts after ``port`` was handed out."""
    return lo if port >= hi else port + 1
