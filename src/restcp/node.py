"""The composition root: store -> reconcile -> proxy, the API, signals, and the resync timer.

A node is a controller. It serves what the store says: on start it binds every stored route
on its old port before the API reports ready; after each API write it applies that route at
once (``sync``); and every ``resync_interval`` it diffs the whole store against its
listeners, so a change it missed, or a port that could not be bound before, is picked up
without anyone asking. A single node with the embedded store is a cluster of one.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
import signal
import socket
from collections.abc import Collection, Iterator, Mapping
from typing import Any

from aiohttp import web

from restcp.api.app import build_app
from restcp.api.auth import ApiConfig
from restcp.api.server import ApiRunner
from restcp.cluster import Cluster
from restcp.core import ports
from restcp.core.policy import DEFAULT_DENY, AddressPolicy, parse_networks
from restcp.core.reconcile import diff
from restcp.errors import (
    Conflict,
    EpochMismatch,
    Forbidden,
    InvalidSpec,
    NotFound,
    RestcpError,
    Unavailable,
)
from restcp.health.checker import RouteChecks
from restcp.metrics import CONTENT_TYPE_LATEST, BackendSample, Metrics, RouteSample, generate_latest
from restcp.model import (
    BackendStatus,
    Route,
    RouteKey,
    RouteSettings,
    format_host,
    is_host_name,
)
from restcp.proxy.listener import bind, is_address_taken
from restcp.proxy.manager import ProxyManager
from restcp.proxy.runtime import RouteRuntime
from restcp.settings import Settings, read_token_file
from restcp.store import Snapshot, SnapshotData, Store, open_snapshot, open_store
from restcp.tasks import cancel_and_wait
from restcp.workers import WorkerPool

log = logging.getLogger("restcp.node")

# Seconds a stopping node waits for each of its tasks to end once cancelled.
STOP_TIMEOUT = 5.0
# Seconds the API waits for a backend's host name to resolve before answering 503.
RESOLVE_TIMEOUT = 5.0
# A backend no worker has counted yet.
_NONE = (0, 0, 0, 0, 0)


class Node:
    def __init__(self, settings: Settings, store: Store) -> None:
        self.settings = settings
        self.store = store
        self.policy = AddressPolicy(
            allow=parse_networks(settings.backend_allow),
            deny=parse_networks((*DEFAULT_DENY, *settings.backend_deny)),
        )
        # --workers N > 1: worker processes serve the same routes on SO_REUSEPORT sockets
        # of the same ports; this process binds each port first, exclusively (409 if anyone
        # else holds it), then lets them join (restcp/workers.py).
        self.workers = WorkerPool(settings) if settings.workers > 1 else None
        self._share = self.workers is not None
        self.proxy = ProxyManager(
            max_connections=settings.max_connections,
            max_connections_per_app=settings.max_connections_per_app,
            backend_refusal=self.backend_refusal,
            binder=functools.partial(bind, share=self._share),
        )
        self.metrics = Metrics(self)
        # Active health checks of the routes this node serves, fed into their runtimes.
        self._checks: dict[RouteKey, tuple[_CheckSink, RouteChecks]] = {}
        # Held by everything that reads the store and then changes listeners (creates, syncs,
        # resyncs): each awaits in the middle (binding, starting a server), and another one
        # acting on the state it read before would bind a port being bound, update a listener
        # just stopped, or restart a route just deleted.
        self._applying = asyncio.Lock()
        self._started = False
        self._runner: web.AppRunner | None = None
        self._resync_task: asyncio.Task[None] | None = None
        self.api_address: tuple[str, int] | None = None
        self.api_config: ApiConfig | None = None  # set by start(); SIGHUP rotates its token
        # With a shared store (Redis): leases, change notices, remote provisioning.
        self.cluster = Cluster.for_store(store, settings, self, lambda: len(self.proxy.running()))
        # The routes this node serves as last read (from the store, or the snapshot at a
        # start without Redis): what it serves on when the store cannot say, and what its
        # snapshot file holds.
        self._known: dict[RouteKey, Route] = {}
        self.snapshot: Snapshot | None = None
        if self.cluster is not None and settings.snapshot is not None:
            self.snapshot = _open_snapshot(settings.snapshot)

    # -- the Owner protocol of the API ---------------------------------------------------

    def route_defaults(self) -> RouteSettings:
        return RouteSettings(
            connect_timeout=self.settings.connect_timeout,
            idle_timeout=self.settings.idle_timeout,
        )

    async def create_route(
        self,
        app: str,
        frontend_ip: str | None,
        port: int | None,
        settings: RouteSettings,
        route_id: int | None = None,
    ) -> Route:
        """``route_id``: store under an id another node reserved (cluster provisioning)."""
        ip = (
            frontend_ip
            or (self.cluster and self.cluster.default_ip())
            or self.settings.frontend_ips[0]
        )
        if not self._serves_ip(ip):
            if self.cluster is None:
                served = ", ".join(self.settings.frontend_ips)
                raise InvalidSpec(
                    f"frontend_ip {ip} is not served by this node (it serves {served})"
                )
            if route_id is None:
                # Only the node serving an IP can bind its ports: hand the route over.
                return await self.cluster.provision(app, ip, port, settings)
            raise Unavailable(f"this node does not serve frontend_ip {ip} (any more)")
        async with self._applying:
            used = await self.store.ports_in_use(ip)
            if port is not None:
                if port in used:
                    raise Conflict(f"port {port} of {ip} is already used by another route")
                sock = self._bind_requested(ip, port)
            else:
                port, sock = await self._bind_next(ip, used)
            try:
                if route_id is not None and self.cluster is not None:
                    route = await self.cluster.store_route(app, route_id, ip, port, settings)
                else:
                    route = await self.store.create_route(app, ip, port, settings)
            except BaseException:
                sock.close()
                raise
            await self.proxy.serve(route, sock)
            # Backends of other routes pointing at the new address are refused now: their
            # probes stop too.
            await self._sync_checks({route.key, *self._backends_on(port)})
            await self._tell_workers(route.key)
            await self._remember({route.key: route}, [])
            return route

    def _bind_requested(self, ip: str, port: int) -> socket.socket:
        try:
            return bind(ip, port, share=self._share)
        except OSError as err:
            raise Conflict(f"port {port} of {ip} cannot be bound: {err.strerror}") from None

    async def _bind_next(self, ip: str, used: set[int]) -> tuple[int, socket.socket]:
        lo, hi = self.settings.port_range
        cursor = await self.store.get_port_cursor(ip)
        for port in ports.candidates(lo, hi, lo if cursor is None else cursor, used):
            try:
                sock = bind(ip, port, share=self._share)
            except OSError as err:
                if is_address_taken(err):
                    continue
                raise
            try:
                await self.store.set_port_cursor(ip, ports.next_cursor(lo, hi, port))
            except BaseException:
                sock.close()  # the store refused (unreachable, another epoch): no leak
                raise
            return port, sock
        raise Conflict(f"no free port left in {lo}-{hi} on {ip}")

    async def sync(self, key: RouteKey, *, publish: bool = True) -> None:
        """Apply one stored route now; ``publish``: and tell the node that serves it, if
        that is another one (after an API write; not when told by another node)."""
        async with self._applying:
            try:
                route: Route | None = await self.store.get_route(*key)
            except NotFound:
                route = None
            except EpochMismatch as err:
                if self.cluster is not None:
                    self.cluster.mismatch(err)
                raise
            desired = {key: route} if route is not None and self._serves(route) else {}
            current = self.proxy.running().get(key)
            running = {} if current is None else {key: current}
            await self.proxy.apply(diff(desired, running))
            # A route stopped or moved frees its address: backends pointing at it may be
            # probed again.
            freed = self._backends_on(current.port) if current is not None else set()
            await self._sync_checks({key, *freed})
            await self._tell_workers(key)
            await self._remember(desired, [] if desired else [key])
        if publish and self.cluster is not None:
            await self.cluster.changed(key, route)

    def backend_refusal(self, ip: str, port: int) -> str | None:
        """Why the policy refuses ``ip:port`` as a backend, or None. Checked by the API before
        storing, and by the data plane before connecting and probing (the node's own
        addresses change as routes come and go)."""
        if is_host_name(ip):
            return None  # judged address by address at every connect and probe
        own = [(ip, port) for ip in self.proxy.frontends_on(port)]
        if self.api_address is not None:
            own.append(self.api_address)
        return self.policy.refusal(ip, port, own)

    async def check_backend(self, host: str, port: int) -> None:
        """Refuse (Forbidden) a backend the policy does not allow, before it is stored. A
        host name must resolve now, to addresses that are all allowed: the data plane skips
        refused ones at connect time, but a name that points anywhere denied is a mistake or
        an attack worth telling the user about."""
        if not is_host_name(host):
            refusal = self.backend_refusal(host, port)
            if refusal is not None:
                raise Forbidden(f"backend address not allowed: {refusal}")
            return
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(RESOLVE_TIMEOUT):
                infos = await loop.getaddrinfo(
                    host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP
                )
        except TimeoutError:
            raise Unavailable(
                f"cannot resolve {host!r}: no answer within {RESOLVE_TIMEOUT:g}s"
            ) from None
        except socket.gaierror as err:
            if err.errno in (socket.EAI_NONAME, getattr(socket, "EAI_NODATA", socket.EAI_NONAME)):
                raise InvalidSpec(f"cannot resolve {host!r}: {err.strerror}") from None
            raise Unavailable(f"cannot resolve {host!r}: {err.strerror}") from None
        for ip in dict.fromkeys(str(info[4][0]) for info in infos):
            refusal = self.backend_refusal(ip, port)
            if refusal is not None:
                raise Forbidden(f"backend address not allowed: {host} resolves to {refusal}")

    def backend_status(self, key: RouteKey) -> Mapping[int, BackendStatus]:
        status = self.proxy.backend_status(key)
        if self.workers is None:
            return status
        # Health as this process sees it (it probes for all); connections of every process.
        counted = self.workers.counts(key)[1]
        return {
            backend_id: dataclasses.replace(
                s, active_connections=s.active_connections + counted.get(backend_id, _NONE)[1]
            )
            for backend_id, s in status.items()
        }

    def samples(self) -> Iterator[RouteSample]:
        """The data plane's counters, for the metrics collector (at scrape time)."""
        for key in self.proxy.running():
            runtime = self.proxy.runtime(key)
            if runtime is None:
                continue
            live: dict[int, list[int]] = {}
            for backend_id, up, down in runtime.live_bytes():
                sums = live.setdefault(backend_id, [0, 0])
                sums[0] += up
                sums[1] += down
            # The workers' counters (--workers), summed into this process's.
            refused, counted = self.workers.counts(key) if self.workers else ({}, {})
            for reason, n in runtime.refused.items():
                refused[reason] = refused.get(reason, 0) + n
            yield RouteSample(
                app=runtime.app,
                route=runtime.route_id,
                refused=refused,
                backends=tuple(
                    BackendSample(
                        app=runtime.app,
                        route=runtime.route_id,
                        backend=m.id,
                        connections_total=m.connections + counted.get(m.id, _NONE)[0],
                        connections_active=m.active + counted.get(m.id, _NONE)[1],
                        bytes_in=m.bytes_in
                        + live.get(m.id, (0, 0))[0]
                        + counted.get(m.id, _NONE)[2],
                        bytes_out=m.bytes_out
                        + live.get(m.id, (0, 0))[1]
                        + counted.get(m.id, _NONE)[3],
                        connect_failures=m.connect_failures + counted.get(m.id, _NONE)[4],
                        health=m.health.state,
                    )
                    for m in runtime.members.values()
                ),
            )

    def metrics_text(self) -> tuple[bytes, str]:
        return generate_latest(self.metrics.registry), CONTENT_TYPE_LATEST

    def readiness(self) -> tuple[bool, dict[str, Any]]:
        unbound = [
            {"app": app, "route": route_id, "error": error}
            for (app, route_id), error in self.proxy.unbound.items()
        ]
        ready = self._started and not unbound
        details: dict[str, Any] = {"routes": len(self.proxy.running()), "unbound": unbound}
        if self.workers is not None:
            # A worker being restarted leaves the others serving: informative, not unready.
            details["workers"] = self.workers.status()
        if self.cluster is not None:
            # Its "status" (degraded, standby) replaces the API's ok/starting.
            serving_all, cluster = self.cluster.readiness()
            ready = ready and serving_all
            details.update(cluster)
        return ready, details

    async def nodes(self) -> list[dict[str, Any]]:
        if self.cluster is not None:
            return await self.cluster.nodes()
        api = self.api_address
        return [
            {
                "id": "local",
                "api": None if api is None else f"http://{format_host(api[0])}:{api[1]}/",
                "frontend_ips": list(self.settings.frontend_ips),
                "leases": [],
                "routes_serving": len(self.proxy.running()),
                "started_at": None,
                "last_seen": 0.0,
            }
        ]

    # -- lifecycle -----------------------------------------------------------------------

    async def resync(self) -> None:
        """Make every listener match the store."""
        async with self._applying:
            try:
                routes = await self.store.all_routes()
            except Unavailable as err:
                # The store cannot say (unreachable, or a Redis without this node's epoch):
                # serve on what is known, minus the frontend IPs no longer held. An epoch
                # mismatch is the cluster's to report (/healthz), not a failure.
                await self._serve_known()
                if isinstance(err, EpochMismatch) and self.cluster is not None:
                    self.cluster.mismatch(err)
                    return
                raise
            desired = {r.key: r for r in routes if self._serves(r)}
            await self.proxy.apply(diff(desired, self.proxy.running()))
            await self._sync_checks()
            if self.workers is not None:
                self.workers.routes(self.proxy.running())
                await self.workers.settle()
            await self._remember(desired, [k for k in self._known if k not in desired])
        if self.cluster is not None:
            # Health Redis lacks (lost, or written while it was away) is written again.
            self.cluster.health.mark(self.proxy.running())

    async def _serve_known(self) -> None:
        """Serve the routes known (the snapshot's, at a start without Redis) of the IPs this
        node serves: stops those of an IP given up, binds those not bound yet."""
        desired = {k: r for k, r in self._known.items() if self._serves(r)}
        await self.proxy.apply(diff(desired, self.proxy.running()))
        await self._sync_checks()
        if self.workers is not None:
            self.workers.routes(self.proxy.running())
            await self.workers.settle()

    async def _remember(self, routes: Mapping[RouteKey, Route], gone: Collection[RouteKey]) -> None:
        """Record what the node now serves (``routes`` changed or new, ``gone`` removed), and
        write the difference to the snapshot: only what changed, in one transaction."""
        upserts = [r for k, r in routes.items() if self._known.get(k) != r]
        deletes = [k for k in gone if k in self._known]
        for key in deletes:
            del self._known[key]
        for route in upserts:
            self._known[route.key] = route
        if self.snapshot is not None and (upserts or deletes):
            await self._write_snapshot(None, upserts, deletes)

    async def _write_snapshot(
        self, epoch: str | None, upserts: list[Route], deletes: list[RouteKey]
    ) -> None:
        assert self.snapshot is not None
        try:
            await self.snapshot.save_snapshot(epoch, upserts, deletes)
        except Exception as err:
            # The snapshot is a fallback: a full disk must not stop the node applying changes.
            log.error("cannot write the snapshot %s: %s", self.settings.snapshot, err)

    async def _load_snapshot(self) -> SnapshotData:
        if self.snapshot is None or self.settings.snapshot is None:
            return SnapshotData()
        data = await _load(self.snapshot, self.settings.frontend_ips, self.settings.snapshot)
        if data.epoch is not None:
            log.info(
                "snapshot %s: %d routes, cluster epoch %s",
                self.settings.snapshot,
                len(data.routes),
                data.epoch,
            )
        return data

    # -- what the cluster asks -------------------------------------------------------------

    def protects(self) -> bool:
        return bool(self._known) or bool(self.proxy.running())

    def served(self) -> Collection[RouteKey]:
        return list(self.proxy.running())

    async def epoch_changed(self, epoch: str) -> None:
        if self.snapshot is not None:
            await self._write_snapshot(epoch, [], [])

    def _health_changed(self, key: RouteKey) -> None:
        if self.cluster is not None:
            self.cluster.health_changed(key)

    async def backend_statuses(self, route: Route) -> Mapping[int, BackendStatus]:
        """Health and load of a route's backends: observed here if this node serves it,
        else the health its node wrote to Redis (up/down; unknown if it wrote none)."""
        if route.key in self.proxy.running() or self.cluster is None:
            return self.backend_status(route.key)
        try:
            health = await self.cluster.remote_health(route.key)
        except Unavailable:
            return {}
        return {b: BackendStatus(health="up" if h == "up" else "down") for b, h in health.items()}

    async def reseed(self) -> tuple[bool, dict[str, Any]]:
        """Write the routes this node knows (its snapshot) back into a Redis that lost them
        or holds another epoch; (whether the node follows Redis again, the report)."""
        if self.cluster is None:
            raise Conflict("reseed is for a cluster on Redis: this node's store is embedded")
        async with self._applying:
            data = SnapshotData()
            if self.snapshot is not None:
                data = await self.snapshot.load_snapshot(self.settings.frontend_ips)
            report = await self.cluster.reseed(
                list(self._known.values()), data.route_counters, data.backend_counters
            )
        done = not report["conflicts"]
        if done:
            await self.resync()
        return done, report

    async def adopt(self) -> dict[str, Any]:
        """Follow Redis's state as it is, giving up the routes it does not have."""
        if self.cluster is None:
            raise Conflict("adopt is for a cluster on Redis: this node's store is embedded")
        async with self._applying:
            report = await self.cluster.adopt()
        await self.resync()
        report["routes"] = len(self.proxy.running())
        return report

    async def _tell_workers(self, key: RouteKey) -> None:
        """Have every worker serve ``key`` as this process does now, before the API answers
        (called under ``_applying``, so the workers see changes in this process's order)."""
        if self.workers is not None:
            self.workers.route(key, self.proxy.running().get(key))
            await self.workers.settle()

    def _backends_on(self, port: int) -> set[RouteKey]:
        """The routes with a backend on ``port``: the address policy may judge them anew."""
        return self.proxy.backends_on(port)

    async def _sync_checks(self, only: Collection[RouteKey] | None = None) -> None:
        """Probe exactly the enabled and draining backends of the routes being served (of
        the routes ``only``, after a change to them: a change costs its routes' work, not
        the whole node's)."""
        running = self.proxy.running()
        keys = list(self._checks) if only is None else list(only)
        for key in [k for k in keys if k not in running and k in self._checks]:
            await self._checks.pop(key)[1].close()
            self.metrics.forget_route(*key)
        # A copy: checks are closed (awaited) on the way, and the view must not change under
        # the loop.
        targets = dict(running) if only is None else {k: running[k] for k in keys if k in running}
        for key, route in targets.items():
            runtime = self.proxy.runtime(key)
            entry = self._checks.get(key)
            if entry is not None and entry[0].runtime is not runtime:
                # The listener was restarted (its address changed): a new runtime to feed.
                await self._checks.pop(key)[1].close()
                entry = None
            if entry is None and runtime is not None:
                sink = _CheckSink(runtime, self.metrics, self.workers)
                entry = self._checks[key] = (sink, RouteChecks(sink, runtime.resolve))
                # Health transitions go to Redis, for the other nodes' APIs.
                runtime.on_health = self._health_changed
            if entry is not None:
                probed = [
                    b
                    for b in route.backends
                    if b.state != "disabled" and self.backend_refusal(b.ip, b.port) is None
                ]
                entry[1].update(route.settings.health_check, probed)

    def _serves(self, route: Route) -> bool:
        return self._serves_ip(route.frontend_ip)

    def _serves_ip(self, ip: str) -> bool:
        # In a cluster only under the IP's lease, so that two live nodes never serve one IP.
        return ip in self.settings.frontend_ips and (self.cluster is None or self.cluster.holds(ip))

    async def _resync_forever(self) -> None:
        while True:
            await asyncio.sleep(self.settings.resync_interval)
            try:
                await self.resync()
            except Unavailable as err:
                # Expected while the store is down; the listeners serve on meanwhile.
                log.warning(
                    "resync failed, retrying in %gs: %s", self.settings.resync_interval, err
                )
            except Exception:
                log.exception("resync failed; retrying in %gs", self.settings.resync_interval)

    async def start(self) -> None:
        if self.cluster is None:
            await self.resync()
        else:
            data = await self._load_snapshot()
            self._known = {r.key: r for r in data.routes}
            # Without Redis, a node that has been part of a cluster serves its snapshot.
            if await self.cluster.start(data.epoch, offline=data.epoch is not None):
                await self.resync()
            else:
                async with self._applying:
                    await self._serve_known()
        if self.workers is not None:
            # Each worker serves every route before the node says ready.
            await self.workers.start(self.proxy.running())
        self._started = True
        self._resync_task = asyncio.create_task(self._resync_forever())
        self.api_config = ApiConfig.from_settings(self.settings)
        api = build_app(self.store, self, self.api_config)
        self._runner = ApiRunner(api, self.settings.api_request_timeout)
        await self._runner.setup()
        sock = bind(self.settings.api_host, self.settings.api_port)
        host, port = sock.getsockname()[:2]
        self.api_address = (host, port)
        if self.workers is not None:
            self.workers.api_address(self.api_address)
        # The API's address is the node's own from now on: stored backends pointing at it
        # (checked before it existed) are refused, in the relay and in the probes.
        self.proxy.recheck_backends(port)
        async with self._applying:
            await self._sync_checks(self._backends_on(port))
        await web.SockSite(self._runner, sock).start()
        if self.cluster is not None:
            await self.cluster.register()
        log.info(
            "ready api=http://%s:%d/ routes=%d", format_host(host), port, len(self.proxy.running())
        )

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
            await self.resync()
        except Unavailable as err:
            log.warning("reload: resync failed, the timer retries: %s", err)
        log.info("reloaded routes=%d", len(self.proxy.running()))

    async def stop(self) -> None:
        """uvicorn's order: stop the API and the listeners, drain the relays, close the store."""
        # Each step is logged (debug): a stop that hangs shows where in the log.
        try:
            log.debug("stopping: the resync timer")
            if self._resync_task is not None:
                await cancel_and_wait([self._resync_task], STOP_TIMEOUT, log)
            if self.cluster is not None:
                log.debug("stopping: the cluster's tasks")
                await self.cluster.stop()
            if self._runner is not None:
                log.debug("stopping: the API")
                await self._runner.cleanup()
            if self.workers is not None:
                # They stop accepting and drain alongside this process.
                self.workers.begin_stop()
            log.debug("stopping: the health checks")
            for _, checks in self._checks.values():
                await checks.close()
            self._checks.clear()
            log.debug("stopping: the listeners, then draining")
            await self.proxy.shutdown(self.settings.drain_timeout)
            if self.workers is not None:
                log.debug("stopping: the workers")
                await self.workers.wait_stopped(self.settings.drain_timeout)
            if self.cluster is not None:
                log.debug("stopping: releasing the leases")
                await self.cluster.release()
        finally:
            # Whatever went wrong above, the store's last writes are flushed and its files
            # released.
            try:
                if self.snapshot is not None:
                    log.debug("stopping: the snapshot")
                    await self.snapshot.close()
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


def _open_snapshot(path: str) -> Snapshot:
    try:
        return open_snapshot(path)
    except Exception as err:
        raise Unavailable(f"cannot open the snapshot {path}: {err}") from err


async def _load(snapshot: Snapshot, frontend_ips: Collection[str], path: str) -> SnapshotData:
    try:
        return await snapshot.load_snapshot(frontend_ips)
    except Exception as err:
        # A damaged snapshot is no reason not to start: Redis has the truth.
        log.error("cannot read the snapshot %s, starting without it: %s", path, err)
        return SnapshotData()


def _open_store(url: str) -> Store:
    try:
        return open_store(url)
    except RestcpError:
        raise
    except Exception as err:
        # A driver raises its own errors (sqlite3.DatabaseError for a file that is not a
        # database); to someone starting a node they all mean one thing, said in one line.
        raise Unavailable(f"cannot open store {url}: {err}") from err


class _CheckSink:
    """Probe results go to the route's runtime (health), to the latency histogram, and to
    the workers (--workers: only this process probes)."""

    def __init__(
        self, runtime: RouteRuntime, metrics: Metrics, workers: WorkerPool | None = None
    ) -> None:
        self.runtime = runtime
        self._metrics = metrics
        self._workers = workers

    def check_result(self, backend_id: int, ok: bool, reason: str, latency: float) -> None:
        self._metrics.observe_check(self.runtime.app, self.runtime.route_id, backend_id, latency)
        self.runtime.check_result(backend_id, ok, reason, latency)
        if self._workers is not None:
            key = (self.runtime.app, self.runtime.route_id)
            self._workers.check_result(key, backend_id, ok, reason, latency)
