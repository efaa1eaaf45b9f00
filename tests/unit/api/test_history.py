"""api/history.py: five minutes of per-second rates per route, in a fixed ring."""

from __future__ import annotations

from restcp.api.history import RateRing


def test_samples_come_back_oldest_first_and_the_oldest_fall_off() -> None:
    ring = RateRing(slots=3)
    for second in range(5):
        ring.record(1000.0 + second, {("a", 1): (second, 10.0 * second, 0.5, 0.0)})
    series = ring.series(("a", 1))
    assert series["at"] == [1002.0, 1003.0, 1004.0]
    assert series["connections"] == [2.0, 3.0, 4.0]
    assert series["bytes_in"] == [20.0, 30.0, 40.0]
    assert series["bytes_out"] == [0.5, 0.5, 0.5]
    assert series["errors"] == [0.0, 0.0, 0.0]


def test_a_route_appears_late_and_seconds_without_rates_are_left_out() -> None:
    ring = RateRing(slots=4)
    ring.record(1.0, {("a", 1): (1, 1, 1, 1)})
    ring.record(2.0, {("a", 1): (2, 2, 2, 2), ("b", 1): None})
    ring.record(3.0, {("a", 1): (3, 3, 3, 3), ("b", 1): (7, 7, 7, 7)})
    assert ring.series(("b", 1))["at"] == [3.0]
    assert ring.series(("a", 1))["connections"] == [1.0, 2.0, 3.0]
    assert ring.series(("c", 1)) == {
        "at": [], "connections": [], "bytes_in": [], "bytes_out": [], "errors": []
    }  # fmt: skip


def test_a_route_gone_leaves_no_old_samples_and_is_forgotten_after_a_ring() -> None:
    ring = RateRing(slots=3)
    ring.record(1.0, {("a", 1): (1, 1, 1, 1)})
    ring.record(2.0, {})
    assert ring.series(("a", 1))["at"] == [1.0]
    ring.record(3.0, {})
    # Its slot of second 1 is overwritten now: nothing of it is shown, and it is dropped.
    ring.record(4.0, {})
    assert ring.series(("a", 1))["at"] == []
    assert len(ring) == 0
