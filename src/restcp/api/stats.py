"""What ``GET /stats`` and the event stream show of the node's counters: totals and rates.

The data plane counts into plain integers and nothing reads them until someone asks
(control/stats.py). So rates cost nothing while nobody looks: a reading is taken when
``GET /stats`` or a stream asks for one, at most one per ``MIN_INTERVAL`` (readers within it
share the last), and a rate is the difference between the last two readings divided by the
time between them. The first reading has no rates (``null``); a counter that went down (its
route was deleted and created again under the same id) counts from 0.

Sans-IO apart from the clock it is given: the readings come from the node (``Owner.samples``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from restcp.api.owner import RouteCounters
from restcp.model import RouteKey

# Readers closer together than this share a reading: a rate over a shorter time is noise.
MIN_INTERVAL = 0.9

# Per backend: connections, bytes in, bytes out, connect failures (all totals).
_Totals = tuple[int, int, int, int]


@dataclass(frozen=True)
class Reading:
    at: float  # the clock's seconds
    routes: Mapping[RouteKey, RouteCounters]


def _totals(route: RouteCounters) -> dict[int, _Totals]:
    return {
        b.backend: (b.connections_total, b.bytes_in, b.bytes_out, b.connect_failures)
        for b in route.backends
    }


def _rate(now: int, before: int, seconds: float) -> float:
    # A counter that went down started again from 0 (a route deleted and made again).
    delta = now - before if now >= before else now
    return round(delta / seconds, 3)


def _rates(now: _Totals, before: _Totals | None, seconds: float | None) -> dict[str, float] | None:
    if seconds is None:
        return None
    before = before or (0, 0, 0, 0)
    return {
        "connections": _rate(now[0], before[0], seconds),
        "bytes_in": _rate(now[1], before[1], seconds),
        "bytes_out": _rate(now[2], before[2], seconds),
        "connect_failures": _rate(now[3], before[3], seconds),
    }


class StatsHistory:
    """The last two readings of the node's counters, taken on demand (see the module)."""

    def __init__(
        self,
        source: Callable[[], Iterable[RouteCounters]],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._source = source
        self._clock = clock
        self._last: Reading | None = None
        self._before: Reading | None = None

    def read(self) -> tuple[Reading, Reading | None]:
        """The latest reading (taken now unless the last is recent) and the one before it."""
        now = self._clock()
        if self._last is None or now - self._last.at >= MIN_INTERVAL:
            routes = {(r.app, r.route): r for r in self._source()}
            self._before, self._last = self._last, Reading(now, routes)
        return self._last, self._before

    def routes_json(self, app: str | None = None) -> tuple[dict[RouteKey, dict[str, Any]], bool]:
        """Each served route's counters and rates (of ``app``'s routes only, if given), and
        whether there are rates yet (a reading before this one)."""
        last, before = self.read()
        seconds = None if before is None else last.at - before.at
        out: dict[RouteKey, dict[str, Any]] = {}
        for key, route in last.routes.items():
            if app is not None and key[0] != app:
                continue
            then = None if before is None else before.routes.get(key)
            out[key] = route_stats_json(route, then, seconds)
        return out, before is not None


def route_stats_json(
    route: RouteCounters, before: RouteCounters | None, seconds: float | None
) -> dict[str, Any]:
    now, then = _totals(route), ({} if before is None else _totals(before))
    backends = []
    for b in route.backends:
        backends.append(
            {
                "id": b.backend,
                "connections_active": b.connections_active,
                "connections_max": b.connections_max,
                "connections_total": b.connections_total,
                "bytes_in": b.bytes_in,
                "bytes_out": b.bytes_out,
                "connect_failures": b.connect_failures,
                "rates": _rates(now[b.backend], then.get(b.backend), seconds),
            }
        )
    refused = sum(route.refused.values())
    before_refused = None if before is None else sum(before.refused.values())
    total: _Totals = (
        sum(t[0] for t in now.values()),
        sum(t[1] for t in now.values()),
        sum(t[2] for t in now.values()),
        sum(t[3] for t in now.values()),
    )
    total_then = (
        None
        if before is None
        else (
            sum(t[0] for t in then.values()),
            sum(t[1] for t in then.values()),
            sum(t[2] for t in then.values()),
            sum(t[3] for t in then.values()),
        )
    )
    rates = _rates(total, total_then, seconds)
    if rates is not None and seconds is not None:
        rates["refused"] = _rate(refused, before_refused or 0, seconds)
        rates["errors"] = round(rates["connect_failures"] + rates["refused"], 3)
    return {
        "app": route.app,
        "id": route.route,
        "connections_active": sum(b.connections_active for b in route.backends),
        "connections_max": route.connections_max,
        "connections_total": total[0],
        "bytes_in": total[1],
        "bytes_out": total[2],
        "connect_failures": total[3],
        "refused": dict(sorted(route.refused.items())),
        "errors": total[3] + refused,
        "rates": rates,
        "backends": backends,
    }


_RATE_FIELDS = ("connections", "bytes_in", "bytes_out", "connect_failures", "refused", "errors")


def node_totals(routes: Iterable[Mapping[str, Any]], measured: bool) -> dict[str, Any]:
    """The node's sums over ``routes`` (route_stats_json's): open connections and rates
    (None until a second reading, ``measured``)."""
    active = 0
    rates = dict.fromkeys(_RATE_FIELDS, 0.0) if measured else None
    for route in routes:
        active += route["connections_active"]
        if rates is not None and route["rates"] is not None:
            for name in _RATE_FIELDS:
                rates[name] = round(rates[name] + route["rates"][name], 3)
    return {"connections_active": active, "rates": rates}


def ring_rates(shown: Mapping[str, Any]) -> tuple[float, float, float, float] | None:
    """What the rate ring keeps of route_stats_json's ``shown`` (api/history.py's FIELDS)."""
    rates = shown.get("rates")
    if rates is None:
        return None
    return (rates["connections"], rates["bytes_in"], rates["bytes_out"], rates["errors"])
