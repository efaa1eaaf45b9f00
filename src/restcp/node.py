"""The composition root: store -> reconcile -> proxy, the API, signals, and the resync timer.

A node is a controller. It serves what the store says: on start it binds every stored route
on its old port before the API reports ready; after each API write it applies that route at
once (``sync``); and every ``resync_interval`` it diffs the whole store against its
listeners, so a change it missed, or a port that could not be bound before, is picked up
without anyone asking. A single node with the embedded store is a cluster of one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
from collections.abc import Mapping
from typing import Any

from aiohttp import web

from restcp.api.app import build_app
from restcp.core import ports
from restcp.core.reconcile import diff
from restcp.errors import Conflict, InvalidSpec, NotFound, RestcpError, Unavailable
from restcp.health.checker import RouteChecks
from restcp.model import BackendStatus, Route, RouteKey, RouteSettings, format_host
from restcp.proxy.listener import bind, is_address_taken
from restcp.proxy.manager import ProxyManager
from restcp.settings import Settings
from restcp.store import Store, open_store

log = logging.getLogger("restcp.node")


class Node:
    def __init__(self, settings: Settings, store: Store) -> None:
        self.settings = settings
        self.store = store
        self.proxy = ProxyManager(max_connections=settings.max_connections)
        # Active health checks of the routes this node serves, fed into their runtimes.
        self._checks: dict[RouteKey, RouteChecks] = {}
        # Held by everything that reads the store and then changes listeners (creates, syncs,
        # resyncs): each awaits in the middle (binding, starting a server), and another one
        # acting on the state it read before would bind a port being bound, update a listener
        # just stopped, or restart a route just deleted.
        self._applying = asyncio.Lock()
        self._started = False
        self._runner: web.AppRunner | None = None
        self._resync_task: asyncio.Task[None] | None = None
        self.api_address: tuple[str, int] | None = None

    # -- the Owner protocol of the API ---------------------------------------------------

    def route_defaults(self) -> RouteSettings:
        return RouteSettings(
            connect_timeout=self.settings.connect_timeout,
            idle_timeout=self.settings.idle_timeout,
        )

    async def create_route(
        self, app: str, frontend_ip: str | None, port: int | None, settings: RouteSettings
    ) -> Route:
        ip = frontend_ip or self.settings.frontend_ips[0]
        if ip not in self.settings.frontend_ips:
            served = ", ".join(self.settings.frontend_ips)
            raise InvalidSpec(f"frontend_ip {ip} is not served by this node (it serves {served})")
        async with self._applying:
            used = await self.store.ports_in_use(ip)
            if port is not None:
                if port in used:
                    raise Conflict(f"port {port} of {ip} is already used by another route")
                sock = self._bind_requested(ip, port)
            else:
                port, sock = await self._bind_next(ip, used)
            try:
                route = await self.store.create_route(app, ip, port, settings)
            except BaseException:
                sock.close()
                raise
            await self.proxy.serve(route, sock)
            await self._sync_checks()
            return route

    def _bind_requested(self, ip: str, port: int) -> socket.socket:
        try:
            return bind(ip, port)
        except OSError as err:
            raise Conflict(f"port {port} of {ip} cannot be bound: {err.strerror}") from None

    async def _bind_next(self, ip: str, used: set[int]) -> tuple[int, socket.socket]:
        lo, hi = self.settings.port_range
        cursor = await self.store.get_port_cursor(ip)
        for port in ports.candidates(lo, hi, lo if cursor is None else cursor, used):
            try:
                sock = bind(ip, port)
            except OSError as err:
                if is_address_taken(err):
                    continue
                raise
            await self.store.set_port_cursor(ip, ports.next_cursor(lo, hi, port))
            return port, sock
        raise Conflict(f"no free port left in {lo}-{hi} on {ip}")

    async def sync(self, key: RouteKey) -> None:
        async with self._applying:
            try:
                desired = {key: await self.store.get_route(*key)}
            except NotFound:
                desired = {}
            current = self.proxy.running().get(key)
            running = {} if current is None else {key: current}
            await self.proxy.apply(diff(desired, running))
            await self._sync_checks()

    def backend_status(self, key: RouteKey) -> Mapping[int, BackendStatus]:
        return self.proxy.backend_status(key)

    def readiness(self) -> tuple[bool, dict[str, Any]]:
        unbound = [
            {"app": app, "route": route_id, "error": error}
            for (app, route_id), error in self.proxy.unbound.items()
        ]
        ready = self._started and not unbound
        return ready, {"routes": len(self.proxy.running()), "unbound": unbound}

    # -- lifecycle -----------------------------------------------------------------------

    async def resync(self) -> None:
        """Make every listener match the store."""
        async with self._applying:
            desired = {r.key: r for r in await self.store.all_routes() if self._serves(r)}
            await self.proxy.apply(diff(desired, self.proxy.running()))
            await self._sync_checks()

    async def _sync_checks(self) -> None:
        """Probe exactly the enabled and draining backends of the routes being served."""
        running = self.proxy.running()
        for key in [k for k in self._checks if k not in running]:
            await self._checks.pop(key).close()
        for key, route in running.items():
            runtime = self.proxy.runtime(key)
            checks = self._checks.get(key)
            if checks is not None and checks.sink is not runtime:
                # The listener was restarted (its address changed): a new runtime to feed.
                await checks.close()
                checks = None
            if checks is None and runtime is not None:
                checks = self._checks[key] = RouteChecks(runtime)
            if checks is not None:
                probed = [b for b in route.backends if b.state != "disabled"]
                checks.update(route.settings.health_check, probed)

    def _serves(self, route: Route) -> bool:
        return route.frontend_ip in self.settings.frontend_ips

    async def _resync_forever(self) -> None:
        while True:
            await asyncio.sleep(self.settings.resync_interval)
            try:
                await self.resync()
            except Exception:
                log.exception("resync failed; retrying in %gs", self.settings.resync_interval)

    async def start(self) -> None:
        await self.resync()
        self._started = True
        self._resync_task = asyncio.create_task(self._resync_forever())
        self._runner = web.AppRunner(build_app(self.store, self), access_log=None)
        await self._runner.setup()
        sock = bind(self.settings.api_host, self.settings.api_port)
        host, port = sock.getsockname()[:2]
        await web.SockSite(self._runner, sock).start()
        self.api_address = (host, port)
        log.info(
            "ready api=http://%s:%d/ routes=%d", format_host(host), port, len(self.proxy.running())
        )

    async def stop(self) -> None:
        """uvicorn's order: stop the API and the listeners, drain the relays, close the store."""
        try:
            if self._resync_task is not None:
                self._resync_task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._resync_task
            if self._runner is not None:
                await self._runner.cleanup()
            for checks in self._checks.values():
                await checks.close()
            self._checks.clear()
            await self.proxy.shutdown(self.settings.drain_timeout)
        finally:
            # Whatever went wrong above, the store's last writes are flushed and its files
            # released.
            await self.store.close()
        log.info("stopped")


async def serve(settings: Settings) -> None:
    """Run a node until SIGTERM or SIGINT."""
    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()
    stop_signals = (signal.SIGTERM, signal.SIGINT)
    for sig in stop_signals:
        loop.add_signal_handler(sig, stopping.set)
    # The CLI blocks them until this point, so one sent while it started is delivered now.
    signal.pthread_sigmask(signal.SIG_UNBLOCK, stop_signals)
    node = Node(settings, _open_store(settings.store))
    try:
        await node.start()
        await stopping.wait()
        log.info("signal received: shutting down")
    finally:
        await node.stop()


def _open_store(url: str) -> Store:
    try:
        return open_store(url)
    except RestcpError:
        raise
    except Exception as err:
        # A driver raises its own errors (sqlite3.DatabaseError for a file that is not a
        # database); to someone starting a node they all mean one thing, said in one line.
        raise Unavailable(f"cannot open store {url}: {err}") from err
