"""The node's routes as served, keyed by route: their runtimes and listeners, the one place
reconcile actions are applied, and the draining shutdown.

A route is served by its RouteRuntime (the decisions, counters and toxics, kept across
updates) and, while it is enabled, a Listener on its port. ``enabled: false`` closes the
listener (the port refuses new clients) and closes the route's open connections; the route
is still served (its runtime, its counters, its place in ``running``). ``true`` binds the
same port again; a port someone took meanwhile is ``unbound``, as a stored route that cannot
bind is, and the next resync tries again.
"""

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
        seed: int | None = None,
    ) -> None:
        self._runtimes: dict[RouteKey, RouteRuntime] = {}  # every route served
        self._listeners: dict[RouteKey, Listener] = {}  # those enabled
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
        self.traffic = Traffic(max_connections, max_connections_per_app, seed)
        # Routes whose stored port could not be bound (another process holds it), by key.
        self.unbound: dict[RouteKey, str] = {}

    def runtime(self, key: RouteKey) -> RouteRuntime | None:
        return self._runtimes.get(key)

    def backend_status(self, key: RouteKey) -> Mapping[int, BackendStatus]:
        runtime = self._runtimes.get(key)
        return {} if runtime is None else runtime.backend_status()

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

    async def serve(self, route: Route, sock: socket.socket | None) -> None:
        """Serve ``route`` on a socket bound for it already (None, or closed here: the
        route is disabled)."""
        runtime = RouteRuntime(route, self.traffic, self._refusal)
        self._runtimes[route.key] = runtime
        if route.settings.enabled and sock is not None:
            await self._listen(runtime, sock)
        else:
            if sock is not None:
                sock.close()
            log.info("disabled app=%s route=%s url=%s", route.app, route.id, route.url)
        self._index(route, None)
        self._frontends.setdefault(route.port, set()).add(route.frontend_ip)
        self.unbound.pop(route.key, None)
        # A new route is a new address of ours: no backend may point at it now.
        self.recheck_backends(route.port)

    async def _listen(self, runtime: RouteRuntime, sock: socket.socket) -> None:
        listener = Listener(runtime, sock)
        await listener.start()
        route = runtime.route
        self._listeners[route.key] = listener
        log.info("listening app=%s route=%s url=%s", route.app, route.id, route.url)

    def frontends_on(self, port: int) -> set[str]:
        return self._frontends.get(port, set())

    def recheck_backends(self, port: int) -> None:
        """Apply the address policy again to the backends on ``port``."""
        for key in self.backends_on(port):
            self._runtimes[key].recheck()

    async def apply(self, actions: Iterable[Action]) -> None:
        for action in actions:
            if isinstance(action, Stop):
                self.stop(action.key)
            elif isinstance(action, Update):
                await self._update(action.route)
            elif isinstance(action, Start):
                await self._start(action.route)

    async def _update(self, route: Route) -> None:
        key = route.key
        enabled, was = route.settings.enabled, self._routes[key].settings.enabled
        self._index(route, self._routes[key])
        runtime = self._runtimes[key]
        if was and not enabled:
            self._disable(runtime)
        runtime.update(route)
        if enabled and not was:
            sock = self._bind_or_note(route)
            if sock is None:
                self._forget(key)  # unbound: a resync tries again
                return
            await self._listen(runtime, sock)

    def _disable(self, runtime: RouteRuntime) -> None:
        """The port refuses new clients, and the open connections are closed."""
        listener = self._listeners.pop(runtime.route.key, None)
        if listener is not None:
            listener.stop()
        for connection in list(runtime.connections):
            connection.end("route_disabled")
        route = runtime.route
        log.info("disabled app=%s route=%s url=%s", route.app, route.id, route.url)

    async def _start(self, route: Route) -> None:
        if not route.settings.enabled:
            await self.serve(route, None)
            return
        sock = self._bind_or_note(route)
        if sock is not None:
            await self.serve(route, sock)

    def _bind_or_note(self, route: Route) -> socket.socket | None:
        """The route's socket, or None: its port cannot be had (noted in ``unbound``)."""
        try:
            return self._bind(route.frontend_ip, route.port)
        except OSError as err:
            if self.unbound.get(route.key) != str(err):
                log.error(
                    "cannot bind app=%s route=%s url=%s: %s", route.app, route.id, route.url, err
                )
            self.unbound[route.key] = str(err)
            return None

    def stop(self, key: RouteKey) -> None:
        self.unbound.pop(key, None)
        self._forget(key)

    def _forget(self, key: RouteKey) -> None:
        """Serve ``key`` no more (its ``unbound`` entry, if any, stays)."""
        listener = self._listeners.pop(key, None)
        if listener is not None:
            listener.stop()
        runtime = self._runtimes.pop(key, None)
        if runtime is None:
            return
        runtime.close()
        route = runtime.route
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
        for key in list(self._runtimes):
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
