"""What ``restcp top`` shows, computed from successive reads of a node: pure functions of
the routes (GET /apps/APP/routes) and two readings of its counters (GET /metrics), no I/O.

A rate is a counter's growth between two readings over the seconds between them. The first
frame has none (nothing to compare with), and neither has a counter that went down between
two readings (the node restarted: its counters started again from 0), rather than a
negative rate.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from restcp.api.schemas import RouteOut
    from restcp.client import Metrics

BackendKey = tuple[str, int, int]  # (app, route, backend)
RouteKey = tuple[str, int]


@dataclass(frozen=True, slots=True)
class Counters:
    """One backend's counters at one reading."""

    connections: float = 0.0  # relayed so far
    active: float = 0.0  # open now
    bytes_in: float = 0.0  # client -> backend
    bytes_out: float = 0.0  # backend -> client
    failures: float = 0.0  # failed connects


@dataclass(frozen=True, slots=True)
class Reading:
    """A node's counters at ``at`` (seconds on a monotonic clock)."""

    at: float
    backends: dict[BackendKey, Counters]
    refused: dict[RouteKey, float]


# Counters field -> (sample name, extra labels)
_SAMPLES: dict[str, tuple[str, dict[str, str]]] = {
    "connections": ("restcp_connections_total", {}),
    "active": ("restcp_connections_active", {}),
    "bytes_in": ("restcp_bytes_total", {"direction": "in"}),
    "bytes_out": ("restcp_bytes_total", {"direction": "out"}),
    "failures": ("restcp_connect_failures_total", {}),
}


def reading(metrics: Metrics, at: float) -> Reading:
    """The counters of every backend and the refusals of every route in ``metrics``."""
    values: dict[BackendKey, dict[str, float]] = {}
    for field, (name, extra) in _SAMPLES.items():
        for sample in metrics.samples(name):
            labels = sample.labels
            if not extra.items() <= labels.items():
                continue
            key = (labels["app"], int(labels["route"]), int(labels["backend"]))
            counts = values.setdefault(key, {})
            counts[field] = counts.get(field, 0.0) + sample.value
    refused: dict[RouteKey, float] = {}
    for sample in metrics.samples("restcp_refused_connections_total"):
        route = (sample.labels["app"], int(sample.labels["route"]))
        refused[route] = refused.get(route, 0.0) + sample.value
    return Reading(at, {key: Counters(**counts) for key, counts in values.items()}, refused)


def rate(before: float | None, after: float, seconds: float | None) -> float | None:
    """Growth per second; None without an earlier value, time, or when it went down."""
    if before is None or seconds is None or seconds <= 0 or after < before:
        return None
    return (after - before) / seconds


def _rate(then: Counters | None, now: Counters, field: str, seconds: float | None) -> float | None:
    before = None if then is None else float(getattr(then, field))
    return rate(before, float(getattr(now, field)), seconds)


def _total(values: list[float | None]) -> float | None:
    known = [value for value in values if value is not None]
    return sum(known) if known else None


def frame(routes: list[RouteOut], before: Reading | None, after: Reading) -> dict[str, Any]:
    """One refresh of ``top``: each route with its backends, their counters now and their
    rates since ``before``, JSON-ready."""
    seconds = None if before is None else after.at - before.at
    shown: list[dict[str, Any]] = []
    for route in routes:
        rows: list[dict[str, Any]] = []
        for backend in route.backends:
            key = (route.app, route.id, backend.id)
            now = after.backends.get(key, Counters())
            # Absent before: a backend attached since, whose counters started at 0.
            then = None if before is None else before.backends.get(key, Counters())
            rows.append({
                "id": backend.id,
                "ip": backend.ip,
                "port": backend.port,
                "state": backend.state,
                "health": backend.health,
                "active": int(now.active),
                "connections": int(now.connections),
                "bytes_in": int(now.bytes_in),
                "bytes_out": int(now.bytes_out),
                "failures": int(now.failures),
                "connections_per_s": _rate(then, now, "connections", seconds),
                "bytes_in_per_s": _rate(then, now, "bytes_in", seconds),
                "bytes_out_per_s": _rate(then, now, "bytes_out", seconds),
            })  # fmt: skip
        refused = after.refused.get((route.app, route.id), 0.0)
        refused_before = None if before is None else before.refused.get((route.app, route.id), 0.0)
        shown.append({
            "app": route.app,
            "id": route.id,
            "url": route.url,
            "active": sum(row["active"] for row in rows),
            "connections": sum(row["connections"] for row in rows),
            "bytes_in": sum(row["bytes_in"] for row in rows),
            "bytes_out": sum(row["bytes_out"] for row in rows),
            "refused": int(refused),
            "connections_per_s": _total([row["connections_per_s"] for row in rows]),
            "bytes_in_per_s": _total([row["bytes_in_per_s"] for row in rows]),
            "bytes_out_per_s": _total([row["bytes_out_per_s"] for row in rows]),
            "refused_per_s": rate(refused_before, refused, seconds),
            "backends": rows,
        })  # fmt: skip
    return {"seconds": seconds, "routes": shown}
