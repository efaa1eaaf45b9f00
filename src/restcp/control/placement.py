"""Where a route is served: by this node alone, or by whichever node of the cluster holds
its frontend IP's lease.

The route service asks the same questions either way (does this node serve an IP; where
does a route for another IP go; who must hear of a change), and so does the node (start,
readiness, the nodes list). ``LocalPlacement`` answers them for an embedded store: the node
serves every IP it is configured for, and nobody else needs telling. ``ClusterPlacement``
answers them with the ``Cluster`` (cluster.py) for a shared store.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from typing import Any, Protocol

from restcp.cluster import Cluster, Controller, SharedStore
from restcp.control.known import KnownRoutes
from restcp.errors import Conflict, EpochMismatch, InvalidSpec, Unavailable
from restcp.model import BackendStatus, Route, RouteKey, RouteSettings, format_host
from restcp.settings import Settings
from restcp.store import Store


class Placement(Protocol):
    """Which frontend IPs this node serves, and how routes and changes reach the node that
    serves theirs; and the cluster role's lifecycle (nothing to do for a node alone)."""

    def serves(self, ip: str) -> bool:
        """Whether this node serves ``ip`` now (in a cluster: under its lease)."""

    def default_ip(self) -> str:
        """The frontend IP of a route created without one."""

    async def create_elsewhere(
        self, app: str, ip: str, port: int | None, settings: RouteSettings, reserved: bool
    ) -> Route:
        """A new route for an IP this node does not serve (``reserved``: asked by another
        node, under an id it reserved)."""

    async def store_created(
        self,
        app: str,
        route_id: int | None,
        ip: str,
        port: int,
        settings: RouteSettings,
    ) -> Route:
        """Store a route this node has bound (``route_id``: one another node reserved)."""

    async def require_server(self, ip: str) -> None:
        """Raise Unavailable ("nothing was stored") unless a live node serves ``ip``, an IP
        this node does not serve: checked before a change of one of its routes is stored."""

    async def announce(self, key: RouteKey, ip: str, route: Route | None) -> bool:
        """Tell the node that serves ``ip``, another one, that route ``key`` changed
        (``route``: as stored after the change; None: deleted), and wait for it to apply
        it: whether it did within --provision-timeout. Never raises: the change is stored,
        and that node applies it at the latest at its next resync."""

    def store_refused(self, err: EpochMismatch) -> None:
        """The store holds another cluster epoch than this node's, or none."""

    def resynced(self, keys: Collection[RouteKey]) -> None:
        """A full resync served ``keys``."""

    def health_changed(self, key: RouteKey) -> None:
        """A backend of ``key``, served here, went up or down."""

    async def remote_statuses(self, key: RouteKey) -> Mapping[int, BackendStatus] | None:
        """Health of a route this node does not serve, as its node published it; None if
        nobody else could serve it (then it is nobody's)."""

    async def reseed(self, known: KnownRoutes) -> dict[str, Any]: ...

    async def adopt(self) -> dict[str, Any]: ...

    async def start(self, epoch: str | None) -> bool:
        """Take up the role (``epoch``: the one the snapshot remembers); whether the store
        can be followed now (False: serve the known routes meanwhile)."""

    async def register(self) -> None:
        """The API's address is known: publish it."""

    async def stop(self) -> None: ...

    async def release(self) -> None:
        """The listeners are closed: give the IPs up for a successor."""

    def readiness(self) -> tuple[bool, dict[str, Any]]: ...

    async def nodes(self) -> list[dict[str, Any]]: ...

    @property
    def node_id(self) -> str:
        """This node's id in ``nodes()``."""

    async def exchange_stats(self, text: Callable[[], str]) -> dict[str, str]:
        """Publish this node's counters (JSON, made by ``text`` only if they are published)
        and read the other nodes': node id -> theirs (Unavailable without the shared store)."""


def is_shared(store: Store) -> bool:
    """Whether nodes share ``store`` (Redis): then they form a cluster."""
    return isinstance(store, SharedStore)


def placement_for(
    store: Store, settings: Settings, controller: Controller, serving: Callable[[], int]
) -> Placement:
    """A cluster's when the store is shared (Redis), else this node alone. The cluster
    drives ``controller``; ``serving`` counts the routes served, for ``GET /nodes``."""
    cluster = Cluster.for_store(store, settings, controller, serving)
    if cluster is None:
        return LocalPlacement(store, settings, controller, serving)
    return ClusterPlacement(store, settings, cluster)


class LocalPlacement:
    """An embedded store: this node serves every frontend IP it is configured for, and
    nobody else needs to hear of a change."""

    def __init__(
        self, store: Store, settings: Settings, controller: Controller, serving: Callable[[], int]
    ) -> None:
        self._store = store
        self._ips = settings.frontend_ips
        self._controller = controller
        self._serving = serving

    def serves(self, ip: str) -> bool:
        return ip in self._ips

    def default_ip(self) -> str:
        return self._ips[0]

    async def create_elsewhere(
        self, app: str, ip: str, port: int | None, settings: RouteSettings, reserved: bool
    ) -> Route:
        served = ", ".join(self._ips)
        raise InvalidSpec(f"frontend_ip {ip} is not served by this node (it serves {served})")

    async def store_created(
        self, app: str, route_id: int | None, ip: str, port: int, settings: RouteSettings
    ) -> Route:
        return await self._store.create_route(app, ip, port, settings)

    async def require_server(self, ip: str) -> None:
        pass  # a route of an IP this node is not configured for (any more): nobody's

    async def announce(self, key: RouteKey, ip: str, route: Route | None) -> bool:
        return True  # nobody else serves anything

    def store_refused(self, err: EpochMismatch) -> None:
        pass  # an embedded store has no epoch

    def resynced(self, keys: Collection[RouteKey]) -> None:
        pass

    def health_changed(self, key: RouteKey) -> None:
        pass

    async def remote_statuses(self, key: RouteKey) -> Mapping[int, BackendStatus] | None:
        return None

    async def reseed(self, known: KnownRoutes) -> dict[str, Any]:
        raise Conflict("reseed is for a cluster on Redis: this node's store is embedded")

    async def adopt(self) -> dict[str, Any]:
        raise Conflict("adopt is for a cluster on Redis: this node's store is embedded")

    async def start(self, epoch: str | None) -> bool:
        return True

    async def register(self) -> None:
        pass

    async def stop(self) -> None:
        pass

    async def release(self) -> None:
        pass

    def readiness(self) -> tuple[bool, dict[str, Any]]:
        return True, {}

    @property
    def node_id(self) -> str:
        return "local"

    async def exchange_stats(self, text: Callable[[], str]) -> dict[str, str]:
        # Alone: every route is this node's.
        return {}

    async def nodes(self) -> list[dict[str, Any]]:
        api = self._controller.api_address
        return [
            {
                "id": "local",
                "api": None if api is None else f"http://{format_host(api[0])}:{api[1]}/",
                "frontend_ips": list(self._ips),
                "leases": [],
                "routes_serving": self._serving(),
                "started_at": None,
                "last_seen": 0.0,
            }
        ]


class ClusterPlacement:
    """A shared store (Redis): the ``Cluster`` says which IPs this node holds, hands routes
    for other IPs to their holders, and carries change notices to them."""

    def __init__(self, store: Store, settings: Settings, cluster: Cluster) -> None:
        self._store = store
        self._ips = settings.frontend_ips
        self.cluster = cluster

    def serves(self, ip: str) -> bool:
        # Only under the IP's lease, so that two live nodes never serve one IP.
        return ip in self._ips and self.cluster.holds(ip)

    def default_ip(self) -> str:
        return self.cluster.default_ip() or self._ips[0]

    async def create_elsewhere(
        self, app: str, ip: str, port: int | None, settings: RouteSettings, reserved: bool
    ) -> Route:
        if reserved:
            raise Unavailable(f"this node does not serve frontend_ip {ip} (any more)")
        # Only the node serving an IP can bind its ports: hand the route over.
        return await self.cluster.provision(app, ip, port, settings)

    async def store_created(
        self, app: str, route_id: int | None, ip: str, port: int, settings: RouteSettings
    ) -> Route:
        if route_id is None:
            return await self._store.create_route(app, ip, port, settings)
        return await self.cluster.store_route(app, route_id, ip, port, settings)

    async def require_server(self, ip: str) -> None:
        await self.cluster.require_server(ip)

    async def announce(self, key: RouteKey, ip: str, route: Route | None) -> bool:
        return await self.cluster.changed(key, ip, route)

    def store_refused(self, err: EpochMismatch) -> None:
        self.cluster.mismatch(err)

    def resynced(self, keys: Collection[RouteKey]) -> None:
        # Health Redis lacks (lost, or written while it was away) is written again.
        self.cluster.health.mark(keys)

    def health_changed(self, key: RouteKey) -> None:
        self.cluster.health_changed(key)

    async def remote_statuses(self, key: RouteKey) -> Mapping[int, BackendStatus] | None:
        try:
            health = await self.cluster.remote_health(key)
        except Unavailable:
            return {}
        return {b: BackendStatus(health="up" if h == "up" else "down") for b, h in health.items()}

    async def reseed(self, known: KnownRoutes) -> dict[str, Any]:
        data = await known.counters()
        return await self.cluster.reseed(
            list(known.routes.values()), data.route_counters, data.backend_counters
        )

    async def adopt(self) -> dict[str, Any]:
        return await self.cluster.adopt()

    async def start(self, epoch: str | None) -> bool:
        # Without Redis, a node that has been part of a cluster serves its snapshot.
        return await self.cluster.start(epoch, offline=epoch is not None)

    async def register(self) -> None:
        await self.cluster.register()

    async def stop(self) -> None:
        await self.cluster.stop()

    async def release(self) -> None:
        await self.cluster.release()

    def readiness(self) -> tuple[bool, dict[str, Any]]:
        return self.cluster.readiness()

    async def nodes(self) -> list[dict[str, Any]]:
        return await self.cluster.nodes()

    @property
    def node_id(self) -> str:
        return self.cluster.node_id

    async def exchange_stats(self, text: Callable[[], str]) -> dict[str, str]:
        return await self.cluster.exchange_stats(text())
