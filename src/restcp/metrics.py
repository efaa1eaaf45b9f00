"""Prometheus metrics, rendered at scrape time from the data plane's own counters.

The relay hot path touches no metrics library: routes keep plain integer counters per
backend, and this collector reads them when ``/metrics`` is scraped (``StatsSource``: the
node's ``control/stats.py``, which adds its workers' counters to its own), so an open
connection's bytes are counted as they flow, not only when it ends. Each node has its own
registry (no module-level state), which also gives every test a fresh one.

Labels are app, route and backend ids, never client addresses: their number is bounded by
the configuration, not by the traffic.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Protocol

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

__all__ = [
    "CONTENT_TYPE_LATEST",
    "BackendSample",
    "Metrics",
    "PortSample",
    "RouteSample",
    "ToxicSample",
    "generate_latest",
]

HEALTH_STATES = ("up", "down", "unknown")


@dataclass(frozen=True, slots=True)
class BackendSample:
    app: str
    route: int
    backend: int
    connections_total: int
    connections_active: int
    bytes_in: int  # client -> backend
    bytes_out: int  # backend -> client
    connect_failures: int
    health: str
    connections_max: int = 0  # the most open at once


@dataclass(frozen=True, slots=True)
class ToxicSample:
    toxic: str  # its name
    type: str
    stream: str
    connections: int  # that met it
    held: int  # bytes held now
    dropped: int  # bytes dropped


@dataclass(frozen=True, slots=True)
class RouteSample:
    app: str
    route: int
    refused: dict[str, int]  # reason -> count
    backends: tuple[BackendSample, ...]
    toxics: tuple[ToxicSample, ...] = ()
    tls_failures: dict[str, int] = field(default_factory=dict)  # reason -> count
    backend_tls_failures: dict[str, int] = field(default_factory=dict)  # reason -> count
    connections_max: int = 0  # the most clients open at once


@dataclass(frozen=True, slots=True)
class PortSample:
    """An address shared by routes with server names (docs/tls.md)."""

    ip: str
    port: int
    sni_closed: dict[str, int]  # clients closed before a route was chosen: reason -> count


class StatsSource(Protocol):
    def samples(self) -> Iterable[RouteSample]: ...


class PortSource(Protocol):
    def ports(self) -> Iterable[PortSample]: ...


class _DataPlaneCollector(Collector):
    """Reads the data plane's counters at each scrape, so serving costs no metric updates."""

    def __init__(self, source: StatsSource, ports: PortSource | None = None) -> None:
        self._source = source
        self._ports = ports

    def collect(self) -> Iterator[Metric]:
        labels = ["app", "route", "backend"]
        total = CounterMetricFamily(
            "restcp_connections", "Client connections relayed to a backend", labels=labels
        )
        active = GaugeMetricFamily(
            "restcp_connections_active", "Connections open now", labels=labels
        )
        most = GaugeMetricFamily(
            "restcp_connections_max",
            "The most connections open at once to the backend since its route started",
            labels=labels,
        )
        route_most = GaugeMetricFamily(
            "restcp_route_connections_max",
            "The most clients open at once on the route since it started",
            labels=["app", "route"],
        )
        sent = CounterMetricFamily("restcp_bytes", "Bytes relayed", labels=[*labels, "direction"])
        failures = CounterMetricFamily(
            "restcp_connect_failures", "Failed connects to a backend", labels=labels
        )
        health = GaugeMetricFamily(
            "restcp_backend_health", "1 for the backend's health state", labels=[*labels, "state"]
        )
        refused = CounterMetricFamily(
            "restcp_refused_connections",
            "Clients closed without a backend (limits reached, no backend usable)",
            labels=["app", "route", "reason"],
        )
        toxic_labels = ["app", "route", "toxic", "type", "stream"]
        met = CounterMetricFamily(
            "restcp_toxic_connections", "Connections that met a toxic", labels=toxic_labels
        )
        held = GaugeMetricFamily(
            "restcp_toxic_held_bytes", "Bytes a toxic holds back now", labels=toxic_labels
        )
        dropped = CounterMetricFamily(
            "restcp_toxic_dropped_bytes",
            "Bytes a toxic dropped (past a limit, held when a timeout or a reset came)",
            labels=toxic_labels,
        )
        handshakes = CounterMetricFamily(
            "restcp_tls_handshake_failures",
            "TLS handshakes a route that terminates TLS failed, by reason (docs/tls.md)",
            labels=["app", "route", "reason"],
        )
        sni_closed = CounterMetricFamily(
            "restcp_sni_closed",
            "Clients of a port shared by SNI closed before a route was chosen, by reason"
            " (docs/tls.md)",
            labels=["ip", "port", "reason"],
        )
        for shared in self._ports.ports() if self._ports is not None else ():
            for reason, count in sorted(shared.sni_closed.items()):
                sni_closed.add_metric([shared.ip, str(shared.port), reason], count)
        backend_handshakes = CounterMetricFamily(
            "restcp_backend_tls_handshake_failures",
            "TLS handshakes with the backends of a route with backend_tls that failed, by "
            "reason (docs/tls.md); each is also a connect failure of its backend",
            labels=["app", "route", "reason"],
        )
        for route in self._source.samples():
            rid = str(route.route)
            for reason, count in sorted(route.backend_tls_failures.items()):
                backend_handshakes.add_metric([route.app, rid, reason], count)
            route_most.add_metric([route.app, rid], route.connections_max)
            for reason, count in sorted(route.refused.items()):
                refused.add_metric([route.app, rid, reason], count)
            for reason, count in sorted(route.tls_failures.items()):
                handshakes.add_metric([route.app, rid, reason], count)
            for t in route.toxics:
                key = [route.app, rid, t.toxic, t.type, t.stream]
                met.add_metric(key, t.connections)
                held.add_metric(key, t.held)
                dropped.add_metric(key, t.dropped)
            for b in route.backends:
                key = [b.app, rid, str(b.backend)]
                total.add_metric(key, b.connections_total)
                active.add_metric(key, b.connections_active)
                most.add_metric(key, b.connections_max)
                sent.add_metric([*key, "in"], b.bytes_in)
                sent.add_metric([*key, "out"], b.bytes_out)
                failures.add_metric(key, b.connect_failures)
                for state in HEALTH_STATES:
                    health.add_metric([*key, state], 1.0 if b.health == state else 0.0)
        yield from (
            total, active, most, route_most, sent, failures, health, refused, met, held,
            dropped, handshakes, sni_closed, backend_handshakes,
        )  # fmt: skip


class Metrics:
    """One node's registry: data-plane counters, health-check latency, and the process's
    CPU, memory, descriptors and garbage collection."""

    def __init__(self, source: StatsSource, ports: PortSource | None = None) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.registry.register(_DataPlaneCollector(source, ports))
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        GCCollector(registry=self.registry)
        self.check_latency = Histogram(
            "restcp_health_check_duration_seconds",
            "Time an active health check took",
            ["app", "route", "backend"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
            registry=self.registry,
        )
        self._checked: dict[tuple[str, int], set[int]] = {}

    def observe_check(self, app: str, route: int, backend: int, seconds: float) -> None:
        self._checked.setdefault((app, route), set()).add(backend)
        self.check_latency.labels(app, str(route), str(backend)).observe(seconds)

    def forget_route(self, app: str, route: int) -> None:
        """Drop a stopped route's series, so label sets do not grow with route churn."""
        for backend in self._checked.pop((app, route), ()):
            self.check_latency.remove(app, str(route), str(backend))
