"""A route's members: its backends as the data plane serves them.

A *member* is one address of a backend: the stored Backend, its health (core.health), its
drain and cool-down timers, and two kinds of numbers:

- what follows the *address*: the connections open to it (``active``, and the most at once,
  ``active_max``) and the connects in
  flight to it (``connecting``). They feed ``least_conn``, a backend's ``max_connections``
  and draining, so they belong to the address a connection is connected to until it ends.
  When a backend is replaced (same id, new address), its member is *retired*: it keeps
  counting its leftover connections, shown in the API beside the backend (``replaced``),
  and is forgotten once the last of them ends; the new address starts from none.
- what follows the backend's *id*: the counters of ``/metrics`` (connections made, bytes,
  connect failures). They go to whichever member the id has when they happen.
"""

from __future__ import annotations

import asyncio

from restcp.core import health as hm
from restcp.model import Backend


class Member:
    """One address of a route's backend, as the data plane serves it (see the module)."""

    __slots__ = (
        "active",
        "active_max",
        "backend",
        "bytes_down",
        "bytes_up",
        "connect_failures",
        "connecting",
        "connections",
        "cooldown",
        "drain_started",
        "health",
        "refusal",
        "retired",
        "timer",
    )

    def __init__(self, backend: Backend, health: hm.BackendHealth) -> None:
        self.backend = backend
        self.health = health
        # Open connections to this address.
        self.active = 0
        # The most connections open to it at once (HAProxy's "smax"): one compare per connect.
        self.active_max = 0
        # Clients picked for this address whose connect is still in flight: a burst picks
        # many before the first connects, and they count against max_connections.
        self.connecting = 0
        # The id's counters while this is its member (see the module).
        self.connections = 0
        self.bytes_up = 0  # client -> backend, of finished connections
        self.bytes_down = 0
        self.connect_failures = 0
        self.refusal: str | None = None  # set: the address policy forbids this backend
        # The drain deadline, and the cool-down after a passive "down": apart, so that
        # draining (or re-enabling) a member does not cancel its way back from "down".
        self.timer: asyncio.TimerHandle | None = None
        self.cooldown: asyncio.TimerHandle | None = None
        # Loop time the member entered drain: its drain_timeout counts from there, even
        # when the timeout is set (or changed) later.
        self.drain_started: float | None = None
        # Replaced by another address of its backend: counts its leftovers until they end.
        self.retired = False

    @property
    def id(self) -> int:
        return self.backend.id

    @property
    def weight(self) -> int:
        return self.backend.weight

    @property
    def address(self) -> tuple[str, int]:
        return self.backend.ip, self.backend.port

    @property
    def idle(self) -> bool:
        """No connection open to it and none on its way."""
        return not self.active and not self.connecting

    def cancel_timer(self) -> None:
        """Cancel both timers: the member is replaced or gone."""
        self.cancel_drain()
        self.cancel_cooldown()

    def cancel_drain(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def cancel_cooldown(self) -> None:
        if self.cooldown is not None:
            self.cooldown.cancel()
            self.cooldown = None
