"""top's rates from two readings of a node's counters: growth over the seconds between them,
none on the first refresh or across a restart, a backend attached since counted from 0."""

from __future__ import annotations

from restcp.api.schemas import BackendOut, RouteOut
from restcp.cli.rates import Counters, Reading, frame, rate, reading
from restcp.client import Metrics
from restcp.metrics import BackendSample, RouteSample, StatsSource, generate_latest
from restcp.metrics import Metrics as NodeMetrics


def exposed(*backends: BackendSample, refused: dict[str, int] | None = None) -> Metrics:
    """What GET /metrics answers for route 1 of app web with ``backends`` (the node's own
    collector, restcp.metrics), read back as the client reads it."""
    source = [RouteSample("web", 1, refused or {}, backends)]
    registry = NodeMetrics(source_of(source)).registry
    return Metrics.parse(generate_latest(registry).decode())


def source_of(samples: list[RouteSample]) -> StatsSource:
    class Source:
        def samples(self) -> list[RouteSample]:
            return samples

    return Source()


def counted(
    backend: int, connections: int, active: int = 0, sent: int = 0, got: int = 0, failures: int = 0
) -> BackendSample:
    return BackendSample("web", 1, backend, connections, active, sent, got, failures, "up")


METRICS = exposed(
    counted(1, connections=10, active=2, sent=1000, got=5000),
    counted(2, connections=4, failures=3),
    refused={"no_backend": 1, "route_limit": 2},
)


def route(*backends: int) -> RouteOut:
    """Route 1 of app web with ``backends``: the fields top reads (built without
    validation, so that fields added to the model later need no change here)."""
    found = [
        BackendOut.model_construct(ip="10.0.0.1", port=8000 + b, id=b, state="enabled", health="up")
        for b in backends
    ]
    return RouteOut.model_construct(app="web", id=1, url="tcp://127.0.0.1:10000/", backends=found)


def test_a_reading_sums_each_backends_samples() -> None:
    read = reading(METRICS, at=5.0)
    assert read.at == 5.0
    assert read.backends[("web", 1, 1)] == Counters(10, 2, 1000, 5000, 0)
    assert read.backends[("web", 1, 2)] == Counters(4, 0, 0, 0, 3)
    assert read.refused == {("web", 1): 3}


def test_rate_is_growth_per_second_or_none() -> None:
    assert rate(10, 30, 2.0) == 10
    assert rate(None, 30, 2.0) is None  # nothing before
    assert rate(10, 30, None) is None
    assert rate(10, 30, 0.0) is None
    assert rate(30, 10, 2.0) is None  # went down: the node restarted


def test_the_first_frame_has_counters_and_no_rates() -> None:
    shown = frame([route(1, 2)], None, reading(METRICS, 1.0))
    assert shown["seconds"] is None
    (web,) = shown["routes"]
    assert (web["connections"], web["active"], web["refused"]) == (14, 2, 3)
    assert (web["bytes_in"], web["bytes_out"]) == (1000, 5000)
    assert web["connections_per_s"] is None
    assert web["refused_per_s"] is None
    assert [b["connections_per_s"] for b in web["backends"]] == [None, None]
    assert [b["failures"] for b in web["backends"]] == [0, 3]


def test_rates_between_two_readings() -> None:
    before = Reading(
        1.0,
        {("web", 1, 1): Counters(connections=4, bytes_in=200, bytes_out=1000)},
        {("web", 1): 1},
    )
    after = reading(METRICS, 3.0)
    shown = frame([route(1, 2)], before, after)
    assert shown["seconds"] == 2.0
    one, two = shown["routes"][0]["backends"]
    assert (one["connections_per_s"], one["bytes_in_per_s"], one["bytes_out_per_s"]) == (
        3, 400, 2000
    )  # fmt: skip
    # Backend 2 was not in the reading before: attached since, it started at 0.
    assert two["connections_per_s"] == 2
    web = shown["routes"][0]
    assert (web["connections_per_s"], web["bytes_in_per_s"], web["refused_per_s"]) == (5, 400, 1)


def test_a_restart_between_readings_shows_no_rate() -> None:
    before = Reading(1.0, {("web", 1, 1): Counters(connections=99)}, {})
    shown = frame([route(1)], before, reading(METRICS, 2.0))
    assert shown["routes"][0]["backends"][0]["connections_per_s"] is None
    assert shown["routes"][0]["backends"][0]["bytes_in_per_s"] == 1000
