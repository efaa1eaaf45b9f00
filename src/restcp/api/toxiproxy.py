"""toxiproxy's REST API on a second address (``--toxiproxy-api``), so that toxiproxy's own
clients drive restcp unchanged (docs/toxiproxy.md).

Its proxies are the named routes of one app (``--toxiproxy-app``); api/toxiproxy_json.py
holds what its bodies mean and the shapes it answers. Like the restcp API, it reads the
store and writes through the node's route service (``Routes``), which answers once a
change is applied; it is another door to the same writer, not a second one. ``Proxies``
holds one lock over its own writes, so that a name is checked and taken, or a proxy
replaced, in one step (the route service refuses a name taken through the other door).

A toxiproxy proxy maps onto more than one restcp write (a route, then its backend), and
toxiproxy's clients see one: ``create`` removes the route again if a later step fails, and
moving a proxy's ``listen`` creates its new route under the name before the old one goes.
toxiproxy's API asks for no token: it is served on loopback only unless ``--insecure``,
and refuses browsers as toxiproxy does (a ``User-Agent`` starting ``Mozilla/``).

In a cluster a write of a route another node serves may be stored but not yet applied
there (NotYetApplied: restcp's API answers 202). toxiproxy's clients take any 2xx as done,
so here it is a 503 that says so (``_Pending``); a request of several writes stores them
all first, so what it leaves stored is what it asked for.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Any, TypeVar, cast

from aiohttp import web

from restcp import __version__
from restcp.api.app import REQUEST_TIMEOUT, BadRequest, Handler, read_body
from restcp.api.owner import Routes
from restcp.api.toxiproxy_json import (
    BAD_BODY,
    PROXY_EXISTS,
    PROXY_NOT_FOUND,
    TOXIC_EXISTS,
    TOXIC_NOT_FOUND,
    ProxySpec,
    ToxiproxyError,
    Upstream,
    changed_toxic,
    decode,
    new_toxic,
    populate_specs,
    proxy_change,
    proxy_json,
    proxy_spec,
    toxic_json,
    toxics_json,
)
from restcp.errors import Conflict, Forbidden, InvalidSpec, NotFound, NotYetApplied, RestcpError
from restcp.model import Backend, Route, Toxic
from restcp.store import Store

log = logging.getLogger("restcp.toxiproxy")

T = TypeVar("T")

# Large enough for /populate with a few thousand proxies.
MAX_BODY = 1024 * 1024
TOXIPROXY_VERSION = f"restcp {__version__}"


@dataclass(frozen=True, slots=True)
class ToxiproxyConfig:
    """What the toxiproxy API is told by the node: the app whose routes are its proxies,
    the node's frontend IPs (a ``listen`` names one of them) and the quotas of the restcp
    API."""

    app: str = "toxiproxy"
    frontend_ips: tuple[str, ...] = ("127.0.0.1",)
    max_routes_per_app: int = 1000
    max_toxics_per_route: int = 32
    request_timeout: float = 30.0


class _Pending:
    """The writes of one request that the node serving their route has not applied yet
    (NotYetApplied): each is stored, so the request's next steps go on; ``check`` then
    answers 503, in toxiproxy's shape, saying the change is stored and will be applied."""

    __slots__ = ("first",)

    def __init__(self) -> None:
        self.first: NotYetApplied | None = None

    async def __call__(self, write: Awaitable[T]) -> T:
        try:
            return await write
        except NotYetApplied as err:
            if self.first is None:
                self.first = err
            return cast(T, err.result)

    def check(self) -> None:
        if self.first is not None:
            raise ToxiproxyError(
                503,
                f"stored, not applied yet: {self.first} (it will without another request)",
            )


class Proxies:
    """toxiproxy's proxies and toxics as the named routes of ``config.app``."""

    def __init__(self, store: Store, routes: Routes, config: ToxiproxyConfig) -> None:
        self.store = store
        self.routes = routes
        self.config = config
        self._lock = asyncio.Lock()

    # -- reads ---------------------------------------------------------------------------

    async def all(self) -> list[Route]:
        try:
            routes = await self.store.list_routes(self.config.app)
        except NotFound:  # the app has no route yet
            return []
        return [r for r in routes if r.settings.name]

    async def get(self, name: str) -> Route:
        for route in await self.all():
            if route.settings.name == name:
                return route
        raise ToxiproxyError(404, PROXY_NOT_FOUND)

    async def toxic(self, name: str, toxic: str) -> tuple[Route, Toxic]:
        route = await self.get(name)
        found = route.toxic(toxic)
        if found is None:
            raise ToxiproxyError(404, TOXIC_NOT_FOUND)
        return route, found

    # -- proxies -------------------------------------------------------------------------

    async def create(self, spec: ProxySpec) -> Route:
        async with self._lock:
            if any(r.settings.name == spec.name for r in await self.all()):
                raise ToxiproxyError(409, PROXY_EXISTS)
            pending = _Pending()
            route = await self._create(spec, (), pending)
            pending.check()
            return route

    async def update(self, name: str, data: Any) -> Route:
        async with self._lock:
            route = await self.get(name)
            listen, upstream, enabled = proxy_change(data, route)
            pending = _Pending()
            if listen is not None and not listen.matches(route, self.config.frontend_ips):
                # toxiproxy restarts the proxy on its new address, toxics and all.
                spec = ProxySpec(name, listen, upstream or _upstream(route), route.settings.enabled)
                route = await self._replace(route, spec, route.toxics, pending)
            elif upstream is not None and str(upstream) != _upstream_text(route):
                await self._set_upstream(route, upstream, pending)
            if enabled != route.settings.enabled:
                await pending(
                    self.routes.update_route(
                        route.key, lambda settings: settings.replace(enabled=enabled)
                    )
                )
            pending.check()
            return await self.get(name)

    async def delete(self, name: str) -> None:
        async with self._lock:
            route = await self.get(name)
            pending = _Pending()
            await pending(self.routes.delete_route(route.key))
            pending.check()

    async def reset(self) -> None:
        """Every proxy enabled, every toxic removed."""
        async with self._lock:
            pending = _Pending()
            for route in await self.all():
                if not route.settings.enabled:
                    await pending(
                        self.routes.update_route(
                            route.key, lambda settings: settings.replace(enabled=True)
                        )
                    )
                for toxic in route.toxics:
                    await pending(self.routes.delete_toxic(route.key, toxic.name))
            pending.check()

    async def populate(self, specs: list[ProxySpec]) -> tuple[list[Route], ToxiproxyError | None]:
        """Create each proxy, or replace one of its name that listens or relays elsewhere
        (a fresh proxy, without toxics, as toxiproxy's); one that matches is kept as it is,
        toxics and all. On the first failure: the proxies done so far, and the error."""
        done: list[Route] = []
        async with self._lock:
            for spec in specs:
                try:
                    done.append(await self._populate_one(spec))
                except ToxiproxyError as err:
                    return done, err
                except RestcpError as err:
                    return done, _translate(err)
        return done, None

    async def _populate_one(self, spec: ProxySpec) -> Route:
        existing = next((r for r in await self.all() if r.settings.name == spec.name), None)
        if existing is not None and (
            spec.listen.matches(existing, self.config.frontend_ips)
            and str(spec.upstream) == _upstream_text(existing)
        ):
            return existing
        pending = _Pending()
        if existing is None:
            route = await self._create(spec, (), pending)
        else:
            route = await self._replace(existing, spec, (), pending)
        pending.check()
        return route

    # -- toxics --------------------------------------------------------------------------

    async def add_toxic(self, name: str, data: Any) -> Toxic:
        async with self._lock:
            route = await self.get(name)
            toxic = new_toxic(data)
            if route.toxic(toxic.name) is not None:
                raise ToxiproxyError(409, TOXIC_EXISTS)
            pending = _Pending()
            added = await pending(
                self.routes.add_toxic(route.key, toxic, self.config.max_toxics_per_route)
            )
            pending.check()
            return added

    async def update_toxic(self, name: str, toxic_name: str, data: Any) -> Toxic:
        async with self._lock:
            route, toxic = await self.toxic(name, toxic_name)
            pending = _Pending()
            changed = await pending(
                self.routes.update_toxic(
                    route.key, toxic.name, lambda stored: changed_toxic(data, stored)
                )
            )
            pending.check()
            return changed

    async def delete_toxic(self, name: str, toxic_name: str) -> None:
        async with self._lock:
            route, toxic = await self.toxic(name, toxic_name)
            pending = _Pending()
            await pending(self.routes.delete_toxic(route.key, toxic.name))
            pending.check()

    # -- the writes a proxy is made of ---------------------------------------------------

    async def _create(self, spec: ProxySpec, toxics: tuple[Toxic, ...], pending: _Pending) -> Route:
        """A route named ``spec.name`` with its upstream as its backend (and ``toxics``); if
        a step after the route fails, the route is removed again."""
        app = self.config.app
        count = next((a.routes for a in await self.store.list_apps() if a.app == app), 0)
        if count >= self.config.max_routes_per_app:
            raise Conflict(
                f"app {app!r} has {count} routes, the most --max-routes-per-app "
                f"({self.config.max_routes_per_app}) allows: delete a proxy first"
            )
        settings = self.routes.route_defaults().replace(name=spec.name, enabled=spec.enabled)
        ip = spec.listen.ip(self.config.frontend_ips)
        route = await self.routes.create_route(app, ip, spec.listen.port or None, settings)
        try:
            await pending(
                self.routes.add_backend(
                    route.key, Backend(0, spec.upstream.host, spec.upstream.port)
                )
            )
            for toxic in toxics:
                await pending(self.routes.add_toxic(route.key, toxic))
        except BaseException:
            await asyncio.shield(pending(self.routes.delete_route(route.key)))
            raise
        return await self.store.get_route(*route.key)

    async def _replace(
        self, old: Route, spec: ProxySpec, toxics: tuple[Toxic, ...], pending: _Pending
    ) -> Route:
        """A new route for ``spec`` in place of ``old``: ``old`` gives up its name, the new
        one is created (``old`` takes its name back if that fails), then ``old`` goes."""
        name = old.settings.name
        await pending(
            self.routes.update_route(old.key, lambda settings: settings.replace(name=None))
        )
        try:
            route = await self._create(spec, toxics, pending)
        except BaseException:
            await asyncio.shield(
                pending(
                    self.routes.update_route(old.key, lambda settings: settings.replace(name=name))
                )
            )
            raise
        await pending(self.routes.delete_route(old.key))
        return route

    async def _set_upstream(self, route: Route, upstream: Upstream, pending: _Pending) -> None:
        if not route.backends:
            await pending(
                self.routes.add_backend(route.key, Backend(0, upstream.host, upstream.port))
            )
            return
        await pending(
            self.routes.update_backend(
                route.key,
                route.backends[0].id,
                lambda backend: backend.replace(ip=upstream.host, port=upstream.port),
            )
        )


def _upstream(route: Route) -> Upstream:
    backend = route.backends[0] if route.backends else None
    if backend is None:
        raise ToxiproxyError(400, "the proxy has no upstream: give one")
    return Upstream(backend.ip, backend.port)


def _upstream_text(route: Route) -> str:
    return str(_upstream(route)) if route.backends else ""


# -- HTTP ----------------------------------------------------------------------------------

# restcp's refusals in toxiproxy's words: its clients know 400, 404 and 409 (the Python
# client raises on those three only), so what restcp refuses as bad input is a 400.
_STATUS: dict[type[RestcpError], int] = {
    NotFound: 404,
    Conflict: 409,
    InvalidSpec: 400,
    Forbidden: 400,
}


def _translate(err: RestcpError) -> ToxiproxyError:
    status = next((_STATUS[t] for t in type(err).__mro__ if t in _STATUS), 503)
    return ToxiproxyError(status, str(err))


def _json(data: Any, status: int = 200) -> web.Response:
    return web.json_response(data, status=status)


def _error(err: ToxiproxyError) -> web.Response:
    return _json(err.body(), err.status)


@web.middleware
async def _errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    if request.headers.get("User-Agent", "").startswith("Mozilla/"):
        # toxiproxy's guard: a page a browser shows must not drive this token-less API.
        return _error(ToxiproxyError(403, "User agent not allowed"))
    try:
        return await handler(request)
    except ToxiproxyError as err:
        return _error(err)
    except RestcpError as err:
        return _error(_translate(err))
    except web.HTTPException as err:
        if err.status < 400:
            raise
        return _error(ToxiproxyError(err.status, err.reason.lower()))
    except Exception:
        log.exception("bug: unhandled error on %s %s", request.method, request.path)
        return _error(ToxiproxyError(500, "internal error; this is a bug in restcp"))


class _Handlers:
    """One handler per route of toxiproxy's api.go."""

    def __init__(self, proxies: Proxies) -> None:
        self.proxies = proxies

    async def _body(self, request: web.Request) -> Any:
        try:
            raw = await read_body(request)
        except BadRequest as err:
            # A body cut off, or not sent in time: restcp's words in toxiproxy's shape.
            detail = json.loads(err.response.text or "{}").get("detail", "")
            raise ToxiproxyError(err.response.status, f"{BAD_BODY}: {detail}") from None
        return decode(raw)

    async def version(self, request: web.Request) -> web.Response:
        return _json({"version": TOXIPROXY_VERSION})

    async def reset(self, request: web.Request) -> web.Response:
        await self.proxies.reset()
        return web.Response(status=204)

    async def populate(self, request: web.Request) -> web.Response:
        specs = populate_specs(await self._body(request))
        done, err = await self.proxies.populate(specs)
        body: dict[str, Any] = {"proxies": [proxy_json(r) for r in done]}
        if err is not None:
            return _json({**err.body(), **body}, err.status)
        return _json(body, 201)

    async def list_proxies(self, request: web.Request) -> web.Response:
        routes = await self.proxies.all()
        return _json({r.settings.name: proxy_json(r) for r in routes})

    async def create_proxy(self, request: web.Request) -> web.Response:
        route = await self.proxies.create(proxy_spec(await self._body(request)))
        return _json(proxy_json(route), 201)

    async def get_proxy(self, request: web.Request) -> web.Response:
        return _json(proxy_json(await self.proxies.get(request.match_info["proxy"])))

    async def update_proxy(self, request: web.Request) -> web.Response:
        name = request.match_info["proxy"]
        await self.proxies.get(name)  # 404 before the body is judged, as toxiproxy's
        route = await self.proxies.update(name, await self._body(request))
        return _json(proxy_json(route))

    async def delete_proxy(self, request: web.Request) -> web.Response:
        await self.proxies.delete(request.match_info["proxy"])
        return web.Response(status=204)

    async def list_toxics(self, request: web.Request) -> web.Response:
        return _json(toxics_json(await self.proxies.get(request.match_info["proxy"])))

    async def create_toxic(self, request: web.Request) -> web.Response:
        name = request.match_info["proxy"]
        await self.proxies.get(name)
        toxic = await self.proxies.add_toxic(name, await self._body(request))
        # 200, not 201: toxiproxy's answer.
        return _json(toxic_json(toxic))

    async def get_toxic(self, request: web.Request) -> web.Response:
        _, toxic = await self.proxies.toxic(
            request.match_info["proxy"], request.match_info["toxic"]
        )
        return _json(toxic_json(toxic))

    async def update_toxic(self, request: web.Request) -> web.Response:
        name, toxic_name = request.match_info["proxy"], request.match_info["toxic"]
        await self.proxies.toxic(name, toxic_name)
        toxic = await self.proxies.update_toxic(name, toxic_name, await self._body(request))
        return _json(toxic_json(toxic))

    async def delete_toxic(self, request: web.Request) -> web.Response:
        await self.proxies.delete_toxic(request.match_info["proxy"], request.match_info["toxic"])
        return web.Response(status=204)


# (path, methods, handler): api.go's routes.
_ROUTES: tuple[tuple[str, tuple[str, ...], str], ...] = (
    ("/reset", ("POST",), "reset"),
    ("/proxies", ("GET",), "list_proxies"),
    ("/proxies", ("POST",), "create_proxy"),
    ("/populate", ("POST",), "populate"),
    ("/proxies/{proxy}", ("GET",), "get_proxy"),
    ("/proxies/{proxy}", ("POST", "PATCH"), "update_proxy"),
    ("/proxies/{proxy}", ("DELETE",), "delete_proxy"),
    ("/proxies/{proxy}/toxics", ("GET",), "list_toxics"),
    ("/proxies/{proxy}/toxics", ("POST",), "create_toxic"),
    ("/proxies/{proxy}/toxics/{toxic}", ("GET",), "get_toxic"),
    ("/proxies/{proxy}/toxics/{toxic}", ("POST", "PATCH"), "update_toxic"),
    ("/proxies/{proxy}/toxics/{toxic}", ("DELETE",), "delete_toxic"),
    ("/version", ("GET",), "version"),
)


def build_toxiproxy_app(proxies: Proxies) -> web.Application:
    app = web.Application(middlewares=[_errors], client_max_size=MAX_BODY)
    app[REQUEST_TIMEOUT] = proxies.config.request_timeout
    handlers = _Handlers(proxies)
    for path, methods, name in _ROUTES:
        handler: Handler = getattr(handlers, name)
        for method in methods:
            app.router.add_route(method, path, handler)
    return app
