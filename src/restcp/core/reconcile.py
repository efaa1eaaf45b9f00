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
    actions: list[Action] = [Stop(key) for key in running if key not in desired]
    for key, route in desired.items():
        current = running.get(key)
        if current is None:
            actions.append(Start(route))
        elif (current.frontend_ip, current.port) != (route.frontend_ip, route.port):
            actions.extend((Stop(key), Start(route)))
        elif current != route:
            actions.append(Update(route))
    return actions
