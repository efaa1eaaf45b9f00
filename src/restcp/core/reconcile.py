"""diff(desired, running) -> actions: what the proxy must do to serve the stored routes.

The node calls this with the routes the store holds for it and the routes its listeners
serve now. Applying the result twice is harmless: a second diff of the same state is empty.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from restcp.model import Route, RouteKey


@dataclass(frozen=True, slots=True)
class Start:
    """Bind and serve a route that no listener serves yet."""

    route: Route


@dataclass(frozen=True, slots=True)
class Stop:
    """Stop accepting on a route that is no longer stored."""

    key: RouteKey


@dataclass(frozen=True, slots=True)
class Update:
    """Same address, new backends or settings: swap them in without touching the socket."""

    route: Route


Action = Start | Stop | Update


def diff(desired: Mapping[RouteKey, Route], running: Mapping[RouteKey, Route]) -> list[Action]:
    """Every Stop first, then Updates, then Starts.

    A Start may need the address of a listener that is going away: a route re-created where a
    deleted one was, or two routes whose ports swapped (a store wiped and refilled under a
    running node). Stopping everything first means such a Start never finds it still bound.
    """
    stops: list[Action] = []
    updates: list[Action] = []
    starts: list[Action] = []
    for key, serving in running.items():
        wanted = desired.get(key)
        if wanted is None or _address(wanted) != _address(serving):
            stops.append(Stop(key))
    for key, route in desired.items():
        current = running.get(key)
        if current is None or _address(route) != _address(current):
            starts.append(Start(route))
        elif current != route:
            updates.append(Update(route))
    return [*stops, *updates, *starts]


def _address(route: Route) -> tuple[str, int]:
    return route.frontend_ip, route.port
