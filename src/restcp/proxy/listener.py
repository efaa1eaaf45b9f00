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
from restcp.model import Backend, Route
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


class RouteRuntime:
    """What relays of one route read on every connection: backends, picker and settings."""

    def __init__(self, route: Route, relays: RelaySet) -> None:
        self.app = route.app
        self._all = relays
        self.route_id = route.id
        self.relays: set[Relay] = set()
        self.route = route
        self.backends: tuple[Backend, ...] = route.backends
        self.picker: Picker = make_picker(route.settings.balance)
        self.connect_timeout = route.settings.connect_timeout
        self.idle_timeout = route.settings.idle_timeout

    def update(self, route: Route) -> None:
        if route.settings.balance != self.route.settings.balance:
            self.picker = make_picker(route.settings.balance)
        self.route = route
        self.backends = route.backends
        self.connect_timeout = route.settings.connect_timeout
        self.idle_timeout = route.settings.idle_timeout

    def pick(self, tried: set[int]) -> Backend | None:
        return self.picker.pick(self.backends, tried)

    def started(self, relay: Relay) -> None:
        self.relays.add(relay)
        self._all.add(relay)

    def finished(self, relay: Relay) -> None:
        self.relays.discard(relay)
        self._all.discard(relay)


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

    async def wait_empty(self) -> None:
        if self._relays:
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

        def accept() -> asyncio.Protocol:
            protocol = make_client()
            runtime.started(protocol.relay)
            return protocol

        self._server = await loop.create_server(accept, sock=self._sock, backlog=BACKLOG)

    def update(self, route: Route) -> None:
        self.runtime.update(route)

    def stop(self) -> None:
        """Stop accepting now; relays already running go on until their peers end them."""
        if self._server is not None:
            self._server.close()
        else:
            self._sock.close()
