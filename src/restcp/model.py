"""The domain values every layer shares: plain frozen dataclasses, stdlib only.

A *route* is a frontend address (``frontend_ip``:``port``) owned by an *app*; clients that
connect to it are relayed to one of the route's *backends*. Ids count from 1: route ids per
app, backend ids per route, and neither is ever reused.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Final, Literal

Balance = Literal["random", "round_robin"]
BALANCES: Final[tuple[Balance, ...]] = ("random", "round_robin")

DEFAULT_CONNECT_TIMEOUT: Final = 5.0
DEFAULT_IDLE_TIMEOUT: Final = 3600.0


@dataclass(frozen=True, slots=True)
class Backend:
    """One address a route relays to."""

    id: int
    ip: str
    port: int


@dataclass(frozen=True, slots=True)
class RouteSettings:
    """What a user may set on a route; everything but the address and the backends."""

    balance: Balance = "random"
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT
    # Seconds a connection may stay silent both ways before it is closed; 0 disables.
    idle_timeout: float = DEFAULT_IDLE_TIMEOUT

    def replace(self, **changes: object) -> RouteSettings:
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]


@dataclass(frozen=True, slots=True)
class Route:
    """A route as stored: its address is the one its owner bound."""

    app: str
    id: int
    frontend_ip: str
    port: int
    settings: RouteSettings = field(default_factory=RouteSettings)
    backends: tuple[Backend, ...] = ()

    @property
    def key(self) -> RouteKey:
        return (self.app, self.id)

    @property
    def url(self) -> str:
        return f"tcp://{format_host(self.frontend_ip)}:{self.port}/"

    def backend(self, backend_id: int) -> Backend | None:
        for backend in self.backends:
            if backend.id == backend_id:
                return backend
        return None


RouteKey = tuple[str, int]


def format_host(ip: str) -> str:
    """An IP literal as it appears in a URL: IPv6 in brackets."""
    return f"[{ip}]" if ":" in ip else ip
