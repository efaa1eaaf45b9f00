"""The composition root: a node's parts built and run, from start to stop, and its signals.

A node is a controller: it serves what the store says. The route service
(control/routes.py) applies every change; the node starts it (every stored route bound on
its old port before the API reports ready), re-applies the whole store every
``resync_interval`` (a change it missed, a port that could not be bound before, converge
without anyone asking), reloads on SIGHUP, and stops in a fixed order. A single node with
the embedded store is a cluster of one.

::

    Node ─┬─ DataPlane (dataplane.py): listeners under the address policy
          ├─ Workers (workers/): none, or a pool of worker processes
          ├─ NodeStats, Metrics, Probes, KnownRoutes (control/)
          ├─ RouteService (control/routes.py) ─ Placement: this node alone, or the cluster
          └─ the API (api/), which reads the store and writes through the route service
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import secrets
import signal
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from aiohttp import web

from restcp.api.app import build_app
from restcp.api.auth import ApiConfig
from restcp.api.server import ApiRunner
from restcp.api.toxiproxy import Proxies, ToxiproxyConfig, build_toxiproxy_app
from restcp.api.toxiproxy_json import ProxySpec, ToxiproxyError, decode, populate_specs
from restcp.control.known import KnownRoutes
from restcp.control.placement import is_shared
from restcp.control.probes import Probes
from restcp.control.readiness import readiness
from restcp.control.routes import RouteService
from restcp.control.stats import NodeStats
from restcp.dataplane import DataPlane
from restcp.errors import InvalidSpec, RestcpError, Unavailable
from restcp.metrics import CONTENT_TYPE_LATEST, Metrics, RouteSample, generate_latest
from restcp.model import BackendStatus, Route, RouteKey, format_host
from restcp.proxy.listener import bind
from restcp.settings import Settings, read_token_file
from restcp.store import Store, open_store
from restcp.tasks import cancel_and_wait
from restcp.workers import NoWorkers, WorkerPool, Workers

log = logging.getLogger("restcp.node")

# Seconds a stopping node waits for each of its tasks to end once cancelled.
STOP_TIMEOUT = 5.0


class Node:
    """One restcp node: its parts (see the module's diagram), its lifecycle, and what its
    API asks of it besides writes (the API's ``Owner``)."""

    def __init__(self, settings: Settings, store: Store) -> None:
        # One seed for the node's every process (the workers get these settings), drawn
        # here when not given, and logged either way, so that a run can be replayed.
        if settings.seed is None:
            settings = dataclasses.replace(settings, seed=secrets.randbits(63))
            log.info(
                "seed=%d (random; --seed %d replays the toxics' draws)",
                settings.seed,
                settings.seed,
            )
        else:
            log.info("seed=%d (given)", settings.seed)
        self.settings = settings
        self.store = store
        # --workers N > 1: worker processes serve the same routes on SO_REUSEPORT sockets
        # of the same ports; this process binds each port first, exclusively (409 if anyone
        # else holds it), then lets them join (restcp/workers/).
        self.workers: Workers = WorkerPool(settings) if settings.workers > 1 else NoWorkers()
        self.plane = DataPlane(settings, share=settings.workers > 1)
        self.stats = NodeStats(self.plane, self.workers)
        self.metrics = Metrics(self.stats, self.stats)
        self.probes = Probes(self.plane, self.metrics, self.workers)
        # A cluster node keeps what it serves in a local snapshot (--snapshot).
        snapshot = settings.snapshot if is_shared(store) else None
        self.known = KnownRoutes(snapshot, settings.frontend_ips)
        self.routes = RouteService(
            store, settings, self.plane, self.workers, self.probes, self.known
        )
        self.placement = self.routes.placement
        # Health transitions go to Redis, for the other nodes' APIs.
        self.probes.on_health = self.placement.health_changed
        self._started = False
        # Unix seconds, for the uptime GET /stats shows.
        self._started_at = time.time()
        self._runner: web.AppRunner | None = None
        # toxiproxy's API (--toxiproxy-api): another door to the same route service.
        self.toxiproxy = Proxies(
            store,
            self.routes,
            ToxiproxyConfig(
                app=settings.toxiproxy_app,
                frontend_ips=settings.frontend_ips,
                max_routes_per_app=settings.max_routes_per_app,
                max_toxics_per_route=settings.max_toxics_per_route,
                request_timeout=settings.api_request_timeout,
            ),
        )
        self._toxiproxy_runner: web.AppRunner | None = None
        self._resync_task: asyncio.Task[None] | None = None
        self.api_config: ApiConfig | None = None  # set by start(); SIGHUP rotates its token

    # -- what the API reads (its Owner protocol; writes go to ``routes``) ------------------

    def backend_status(self, key: RouteKey) -> Mapping[int, BackendStatus]:
        return self.stats.backend_status(key)

    async def backend_statuses(self, route: Route) -> Mapping[int, BackendStatus]:
        """Health and load of a route's backends: observed here if this node serves it,
        else the health its node wrote to Redis (up/down; unknown if it wrote none)."""
        if route.key not in self.plane.running():
            remote = await self.placement.remote_statuses(route.key)
            if remote is not None:
                return remote
        return self.stats.backend_status(route.key)

    @property
    def started_at(self) -> float:
        return self._started_at

    def samples(self) -> Iterable[RouteSample]:
        return self.stats.samples()

    def metrics_text(self) -> tuple[bytes, str]:
        return generate_latest(self.metrics.registry), CONTENT_TYPE_LATEST

    def readiness(self) -> tuple[bool, dict[str, Any]]:
        return readiness(self._started, self.plane, self.workers, self.placement)

    async def nodes(self) -> list[dict[str, Any]]:
        return await self.placement.nodes()

    @property
    def node_id(self) -> str:
        return self.placement.node_id

    async def exchange_stats(self, text: Callable[[], str]) -> dict[str, str]:
        return await self.placement.exchange_stats(text)

    # -- lifecycle -----------------------------------------------------------------------

    async def start(self) -> None:
        epoch = await self.known.load()
        if await self.placement.start(epoch):
            await self.routes.resync()
        else:
            # The store cannot be followed yet (Redis down at start): serve the snapshot.
            await self.routes.serve_known()
        # Each worker serves every route before the node says ready.
        await self.workers.start(self.plane.running())
        if self.settings.toxiproxy_config is not None:
            await self._populate(self.settings.toxiproxy_config)
        self._started = True
        self._resync_task = asyncio.create_task(self._resync_forever())
        self.api_config = ApiConfig.from_settings(self.settings)
        api = build_app(self.store, self, self.api_config)
        self._runner = ApiRunner(api, self.settings.api_request_timeout)
        await self._runner.setup()
        sock = bind(self.settings.api_host, self.settings.api_port)
        host, port = sock.getsockname()[:2]
        await self.routes.api_listening((host, port))
        await web.SockSite(self._runner, sock).start()
        if self.settings.toxiproxy_api is not None:
            await self._serve_toxiproxy(*self.settings.toxiproxy_api)
        await self.placement.register()
        log.info(
            "ready api=http://%s:%d/ routes=%d", format_host(host), port, len(self.plane.running())
        )

    async def _populate(self, path: str) -> None:
        """toxiproxy's -config file: /populate's body, read once at start. A file that
        cannot be read or applied stops the start (toxiproxy logs it and goes on)."""
        specs = _read_toxiproxy_config(path)
        done, failed = await self.toxiproxy.populate(specs)
        if failed is not None:
            raise InvalidSpec(f"--toxiproxy-config {path}: proxy {len(done) + 1}: {failed.message}")
        log.info("toxiproxy config %s: %d proxies", path, len(done))

    async def _serve_toxiproxy(self, host: str, port: int) -> None:
        self._toxiproxy_runner = ApiRunner(
            build_toxiproxy_app(self.toxiproxy), self.settings.api_request_timeout
        )
        await self._toxiproxy_runner.setup()
        sock = bind(host, port)
        host, port = sock.getsockname()[:2]
        await web.SockSite(self._toxiproxy_runner, sock).start()
        log.info(
            "toxiproxy api=http://%s:%d/ app=%s", format_host(host), port, self.toxiproxy.config.app
        )

    async def _resync_forever(self) -> None:
        while True:
            await asyncio.sleep(self.settings.resync_interval)
            try:
                await self.routes.resync()
            except Unavailable as err:
                # Expected while the store is down; the listeners serve on meanwhile.
                log.warning(
                    "resync failed, retrying in %gs: %s", self.settings.resync_interval, err
                )
            except Exception:
                log.exception("resync failed; retrying in %gs", self.settings.resync_interval)

    async def reload(self) -> None:
        """SIGHUP: read the admin token file again (a rotation: the old token stops working),
        and resync every route from the store (one restored or edited offline). The process,
        its listeners and their connections stay; a token file that cannot be read keeps the
        old token."""
        config = self.api_config
        for kind, path, rotate in (
            ("admin", self.settings.api_token_file, config and config.rotate_admin_token),
            ("metrics", self.settings.metrics_token_file, config and config.rotate_metrics_token),
        ):
            if path is None or not rotate:
                continue
            try:
                rotate(read_token_file(path))
            except ValueError as err:
                log.error("reload: keeping the %s token in use: %s", kind, err)
            else:
                log.info("reload: %s token read again from %s", kind, path)
        try:
            await self.routes.resync()
        except Unavailable as err:
            log.warning("reload: resync failed, the timer retries: %s", err)
        log.info("reloaded routes=%d", len(self.plane.running()))

    async def stop(self) -> None:
        """uvicorn's order: stop the API and the listeners, drain the relays, close the store."""
        # Each step is logged (debug): a stop that hangs shows where in the log.
        try:
            log.debug("stopping: the resync timer")
            if self._resync_task is not None:
                await cancel_and_wait([self._resync_task], STOP_TIMEOUT, log)
            log.debug("stopping: the cluster's tasks")
            await self.placement.stop()
            if self._runner is not None:
                log.debug("stopping: the API")
                await self._runner.cleanup()
            if self._toxiproxy_runner is not None:
                log.debug("stopping: toxiproxy's API")
                await self._toxiproxy_runner.cleanup()
            # They stop accepting and drain alongside this process.
            self.workers.begin_stop()
            log.debug("stopping: the health checks")
            await self.probes.close()
            log.debug("stopping: the listeners, then draining")
            await self.plane.shutdown(self.settings.drain_timeout)
            log.debug("stopping: the workers")
            await self.workers.wait_stopped(self.settings.drain_timeout)
            log.debug("stopping: releasing the leases")
            await self.placement.release()
        finally:
            # Whatever went wrong above, the store's last writes are flushed and its files
            # released.
            try:
                await self.known.close()
            finally:
                log.debug("stopping: the store")
                await self.store.close()
        log.info("stopped")


async def serve(settings: Settings) -> None:
    """Run a node until SIGTERM or SIGINT."""
    if settings.exposed_without_token():
        if not settings.insecure:
            raise InvalidSpec(
                f"API address {settings.api_host} is not loopback and no API token is set; "
                "set one, or pass --insecure"
            )
        log.warning(
            "INSECURE: the API on %s:%d asks for no token; anyone who can reach it may "
            "change every route. Set --api-token-file, or bind --api to 127.0.0.1",
            format_host(settings.api_host),
            settings.api_port,
        )
    if settings.toxiproxy_exposed() and not settings.insecure:
        assert settings.toxiproxy_api is not None
        raise InvalidSpec(
            f"toxiproxy's API address {settings.toxiproxy_api[0]} is not loopback, and it "
            "asks for no token; bind it to 127.0.0.1, or pass --insecure"
        )
    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()
    reloading = asyncio.Event()
    stop_signals = (signal.SIGTERM, signal.SIGINT)
    for sig in stop_signals:
        loop.add_signal_handler(sig, stopping.set)
    loop.add_signal_handler(signal.SIGHUP, reloading.set)
    # The CLI blocks them until this point, so one sent while it started is delivered now
    # (a SIGHUP then reloads once the node has started).
    signal.pthread_sigmask(signal.SIG_UNBLOCK, (*stop_signals, signal.SIGHUP))
    node = Node(settings, _open_store(settings.store))
    reloader: asyncio.Task[None] | None = None
    try:
        await node.start()
        reloader = asyncio.create_task(_reload_on(reloading, node))
        await stopping.wait()
        log.info("signal received: shutting down")
    finally:
        if reloader is not None:
            await cancel_and_wait([reloader], STOP_TIMEOUT, log)
        await node.stop()


async def _reload_on(signalled: asyncio.Event, node: Node) -> None:
    # SIGHUPs that arrive during a reload make one more, not one each.
    while True:
        await signalled.wait()
        signalled.clear()
        await node.reload()


def _read_toxiproxy_config(path: str) -> list[ProxySpec]:
    try:
        with open(path, "rb") as file:
            return populate_specs(decode(file.read()))
    except OSError as err:
        raise InvalidSpec(f"--toxiproxy-config {path}: cannot read it: {err}") from None
    except ToxiproxyError as err:
        raise InvalidSpec(f"--toxiproxy-config {path}: {err.message}") from None


def _open_store(url: str) -> Store:
    try:
        return open_store(url)
    except RestcpError:
        raise
    except Exception as err:
        # A driver raises its own errors (sqlite3.DatabaseError for a file that is not a
        # database); to someone starting a node they all mean one thing, said in one line.
        raise Unavailable(f"cannot open store {url}: {err}") from err
