"""Several nodes on one Redis: who serves which frontend IP, and how a change made through
any node's API reaches the node that serves it.

How it works (docs/cluster.md has the channels, messages and timings)::

    client ─► API of node A ─► store write ─► Redis ◄──── resync (start, reconnect, timer) ─┐
                   │                            │                                          │
                   └─ PUBLISH provision:<ip> ──►└─ to the subscriber of provision:<ip> ─► node C

- Level-triggered, with edge-triggered hints. Every API write is stored first, then
  announced on ``provision:<ip>`` of the route's frontend IP as ``<app>:<route>``; the node
  that serves the IP re-applies that route from the store. Pub/sub keeps nothing for a
  subscriber that is away, so a message can be lost: a node therefore resyncs everything
  after every (re)subscription, and on its --resync-interval timer. A lost message delays a
  change, it never loses it; applying one twice changes nothing.
- Leases say who serves an IP. ``lease:<ip>`` holds a node id and expires unless renewed
  (every third of --lease-ttl). A node serves, and subscribes to, only the IPs it holds, so
  two live nodes never serve one IP, and a node started to replace a dead one takes over
  once the dead one's lease runs out.
- Remote provisioning. A route for an IP this node does not hold is bound by the IP's
  holder, since only it can bind that address: this node reserves the route id, subscribes
  to ``provision-success:<app>:<route>``, publishes a request (JSON) on ``provision:<ip>``,
  and waits for the holder's answer: the port it bound and stored, or an error.
- Redis down is not an outage: the listeners live in memory and keep relaying; leases are
  kept (nobody else can take them while Redis is down), and the node reconnects with
  backoff and resyncs.

Only the store talks to Redis: this module uses the ``Coordination`` methods a store offers
(store/redis.py), and the node it drives through ``Controller``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import random
import secrets
import socket
import time
from collections.abc import Callable, Collection, Sequence
from typing import Any, Protocol, runtime_checkable
from urllib.parse import quote, unquote

from restcp.errors import (
    Conflict,
    Forbidden,
    InvalidSpec,
    NotFound,
    Provisioning,
    RestcpError,
    Unavailable,
)
from restcp.model import Route, RouteKey, RouteSettings, format_host
from restcp.settings import Settings
from restcp.store.codec import dump_route_settings, load_route_settings

log = logging.getLogger("restcp.cluster")

# Channel names, before the store's prefix. The seed README's names.
PROVISION = "provision:"
REPLY = "provision-success:"

# Reconnecting to Redis: first wait, doubling up to the last one.
BACKOFF_MIN = 0.05
BACKOFF_MAX = 2.0
# How long the listener waits for a message before it looks up: to see whether the IPs it
# should listen to changed, and to ping a silent connection.
POLL = 0.1
# The most messages handled as one batch (each route synced once per batch).
BATCH = 1000

# Errors travel between nodes as HTTP statuses, which the API maps back the same way.
_STATUS_OF: dict[type[RestcpError], int] = {
    NotFound: 404,
    Forbidden: 403,
    Conflict: 409,
    InvalidSpec: 422,
    Unavailable: 503,
}
_ERROR_OF = {status: error for error, status in _STATUS_OF.items()}


class Subscription(Protocol):
    channels: frozenset[str]
    last_heard: float

    async def subscribe(self, channels: Collection[str]) -> None: ...

    async def get(self, within: float) -> tuple[str, str] | None: ...

    async def ping(self) -> None: ...

    async def close(self) -> None: ...


@runtime_checkable
class Coordination(Protocol):
    """What a store offers for its nodes to form a cluster (store/redis.py does)."""

    async def get_route(self, app: str, route_id: int) -> Route: ...

    async def publish(self, channel: str, message: str) -> int: ...

    async def subscribers(self, channel: str) -> int: ...

    async def channels(self, pattern: str) -> list[str]: ...

    def subscription(self) -> Subscription: ...

    async def request(
        self, channel: str, message: str, reply_channel: str, within: float
    ) -> tuple[int, str | None]: ...

    async def acquire_lease(self, ip: str, holder: str, ttl: float) -> tuple[int, str, float]: ...

    async def release_lease(self, ip: str, holder: str) -> bool: ...

    async def reserve_route_id(self, app: str) -> int: ...

    async def create_reserved_route(
        self,
        app: str,
        route_id: int,
        frontend_ip: str,
        port: int,
        settings: RouteSettings,
        holder: str,
    ) -> Route: ...

    async def put_node(self, node_id: str, record: dict[str, Any], ttl: float) -> None: ...

    async def drop_node(self, node_id: str) -> None: ...

    async def list_nodes(self) -> list[dict[str, Any]]: ...

    async def lease_holders(self, ips: Sequence[str]) -> dict[str, tuple[str, float]]: ...

    async def routes_per_ip(self, ips: Sequence[str]) -> dict[str, int]: ...


class Controller(Protocol):
    """The node: applies routes from the store."""

    api_address: tuple[str, int] | None

    async def sync(self, key: RouteKey, *, publish: bool = True) -> None: ...

    async def resync(self) -> None: ...

    async def create_route(
        self,
        app: str,
        frontend_ip: str | None,
        port: int | None,
        settings: RouteSettings,
        route_id: int | None = None,
    ) -> Route: ...


def member(app: str, route_id: int) -> str:
    """``<app>:<route>``, the app percent-encoded as in the store's keys."""
    return f"{quote(app, safe='')}:{route_id}"


def parse_member(text: str) -> RouteKey | None:
    app, sep, route_id = text.rpartition(":")
    if not sep or not app or not (route_id.isascii() and route_id.isdigit()):
        return None
    return unquote(app), int(route_id)


class Cluster:
    def __init__(
        self,
        bus: Coordination,
        settings: Settings,
        node: Controller,
        serving: Callable[[], int],
    ) -> None:
        self._bus = bus
        self._settings = settings
        self._node = node
        self._serving = serving
        # Unique per process: a restarted node is a new node and waits for its predecessor's
        # lease to run out, since a dead node cannot say it is dead.
        self.node_id = f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"
        self.started_at = time.time()
        # ip -> when this node acquired its lease (Unix seconds).
        self._held: dict[str, float] = {}
        # ip -> the node holding the lease of an IP this node is configured for.
        self._others: dict[str, str] = {}
        self._connected = False
        self._problem: str | None = None
        self._renewal_failing = False
        # Seconds until the soonest lease held by another node runs out, unless renewed.
        self._free_in: float | None = None
        # Leases acquired, and how many of those a full resync has followed: an IP just
        # taken over is not served until its routes are bound, so not ready before.
        self._gained = 0
        self._synced = 0
        self._tasks: list[asyncio.Task[None]] = []

    @classmethod
    def for_store(
        cls, store: object, settings: Settings, node: Controller, serving: Callable[[], int]
    ) -> Cluster | None:
        """A cluster when the store is shared (Redis); None for an embedded one."""
        if isinstance(store, Coordination):
            return cls(store, settings, node, serving)
        return None

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        """Claim the IPs, register, subscribe. Raises Unavailable when Redis cannot be
        reached, as the node's first resync would."""
        await self._claim()
        # The node's own first resync follows, before it reports ready.
        self._synced = self._gained
        await self._register()
        subscription = await self._subscribe()
        self._connected = True
        self._tasks = [
            asyncio.create_task(self._listen_forever(subscription)),
            asyncio.create_task(self._renew_forever()),
        ]

    async def stop(self) -> None:
        """Stop listening and renewing; the leases stay until ``release``."""
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def release(self) -> None:
        """Hand the IPs over now rather than at the end of the lease: called once the
        node's listeners are closed, so that a successor can bind their ports."""
        try:
            for ip in list(self._held):
                await self._bus.release_lease(ip, self.node_id)
                del self._held[ip]
            await self._bus.drop_node(self.node_id)
        except Unavailable as err:
            log.warning("cannot release leases (they expire by themselves): %s", err)

    # -- what the node asks ----------------------------------------------------------------

    def holds(self, ip: str) -> bool:
        return ip in self._held

    def default_ip(self) -> str | None:
        """The first of this node's frontend IPs that it serves now."""
        return next((ip for ip in self._settings.frontend_ips if ip in self._held), None)

    async def store_route(
        self, app: str, route_id: int, ip: str, port: int, settings: RouteSettings
    ) -> Route:
        """Store a route this node has bound for another node's request."""
        return await self._bus.create_reserved_route(
            app, route_id, ip, port, settings, self.node_id
        )

    async def changed(self, key: RouteKey, route: Route | None) -> None:
        """Announce a stored change to the node that serves the route (``route`` None: it
        was deleted, and whoever served it is told). Never raises: the write is stored, and
        the serving node's resync applies it if the message does not get through."""
        message = member(*key)
        try:
            if route is not None:
                if route.frontend_ip not in self._held:
                    await self._bus.publish(PROVISION + route.frontend_ip, message)
                return
            for channel in await self._bus.channels(PROVISION + "*"):
                if channel.removeprefix(PROVISION) not in self._held:
                    await self._bus.publish(channel, message)
        except Unavailable as err:
            log.warning(
                "change of route %s not announced (%s): its node applies it within "
                "--resync-interval of Redis being back",
                message,
                err,
            )

    async def provision(
        self, app: str, ip: str, port: int | None, settings: RouteSettings
    ) -> Route:
        """Have the node that serves ``ip`` bind and store a new route; wait for its port."""
        channel = PROVISION + ip
        if await self._bus.subscribers(channel) == 0:
            holder = (await self._bus.lease_holders([ip])).get(ip)
            why = "no node holds its lease" if holder is None else f"its node {holder[0]} is away"
            raise Unavailable(f"no live node serves frontend_ip {ip} ({why}); nothing was stored")
        route_id = await self._bus.reserve_route_id(app)
        request = json.dumps(
            {
                "app": app,
                "route": route_id,
                "port": port,
                "settings": dump_route_settings(settings),
                "from": self.node_id,
            }
        )
        receivers, reply = await self._bus.request(
            channel, request, REPLY + member(app, route_id), self._settings.provision_timeout
        )
        if receivers == 0:
            raise Unavailable(
                f"the node serving frontend_ip {ip} went away; nothing was stored "
                f"(route id {route_id} stays unused)"
            )
        if reply is None:
            # No answer in time, or the answer was lost: the store says whether it happened.
            with contextlib.suppress(NotFound, Unavailable):
                return await self._bus.get_route(app, route_id)
            raise Provisioning(app, route_id, ip)
        if reply.startswith("error "):
            _, status, detail = reply.split(" ", 2)
            raise _ERROR_OF.get(int(status), Unavailable)(detail)
        return Route(app, route_id, ip, int(reply), settings)

    def readiness(self) -> tuple[bool, dict[str, Any]]:
        """(ready, details for /healthz): not ready while another node holds one of this
        node's IPs (standby); ready but degraded while Redis is unreachable, since the
        listeners keep serving."""
        ips: dict[str, dict[str, Any]] = {}
        for ip in self._settings.frontend_ips:
            if ip in self._held:
                ips[ip] = {"lease": "held", "age": round(time.time() - self._held[ip], 3)}
            else:
                ips[ip] = {"lease": "waiting", "holder": self._others.get(ip)}
        details: dict[str, Any] = {
            "cluster": {
                "node": self.node_id,
                "redis": "ok" if self._connected else "unreachable",
                "problem": self._problem,
                "frontend_ips": ips,
            }
        }
        standby = len(self._held) < len(self._settings.frontend_ips)
        settling = self._synced < self._gained
        if not self._connected:
            details["status"] = "degraded"
        elif standby:
            details["status"] = "standby"
        return not standby and not settling, details

    async def nodes(self) -> list[dict[str, Any]]:
        """The live nodes, as they registered in Redis, with their leases' ages."""
        records = await self._bus.list_nodes()
        ips = sorted({ip for r in records for ip in r.get("leases", {})})
        stored = await self._bus.routes_per_ip(ips)
        now = time.time()
        out = []
        for r in sorted(records, key=lambda r: str(r.get("id"))):
            leases = r.get("leases", {})
            out.append(
                {
                    "id": r.get("id"),
                    "api": r.get("api"),
                    "frontend_ips": r.get("frontend_ips", []),
                    "leases": [
                        {
                            "ip": ip,
                            "age": round(now - float(since), 3),
                            "routes": stored.get(ip, 0),
                        }
                        for ip, since in sorted(leases.items())
                    ],
                    "routes_serving": r.get("routes_serving", 0),
                    "started_at": r.get("started_at"),
                    "last_seen": round(now - float(r.get("heartbeat_at", now)), 3),
                }
            )
        return out

    # -- leases ----------------------------------------------------------------------------

    async def _claim(self) -> bool:
        """Renew or take the lease of each frontend IP; whether the IPs served changed."""
        changed = False
        self._free_in = None
        for ip in self._settings.frontend_ips:
            state, holder, left = await self._bus.acquire_lease(
                ip, self.node_id, self._settings.lease_ttl
            )
            if state:
                if ip not in self._held:
                    self._held[ip] = time.time()
                    self._gained += 1
                    changed = True
                    log.info("lease of frontend IP %s acquired: serving its routes", ip)
                self._others.pop(ip, None)
                continue
            if ip in self._held:
                del self._held[ip]
                changed = True
                log.error(
                    "lease of frontend IP %s lost to node %s: no longer serving it", ip, holder
                )
            elif self._others.get(ip) != holder:
                log.error(
                    "frontend IP %s is served by node %s (its lease runs out in %.1fs unless "
                    "renewed): not serving its routes until the lease is free",
                    ip,
                    holder,
                    left,
                )
            self._others[ip] = holder
            if left > 0:  # a lease set by hand may have no expiry: then the usual period
                self._free_in = left if self._free_in is None else min(left, self._free_in)
        return changed

    async def register(self) -> None:
        """Write this node's entry of ``GET /nodes`` again, now that its API address is
        known. Only a listing: the next renewal retries it if Redis is away."""
        try:
            await self._register()
        except Unavailable as err:
            log.warning("cannot register this node for GET /nodes yet: %s", err)

    async def _register(self) -> None:
        api = self._node.api_address
        await self._bus.put_node(
            self.node_id,
            {
                "id": self.node_id,
                "api": None if api is None else f"http://{format_host(api[0])}:{api[1]}/",
                "frontend_ips": list(self._settings.frontend_ips),
                "leases": dict(self._held),
                "routes_serving": self._serving(),
                "started_at": self.started_at,
                "heartbeat_at": time.time(),
            },
            # Long enough to survive a missed renewal or two, short enough that GET /nodes
            # forgets a killed node soon.
            3 * self._settings.lease_ttl,
        )

    async def _renew_forever(self) -> None:
        while True:
            # A standby tries again the moment the other node's lease runs out, not up to a
            # renewal period later: that is when a dead node's IPs are free.
            period = self._settings.lease_ttl / 3
            if self._free_in is not None:
                period = min(period, self._free_in + 0.005)
            await asyncio.sleep(period)
            try:
                changed = await self._claim()
                await self._register()
            except Unavailable as err:
                # Nobody can take the leases while Redis is away from everyone; if it is away
                # from this node only, the IPs' routes have nowhere else to go either.
                if not self._renewal_failing:
                    log.warning("cannot renew leases, serving on with those held: %s", err)
                self._renewal_failing = True
                continue
            if self._renewal_failing:
                log.info("leases renewed again")
                self._renewal_failing = False
            if changed or self._synced < self._gained:
                # A lost IP stops being served now, a gained one is bound now (the listener
                # also resubscribes, then resyncs); retried at each renewal until it worked.
                await self._resync("after a lease change")

    # -- pub/sub ---------------------------------------------------------------------------

    def _wanted(self) -> frozenset[str]:
        return frozenset(PROVISION + ip for ip in self._held)

    async def _subscribe(self) -> Subscription:
        subscription = self._bus.subscription()
        channels = self._wanted()
        try:
            await subscription.subscribe(channels)
        except BaseException:
            await subscription.close()
            raise
        log.info("subscribed to %s", ", ".join(sorted(channels)) or "nothing (no lease held)")
        return subscription

    async def _listen_forever(self, first: Subscription) -> None:
        subscription: Subscription | None = first
        backoff = BACKOFF_MIN
        while True:
            try:
                if subscription is None:
                    subscription = await self._subscribe()
                    # What was published while nobody listened is gone: read it all.
                    await self._resync_all()
                    if not self._connected:
                        log.info("Redis is back: resynced")
                    self._connected, self._problem = True, None
                backoff = BACKOFF_MIN
                await self._listen(subscription)
            except asyncio.CancelledError:
                raise
            except Exception as err:
                if not isinstance(err, RestcpError):
                    log.exception("bug: the cluster listener failed")
                if self._connected:
                    log.warning("lost Redis pub/sub (%s): reconnecting", err)
                self._connected, self._problem = False, str(err)
                await asyncio.sleep(backoff * random.uniform(0.5, 1.0))
                backoff = min(2 * backoff, BACKOFF_MAX)
            finally:
                if subscription is not None:
                    await subscription.close()
                    subscription = None

    async def _listen(self, subscription: Subscription) -> None:
        """Handle messages until the IPs to listen to change (returns) or the connection
        is lost (raises Unavailable)."""
        # A connection can die without a word (a partition): a silent one is pinged, and a
        # silence longer than a few pings is a dead connection.
        ping_every = min(5.0, max(0.5, self._settings.lease_ttl / 3))
        pinged = time.monotonic()
        while subscription.channels == self._wanted():
            if not subscription.channels:
                await asyncio.sleep(POLL)
                continue
            got = await subscription.get(POLL)
            if got is None:
                now = time.monotonic()
                if now - subscription.last_heard > 3 * ping_every:
                    raise Unavailable(f"Redis did not answer pings for {3 * ping_every:g}s")
                if now - subscription.last_heard > ping_every and now - pinged > ping_every:
                    pinged = now
                    await subscription.ping()
                continue
            batch = [got]
            while len(batch) < BATCH and (more := await subscription.get(0)) is not None:
                batch.append(more)
            await self._handle(batch)

    async def _handle(self, batch: list[tuple[str, str]]) -> None:
        # Requests in order; then each changed route once, read after all of its messages
        # were published, so once is enough.
        keys: dict[RouteKey, None] = {}
        for channel, data in batch:
            ip = channel.removeprefix(PROVISION)
            if ip not in self._held:
                continue
            if data.startswith("{"):
                await self._provision_here(ip, data)
                continue
            key = parse_member(data)
            if key is None:
                log.warning("ignoring a message that is not <app>:<route>: %r", data[:200])
                continue
            keys[key] = None
        for key in keys:
            try:
                await self._node.sync(key, publish=False)
            except Unavailable as err:
                log.warning("cannot apply route %s now (%s): the next resync will", key, err)

    async def _provision_here(self, ip: str, data: str) -> None:
        try:
            request = json.loads(data)
            app = str(request["app"])
            route_id = int(request["route"])
            port = None if request.get("port") is None else int(request["port"])
            settings = load_route_settings(str(request["settings"]))
        except (ValueError, KeyError, TypeError) as err:
            log.warning("ignoring a malformed provisioning request (%s): %r", err, data[:200])
            return
        try:
            route = await self._node.create_route(app, ip, port, settings, route_id=route_id)
            reply = str(route.port)
            log.info(
                "route %d of app %r provisioned on %s:%d for node %s",
                route_id,
                app,
                format_host(ip),
                route.port,
                request.get("from"),
            )
        except RestcpError as err:
            reply = f"error {_STATUS_OF.get(type(err), 503)} {err}"
            log.info("route %d of app %r not provisioned: %s", route_id, app, err)
        except Exception:
            log.exception("bug: provisioning route %d of app %r failed", route_id, app)
            reply = "error 500 internal error on the node serving the frontend IP"
        try:
            await self._bus.publish(REPLY + member(app, route_id), reply)
        except Unavailable as err:
            # The requester then looks the route up in the store.
            log.warning("cannot answer the provisioning of route %d of %r: %s", route_id, app, err)

    async def _resync_all(self) -> None:
        gained = self._gained
        await self._node.resync()
        self._synced = max(self._synced, gained)

    async def _resync(self, why: str) -> None:
        try:
            await self._resync_all()
        except Unavailable as err:
            log.warning("resync %s failed (%s): the timer retries", why, err)
