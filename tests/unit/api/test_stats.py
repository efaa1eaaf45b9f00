"""api/stats.py: readings on demand, shared within MIN_INTERVAL, and rates between two."""

from __future__ import annotations

from dataclasses import dataclass, field

from restcp.api.stats import MIN_INTERVAL, StatsHistory, node_totals


@dataclass(frozen=True)
class B:
    backend: int
    connections_total: int = 0
    connections_active: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    connect_failures: int = 0
    connections_max: int = 0


@dataclass(frozen=True)
class R:
    app: str
    route: int
    backends: tuple[B, ...] = ()
    refused: dict[str, int] = field(default_factory=dict)
    connections_max: int = 0


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_rates_are_the_difference_of_two_readings_over_their_interval() -> None:
    clock = Clock()
    counts = [R("a", 1, (B(1, 10, 1, 1000, 2000, 1),), {"no_backend": 2})]
    reads = []

    def source() -> list[R]:
        reads.append(clock.now)
        return counts

    history = StatsHistory(source, clock)
    routes, measured = history.routes_json()
    assert not measured
    assert routes[("a", 1)]["rates"] is None
    assert routes[("a", 1)]["errors"] == 3
    assert node_totals(routes.values(), measured) == {"connections_active": 1, "rates": None}
    # Within MIN_INTERVAL the same reading is shared: the source is not read again.
    clock.now += MIN_INTERVAL / 2
    history.routes_json()
    assert reads == [100.0]
    clock.now = 102.0
    counts[:] = [R("a", 1, (B(1, 30, 0, 3000, 2000, 1),), {"no_backend": 4})]
    routes, measured = history.routes_json()
    assert measured
    shown = routes[("a", 1)]
    assert shown["rates"] == {
        "connections": 10.0, "bytes_in": 1000.0, "bytes_out": 0.0,
        "connect_failures": 0.0, "refused": 1.0, "errors": 1.0,
    }  # fmt: skip
    assert shown["backends"][0]["rates"]["connections"] == 10.0
    totals = node_totals(routes.values(), measured)
    assert totals["rates"]["connections"] == 10.0
    # Only the app asked for.
    assert history.routes_json("b")[0] == {}


def test_a_counter_that_went_down_counts_from_zero() -> None:
    clock = Clock()
    counts = [R("a", 1, (B(1, 50),))]
    history = StatsHistory(lambda: counts, clock)
    history.read()
    clock.now += 1
    counts[:] = [R("a", 1, (B(1, 5),))]
    routes, _ = history.routes_json()
    assert routes[("a", 1)]["rates"]["connections"] == 5.0
