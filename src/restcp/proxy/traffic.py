"""The node's data-plane context: every live connection, and what they all share.

One Traffic per ProxyManager (so per node, or per worker process). Its connections are
every route's, routes stopped since included, which is what a draining shutdown waits for;
it holds the node-wide and per-app connection caps, the splicer (epoll set and kernel pipes
of the splice pipes), the deadlines (every connection's timeouts on one loop timer) and the
node's seed of the toxics' draws.
"""

from __future__ import annotations

import asyncio
import secrets
from collections import Counter
from collections.abc import Iterator
from typing import Protocol

from restcp.proxy.deadlines import Deadlines
from restcp.proxy.splicer import Splicer


class Tracked(Protocol):
    """A live connection as the data plane keeps track of it (proxy.connection.Connection)."""

    def abort(self, reason: str) -> None:
        """Reset both peers now (a drain deadline, a disabled backend, the shutdown)."""


class Places(Protocol):
    """The node's places under its caps (--max-connections, --max-connections-per-app):
    one count for every data plane of the process, so that the caps hold for all of them
    together. The native engine keeps them in C, taken by its thread and by asyncio's
    connections alike (proxy/native.py); without it, ``LocalPlaces`` counts them here."""

    def set_limits(self, limit: int | None, app_limit: int | None) -> None:
        """The caps from now on (None: none)."""

    def take(self, app: str | None) -> str | None:
        """A place for one client (of ``app``; None: not known yet), or why there is none:
        "node_limit" or "app_limit"."""

    def give(self, app: str | None) -> None:
        """Give back a place ``take`` gave."""


class LocalPlaces:
    """The places, counted in Python: no engine shares them."""

    def __init__(self) -> None:
        self.limit: int | None = None
        self.app_limit: int | None = None
        self.taken = 0
        self._per_app: Counter[str] = Counter()

    def set_limits(self, limit: int | None, app_limit: int | None) -> None:
        self.limit, self.app_limit = limit, app_limit

    def take(self, app: str | None) -> str | None:
        if self.limit is not None and self.taken >= self.limit:
            return "node_limit"
        if app is not None:
            if self.app_limit is not None and self._per_app[app] >= self.app_limit:
                return "app_limit"
            self._per_app[app] += 1
        self.taken += 1
        return None

    def give(self, app: str | None) -> None:
        self.taken -= 1
        if app is not None:
            self._per_app[app] -= 1
            if not self._per_app[app]:
                del self._per_app[app]


class Traffic:
    """Every live connection of the node, its caps, and the machinery they share."""

    def __init__(
        self,
        limit: int | None = None,
        app_limit: int | None = None,
        seed: int | None = None,
        places: Places | None = None,
    ) -> None:
        self._connections: dict[Tracked, str] = {}  # -> its app
        self._empty: asyncio.Event | None = None
        # The node-wide connection cap, and the cap of each app; None is no cap. Each
        # connection admitted takes a place under them (``admit``), and so does a client
        # not yet a Connection: its ClientHello is being read (a port shared by SNI) or its
        # TLS handshake is under way, as it holds a socket all the same (``hold``).
        self.places: Places = places if places is not None else LocalPlaces()
        self.places.set_limits(limit, app_limit)
        self.waiting = 0  # clients held (``hold``), not Connections yet
        # The epoll set and kernel pipes of the splice pipes (proxy/splicer.py).
        self.splicer = Splicer()
        # The connect, half-close and idle deadlines of every connection, on one loop timer.
        self.deadlines = Deadlines()
        # The seed of the toxics' draws on routes without their own (node.py picks and logs
        # one when --seed is not given).
        self.seed = seed if seed is not None else secrets.randbits(63)

    def set_limits(self, limit: int | None, app_limit: int | None) -> None:
        """The caps from now on (None: none); the places keep them, nothing else does."""
        self.places.set_limits(limit, app_limit)

    def __len__(self) -> int:
        return len(self._connections)

    def __iter__(self) -> Iterator[Tracked]:
        return iter(list(self._connections))

    def admit(self, connection: Tracked, app: str) -> str | None:
        """Take a place for ``connection`` until ``discard``, or say why there is none."""
        refusal = self.places.take(app)
        if refusal is None:
            self._connections[connection] = app
        return refusal

    def adopt(self, connection: Tracked, app: str) -> None:
        """Track ``connection``, which holds a place already (taken by the native engine at
        its accept, handed over with it), until ``discard`` gives it back."""
        self._connections[connection] = app

    def hold(self, app: str | None) -> str | None:
        """A client not yet a Connection takes a place under the caps (of its app's too, if
        its route is known already) until ``unhold``, or is refused: why."""
        refusal = self.places.take(app)
        if refusal is None:
            self.waiting += 1
        return refusal

    def unhold(self, app: str | None) -> None:
        self.waiting -= 1
        self.places.give(app)

    def discard(self, connection: Tracked) -> None:
        app = self._connections.pop(connection, None)
        if app is None:
            return
        self.places.give(app)
        if not self._connections and self._empty is not None:
            self._empty.set()
            self._empty = None

    async def wait_empty(self) -> None:
        # One event shared by every waiter, made on demand: the set may empty and fill again
        # between a wake-up and the check, hence the loop.
        while self._connections:
            if self._empty is None:
                self._empty = asyncio.Event()
            await self._empty.wait()

    def close(self) -> None:
        """The node has stopped: no connection is left, and none may splice any more."""
        self.splicer.close()
        self.deadlines.close()
