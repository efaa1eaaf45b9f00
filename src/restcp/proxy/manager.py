"""The node's listeners, keyed by route, and the one place reconcile actions are applied."""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Callable, Iterable, Mapping
from types import MappingProxyType

from restcp.core.reconcile import Action, Start, Stop, Update
from restcp.model import BackendStatus, Route, RouteKey
from restcp.proxy.listener import Listener, bind
from restcp.proxy.runtime import BackendRefusal, RouteRuntime
from restcp.proxy.traffic import Traffic

log = logging.getLogger("restcp.proxy")


class ProxyManager:
    """The node's data plane as the control plane drives it: the listeners by route, the
    reconcile actions applied to them, and the draining shutdown of every connection."""

    def __init__(
        self,
        max_connections: int | None = None,
        max_connections_per_app: int | None = None,
        backend_refusal: BackendRefusal = lambda ip, port: None,
        binder: Callable[[str, int], socket.socket] = bind,
    ) -> None:
        self._listeners: dict[RouteKey, Listener] = {}
        # How a stored route's port is bound: plainly, or with SO_REUSEPORT (--workers).
        self._bind = binder
        # The routes of _listeners, and the routes with a backend on each port: indexes kept
        # as listeners come, change and go, so that a route change costs that route's work,
        # not a walk over every route of the node (10,000 of them).
        self._routes: dict[RouteKey, Route] = {}
        self._by_backend_port: dict[int, set[RouteKey]] = {}
        # port -> frontend IPs listening on it: the node's own addresses, by port.
        self._frontends: dict[int, set[str]] = {}
        self._refusal = backend_refusal
        self.traffic = Traffic(max_connections, max_connections_per_app)
        # Routes whose stored port could not be bound (another process holds it), by key.
        self.unbound: dict[RouteKey, str] = {}

    def runtime(self, key: RouteKey) -> RouteRuntime | None:
        listener = self._listeners.get(key)
        return None if listener is None else listener.runtime

    def backend_status(self, key: RouteKey) -> Mapping[int, BackendStatus]:
        listener = self._listeners.get(key)
        return {} if listener is None else listener.runtime.backend_status()

    def running(self) -> Mapping[RouteKey, Route]:
        """The routes being served: a live read-only view (copy it to iterate across an
        await)."""
        return MappingProxyType(self._routes)

    def backends_on(self, port: int) -> set[RouteKey]:
        """The served routes with a backend on ``port``."""
        return set(self._by_backend_port.get(port, ()))

    def _index(self, route: Route, previous: Route | None) -> None:
        if previous is not None:
            self._unindex(previous)
        for port in {b.port for b in route.backends}:
            self._by_backend_port.setdefault(port, set()).add(route.key)
        self._routes[route.key] = route

    def _unindex(self, route: Route) -> None:
        for port in {b.port for b in route.backends}:
            keys = self._by_backend_port.get(port)
            if keys is not None:
                keys.discard(route.key)
                if not keys:
                    del self._by_backend_port[port]
        del self._routes[route.key]

    async def serve(self, route: Route, sock: socket.socket) -> None:
        """Serve ``route`` on a socket bound for it already."""
        listener = Listener(route, sock, self.traffic, self._refusal)
        await listener.start()
        self._listeners[route.key] = listener
        self._index(route, None)
        self._frontends.setdefault(route.port, set()).add(route.frontend_ip)
        self.unbound.pop(route.key, None)
        log.info("listening app=%s route=%s url=%s", route.app, route.id, route.url)
        # A new listener is a new address of ours: no backend may point at it now.
        self.recheck_backends(route.port)

    def frontends_on(self, port: int) -> set[str]:
        return self._frontends.get(port, set())

    def recheck_backends(self, port: int) -> None:
        """Apply the address policy again to the backends on ``port``."""
        for key in self.backends_on(port):
            self._listeners[key].runtime.recheck()

    async def apply(self, actions: Iterable[Action]) -> None:
        for action in actions:
            if isinstance(action, Stop):
                self.stop(action.key)
            elif isinstance(action, Update):
                self._index(action.route, self._routes[action.route.key])
                self._listeners[action.route.key].update(action.route)
            elif isinstance(action, Start):
                await self._start(action.route)

    async def _start(self, route: Route) -> None:
        try:
            sock = self._bind(route.frontend_ip, route.port)
        except OSError as err:
            if self.unbound.get(route.key) != str(err):
                log.error(
                    "cannot bind app=%s route=%s url=%s: %s", route.app, route.id, route.url, err
                )
            self.unbound[route.key] = str(err)
            return
        await self.serve(route, sock)

    def stop(self, key: RouteKey) -> None:
        self.unbound.pop(key, None)
        listener = self._listeners.pop(key, None)
        if listener is not None:
            listener.stop()
            route = listener.route
            self._unindex(route)
            ips = self._frontends.get(route.port, set())
            ips.discard(route.frontend_ip)
            if not ips:
                self._frontends.pop(route.port, None)
            log.info("stopped app=%s route=%s url=%s", key[0], key[1], route.url)
            # The address is free again: a backend refused for pointing at it may be used.
            self.recheck_backends(route.port)

    async def shutdown(self, drain_timeout: float) -> None:
        """Stop accepting everywhere, let connections finish up to the deadline, then reset
        them."""
        for key in list(self._listeners):
            self.stop(key)
        connections = self.traffic
        if connections:
            log.info("draining %d connections for up to %gs", len(connections), drain_timeout)
            try:
                async with asyncio.timeout(drain_timeout):
                    await connections.wait_empty()
            except TimeoutError:
                log.warning("drain deadline passed: resetting %d connections", len(connections))
                for connection in connections:
                    connection.abort("shutdown")
                # Aborted transports report on the next loop turns; wait for that, briefly.
                # Shutdown must return whatever happens: the node closes its store next.
                try:
                    async with asyncio.timeout(1.0):
                        await connections.wait_empty()
                except TimeoutError:
                    log.error("%d connections did not end after a reset", len(connections))
        connections.close()
