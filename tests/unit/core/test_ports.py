from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from restcp.core.ports import candidates, next_cursor

LO, HI = 10000, 19999


class Allocator:
    """What the node does with these two functions: first candidate, then move the cursor."""

    def __init__(self, lo: int, hi: int) -> None:
        self.lo, self.hi = lo, hi
        self.cursor: int | None = None
        self.used: set[int] = set()

    def allocate(self) -> int | None:
        start = self.lo if self.cursor is None else self.cursor
        port = next(candidates(self.lo, self.hi, start, self.used), None)
        if port is not None:
            self.used.add(port)
            self.cursor = next_cursor(self.lo, self.hi, port)
        return port


def test_first_route_of_the_default_range_gets_its_first_port() -> None:
    assert Allocator(LO, HI).allocate() == 10000


def test_cursor_moves_forward() -> None:
    alloc = Allocator(LO, HI)
    assert [alloc.allocate() for _ in range(3)] == [10000, 10001, 10002]
    assert alloc.cursor == 10003


def test_freed_port_is_not_reused_until_the_range_wraps() -> None:
    alloc = Allocator(10, 14)
    assert [alloc.allocate() for _ in range(3)] == [10, 11, 12]
    alloc.used.discard(11)
    assert [alloc.allocate() for _ in range(2)] == [13, 14]
    # Only now, past the end of the range, does the freed port come back.
    assert alloc.allocate() == 11
    assert alloc.allocate() is None


def test_used_ports_are_skipped() -> None:
    assert list(candidates(10, 14, 10, {10, 11, 13})) == [12, 14]
    assert list(candidates(10, 14, 13, {10, 13})) == [14, 11, 12]


def test_full_range_yields_nothing() -> None:
    assert list(candidates(10, 14, 12, set(range(10, 15)))) == []
    assert Allocator(7, 7).allocate() == 7
    alloc = Allocator(7, 7)
    alloc.used.add(7)
    assert alloc.allocate() is None


def test_cursor_outside_the_range_resets_to_lo() -> None:
    # The range was narrowed (or moved) since the cursor was stored.
    assert list(candidates(10, 14, 99, set())) == [10, 11, 12, 13, 14]
    assert list(candidates(10, 14, 9, {10})) == [11, 12, 13, 14]


def test_next_cursor_wraps_at_the_end() -> None:
    assert next_cursor(10, 14, 12) == 13
    assert next_cursor(10, 14, 14) == 10
    assert next_cursor(LO, HI, HI) == LO


@given(
    bounds=st.tuples(st.integers(1, 40), st.integers(0, 30)).map(lambda t: (t[0], t[0] + t[1])),
    cursor=st.integers(0, 80),
    used=st.sets(st.integers(0, 80)),
)
def test_candidates_visit_every_free_port_once_from_the_cursor(bounds, cursor, used) -> None:
    lo, hi = bounds
    ports = list(candidates(lo, hi, cursor, used))
    free = set(range(lo, hi + 1)) - used
    assert len(ports) == len(free)
    assert set(ports) == free
    start = cursor if lo <= cursor <= hi else lo
    # In order from the cursor: the ports at or after it first, then the wrapped ones.
    assert ports == sorted(p for p in free if p >= start) + sorted(p for p in free if p < start)
