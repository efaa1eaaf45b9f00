"""What the API asks of the node it runs in (node.py implements ``Owner``).

Reads of routes, backends, toxics, certificates and tokens go to the store directly, and so do token
writes; routes, backends, toxics and certificates are written only through the node's route service
(``Routes``), which
answers once a change is applied. The rest is what the node observes: health and load of
backends, metrics, readiness, the cluster's nodes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Protocol

from restcp.model import (
    Backend,
    BackendStatus,
    Certificate,
    Route,
    RouteKey,
    RouteSettings,
    Toxic,
)


class BackendCounters(Protocol):
    """One backend's counters as the node's processes count them (metrics.BackendSample)."""

    @property
    def backend(self) -> int: ...
    @property
    def connections_total(self) -> int: ...
    @property
    def connections_active(self) -> int: ...
    @property
    def connections_max(self) -> int: ...
    @property
    def bytes_in(self) -> int: ...
    @property
    def bytes_out(self) -> int: ...
    @property
    def connect_failures(self) -> int: ...


class RouteCounters(Protocol):
    """One served route's counters (metrics.RouteSample): refused clients by reason, and
    its backends'."""

    @property
    def app(self) -> str: ...
    @property
    def route(self) -> int: ...
    @property
    def connections_max(self) -> int: ...
    @property
    def refused(self) -> Mapping[str, int]: ...
    @property
    def backends(self) -> Sequence[BackendCounters]: ...


class Routes(Protocol):
    """The only writer of routes, backends and toxics (control/routes.py). Each write
    answers once it is applied where its route is served (a new route's port accepts, a
    deleted route's port refuses, new connections use a changed backend, a toxic meets the
    connections it is for), and changes nothing when it fails. In a cluster, a change of a
    route another node serves raises NotYetApplied, carrying what the write returned, when
    that node did not apply it in time (the API's 202), and Unavailable, having stored
    nothing, when no live node serves it."""

    def route_defaults(self) -> RouteSettings: ...

    async def create_route(
        self, app: str, frontend_ip: str | None, port: int | None, settings: RouteSettings
    ) -> Route:
        """Bind a port (the one asked for, or the next free one), then store the route;
        Provisioning if another node binds it and has not answered yet."""

    async def update_route(
        self, key: RouteKey, edit: Callable[[RouteSettings], RouteSettings]
    ) -> Route:
        """Store ``edit`` of the route's settings as stored now."""

    async def delete_route(self, key: RouteKey) -> None: ...

    async def add_backend(
        self, key: RouteKey, backend: Backend, limit: int | None = None
    ) -> Backend:
        """Attach ``backend`` under the route's next id, unless the address policy refuses
        it (Forbidden; InvalidSpec for a name that does not resolve), the route has
        ``limit`` backends already (Conflict) or another backend with its address
        (DuplicateBackend, a Conflict)."""

    async def update_backend(
        self, key: RouteKey, backend_id: int, edit: Callable[[Backend], Backend]
    ) -> Backend:
        """Store ``edit`` of the backend as stored now, unless the policy refuses it or
        another backend of the route has the address it ends up with (DuplicateBackend)."""

    async def delete_backend(self, key: RouteKey, backend_id: int) -> None: ...

    async def add_toxic(self, key: RouteKey, toxic: Toxic, limit: int | None = None) -> Toxic:
        """Append ``toxic`` to the route's toxics, unless the route has one of its name
        (DuplicateToxic, a Conflict) or ``limit`` toxics already (Conflict)."""

    async def update_toxic(self, key: RouteKey, name: str, edit: Callable[[Toxic], Toxic]) -> Toxic:
        """Store ``edit`` of the toxic as stored now; a ToxicError (``edit``'s own, or a
        change of its type or stream) stores nothing."""

    async def delete_toxic(self, key: RouteKey, name: str) -> None: ...

    async def create_certificate(self, certificate: Certificate) -> None:
        """Store a new certificate (judged valid already); Conflict if its name is taken."""

    async def put_certificate(self, certificate: Certificate) -> bool:
        """Store ``certificate``, replacing the one of its name; whether it is new."""

    async def delete_certificate(self, name: str) -> None: ...

    async def reseed(self) -> tuple[bool, dict[str, Any]]:
        """Write this node's snapshot back into the shared store: (done, report)."""

    async def adopt(self) -> dict[str, Any]:
        """Follow the shared store's state as it is."""


class Owner(Protocol):
    """The node the API runs in: its route service, and what it observes."""

    @property
    def routes(self) -> Routes: ...

    def backend_status(self, key: RouteKey) -> Mapping[int, BackendStatus]:
        """Health and load of a route's backends, by id (empty if nobody observes them)."""

    async def backend_statuses(self, route: Route) -> Mapping[int, BackendStatus]:
        """As backend_status, and for a route another node serves, the health that node
        wrote to the shared store."""

    @property
    def started_at(self) -> float:
        """Unix seconds at which the node started."""

    def samples(self) -> Iterable[RouteCounters]:
        """The counters of every route this node serves, read now."""

    def metrics_text(self) -> tuple[bytes, str]:
        """The node's metrics in the Prometheus text format, and its content type."""

    def readiness(self) -> tuple[bool, dict[str, Any]]:
        """(ready, details) for /healthz."""

    async def nodes(self) -> list[dict[str, Any]]:
        """The live nodes sharing the store (this one alone with an embedded store)."""

    @property
    def node_id(self) -> str:
        """This node's id, as ``nodes()`` lists it."""

    async def exchange_stats(self, text: Callable[[], str]) -> dict[str, str]:
        """Publish this node's route counters (JSON, made by ``text`` only in a cluster:
        alone, nobody reads them) to the other nodes of its cluster and read theirs: node
        id -> the JSON it published last ({} alone; Unavailable when the shared store is
        away)."""
