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


class Traffic:
    """Every live connection of the node, its caps, and the machinery they share."""

    def __init__(
        self, limit: int | None = None, app_limit: int | None = None, seed: int | None = None
    ) -> None:
        self._connections: dict[Tracked, str] = {}  # -> its app
        self._empty: asyncio.Event | None = None
        # The node-wide connection cap, and the cap of each app; None is no cap.
        self.limit = limit
        self.app_limit = app_limit
        self._per_app: Counter[str] = Counter()
        # Clients accepted that are not Connections yet: their ClientHello is being read
        # (a port shared by SNI) or their TLS handshake is under way. They hold a socket
        # each, so they count against the caps as connections do (``hold``).
        self.waiting = 0
        # The epoll set and kernel pipes of the splice pipes (proxy/splicer.py).
        self.splicer = Splicer()
        # The connect, half-close and idle deadlines of every connection, on one loop timer.
        self.deadlines = Deadlines()
        # The seed of the toxics' draws on routes without their own (node.py picks and logs
        # one when --seed is not given).
        self.seed = seed if seed is not None else secrets.randbits(63)

    def __len__(self) -> int:
        return len(self._connections)

    def __iter__(self) -> Iterator[Tracked]:
        return iter(list(self._connections))

    def full(self) -> bool:
        return self.limit is not None and len(self._connections) + self.waiting >= self.limit

    def app_full(self, app: str) -> bool:
        return self.app_limit is not None and self._per_app[app] >= self.app_limit

    def add(self, connection: Tracked, app: str) -> None:
        self._connections[connection] = app
        self._per_app[app] += 1

    def hold(self, app: str | None) -> None:
        """A client not yet a Connection takes a place under the caps (of its app's, if
        its route is known already), until ``unhold``."""
        self.waiting += 1
        if app is not None:
            self._per_app[app] += 1

    def unhold(self, app: str | None) -> None:
        self.waiting -= 1
        if app is not None:
            self._per_app[app] -= 1
            if not self._per_app[app]:
                del self._per_app[app]

    def discard(self, connection: Tracked) -> None:
        app = self._connections.pop(connection, None)
        if app is None:
            return
        self._per_app[app] -= 1
        if not self._per_app[app]:
            del self._per_app[app]
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
