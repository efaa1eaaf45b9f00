"""The last five minutes of each route's rates, one sample a second, kept by the node.

    the sampler (api/app.py), each second ─► record(at, {route: rates}) ─► the ring
    GET /apps/{app}/routes/{id}/stats/history ◄─ series(route) ◄──────────────┘

So a dashboard opened now shows the last five minutes at once, not only what it saw since
it opened. One slot index for every route (a sample is taken of all of them at once), a
timestamp per slot, and per route four float32 columns (new connections, bytes in, bytes
out, errors per second) of ``SLOTS`` entries: 300 * 4 * 4 bytes = 4,800 bytes per route,
about 4.6 MiB for 1,000 routes, allocated once and overwritten in place. NaN marks a second
in which the route was not sampled (not yet created, or its counters not known); a route
unsampled for a whole ring is forgotten.

Sans-IO: the caller gives the time and the rates.
"""

from __future__ import annotations

import math
from array import array
from collections.abc import Mapping
from typing import Any

from restcp.model import RouteKey

SLOTS = 300  # seconds kept, at one sample a second
FIELDS = ("connections", "bytes_in", "bytes_out", "errors")
_NAN = float("nan")
Rates = tuple[float, float, float, float]  # as FIELDS


class RateRing:
    """Five minutes of per-second rates of every route (see the module)."""

    def __init__(self, slots: int = SLOTS) -> None:
        self._slots = slots
        self._at = array("d", [_NAN]) * slots  # wall-clock seconds of each slot's sample
        self._next = 0  # the slot the next sample goes in
        self._routes: dict[RouteKey, array[float]] = {}
        self._unseen: dict[RouteKey, int] = {}  # samples in a row a route was not in

    def __len__(self) -> int:
        return len(self._routes)

    def record(self, at: float, rates: Mapping[RouteKey, Rates | None]) -> None:
        """One sample of every route's rates (None: the route is known, its rates not yet)."""
        slot = self._next
        self._at[slot] = at
        width = len(FIELDS)
        for key, values in rates.items():
            column = self._routes.get(key)
            if column is None:
                column = self._routes[key] = array("f", [_NAN]) * (self._slots * width)
            self._unseen.pop(key, None)
            base = slot * width
            if values is None:
                column[base : base + width] = array("f", [_NAN] * width)
            else:
                column[base : base + width] = array("f", values)
        for key in [k for k in self._routes if k not in rates]:
            unseen = self._unseen.get(key, 0) + 1
            if unseen >= self._slots:
                del self._routes[key], self._unseen[key]
                continue
            self._unseen[key] = unseen
            base = slot * width
            self._routes[key][base : base + width] = array("f", [_NAN] * width)
        self._next = (slot + 1) % self._slots

    def series(self, key: RouteKey) -> dict[str, Any]:
        """The route's samples, oldest first, as columns: ``at`` (Unix seconds) and one list
        per rate; only the seconds it was sampled with rates (empty if never)."""
        out: dict[str, list[float]] = {"at": [], **{name: [] for name in FIELDS}}
        column = self._routes.get(key)
        if column is None:
            return out
        width = len(FIELDS)
        for i in range(self._slots):
            slot = (self._next + i) % self._slots
            at = self._at[slot]
            first = column[slot * width]
            if math.isnan(at) or math.isnan(first):
                continue
            out["at"].append(round(at, 3))
            for k, name in enumerate(FIELDS):
                # float32 holds about 7 digits: enough for a chart, and rounded to the
                # millisecond the JSON does not show its binary noise.
                out[name].append(round(float(column[slot * width + k]), 3))
        return out
