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
  backoff and resyncs. A node that starts while Redis is down serves its local snapshot
  (node.py) on provisional leases, until Redis confirms or refuses them.
- An epoch says which data the node follows. ``epoch`` is a random id written once
  (SETNX) when a cluster is first used; every node remembers it (in its snapshot), and the
  store refuses every read and write of the desired state while Redis holds another epoch
  or none (store.redis: EpochMismatch). A Redis that came back empty is therefore never
  mistaken for "delete everything": the node serves on what it has until an operator
  reseeds (writes its snapshot back) or adopts Redis's state. The exact rules are in
  docs/cluster.md, "Redis that lost its data".
- Health travels the other way: the node serving a route writes which backends are up and
  down (``backends_live``, ``backends_dead``), coalesced, after every transition, so that
  any node's API can report it.

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
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from typing import Any, Literal, Protocol, runtime_checkable
from urllib.parse import quote, unquote

from restcp.errors import (
    Conflict,
    EpochMismatch,
    Forbidden,
    InvalidSpec,
    NotFound,
    Provisioning,
    RestcpError,
    Unavailable,
)
from restcp.model import BackendStatus, Route, RouteKey, RouteSettings, format_host
from restcp.settings import Settings
from restcp.store.codec import dump_route_settings, load_route_settings
from restcp.tasks import cancel_and_wait

log = logging.getLogger("restcp.cluster")

# Channel names, before the store's prefix. The seed README's names.
PROVISION = "provision:"
REPLY = "provision-success:"

# Reconnecting to Redis: first wait, doubling up to the last one.
BACKOFF_MIN = 0.05
BACKOFF_MAX = 2.0
# Seconds stop() waits for its cancelled tasks.
STOP_TIMEOUT = 5.0
# How long the listener waits for a message before it looks up: to see whether the IPs it
# should listen to changed, and to ping a silent connection.
POLL = 0.1
# The most messages handled as one batch (each route synced once per batch).
BATCH = 1000
# Health transitions within this many seconds of the first are written to Redis together.
HEALTH_COALESCE = 0.05

# Errors travel between nodes as HTTP statuses, which the API maps back the same way.
_STATUS_OF: dict[type[RestcpError], int] = {
    NotFound: 404,
    Forbidden: 403,
    Conflict: 409,
    InvalidSpec: 422,
    Unavailable: 503,
    EpochMismatch: 503,
}
_ERROR_OF = {status: error for error, status in _STATUS_OF.items() if error is not EpochMismatch}


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

    def expect_epoch(self, epoch: str | None) -> None: ...

    async def get_epoch(self) -> str | None: ...

    async def claim_epoch(self, candidate: str) -> str: ...

    async def restore_route(
        self, route: Route, epoch: str, route_counter: int = 0, backend_counter: int = 0
    ) -> tuple[str, str]: ...

    async def put_backend_health(
        self, app: str, route_id: int, live: Sequence[int], dead: Sequence[int]
    ) -> bool: ...

    async def backend_health(self, app: str, route_id: int) -> dict[int, str]: ...


class Controller(Protocol):
    """The node: applies routes from the store."""

    api_address: tuple[str, int] | None

    def protects(self) -> bool:
        """Whether the node has routes a wrong epoch could take away (serving or known)."""

    def served(self) -> Collection[RouteKey]: ...

    def backend_status(self, key: RouteKey) -> Mapping[int, BackendStatus]: ...

    async def epoch_changed(self, epoch: str) -> None:
        """The node follows ``epoch`` from now on: remember it (the snapshot)."""

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


def new_epoch() -> str:
    return secrets.token_hex(8)


StoreState = Literal["ok", "empty", "foreign"]


class HealthWriter:
    """Writes the health of the routes this node serves into Redis: each transition marks
    its route, and a task writes the marked routes' ``backends_live``/``backends_dead``
    shortly after (transitions of many routes, or flapping ones, cost one write per route
    per HEALTH_COALESCE). The data plane only marks: it never waits on Redis. A write that
    fails (Redis away) is retried after the next resync, which marks every route again;
    what Redis has already is not written twice."""

    def __init__(
        self, bus: Coordination, served: Callable[[], Collection[RouteKey]], status: Any
    ) -> None:
        self._bus = bus
        self._served = served
        self._status: Callable[[RouteKey], Mapping[int, BackendStatus]] = status
        self._dirty: set[RouteKey] = set()
        self._written: dict[RouteKey, tuple[tuple[int, ...], tuple[int, ...]]] = {}
        self._wake = asyncio.Event()

    def mark(self, keys: Iterable[RouteKey]) -> None:
        self._dirty.update(keys)
        if self._dirty:
            self._wake.set()

    def forget(self) -> None:
        """Redis may have lost what was written (it came back, or another epoch)."""
        self._written.clear()

    async def run(self) -> None:
        while True:
            await self._wake.wait()
            await asyncio.sleep(HEALTH_COALESCE)
            self._wake.clear()
            await self.flush()

    async def flush(self) -> None:
        keys, self._dirty = self._dirty, set()
        served = set(self._served())
        pending = list(keys)
        for i, key in enumerate(pending):
            if key not in served:
                self._written.pop(key, None)  # stopped; deleting a route deletes its lists
                continue
            statuses = self._status(key)
            live = tuple(sorted(b for b, s in statuses.items() if s.health == "up"))
            dead = tuple(sorted(b for b, s in statuses.items() if s.health == "down"))
            if self._written.get(key) == (live, dead):
                continue
            try:
                await self._bus.put_backend_health(key[0], key[1], live, dead)
            except Unavailable as err:
                # Kept for the next mark; a resync marks every route anyway.
                self._dirty.update(pending[i:])
                log.debug("health of route %s not written (%s): retried after a resync", key, err)
                return
            self._written[key] = (live, dead)


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
        # IPs served from the snapshot because Redis was down at start: held until Redis
        # answers the first claim, which confirms each lease or gives the IP up.
        self._provisional: set[str] = set()
        # The epoch this node follows (None: none seen yet), and how Redis compares to it.
        self.epoch: str | None = None
        self._store_state: StoreState = "ok"
        self._found_epoch: str | None = None
        self.health = HealthWriter(bus, node.served, node.backend_status)
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

    async def start(self, epoch: str | None = None, offline: bool = False) -> bool:
        """Claim the IPs, check the epoch, register, subscribe; whether Redis answered.
        ``epoch``: the one the node's snapshot remembers. When Redis cannot be reached this
        raises Unavailable, as the node's first resync would, unless ``offline``: then every
        frontend IP is held provisionally, and the node serves its snapshot meanwhile."""
        self.epoch = epoch
        self._bus.expect_epoch(epoch)
        subscription: Subscription | None = None
        try:
            await self._claim()
            # The node's own first resync follows, before it reports ready.
            self._synced = self._gained
            await self.check_epoch()
            await self._register()
            subscription = await self._subscribe()
        except Unavailable as err:
            if not offline or isinstance(err, EpochMismatch):
                raise
            self._provisional = set(self._settings.frontend_ips) - set(self._held)
            self._problem = str(err)
            log.warning(
                "Redis is unreachable at start (%s): serving the snapshot's routes of %s "
                "until it is back",
                err,
                ", ".join(sorted(self._provisional)) or "no IP",
            )
        self._connected = subscription is not None
        self._tasks = [
            asyncio.create_task(self._listen_forever(subscription)),
            asyncio.create_task(self._renew_forever()),
            asyncio.create_task(self.health.run()),
        ]
        return self._connected

    async def stop(self) -> None:
        """Stop listening and renewing; the leases stay until ``release``."""
        tasks, self._tasks = self._tasks, []
        # Bounded: a task stuck past its cancellation (restcp/tasks.py) must not keep the
        # node from draining and exiting.
        await cancel_and_wait(tasks, STOP_TIMEOUT, log)

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
        return ip in self._held or ip in self._provisional

    def health_changed(self, key: RouteKey) -> None:
        """A backend of a route this node serves went up or down (called by the data plane:
        marks only)."""
        self.health.mark((key,))

    async def remote_health(self, key: RouteKey) -> dict[int, str]:
        """backend id -> up/down of a route another node serves, as that node wrote it."""
        return await self._bus.backend_health(*key)

    # -- the epoch -------------------------------------------------------------------------

    async def check_epoch(self) -> bool:
        """Compare Redis's epoch with this node's: True when the node may follow Redis.

        - The same epoch: follow it.
        - This node knows none yet (a new node, or one without a snapshot): adopt Redis's
          epoch, or claim a new one if Redis has none (SETNX: nodes starting together
          agree on one).
        - Another epoch, and this node has nothing to lose (no route known or served):
          adopt it.
        - Otherwise, no epoch (Redis lost its data: no node that knew the cluster claims a
          new one, so the loss stays visible) or another one: do not follow it. The node
          serves on what it has, the store refuses reads and writes, /healthz says "empty"
          or "foreign", until a reseed or an adopt through this node's API."""
        found = await self._bus.get_epoch()
        if found is not None and found == self.epoch:
            self._consistent()
            return True
        if self.epoch is None:
            if found is None:
                found = await self._bus.claim_epoch(new_epoch())
            await self._adopt(found)
            return True
        if found is not None and not self._node.protects():
            await self._adopt(found)
            return True
        self.mismatch(EpochMismatch(self.epoch, found))
        return False

    def mismatch(self, err: EpochMismatch) -> None:
        """Redis does not hold this node's epoch (seen by check_epoch, or by the store)."""
        state: StoreState = "empty" if err.found is None else "foreign"
        if (state, err.found) != (self._store_state, self._found_epoch):
            log.error(
                "Redis %s: serving on the %d routes this node had, applying nothing from "
                "Redis and refusing writes until `restcp cluster reseed` (writes them back) "
                "or `restcp cluster adopt` (takes Redis's state)",
                "has lost its data (no epoch)"
                if state == "empty"
                else f"holds another cluster (epoch {err.found}, this node's is {err.expected})",
                len(self._node.served()),
            )
        self._store_state, self._found_epoch = state, err.found

    def _consistent(self) -> None:
        if self._store_state != "ok":
            log.info("Redis holds this node's epoch %s again", self.epoch)
        self._store_state, self._found_epoch = "ok", None

    async def _adopt(self, epoch: str) -> None:
        if epoch != self.epoch:
            if self.epoch is None:
                log.info("following cluster epoch %s", epoch)
            else:
                log.warning("following cluster epoch %s (was %s)", epoch, self.epoch)
            self.health.forget()
        self.epoch = epoch
        self._bus.expect_epoch(epoch)
        self._consistent()
        await self._node.epoch_changed(epoch)

    async def reseed(
        self,
        routes: Sequence[Route],
        route_counters: Mapping[str, int],
        backend_counters: Mapping[RouteKey, int],
    ) -> dict[str, Any]:
        """Write ``routes`` (this node's snapshot) back into a Redis that does not hold this
        node's epoch, each route atomically and never over other content, then follow
        Redis's epoch if nothing conflicted. When Redis holds this node's epoch, nothing is
        written (a reseed would bring back routes deleted since through other nodes)."""
        found = await self._bus.get_epoch()
        report: dict[str, Any] = {
            "epoch": found,
            "previous_epoch": self.epoch,
            "written": [],
            "unchanged": [],
            "conflicts": [],
            "skipped": [],
        }
        if found is not None and found == self.epoch:
            # Nothing to do, and nothing written: the snapshot could bring back routes
            # deleted since through another node.
            log.info("reseed: Redis holds this node's epoch %s, nothing to write", found)
            return report
        held = set(self._held)
        if self._provisional or (not held and routes):
            raise Unavailable("this node holds no lease yet: reseed once its leases are claimed")
        # A Redis without an epoch gets a new one, never the old: a node that was away while
        # Redis lost its data must not take the reseeded data for its own (it lacks that
        # node's routes); it sees another epoch, and is reseeded (or adopts) in turn.
        target = found if found is not None else await self._bus.claim_epoch(new_epoch())
        report["epoch"] = target
        for route in sorted(routes, key=lambda r: r.key):
            ref = {"app": route.app, "route": route.id, "frontend_ip": route.frontend_ip}
            if route.frontend_ip not in held:
                report["skipped"].append({**ref, "reason": "this node does not hold its IP"})
                continue
            outcome, why = await self._bus.restore_route(
                route,
                target,
                route_counters.get(route.app, 0),
                backend_counters.get(route.key, 0),
            )
            if outcome == "conflict":
                report["conflicts"].append({**ref, "port": route.port, "reason": why})
            else:
                report[outcome].append({**ref, "port": route.port})
        log.warning(
            "reseed into epoch %s: %d routes written, %d unchanged, %d conflicting, %d skipped",
            target,
            len(report["written"]),
            len(report["unchanged"]),
            len(report["conflicts"]),
            len(report["skipped"]),
        )
        if not report["conflicts"]:
            await self._adopt(target)
        return report

    async def adopt(self) -> dict[str, Any]:
        """Follow whatever Redis holds now (an operator's decision): the routes this node
        knew and Redis does not are stopped at the resync that follows."""
        found = await self._bus.get_epoch()
        previous = self.epoch
        if found is None:
            found = await self._bus.claim_epoch(new_epoch())
        await self._adopt(found)
        return {"epoch": found, "previous_epoch": previous}

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
        for ip in self._provisional:
            ips[ip] = {"lease": "provisional"}
        details["cluster"]["epoch"] = self.epoch
        details["cluster"]["store"] = self._store_state
        if self._store_state == "foreign":
            details["cluster"]["redis_epoch"] = self._found_epoch
        standby = len(self._held) + len(self._provisional) < len(self._settings.frontend_ips)
        settling = self._synced < self._gained
        if not self._connected:
            details["status"] = "degraded"
        elif self._store_state != "ok":
            # Serving what it had; Redis needs a reseed (or an adopt) before it is followed.
            details["status"] = self._store_state
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
            if ip in self._provisional:
                # Redis answers at last: the lease is confirmed (acquired below), or another
                # node holds the IP now and this one stops serving it (standby).
                self._provisional.discard(ip)
                if not state:
                    changed = True
                    log.error(
                        "frontend IP %s, served from the snapshot while Redis was away, is "
                        "held by node %s: no longer serving it",
                        ip,
                        holder,
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
                was = self._store_state
                epoch = self.epoch
                await self.check_epoch()
                # Adopted (a node with nothing to lose) or back to its own epoch: follow it.
                changed = changed or (was != "ok" and self._store_state == "ok")
                changed = changed or epoch != self.epoch
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

    async def _listen_forever(self, first: Subscription | None) -> None:
        subscription: Subscription | None = first
        backoff = BACKOFF_MIN
        while True:
            try:
                if subscription is None:
                    # Leases first (a provisional one is confirmed or given up), then the
                    # epoch: the node follows Redis only once both say it may.
                    await self._claim()
                    await self.check_epoch()
                    subscription = await self._subscribe()
                    # What was published while nobody listened is gone: read it all, and
                    # write the health Redis may have lost.
                    self.health.forget()
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
