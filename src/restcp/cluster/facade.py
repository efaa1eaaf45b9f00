"""``Cluster``: a node's part in a cluster, as the node sees it. It composes the parts (leases,
epoch, registry, health writer, provisioner, subscriber), runs their tasks, and is the one
place that orders them: at start, and at each lease renewal."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from restcp.cluster.changes import Changes
from restcp.cluster.controller import Controller
from restcp.cluster.coordination import SharedStore, Subscription
from restcp.cluster.epoch import Epoch
from restcp.cluster.health import HealthWriter
from restcp.cluster.identity import NodeId
from restcp.cluster.leases import Leases, require_server
from restcp.cluster.provisioning import Provisioner
from restcp.cluster.registry import Registry
from restcp.cluster.subscriber import Subscriber
from restcp.errors import EpochMismatch, Unavailable
from restcp.model import Route, RouteKey, RouteSettings
from restcp.settings import Settings
from restcp.tasks import cancel_and_wait

log = logging.getLogger("restcp.cluster")

# Seconds stop() waits for its cancelled tasks.
STOP_TIMEOUT = 5.0


# How long a node's published counters outlive it: a few of its once-a-second writes, so
# that a missed write does not hide its routes' counters, and a stopped node's vanish soon.
STATS_TTL = 5.0


class Cluster:
    """What the node asks of the cluster, and the three tasks that keep its part going: the
    subscriber (notices and requests), the lease renewal, the health writer."""

    def __init__(
        self,
        store: SharedStore,
        settings: Settings,
        node: Controller,
        serving: Callable[[], int],
    ) -> None:
        self._bus = bus = store.coordination
        self._node = node
        identity = NodeId.this_process(settings.node_name)
        self.node_id = str(identity)
        self._leases = Leases(bus, settings, identity)
        self.health = HealthWriter(bus, node.served, node.backend_status)
        self._epoch = Epoch(bus, node, self._leases, self.health.forget)
        self._registry = Registry(bus, settings, node, self._leases, serving)
        self._provisioner = Provisioner(bus, store, settings, node, self.node_id)
        self._changes = Changes(bus, settings, node, self._leases)
        self._subscriber = Subscriber(
            bus, settings, node, self._leases, self._epoch, self.health, self._provisioner
        )
        self._renewal_failing = False
        self._tasks: list[asyncio.Task[None]] = []

    @classmethod
    def for_store(
        cls, store: object, settings: Settings, node: Controller, serving: Callable[[], int]
    ) -> Cluster | None:
        """A cluster when the store is shared (Redis); None for an embedded one."""
        if isinstance(store, SharedStore):
            return cls(store, settings, node, serving)
        return None

    @property
    def epoch(self) -> str | None:
        """The epoch this node follows (None: none seen yet)."""
        return self._epoch.current

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self, epoch: str | None = None, offline: bool = False) -> bool:
        """Claim the IPs, check the epoch, register, subscribe; whether Redis answered.
        ``epoch``: the one the node's snapshot remembers. When Redis cannot be reached this
        raises Unavailable, as the node's first resync would, unless ``offline``: then every
        frontend IP is held provisionally, and the node serves its snapshot meanwhile."""
        self._epoch.expect(epoch)
        subscription: Subscription | None = None
        problem = None
        try:
            # Registered before anything is claimed, so that a process started with the
            # same name at the same moment sees this one: the later of the two refuses.
            await self._registry.put()
            await self._registry.refuse_twin()
            await self._leases.claim()
            # The node's own first resync follows, before it reports ready.
            self._leases.followed_all()
            await self._epoch.check()
            await self._registry.put()
            subscription = await self._subscriber.subscribe()
        except Unavailable as err:
            if not offline or isinstance(err, EpochMismatch):
                raise
            provisional = self._leases.hold_provisionally()
            problem = str(err)
            log.warning(
                "Redis is unreachable at start (%s): serving the snapshot's routes of %s "
                "until it is back",
                err,
                ", ".join(sorted(provisional)) or "no IP",
            )
        self._subscriber.started(subscription, problem)
        self._tasks = [
            asyncio.create_task(self._subscriber.run()),
            asyncio.create_task(self._changes.run()),
            asyncio.create_task(self._renew_forever()),
            asyncio.create_task(self.health.run()),
        ]
        return subscription is not None

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
            await self._leases.release()
            await self._registry.drop()
        except Unavailable as err:
            log.warning("cannot release leases (they expire by themselves): %s", err)

    async def _renew_forever(self) -> None:
        while True:
            await asyncio.sleep(self._leases.renewal_period())
            try:
                changed = await self._leases.claim()
                await self._registry.put()
                was = self._epoch.state
                epoch = self._epoch.current
                await self._epoch.check()
                # Adopted (a node with nothing to lose) or back to its own epoch: follow it.
                changed = changed or (was != "ok" and self._epoch.state == "ok")
                changed = changed or epoch != self._epoch.current
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
            if changed or self._leases.settling:
                # A lost IP stops being served now, a gained one is bound now (the subscriber
                # also resubscribes, then resyncs); retried at each renewal until it worked.
                try:
                    await self._leases.follow(self._node.resync)
                except Unavailable as err:
                    log.warning("resync after a lease change failed (%s): the timer retries", err)

    # -- what the node asks ----------------------------------------------------------------

    def holds(self, ip: str) -> bool:
        return self._leases.holds(ip)

    def default_ip(self) -> str | None:
        """The first of this node's frontend IPs that it serves now."""
        return self._leases.default_ip()

    def health_changed(self, key: RouteKey) -> None:
        """A backend of a route this node serves went up or down (called by the data plane:
        marks only)."""
        self.health.mark((key,))

    async def remote_health(self, key: RouteKey) -> dict[int, str]:
        """backend id -> up/down of a route another node serves, as that node wrote it."""
        return await self._bus.backend_health(*key)

    def mismatch(self, err: EpochMismatch) -> None:
        """Redis does not hold this node's epoch (seen by the store)."""
        self._epoch.mismatch(err)

    async def reseed(
        self,
        routes: Sequence[Route],
        route_counters: Mapping[str, int],
        backend_counters: Mapping[RouteKey, int],
    ) -> dict[str, Any]:
        """Write this node's snapshot back into a Redis that lost it (epoch.py)."""
        return await self._epoch.reseed(routes, route_counters, backend_counters)

    async def adopt(self) -> dict[str, Any]:
        """Follow whatever Redis holds now (epoch.py)."""
        return await self._epoch.adopt()

    async def store_route(
        self, app: str, route_id: int, ip: str, port: int, settings: RouteSettings
    ) -> Route:
        """Store a route this node has bound for another node's request."""
        return await self._provisioner.store_route(app, route_id, ip, port, settings)

    async def require_server(self, ip: str) -> None:
        """Raise Unavailable ("nothing was stored") unless a live node serves ``ip``: checked
        before a write for a route of ``ip`` is stored."""
        await require_server(self._bus, ip)

    async def changed(self, key: RouteKey, ip: str, route: Route | None) -> bool:
        """Announce a stored change of route ``key`` of ``ip`` to the node that serves it
        (``route``: as stored after it; None: deleted), and wait for that node to apply it;
        whether it did within --provision-timeout. Never raises."""
        return await self._changes.announce(key, ip, route)

    async def provision(
        self, app: str, ip: str, port: int | None, settings: RouteSettings
    ) -> Route:
        """Have the node that serves ``ip`` bind and store a new route; wait for its port."""
        return await self._provisioner.provision(app, ip, port, settings)

    def readiness(self) -> tuple[bool, dict[str, Any]]:
        """(ready, details for /healthz): not ready while another node holds one of this
        node's IPs (standby); ready but degraded while Redis is unreachable, since the
        listeners keep serving."""
        connected = self._subscriber.connected
        details: dict[str, Any] = {
            "cluster": {
                "node": self.node_id,
                "redis": "ok" if connected else "unreachable",
                "problem": self._subscriber.problem,
                "frontend_ips": self._leases.details(),
                **self._epoch.details(),
            }
        }
        if not connected:
            details["status"] = "degraded"
        elif self._epoch.state != "ok":
            # Serving what it had; Redis needs a reseed (or an adopt) before it is followed.
            details["status"] = self._epoch.state
        elif self._leases.standby:
            details["status"] = "standby"
        return not self._leases.standby and not self._leases.settling, details

    async def exchange_stats(self, text: str) -> dict[str, str]:
        """Publish this node's counters (JSON ``text``) for the others, and read theirs:
        node id -> what it published last (docs/cluster.md, "Counters")."""
        await self._bus.put_stats(self.node_id, text, STATS_TTL)
        published = await self._bus.list_stats()
        published.pop(self.node_id, None)
        return published

    async def nodes(self) -> list[dict[str, Any]]:
        """The live nodes, as they registered in Redis, with their leases' ages."""
        return await self._registry.nodes()

    async def register(self) -> None:
        """Write this node's entry of ``GET /nodes`` again, now that its API address is
        known."""
        await self._registry.register()
