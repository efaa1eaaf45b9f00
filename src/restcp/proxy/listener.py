"""One route's listening socket and the live state its relays read.

A listener binds before it is stored (so a route's port is known to be ours before the API
answers), serves until it is stopped, and swaps in new backends and settings in place: the
socket is never rebound for an update, so no client is refused while a route changes.
"""

from __future__ import annotations

import asyncio
import errno
import socket
from collections.abc import Iterator

from restcp.core.balancer import Picker, make_picker
from restcp.model import Backend, BackendStatus, Route
from restcp.proxy.relay import Relay, client_factory

BACKLOG = 1024


def bind(ip: str, port: int) -> socket.socket:
    """A listening-ready TCP socket on ip:port; OSError (EADDRINUSE...) if it cannot be had."""
    family = socket.AF_INET6 if ":" in ip else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        # SO_REUSEADDR lets a restarted node rebind a port whose old connections sit in
        # TIME_WAIT; it does not let two live listeners share a port on Linux.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind((ip, port))
        sock.listen(BACKLOG)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def is_address_taken(err: OSError) -> bool:
    return err.errno in (errno.EADDRINUSE, errno.EACCES, errno.EADDRNOTAVAIL)


class _Slot:
    """A backend as the picker sees it: the address and its open connections (least_conn and
    two_choices compare them)."""

    __slots__ = ("active", "backend")

    def __init__(self, backend: Backend, active: int = 0) -> None:
        self.backend = backend
        self.active = active

    @property
    def id(self) -> int:
        return self.backend.id

    @property
    def weight(self) -> int:
        return self.backend.weight


class RouteRuntime:
    """What relays of one route read on every connection: backends, picker and settings."""

    def __init__(self, route: Route, relays: RelaySet) -> None:
        self.app = route.app
        self._all = relays
        self.route_id = route.id
        self.relays: set[Relay] = set()
        self.route = route
        self._slots: dict[int, _Slot] = {b.id: _Slot(b) for b in route.backends}
        self._candidates = tuple(self._slots.values())
        self.picker: Picker = make_picker(route.settings.balance)
        self.connect_timeout = route.settings.connect_timeout
        self.idle_timeout = route.settings.idle_timeout

    @property
    def backends(self) -> tuple[Backend, ...]:
        return self.route.backends

    def update(self, route: Route) -> None:
        if route.settings.balance != self.route.settings.balance:
            self.picker = make_picker(route.settings.balance)
        self.route = route
        # Open connections keep counting against a backend whose address or weight changed.
        old = self._slots
        self._slots = {
            b.id: _Slot(b, old[b.id].active if b.id in old else 0) for b in route.backends
        }
        self._candidates = tuple(self._slots.values())
        self.connect_timeout = route.settings.connect_timeout
        self.idle_timeout = route.settings.idle_timeout

    def backend_status(self) -> dict[int, BackendStatus]:
        return {i: BackendStatus(active_connections=s.active) for i, s in self._slots.items()}

    def pick(self, tried: set[int], key: bytes) -> Backend | None:
        slot = self.picker.pick(self._candidates, tried, key)
        return None if slot is None else slot.backend

    def started(self, relay: Relay) -> None:
        self.relays.add(relay)
        self._all.add(relay)

    def connected(self, relay: Relay) -> None:
        if relay.backend is not None and (slot := self._slots.get(relay.backend.id)):
            slot.active += 1

    def finished(self, relay: Relay) -> None:
        self.relays.discard(relay)
        self._all.discard(relay)
        # Only relays that reached a backend were counted, and a relay reports once.
        if relay.backend is not None and (slot := self._slots.get(relay.backend.id)):
            slot.active = max(0, slot.active - 1)


class RelaySet:
    """Every live relay of the node, routes deleted since included, for a draining shutdown."""

    def __init__(self) -> None:
        self._relays: set[Relay] = set()
        self._empty: asyncio.Event | None = None

    def __len__(self) -> int:
        return len(self._relays)

    def __iter__(self) -> Iterator[Relay]:
        return iter(list(self._relays))

    def add(self, relay: Relay) -> None:
        self._relays.add(relay)

    def discard(self, relay: Relay) -> None:
        self._relays.discard(relay)
        if not self._relays and self._empty is not None:
            self._empty.set()
            self._empty = None

    async def wait_empty(self) -> None:
        # One event shared by every waiter, made on demand: the set may empty and fill again
        # between a wake-up and the check, hence the loop.
        while self._relays:
            if self._empty is None:
                self._empty = asyncio.Event()
            await self._empty.wait()


class Listener:
    """Accepts clients of one route and starts a Relay for each."""

    def __init__(self, route: Route, sock: socket.socket, relays: RelaySet) -> None:
        self.runtime = RouteRuntime(route, relays)
        self._sock = sock
        self._server: asyncio.Server | None = None

    @property
    def route(self) -> Route:
        return self.runtime.route

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        runtime = self.runtime
        make_client = client_factory(runtime, loop)

        self._server = await loop.create_server(make_client, sock=self._sock, backlog=BACKLOG)

    def update(self, route: Route) -> None:
        self.runtime.update(route)

    def stop(self) -> None:
        """Stop accepting now; relays already running go on until their peers end them."""
        if self._server is not None:
            self._server.close()
        else:
            self._sock.close()
