"""The node's routes as served, keyed by route: their runtimes and listeners, the one place
reconcile actions are applied, and the draining shutdown.

A route is served by its RouteRuntime (the decisions, counters and toxics, kept across
updates) and, while it is enabled, a Listener on its port. ``enabled: false`` closes the
listener (the port refuses new clients) and closes the route's open connections; the route
is still served (its runtime, its counters, its place in ``running``). ``true`` binds the
same port again; a port someone took meanwhile is ``unbound``, as a stored route that cannot
bind is, and the next resync tries again.

Routes with server names (``sni``) on one address share one SniListener (sni_listener.py):
the first to be served binds the port, the others join it, and the socket is closed with
the last one's leaving. A route that gains or loses server names hands its socket from
one kind of listener to the other, so its port never stops accepting.

With the native engine (``engine``; proxy/native.py), a plain route's socket is accepted on
by the engine instead of a Listener; an update that gives the route something the engine
does not do (toxics, TLS...) hands the socket to a Listener, and the engine's open
connections of the route with it (proxy/handoff.py), and the socket back when it is gone
again (asyncio's connections stay there).
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Callable, Iterable, Mapping
from types import MappingProxyType

from restcp.core.reconcile import Action, Start, Stop, Update
from restcp.model import BackendStatus, Route, RouteKey
from restcp.proxy.handoff import adopt
from restcp.proxy.listener import Listener, bind
from restcp.proxy.native import EngineListener, NativeEngine, unsupported
from restcp.proxy.runtime import BackendRefusal, RouteRuntime
from restcp.proxy.sni_listener import SniListener
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
        engine: NativeEngine | None = None,
    ) -> None:
        self._runtimes: dict[RouteKey, RouteRuntime] = {}  # every route served
        # Those enabled.
        self._listeners: dict[RouteKey, Listener | SniListener | EngineListener] = {}
        # The native engine that serves the plain routes it can (None: asyncio serves all).
        self.engine = engine
        # The SniListener of each address shared by routes with server names.
        self._shared: dict[tuple[str, int], SniListener] = {}
        # How a stored route's port is bound: plainly, or with SO_REUSEPORT (--workers).
        self._bind = binder
        # The routes of _listeners, and the routes with a backend on each port: indexes kept
        # as listeners come, change and go, so that a route change costs that route's work,
        # not a walk over every route of the node (10,000 of them).
        self._routes: dict[RouteKey, Route] = {}
        self._by_backend_port: dict[int, set[RouteKey]] = {}
        # (frontend IP, port) -> the routes served there (several: they share it by SNI).
        self._by_address: dict[tuple[str, int], set[RouteKey]] = {}
        # port -> frontend IPs listening on it: the node's own addresses, by port.
        self._frontends: dict[int, set[str]] = {}
        self._refusal = backend_refusal
        # With an engine, the caps' places are counted in it, for both data planes.
        self.traffic = Traffic(max_connections, max_connections_per_app, seed, places=engine)
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

    def routes_at(self, ip: str, port: int) -> list[Route]:
        """The routes served on ``ip``:``port`` (enabled or not)."""
        return [self._routes[key] for key in self._by_address.get((ip, port), ())]

    def shares(self, route: Route) -> bool:
        """Whether ``route`` would join a listener already there (no socket to bind)."""
        return route.settings.sni is not None and (route.frontend_ip, route.port) in self._shared

    def sni_closes(self) -> dict[tuple[str, int], dict[str, int]]:
        """The clients each shared address closed before choosing a route, by reason."""
        return {address: dict(shared.closes) for address, shared in self._shared.items()}

    def backends_on(self, port: int) -> set[RouteKey]:
        """The served routes with a backend on ``port``."""
        return set(self._by_backend_port.get(port, ()))

    def _index(self, route: Route, previous: Route | None) -> None:
        if previous is not None:
            self._unindex(previous)
        for port in {b.port for b in route.backends}:
            self._by_backend_port.setdefault(port, set()).add(route.key)
        self._by_address.setdefault((route.frontend_ip, route.port), set()).add(route.key)
        self._routes[route.key] = route

    def _unindex(self, route: Route) -> None:
        for port in {b.port for b in route.backends}:
            keys = self._by_backend_port.get(port)
            if keys is not None:
                keys.discard(route.key)
                if not keys:
                    del self._by_backend_port[port]
        address = (route.frontend_ip, route.port)
        here = self._by_address.get(address)
        if here is not None:
            here.discard(route.key)
            if not here:
                del self._by_address[address]
        del self._routes[route.key]

    async def serve(self, route: Route, sock: socket.socket | None) -> None:
        """Serve ``route`` on a socket bound for it already (None, or closed here: the
        route is disabled; None also for a route that joins a shared address: ``shares``)."""
        runtime = RouteRuntime(route, self.traffic, self._refusal)
        self._runtimes[route.key] = runtime
        if route.settings.enabled and (sock is not None or self.shares(route)):
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

    async def _listen(self, runtime: RouteRuntime, sock: socket.socket | None) -> None:
        """Accept ``runtime``'s clients: on ``sock``, its own, or (a route with server
        names) through its address's SniListener, made on ``sock`` if there is none yet."""
        route = runtime.route
        if route.settings.sni is None:
            assert sock is not None
            listener: Listener | SniListener | EngineListener
            if self.engine is not None and unsupported(route, runtime) is None:
                listener = EngineListener(self.engine, runtime, sock)
            else:
                listener = Listener(runtime, sock)
            await listener.start()
        else:
            listener = await self._shared_listener(route, sock)
            listener.add(runtime)
        self._listeners[route.key] = listener
        log.info(
            "listening app=%s route=%s url=%s%s", route.app, route.id, route.url,
            " engine=native" if isinstance(listener, EngineListener) else "",
        )  # fmt: skip

    async def _shared_listener(self, route: Route, sock: socket.socket | None) -> SniListener:
        address = (route.frontend_ip, route.port)
        shared = self._shared.get(address)
        if shared is None:
            assert sock is not None
            shared = SniListener(address, sock, self.traffic)
            await shared.start()
            self._shared[address] = shared
        elif sock is not None:
            sock.close()  # bound by a caller that did not know: the shared one serves
        return shared

    def _unlisten(self, key: RouteKey) -> None:
        """Stop accepting ``key``'s clients: its Listener stopped, or the route taken off
        its SniListener, which stops with its last route."""
        listener = self._listeners.pop(key, None)
        if isinstance(listener, SniListener):
            listener.remove(key)
            if not listener.runtimes:
                listener.stop()
                del self._shared[listener.address]
        elif listener is not None:
            listener.stop()

    async def _relisten(self, runtime: RouteRuntime, old: Route) -> None:
        """The enabled route's server names changed: from none to some, or back, its socket
        goes to the other kind of listener (the store refuses losing them on a port
        others share); from some to others, its SniListener reads them again."""
        route = runtime.route
        listener = self._listeners.get(route.key)
        if listener is None:
            return
        if isinstance(listener, SniListener):
            if route.settings.sni is not None:
                listener.rebuild()
                return
            if len(listener.runtimes) > 1:
                # Written around the route service: it stays with the others.
                log.error(
                    "app=%s route=%s lost its server names on a shared port: still served by SNI",
                    route.app, route.id,
                )  # fmt: skip
                return
            del self._listeners[route.key]
            del self._shared[listener.address]
            sock = listener.release()
            await self._listen(runtime, sock)
        elif route.settings.sni is not None and old.settings.sni is None:
            del self._listeners[route.key]
            await self._listen_instead(runtime, listener)

    async def _listen_instead(
        self, runtime: RouteRuntime, listener: Listener | EngineListener
    ) -> None:
        """Serve ``runtime`` on ``listener``'s socket through the other kind of listener.
        From the engine, the route's open connections come along (proxy/handoff.py): the
        asyncio data plane relays them from now on, with the route's toxics."""
        if isinstance(listener, EngineListener):
            sock, relaying, connecting = listener.hand_over()
            await self._listen(runtime, sock)
            await adopt(runtime, relaying, connecting)
        else:
            await self._listen(runtime, listener.release())

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
        old = self._routes[key]
        self._index(route, old)
        runtime = self._runtimes[key]
        if was and not enabled:
            self._disable(runtime)
        runtime.update(route)
        if enabled and was and route.settings.sni != old.settings.sni:
            await self._relisten(runtime, old)
        elif enabled and not was:
            sock = None if self.shares(route) else self._bind_or_note(route)
            if sock is None and not self.shares(route):
                self._forget(key)  # unbound: a resync tries again
                return
            await self._listen(runtime, sock)
        elif enabled and route.settings.connect_timeout != old.settings.connect_timeout:
            listener = self._listeners.get(key)
            if isinstance(listener, SniListener):
                listener.rebuild()  # its connect_timeout may have changed
        if enabled and was and self.engine is not None:
            await self._move(runtime)

    async def _move(self, runtime: RouteRuntime) -> None:
        """Hand a plain route's socket to the engine or from it, as what the route now has
        says. Its open connections on the engine come along to asyncio (proxy/handoff.py);
        those on asyncio stay there until they end."""
        key = runtime.route.key
        listener = self._listeners.get(key)
        wanted = unsupported(runtime.route, runtime) is None
        if (isinstance(listener, EngineListener) and not wanted) or (
            isinstance(listener, Listener) and wanted
        ):
            del self._listeners[key]
            await self._listen_instead(runtime, listener)

    def _disable(self, runtime: RouteRuntime) -> None:
        """The port refuses new clients, and the open connections are closed."""
        listener = self._listeners.get(runtime.route.key)
        if isinstance(listener, EngineListener):
            listener.abort()
        self._unlisten(runtime.route.key)
        for connection in list(runtime.connections):
            connection.end("route_disabled")
        route = runtime.route
        log.info("disabled app=%s route=%s url=%s", route.app, route.id, route.url)

    async def _start(self, route: Route) -> None:
        if not route.settings.enabled:
            await self.serve(route, None)
            return
        if self.shares(route):
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
        self._unlisten(key)
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
        engine, connections = self.engine, self.traffic

        def left() -> int:
            return len(connections) + (len(engine) if engine is not None else 0)

        # One count and one deadline for both data planes, whose connections drain side
        # by side: a user sees what the node holds, whichever plane relays it.
        if left():
            log.info("draining %d connections for up to %gs", left(), drain_timeout)
            try:
                async with asyncio.timeout(drain_timeout):
                    await connections.wait_empty()
                    if engine is not None:
                        await engine.wait_empty()
            except TimeoutError:
                log.warning("drain deadline passed: resetting %d connections", left())
                for connection in connections:
                    connection.abort("shutdown")
                # Aborted transports report on the next loop turns; wait for that, briefly.
                # Shutdown must return whatever happens: the node closes its store next.
                try:
                    async with asyncio.timeout(1.0):
                        await connections.wait_empty()
                except TimeoutError:
                    log.error("%d connections did not end after a reset", len(connections))
        if engine is not None:
            engine.close()  # resets what the engine still holds (end=shutdown)
        connections.close()
