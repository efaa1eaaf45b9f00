"""The API's resources as objects with behaviour, each method a plan (plan.py) written once
and run by either client (operation.py).

    Api             healthz, metrics, openapi, nodes, apps, reseed, adopt; routes(app), tokens(app),
                    certificates
    Routes          an app's routes: list, create, get, [id]
    Route           refresh, update, delete, wait; backends, toxics; host, port, url;
                    toxic(type, **attributes), down() for a with block
    Backends        a route's backends: list, add, get, [id]
    Backend         refresh, replace, update, delete; drained(), disabled() for a with block
    Toxics          a route's toxics: list, add, get, update, remove, [name]
    Toxic           refresh, update, remove
    Tokens          an app's tokens: create, list, delete
    Certificates    the TLS certificates: list, get, add, put, remove

A ``Route``, ``Backend`` or ``Toxic`` is a handle (its path) with ``info``, the API's own
model of it as last read (``None`` for a handle made by ``[id]``, which sends nothing).
Methods that change it read the answer back into ``info`` and return the handle. In a
cluster, a change the node serving the route had not applied when the API answered (202)
raises ``NotYetApplied``, carrying what the method would have returned (plan.change,
applied).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Sequence
from typing import Any, TypeVar, Unpack
from urllib.parse import quote

from restcp.api.schemas import (
    AdoptOut,
    AppOut,
    BackendCreated,
    BackendOut,
    CertificateOut,
    HealthOut,
    NodeOut,
    ReseedOut,
    RouteOut,
    TokenCreated,
    TokenOut,
)
from restcp.client.errors import NotFound, Provisioning, Unavailable, not_yet_applied
from restcp.client.fields import BackendChanges, BackendFields, RouteFields
from restcp.client.metrics import Metrics
from restcp.client.operation import R, Resource, contextual, operation
from restcp.client.plan import Applied, Plan, Reply, applied, change, pause, request
from restcp.client.toxics import Toxic, Toxics
from restcp.model import AdminState, Stream, ToxicType

# How often Route.wait asks whether a provisioned route is served yet.
WAIT_INTERVAL = 0.1


def _app_path(app: str) -> str:
    # Quoted whole: an app id with a slash is the server's to refuse (400), not a path.
    return f"/apps/{quote(app, safe='')}"


class Api(Resource[R]):
    """One node's API: its health and metrics, and the cluster's apps, nodes and state."""

    @operation
    def healthz(self) -> Plan[HealthOut]:
        """Readiness; a node not ready (503) answers too: read its ``status``."""
        reply = yield from request("GET", "/healthz", ok=(200, 503))
        return reply.model(HealthOut)

    @operation
    def metrics(self) -> Plan[Metrics]:
        """The node's metrics, parsed from the Prometheus text format."""
        reply = yield from request("GET", "/metrics")
        return Metrics.parse(reply.response.text)

    @operation
    def openapi(self) -> Plan[dict[str, Any]]:
        """The API's OpenAPI 3.1 document."""
        reply = yield from request("GET", "/openapi.json")
        document: dict[str, Any] = reply.json()
        return document

    @operation
    def nodes(self) -> Plan[list[NodeOut]]:
        """The cluster's live nodes (with an embedded store, this one)."""
        reply = yield from request("GET", "/nodes")
        return reply.models(NodeOut)

    @operation
    def apps(self) -> Plan[list[AppOut]]:
        """Every app that ever had a route, with its route count."""
        reply = yield from request("GET", "/apps")
        return reply.models(AppOut)

    @operation
    def reseed(self) -> Plan[ReseedOut]:
        """Write this node's snapshot back into Redis (docs/cluster.md). Conflicts are a
        ``Conflict`` whose ``body`` holds the report."""
        reply = yield from request("POST", "/cluster/reseed")
        return reply.model(ReseedOut)

    @operation
    def adopt(self) -> Plan[AdoptOut]:
        """Follow Redis's state as it is, giving up routes it lacks (docs/cluster.md)."""
        reply = yield from request("POST", "/cluster/adopt")
        return reply.model(AdoptOut)

    def routes(self, app: str) -> Routes[R]:
        """The routes of ``app`` (nothing is sent until a method is called)."""
        return Routes(self._transport, app)

    def tokens(self, app: str) -> Tokens[R]:
        """The tokens of ``app``."""
        return Tokens(self._transport, app)

    @property
    def certificates(self) -> Certificates[R]:
        """The TLS certificates (docs/tls.md; the admin token only)."""
        return Certificates(self._transport)


class Routes(Resource[R]):
    """The routes of one app."""

    def __init__(self, transport: R, app: str) -> None:
        super().__init__(transport)
        self.app = app
        self.path = _app_path(app) + "/routes"

    def __getitem__(self, route_id: int) -> Route[R]:
        """A handle on route ``route_id``, without asking the API."""
        return Route(self._transport, self.app, route_id)

    def __repr__(self) -> str:
        return f"<Routes of app {self.app!r}>"

    @operation
    def list(self) -> Plan[list[Route[R]]]:
        reply = yield from request("GET", self.path)
        return [self._route(info) for info in reply.models(RouteOut)]

    @operation
    def get(self, route_id: int) -> Plan[Route[R]]:
        return (yield from self[route_id]._read())

    @operation
    def create(
        self,
        *,
        port: int | None = None,
        frontend_ip: str | None = None,
        **settings: Unpack[RouteFields],
    ) -> Plan[Route[R]]:
        """A new route, bound and accepting: on ``port`` or the next free one of the node's
        range, on ``frontend_ip`` or the node's first. A route handed to another node that
        has not bound it yet raises ``Provisioning``."""
        body: dict[str, Any] = dict(settings)
        if port is not None:
            body["port"] = port
        if frontend_ip is not None:
            body["frontend_ip"] = frontend_ip
        reply = yield from request("PUT", self.path, body, ok=(201, 202))
        if reply.status == 202:
            pending = reply.json()
            raise Provisioning(
                f"route {pending['id']} of app {self.app!r} is being provisioned by the node "
                f"serving {pending['frontend_ip']}",
                route=self[int(pending["id"])],
                frontend_ip=str(pending["frontend_ip"]),
                status=202,
                body=pending,
                request=f"PUT {self.path}",
            )
        return self._route(reply.model(RouteOut))

    def _route(self, info: RouteOut) -> Route[R]:
        return Route(self._transport, self.app, info.id, info)


class Route(Resource[R]):
    """One route: a frontend address relaying to its backends, through its toxics."""

    def __init__(self, transport: R, app: str, route_id: int, info: RouteOut | None = None):
        super().__init__(transport)
        self.app = app
        self.id = route_id
        self.path = f"{_app_path(app)}/routes/{route_id}"
        self.info = info

    def __repr__(self) -> str:
        where = "" if self.info is None else f" at {self.info.url}"
        return f"<Route {self.id} of app {self.app!r}{where}>"

    def _known(self) -> RouteOut:
        if self.info is None:
            raise LookupError(f"{self!r} has not been read: call refresh() first")
        return self.info

    @property
    def host(self) -> str:
        """The IP clients connect to (the route's frontend IP)."""
        return self._known().frontend_ip

    @property
    def port(self) -> int:
        """The port clients connect to."""
        return self._known().port

    @property
    def url(self) -> str:
        """``tcp://HOST:PORT/`` (IPv6 in brackets)."""
        return self._known().url

    @property
    def backends(self) -> Backends[R]:
        return Backends(self._transport, self)

    @property
    def toxics(self) -> Toxics[R]:
        return Toxics(self._transport, self)

    @operation
    def refresh(self) -> Plan[Route[R]]:
        """Read the route again (``info``), with its backends' health and load."""
        return (yield from self._read())

    @operation
    def update(self, **settings: Unpack[RouteFields]) -> Plan[Route[R]]:
        """Change the settings given, live; the others keep their values."""
        reply = yield from self._patch(dict(settings))
        return applied(reply, self)

    @operation
    def delete(self) -> Plan[None]:
        """Destroy the route: its port refuses new clients once this returns."""
        reply = yield from change("DELETE", self.path, ok=204)
        return applied(reply, None)

    @operation
    def wait(self, timeout: float = 60.0) -> Plan[Route[R]]:
        """Poll until the route is served (a ``Provisioning`` route appears once its node
        has bound it); ``Unavailable`` if it is not within ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                return (yield from self._read())
            except NotFound:
                if time.monotonic() >= deadline:
                    raise Unavailable(f"{self!r} was not served within {timeout:g}s") from None
            yield from pause(WAIT_INTERVAL)

    @contextual
    def toxic(
        self,
        /,
        type: ToxicType,
        *,
        name: str | None = None,
        stream: Stream = "downstream",
        toxicity: float = 1.0,
        clients: Sequence[str] = (),
        **attributes: int,
    ) -> Plan[Applied[Toxic[R]]]:
        """For a ``with`` block: a toxic on the route (docs/toxics.md), applied to its open
        connections and every new one; removed at the end of the block."""
        toxic, reply = yield from self.toxics._add(
            type, name, stream, toxicity, clients, attributes
        )
        return (yield from _held(toxic, reply, toxic._undo()))

    @contextual
    def down(self) -> Plan[Applied[Route[R]]]:
        """For a ``with`` block: the route is down (``enabled`` false): its port refuses new
        clients and its open connections are closed. It is as it was at the end of the
        block."""
        before = (yield from self._read()).info
        assert before is not None
        reply = yield from self._patch({"enabled": False})
        return (yield from _held(self, reply, self._restore({"enabled": before.enabled})))

    def _restore(self, fields: dict[str, Any]) -> Plan[None]:
        # Deleted meanwhile: nothing is left to undo. An undo not applied yet (202) is
        # stored: the serving node applies it when it can.
        with contextlib.suppress(NotFound):
            yield from self._patch(fields)

    def _read(self) -> Plan[Route[R]]:
        reply = yield from request("GET", self.path)
        self.info = reply.model(RouteOut)
        return self

    def _patch(self, fields: dict[str, Any]) -> Plan[Reply]:
        reply = yield from change("PATCH", self.path, fields)
        self.info = reply.model(RouteOut)
        return reply


class Backends(Resource[R]):
    """The backends of one route."""

    def __init__(self, transport: R, route: Route[R]) -> None:
        super().__init__(transport)
        self.route = route
        self.path = route.path + "/backends"

    def __getitem__(self, backend_id: int) -> Backend[R]:
        """A handle on backend ``backend_id``, without asking the API."""
        return Backend(self._transport, self.route, backend_id)

    def __repr__(self) -> str:
        return f"<Backends of {self.route!r}>"

    @operation
    def list(self) -> Plan[list[Backend[R]]]:
        reply = yield from request("GET", self.path)
        return [self._backend(info) for info in reply.models(BackendOut)]

    @operation
    def get(self, backend_id: int) -> Plan[Backend[R]]:
        return (yield from self[backend_id]._read())

    @operation
    def add(self, ip: str, port: int, **fields: Unpack[BackendFields]) -> Plan[Backend[R]]:
        """Attach a backend (an IP literal or a host name) and read it back."""
        reply = yield from change("PUT", self.path, {"ip": ip, "port": port, **fields}, ok=201)
        backend = yield from self[reply.model(BackendCreated).id]._read()
        return applied(reply, backend)

    def _backend(self, info: BackendOut) -> Backend[R]:
        return Backend(self._transport, self.route, info.id, info)


class Backend(Resource[R]):
    """One backend of a route."""

    def __init__(
        self, transport: R, route: Route[R], backend_id: int, info: BackendOut | None = None
    ) -> None:
        super().__init__(transport)
        self.route = route
        self.id = backend_id
        self.path = f"{route.path}/backends/{backend_id}"
        self.info = info

    def __repr__(self) -> str:
        where = "" if self.info is None else f" {self.info.ip}:{self.info.port}"
        return f"<Backend {self.id}{where} of route {self.route.id} of app {self.route.app!r}>"

    @operation
    def refresh(self) -> Plan[Backend[R]]:
        """Read the backend again (``info``), with its health and load."""
        return (yield from self._read())

    @operation
    def replace(self, ip: str, port: int, **fields: Unpack[BackendFields]) -> Plan[Backend[R]]:
        """A new address and settings; the fields not given take their defaults."""
        reply = yield from change("PUT", self.path, {"ip": ip, "port": port, **fields})
        self.info = reply.model(BackendOut)
        return applied(reply, self)

    @operation
    def update(self, **changes: Unpack[BackendChanges]) -> Plan[Backend[R]]:
        """Change the fields given, live; the others keep their values."""
        reply = yield from self._patch(dict(changes))
        return applied(reply, self)

    @operation
    def delete(self) -> Plan[None]:
        """Detach the backend: new clients go to the others, open connections finish."""
        reply = yield from change("DELETE", self.path, ok=204)
        return applied(reply, None)

    @contextual
    def drained(self, drain_timeout: float | None = None) -> Plan[Applied[Backend[R]]]:
        """For a ``with`` block: the backend takes no new clients; its open connections
        finish (or are closed ``drain_timeout`` seconds in). Its state before comes back
        at the end of the block."""
        return (yield from self._hold("drain", drain_timeout))

    @contextual
    def disabled(self) -> Plan[Applied[Backend[R]]]:
        """For a ``with`` block: the backend takes no clients and its open connections are
        closed at once. Its state before comes back at the end of the block."""
        return (yield from self._hold("disabled", None))

    def _hold(self, state: AdminState, drain_timeout: float | None) -> Plan[Applied[Backend[R]]]:
        before = (yield from self._read()).info
        assert before is not None
        reply = yield from self._patch({"state": state, "drain_timeout": drain_timeout})
        undo = self._restore({"state": before.state, "drain_timeout": before.drain_timeout})
        return (yield from _held(self, reply, undo))

    def _restore(self, fields: dict[str, Any]) -> Plan[None]:
        # Deleted meanwhile, with its route perhaps: nothing is left to undo. An undo the
        # node serving the route has not applied yet (202) is stored: it applies it when it
        # can, and raising it would hide what ended the block.
        with contextlib.suppress(NotFound):
            yield from self._patch(fields)

    def _read(self) -> Plan[Backend[R]]:
        reply = yield from request("GET", self.path)
        self.info = reply.model(BackendOut)
        return self

    def _patch(self, fields: dict[str, Any]) -> Plan[Reply]:
        reply = yield from change("PATCH", self.path, fields)
        self.info = reply.model(BackendOut)
        return reply


class Tokens(Resource[R]):
    """The tokens of one app (the admin token only may manage them)."""

    def __init__(self, transport: R, app: str) -> None:
        super().__init__(transport)
        self.app = app
        self.path = _app_path(app) + "/tokens"

    def __repr__(self) -> str:
        return f"<Tokens of app {self.app!r}>"

    @operation
    def create(self) -> Plan[TokenCreated]:
        """A new token of the app; its ``token`` is shown this once."""
        reply = yield from request("POST", self.path, ok=(201,))
        return reply.model(TokenCreated)

    @operation
    def list(self) -> Plan[list[TokenOut]]:
        reply = yield from request("GET", self.path)
        return reply.models(TokenOut)

    @operation
    def delete(self, token_id: int) -> Plan[None]:
        """Revoke a token at once."""
        yield from request("DELETE", f"{self.path}/{token_id}", ok=(204,))


class Certificates(Resource[R]):
    """The node's TLS certificates, by name: the API never sends a key back."""

    path = "/certificates"

    def __repr__(self) -> str:
        return "<Certificates>"

    @operation
    def list(self) -> Plan[list[CertificateOut]]:
        reply = yield from request("GET", self.path)
        return reply.models(CertificateOut)

    @operation
    def get(self, name: str) -> Plan[CertificateOut]:
        reply = yield from request("GET", self._named(name))
        return reply.model(CertificateOut)

    @operation
    def add(self, name: str, cert: str, key: str) -> Plan[CertificateOut]:
        """A new certificate: ``cert`` the PEM chain (the leaf first), ``key`` its PEM key;
        ``Conflict`` if one of the name exists."""
        body = {"name": name, "cert": cert, "key": key}
        reply = yield from request("POST", self.path, body, ok=(201,))
        return reply.model(CertificateOut)

    @operation
    def put(self, name: str, cert: str, key: str) -> Plan[CertificateOut]:
        """Replace the certificate ``name`` (or add it): new handshakes use it at once, open
        connections keep theirs. In a cluster, ``NotYetApplied`` (carrying the certificate)
        if a node serving a route that names it did not apply it in time."""
        body = {"cert": cert, "key": key}
        reply = yield from request("PUT", self._named(name), body, ok=(200, 201, 202))
        answer = {k: v for k, v in reply.json().items() if k != "status"}
        return applied(reply, CertificateOut.model_validate(answer))

    @operation
    def remove(self, name: str) -> Plan[None]:
        yield from request("DELETE", self._named(name), ok=(204,))

    def _named(self, name: str) -> str:
        return f"{self.path}/{quote(name, safe='')}"


H = TypeVar("H")


def _held(handle: H, reply: Reply, undo: Plan[None]) -> Plan[Applied[H]]:
    """What a ``with`` block holds: ``handle`` and the ``undo`` of the change ``reply``
    answered. A change stored but not applied where the route is served (202) would run
    the block without what it asked for: it is undone (stored alike), then raised."""
    if reply.status == 202:
        yield from undo
        raise not_yet_applied(reply.response, reply.json(), handle)
    return Applied(handle, undo)
