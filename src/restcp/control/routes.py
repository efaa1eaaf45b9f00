"""The route service: the one writer of routes, their backends and toxics, and the one that
applies them.

Whoever changes a route goes through here: the API (creates, changes, deletes of routes,
backends and toxics), the cluster (another node's provisioning request, a change notice, a
resync once a lease or Redis comes back; it drives this service as its ``Controller``), and
the node (its start, the resync timer, SIGHUP). Applying a route means: the data plane
serves it as stored, its probes follow, the workers are told (and acknowledge), the known
routes (the snapshot) record it.

How a write goes::

    create   bind ─► store ─► serve ─► probes, workers, known ─► answer
    change   (serving node alive?) ─► store ─► read back ─► apply ─► probes, workers, known
                  ─► (announce, wait for the serving node's acknowledgement) ─► answer
    notice                         read ─► apply ─► ...  (from another node, or the timer)

- Creates bind first: a route's answer carries a port that already accepts, and a create
  that fails on the socket (port taken, no port left) stores nothing, id counters included
  (docs/design.md, "Why a route is bound before it is stored"). A store write that fails
  after the bind closes the socket.
- Changes and deletes store first and then apply what the store holds: they cannot fail
  on the socket side, and a failed write (NotFound, Conflict, the store away) applies
  nothing. Reading back rather than applying the value written makes a write, a change
  notice and a resync the same step.
- One lock, held from the store's read or write to the last step of applying it: every
  step awaits, and another writer acting on what it read before would bind a port being
  bound, update a listener just stopped, or restart a route just deleted. Checks that may
  take seconds (a backend's host name resolving, another node found alive) and the wait for
  another node run outside it.
- Every write answers once applied where the route is served: here and in this node's
  workers, or, for a route another node serves, there. That node is found alive before
  anything is stored (503 "nothing was stored" otherwise), and after the write the change
  is announced to it and its acknowledgement of the version it applied waited for
  (``Placement.announce``): without one within --provision-timeout the write answers 202,
  stored, to be applied there (docs/cluster.md, "Every write through any node").
"""

from __future__ import annotations

import asyncio
import dataclasses
import socket
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from typing import Any, TypeVar

from restcp.control.backends import check_backend
from restcp.control.known import KnownRoutes
from restcp.control.placement import Placement, placement_for
from restcp.control.probes import Probes
from restcp.core import ports
from restcp.core.sni import clashes
from restcp.core.toxics import ToxicError
from restcp.dataplane import DataPlane
from restcp.errors import (
    Conflict,
    EpochMismatch,
    InvalidSpec,
    NotFound,
    NotYetApplied,
    Unavailable,
)
from restcp.model import (
    Backend,
    BackendStatus,
    Certificate,
    Route,
    RouteKey,
    RouteSettings,
    Toxic,
)
from restcp.proxy.listener import is_address_taken
from restcp.settings import Settings
from restcp.store import Store
from restcp.workers import Workers

T = TypeVar("T")


class RouteService:
    """The only writer of routes, backends and toxics (see the module's docstring for its
    rules).

    It builds its ``placement`` itself, since the cluster a shared store brings drives this
    service back (it is the cluster's ``Controller``)."""

    def __init__(
        self,
        store: Store,
        settings: Settings,
        plane: DataPlane,
        workers: Workers,
        probes: Probes,
        known: KnownRoutes,
    ) -> None:
        self.store = store
        self.settings = settings
        self.plane = plane
        self.workers = workers
        self.probes = probes
        self.known = known
        self._lock = asyncio.Lock()
        # The node's API, once it listens (the cluster lists it in GET /nodes).
        self.api_address: tuple[str, int] | None = None
        self.placement: Placement = placement_for(
            store, settings, self, lambda: len(plane.running())
        )

    def route_defaults(self) -> RouteSettings:
        return RouteSettings(
            connect_timeout=self.settings.connect_timeout,
            idle_timeout=self.settings.idle_timeout,
        )

    # -- creates: bind, then store -------------------------------------------------------

    async def create_route(
        self,
        app: str,
        frontend_ip: str | None,
        port: int | None,
        settings: RouteSettings,
        route_id: int | None = None,
    ) -> Route:
        """Bind ``port`` (None: the next free one) of ``frontend_ip`` (None: this node's
        first), store the route, serve it. ``route_id``: store it under an id another node
        reserved (cluster provisioning). A route for an IP this node does not serve is the
        placement's: another node binds it."""
        ip = frontend_ip or self.placement.default_ip()
        await self._certificates_stored(settings)
        if not self.placement.serves(ip):
            return await self.placement.create_elsewhere(
                app, ip, port, settings, reserved=route_id is not None
            )
        async with self._lock:
            await self._name_free(app, settings.name)
            port, sock = await self._bind(ip, port, settings)
            try:
                route = await self.placement.store_created(app, route_id, ip, port, settings)
            except BaseException:
                if sock is not None:
                    sock.close()  # the store refused (a conflict, unreachable): nothing left
                raise
            route = await self._served_as(route)
            await self.plane.serve(route, sock)
            # Backends of other routes pointing at the new address are refused now: their
            # probes stop too.
            await self._applied(route.key, route, {route.key, *self.plane.backends_on(port)})
        return route

    async def _name_free(self, app: str, name: str | None) -> None:
        """Conflict if another route of ``app`` has ``name`` (under the lock: two writes
        on this node cannot both take it)."""
        if name is None:
            return
        try:
            routes = await self.store.list_routes(app)
        except NotFound:  # the app's first route
            return
        for route in routes:
            if route.settings.name == name:
                raise Conflict(f"route {route.id} of app {app!r} is named {name!r} already")

    async def _bind(
        self, ip: str, port: int | None, settings: RouteSettings
    ) -> tuple[int, socket.socket | None]:
        """The port for a new route and its socket; None: the route joins the routes with
        server names that share the port already (a listener serves them here)."""
        used = await self.store.ports_in_use(ip)
        if port is not None:
            if port in used:
                if settings.sni is None:
                    raise Conflict(f"port {port} of {ip} is already used by another route")
                # Every route of an IP is created on the node that serves the IP, under
                # this lock: what this node serves there is what is stored there.
                _claimable(settings.sni, self.plane.routes_at(ip, port), None)
                probe = Route(app="", id=0, frontend_ip=ip, port=port, settings=settings)
                if self.plane.shares(probe):
                    return port, None
            try:
                return port, self.plane.bind(ip, port)
            except OSError as err:
                raise Conflict(f"port {port} of {ip} cannot be bound: {err.strerror}") from None
        lo, hi = self.settings.port_range
        cursor = await self.store.get_port_cursor(ip)
        for candidate in ports.candidates(lo, hi, lo if cursor is None else cursor, used):
            try:
                sock = self.plane.bind(ip, candidate)
            except OSError as err:
                if is_address_taken(err):
                    continue
                raise
            try:
                await self.store.set_port_cursor(ip, ports.next_cursor(lo, hi, candidate))
            except BaseException:
                sock.close()  # the store refused (unreachable, another epoch): no leak
                raise
            return candidate, sock
        raise Conflict(f"no free port left in {lo}-{hi} on {ip}")

    # -- changes: store, then apply --------------------------------------------------------

    async def update_route(
        self, key: RouteKey, edit: Callable[[RouteSettings], RouteSettings]
    ) -> Route:
        """Store ``edit`` of the route's settings (read and written under the lock)."""

        async def write() -> Route:
            route = await self.store.get_route(*key)
            settings = edit(route.settings)
            if settings.name != route.settings.name:
                await self._name_free(key[0], settings.name)
            if settings.sni != route.settings.sni:
                # Read from the store: the route may be served by another node.
                others = [
                    other
                    for other in await self.store.all_routes()
                    if (other.frontend_ip, other.port) == (route.frontend_ip, route.port)
                    and other.key != key
                ]
                _claimable(settings.sni, others, route)
            if (settings.tls, settings.backend_tls, settings.sni) != (
                route.settings.tls,
                route.settings.backend_tls,
                route.settings.sni,
            ):
                await self._certificates_stored(settings)
            _no_proxy_over_tls(settings, route.backends)
            return await self.store.update_route(*key, settings)

        return await self._change(key, write)

    async def delete_route(self, key: RouteKey) -> None:
        await self._change(key, lambda: self.store.delete_route(*key))

    async def add_backend(
        self, key: RouteKey, backend: Backend, limit: int | None = None
    ) -> Backend:
        """Attach ``backend`` (its id is ignored) if the policy allows its address, and the
        route has fewer than ``limit`` backends (counted under the lock). The store refuses
        an address another backend of the route has (DuplicateBackend), in the same write."""
        await check_backend(self.plane.refusal, backend.ip, backend.port)

        async def write() -> Backend:
            if backend.proxy_protocol in ("v1", "v2"):
                _no_proxy_over_tls((await self.store.get_route(*key)).settings, [backend])
            if limit is not None:
                route = await self.store.get_route(*key)
                if len(route.backends) >= limit:
                    raise Conflict(
                        f"route {route.id} of app {route.app!r} has {len(route.backends)} "
                        f"backends, the most --max-backends-per-route ({limit}) allows: "
                        "delete one first"
                    )
            return await self.store.add_backend(*key, backend)

        return await self._change(key, write)

    async def update_backend(
        self, key: RouteKey, backend_id: int, edit: Callable[[Backend], Backend]
    ) -> Backend:
        """Store ``edit`` of the backend (read and written under the lock), if the policy
        allows its address and no other backend of the route has it (DuplicateBackend,
        from the store)."""
        wanted = edit(_backend(await self.store.get_route(*key), backend_id))
        await check_backend(self.plane.refusal, wanted.ip, wanted.port)

        async def write() -> Backend:
            route = await self.store.get_route(*key)
            changed = edit(_backend(route, backend_id))
            _no_proxy_over_tls(route.settings, [changed])
            if (changed.ip, changed.port) != (wanted.ip, wanted.port):
                # Another write moved it meanwhile: judged again (rare: under the lock).
                await check_backend(self.plane.refusal, changed.ip, changed.port)
            return await self.store.update_backend(*key, changed)

        return await self._change(key, write)

    async def delete_backend(self, key: RouteKey, backend_id: int) -> None:
        await self._change(key, lambda: self.store.delete_backend(*key, backend_id))

    async def add_toxic(self, key: RouteKey, toxic: Toxic, limit: int | None = None) -> Toxic:
        """Append ``toxic`` (valid: core.toxics checked it) to the route's toxics, unless the
        route has one of its name (DuplicateToxic) or ``limit`` toxics already (Conflict,
        counted under the lock)."""

        async def write() -> Toxic:
            if limit is not None:
                route = await self.store.get_route(*key)
                if len(route.toxics) >= limit:
                    raise Conflict(
                        f"route {route.id} of app {route.app!r} has {len(route.toxics)} "
                        f"toxics, the most --max-toxics-per-route ({limit}) allows: "
                        "delete one first"
                    )
            return await self.store.add_toxic(*key, toxic)

        return await self._change(key, write)

    async def update_toxic(self, key: RouteKey, name: str, edit: Callable[[Toxic], Toxic]) -> Toxic:
        """Store ``edit`` of the toxic ``name`` as stored (read and written under the lock;
        it may raise ToxicError, and nothing is stored). A toxic keeps its name, type and
        stream for good: an edit that changes the type or the stream is a ToxicError
        naming the field (delete the toxic and add another instead)."""

        async def write() -> Toxic:
            current = _toxic(await self.store.get_route(*key), name)
            changed = edit(current)
            if changed.name != name:
                raise ValueError(f"an edit of toxic {name!r} renamed it {changed.name!r}")
            for field in ("type", "stream"):
                if getattr(changed, field) != getattr(current, field):
                    raise ToxicError(
                        field,
                        f"a toxic's {field} cannot change (it is {getattr(current, field)!r}): "
                        "delete it and add another",
                    )
            return await self.store.update_toxic(*key, changed)

        return await self._change(key, write)

    async def delete_toxic(self, key: RouteKey, name: str) -> None:
        await self._change(key, lambda: self.store.delete_toxic(*key, name))

    async def _change(self, key: RouteKey, write: Callable[[], Awaitable[T]]) -> T:
        """Store-then-apply: the node serving the route found alive if it is another one
        (Unavailable otherwise, before anything is stored; outside the lock, since that may
        wait for it a moment), then under the lock ``write`` and the route as stored applied
        here; then, outside the lock again, that node told, and its acknowledgement waited
        for (NotYetApplied, carrying what ``write`` returned, if it did not come within
        --provision-timeout)."""
        elsewhere = await self._served_elsewhere(key)
        async with self._lock:
            result = await write()
            route = await self._apply(key)
        if elsewhere is not None and not await self.placement.announce(key, elsewhere, route):
            raise NotYetApplied(key, elsewhere, result)
        return result

    async def _served_elsewhere(self, key: RouteKey) -> str | None:
        """The frontend IP of route ``key`` if another node serves it, once that node is
        known to be alive; None if this one does. NotFound for a route not stored."""
        if key in self.plane.running():
            return None
        ip = (await self.store.get_route(*key)).frontend_ip
        if self.placement.serves(ip):
            return None  # this node's, just not bound (its port is taken)
        await self.placement.require_server(ip)
        return ip

    # -- certificates ----------------------------------------------------------------------
    # A certificate belongs to no route, but the routes that name it are served with it:
    # replacing one is a change of each of them, applied (and in a cluster announced and
    # waited for) as any other; removing one a route names is refused.

    async def create_certificate(self, certificate: Certificate) -> None:
        """Store a new certificate (valid: core.certificates judged it); Conflict if one of
        its name exists. No route names it yet: nothing is applied."""
        async with self._lock:
            await self.store.create_certificate(certificate)

    async def put_certificate(self, certificate: Certificate) -> bool:
        """Store ``certificate`` under its name, replacing the one stored, and serve the
        routes that name it with it (new handshakes get it; open connections keep theirs);
        whether it is new. As every write of a route: Unavailable, nothing stored, if a node
        serving one of them is not alive; NotYetApplied, carrying that, if one did not
        apply it in time."""
        users = await self._users(certificate.name)
        elsewhere: dict[RouteKey, str] = {}
        for key in users:
            try:
                ip = await self._served_elsewhere(key)
            except NotFound:  # deleted meanwhile
                continue
            if ip is not None:
                elsewhere[key] = ip
        applied: dict[RouteKey, Route | None] = {}
        async with self._lock:
            try:
                await self.store.replace_certificate(certificate)
                created = False
            except NotFound:
                await self.store.create_certificate(certificate)
                created = True
            # Those that name it now (read under the lock: a route may have come since).
            for key in await self._users(certificate.name):
                try:
                    await self.store.touch_route(*key)
                except NotFound:
                    continue
                applied[key] = await self._apply(key)
        for key, ip in elsewhere.items():
            if key in applied and not await self.placement.announce(key, ip, applied[key]):
                raise NotYetApplied(key, ip, created)
        return created

    async def delete_certificate(self, name: str) -> None:
        """Remove a certificate no route names (Conflict, naming them, otherwise)."""
        async with self._lock:
            users = await self._users(name)
            if users:
                named = ", ".join(f"route {i} of app {a!r}" for a, i in users)
                raise Conflict(
                    f"certificate {name!r} is used by {named}: take it out of their tls "
                    "first (PATCH), or replace it (PUT)"
                )
            await self.store.delete_certificate(name)

    async def _users(self, name: str) -> list[RouteKey]:
        """The stored routes whose tls or backend_tls names certificate ``name``."""
        return [
            route.key
            for route in await self.store.all_routes()
            if name in route.settings.certificate_names()
        ]

    async def _certificates_stored(self, settings: RouteSettings) -> None:
        """InvalidSpec (422) if ``settings`` name a certificate not stored, or ``tls`` or
        ``backend_tls`` come with ``sni``: a shared port's listener relays the ClientHello
        it read as it came, it neither terminates TLS nor starts its own."""
        if settings.sni is not None:
            if settings.tls is not None:
                raise InvalidSpec("tls: a route terminating TLS cannot share its port by sni")
            if settings.backend_tls is not None:
                raise InvalidSpec(
                    "backend_tls: a route sharing its port by sni passes its clients' TLS "
                    "through to the backends unchanged; it cannot wrap it in TLS of its own"
                )
        names = settings.certificate_names()
        if not names:
            return
        stored = {c.name for c in await self.store.list_certificates()}
        missing = [n for n in names if n not in stored]
        if missing:
            field = (
                "backend_tls.certificate"
                if settings.tls is None or not set(missing) & set(settings.tls.certificates)
                else "tls.certificates"
            )
            raise InvalidSpec(
                f"{field}: no certificate named {', '.join(map(repr, missing))}: "
                "add it first (POST /certificates)"
            )

    async def _served_as(self, route: Route) -> Route:
        """``route`` with the certificates its settings name, as stored now: what the data
        plane serves. One removed meanwhile (by a node that did not see this route yet) is
        left out; the route's first certificate that is left is its default."""
        names = route.settings.certificate_names()
        if not names:
            return route
        found = []
        for name in names:
            try:
                found.append(await self.store.get_certificate(name))
            except NotFound:
                continue
        return dataclasses.replace(route, certificates=tuple(found))

    async def _all_served_as(self, routes: list[Route]) -> list[Route]:
        if not any(r.settings.certificate_names() for r in routes):
            return routes
        stored = {c.name: c for c in await self.store.list_certificates()}
        return [
            dataclasses.replace(
                r,
                certificates=tuple(
                    stored[n] for n in r.settings.certificate_names() if n in stored
                ),
            )
            if r.settings.certificate_names()
            else r
            for r in routes
        ]

    # -- following the store -------------------------------------------------------------

    async def sync(self, key: RouteKey) -> Route | None:
        """Apply one stored route now (another node changed it); the route as stored, None
        if it is not."""
        async with self._lock:
            return await self._apply(key)

    async def resync(self) -> None:
        """Make every listener match the store."""
        async with self._lock:
            try:
                routes = await self._all_served_as(await self.store.all_routes())
            except Unavailable as err:
                # The store cannot say (unreachable, or a Redis without this node's epoch):
                # serve on what is known, minus the frontend IPs no longer held. An epoch
                # mismatch is the cluster's to report (/healthz), not a failure.
                await self._serve_known()
                if isinstance(err, EpochMismatch):
                    self.placement.store_refused(err)
                    return
                raise
            desired = {r.key: r for r in routes if self.placement.serves(r.frontend_ip)}
            await self._serve_all(desired)
            await self.known.remember(desired, [k for k in self.known.routes if k not in desired])
        self.placement.resynced(list(self.plane.running()))

    async def serve_known(self) -> None:
        """Serve the routes known (the snapshot's, at a start without Redis) of the IPs this
        node serves."""
        async with self._lock:
            await self._serve_known()

    async def api_listening(self, address: tuple[str, int]) -> None:
        """The node's API listens on ``address``: one of the node's own addresses from now
        on, so stored backends pointing at it (checked before it existed) are refused, in
        the relays and in the probes, here and in the workers."""
        self.api_address = address
        async with self._lock:
            self.plane.api_listening(address)
            self.workers.api_listening(address)
            await self.probes.sync(self.plane.backends_on(address[1]))

    async def _apply(self, key: RouteKey) -> Route | None:
        """Serve ``key`` as stored now (under the lock); the route, None if not stored."""
        try:
            route: Route | None = await self._served_as(await self.store.get_route(*key))
        except NotFound:
            route = None
        except EpochMismatch as err:
            self.placement.store_refused(err)
            raise
        wanted = route if route is not None and self.placement.serves(route.frontend_ip) else None
        current = self.plane.running().get(key)
        await self.plane.apply({} if wanted is None else {key: wanted}, (key,))
        # A route stopped or moved frees its address: backends pointing at it may be probed
        # again.
        freed = self.plane.backends_on(current.port) if current is not None else set()
        await self._applied(key, wanted, {key, *freed})
        return route

    async def _applied(
        self, key: RouteKey, wanted: Route | None, probed: Collection[RouteKey]
    ) -> None:
        """After ``key`` changed in the data plane (``wanted``: what this node should serve
        of it): its probes (and those of ``probed``), the workers (answering once they
        applied it too) and the known routes follow."""
        await self.probes.sync(probed)
        # Under the lock, so the workers see changes in this process's order; what this
        # process serves (a port it could not bind is not the workers' either).
        self.workers.route(key, self.plane.running().get(key))
        await self.workers.settle()
        if wanted is None:
            await self.known.remember({}, [key])
        else:
            await self.known.remember({key: wanted}, [])

    async def _serve_known(self) -> None:
        await self._serve_all(
            {k: r for k, r in self.known.routes.items() if self.placement.serves(r.frontend_ip)}
        )

    async def _serve_all(self, desired: Mapping[RouteKey, Route]) -> None:
        await self.plane.apply(desired)
        await self.probes.sync()
        self.workers.routes(self.plane.running())
        await self.workers.settle()

    # -- the cluster's operator writes ---------------------------------------------------

    async def reseed(self) -> tuple[bool, dict[str, Any]]:
        """Write the routes this node knows (its snapshot) back into a Redis that lost them
        or holds another epoch; (whether the node follows Redis again, the report)."""
        async with self._lock:
            report = await self.placement.reseed(self.known)
        done = not report["conflicts"]
        if done:
            await self.resync()
        return done, report

    async def adopt(self) -> dict[str, Any]:
        """Follow Redis's state as it is, giving up the routes it does not have."""
        async with self._lock:
            report = await self.placement.adopt()
        await self.resync()
        report["routes"] = len(self.plane.running())
        return report

    # -- what the cluster asks besides (cluster.Controller) --------------------------------

    def protects(self) -> bool:
        return bool(self.known.routes) or bool(self.plane.running())

    def served(self) -> Collection[RouteKey]:
        return list(self.plane.running())

    def backend_status(self, key: RouteKey) -> Mapping[int, BackendStatus]:
        # Health as this process probes it, which the cluster writes for other nodes.
        return self.plane.backend_status(key)

    async def epoch_changed(self, epoch: str) -> None:
        await self.known.epoch_changed(epoch)


def _claimable(sni: tuple[str, ...] | None, others: list[Route], route: Route | None) -> None:
    """Conflict unless a route with server names ``sni`` (``route``, or a new one) may
    share its address with ``others``: each of them has server names, none of them ours."""
    if not others:
        return
    where = f"port {others[0].port} of {others[0].frontend_ip}"
    if sni is None:
        raise Conflict(
            f"{where} is shared by {len(others)} other routes with server names (sni): "
            "a route there must name its own"
        )
    for other in others:
        if other.settings.sni is None:
            raise Conflict(
                f"{where} is used by route {other.id} of app {other.app!r}, which has no "
                "server names (sni): only routes with server names share a port"
            )
    ours = "a new route" if route is None else "route"
    for name, first, _ in clashes(
        [*((o.key, o.settings.sni or ()) for o in others), (route.key if route else ("", 0), sni)]
    ):
        raise Conflict(
            f"server name {name!r} on {where} is claimed by route {first[1]} of app "
            f"{first[0]!r} already: {ours} may not claim it too"
        )


def _toxic(route: Route, name: str) -> Toxic:
    toxic = route.toxic(name)
    if toxic is None:
        raise NotFound(f"toxic {name!r} of route {route.id} of app {route.app!r} not found")
    return toxic


def _backend(route: Route, backend_id: int) -> Backend:
    backend = route.backend(backend_id)
    if backend is None:
        raise NotFound(f"backend {backend_id} of route {route.id} of app {route.app!r} not found")
    return backend


def _no_proxy_over_tls(settings: RouteSettings, backends: Sequence[Backend]) -> None:
    """InvalidSpec (422) if a backend of a route with ``backend_tls`` would be sent a PROXY
    header: it would go inside the TLS session, which no backend reads (docs/tls.md)."""
    if settings.backend_tls is None:
        return
    sent = [b for b in backends if b.proxy_protocol in ("v1", "v2")]
    if sent:
        raise InvalidSpec(
            "backend_tls: a route speaking TLS to its backends cannot send them a PROXY "
            f"protocol header (backend {sent[0].id or 'new'} has proxy_protocol "
            f'{sent[0].proxy_protocol!r}: set it to null or "none")'
        )
