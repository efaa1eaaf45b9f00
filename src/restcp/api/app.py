"""The HTTP API on aiohttp: the seed's endpoints, byte for byte, and a few more.

Handlers validate, write to the store, then ask the owning node to apply the stored state
(``Owner.sync``) before answering, so a response means the change is live: a new route's port
is accepting, a deleted route's port refuses. Every error is an RFC 9457 problem document.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Protocol, TypeVar

from aiohttp import web
from pydantic import BaseModel, ValidationError

from restcp.api.schemas import BackendBody, BackendPatchBody, RouteBody, RouteSettingsBody
from restcp.errors import Conflict, InvalidSpec, NotFound, RestcpError, Unavailable
from restcp.model import Backend, BackendStatus, HealthCheck, Route, RouteKey, RouteSettings
from restcp.store import Store

log = logging.getLogger("restcp.api")

APP_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")
# ASCII digits only, and few enough that int() never meets Python's digit limit: str.isdigit()
# accepts "²", which int() refuses.
ID = re.compile(r"[0-9]{1,19}")
MAX_ID = 2**63 - 1
MAX_BODY = 64 * 1024

Body = TypeVar("Body", bound=BaseModel)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class Owner(Protocol):
    """The node that serves routes: binds new ones and applies stored changes."""

    def route_defaults(self) -> RouteSettings: ...

    async def create_route(
        self, app: str, frontend_ip: str | None, port: int | None, settings: RouteSettings
    ) -> Route:
        """Bind a port (the one asked for, or the next free one), then store the route."""

    async def sync(self, key: RouteKey) -> None:
        """Make the listener of ``key`` match the store now."""

    def backend_status(self, key: RouteKey) -> Mapping[int, BackendStatus]:
        """Health and load of a route's backends, by id (empty if nobody observes them)."""

    def readiness(self) -> tuple[bool, dict[str, Any]]:
        """(ready, details) for /healthz."""


# -- JSON shapes -------------------------------------------------------------------------


def backend_json(backend: Backend, status: BackendStatus | None = None) -> dict[str, Any]:
    # The seed's fields first; status fields come from the node that serves the route.
    status = status or BackendStatus()
    return {
        "ip": backend.ip,
        "port": backend.port,
        "id": backend.id,
        "weight": backend.weight,
        "state": backend.state,
        "drain_timeout": backend.drain_timeout,
        "max_connections": backend.max_connections,
        "proxy_protocol": backend.proxy_protocol,
        "health": status.health,
        "health_changed_at": status.health_changed_at,
        "health_reason": status.health_reason,
        "active_connections": status.active_connections,
    }


def route_json(route: Route, statuses: Mapping[int, BackendStatus]) -> dict[str, Any]:
    # The seed's fields first, in the seed's order; the rest after.
    settings = dataclasses.asdict(route.settings)
    return {
        "id": route.id,
        "url": route.url,
        "backends": [backend_json(b, statuses.get(b.id)) for b in route.backends],
        "app": route.app,
        "frontend_ip": route.frontend_ip,
        "port": route.port,
        **settings,
    }


def _json(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        text=json.dumps(data), status=status, content_type="application/json", headers=headers
    )


# -- errors ------------------------------------------------------------------------------

_TITLES = {
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    409: "Conflict",
    413: "Content Too Large",
    422: "Unprocessable Content",
    500: "Internal Server Error",
    503: "Service Unavailable",
}
_STATUS: dict[type[RestcpError], int] = {
    NotFound: 404,
    Conflict: 409,
    InvalidSpec: 422,
    Unavailable: 503,
}


def problem(status: int, detail: str, **extra: Any) -> web.Response:
    body = {"type": "about:blank", "title": _TITLES.get(status, "Error"), "status": status}
    body["detail"] = detail
    body.update(extra)
    return web.Response(
        text=json.dumps(body), status=status, content_type="application/problem+json"
    )


class BadRequest(Exception):
    """Raised by the parsing helpers below; carries a ready problem response."""

    def __init__(self, response: web.Response) -> None:
        super().__init__(response.text)
        self.response = response


@web.middleware
async def problems(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except BadRequest as err:
        return err.response
    except RestcpError as err:
        return problem(_STATUS.get(type(err), 500), str(err))
    except web.HTTPException as err:
        if err.status < 400:
            raise
        response = problem(err.status, err.reason)
        if err.status == 405:
            response.headers["Allow"] = err.headers.get("Allow", "")
        return response
    except Exception:
        log.exception("bug: unhandled error on %s %s", request.method, request.path)
        return problem(500, "internal error; this is a bug in restcp, please report it")


# -- request parsing ---------------------------------------------------------------------


async def parse_body(request: web.Request, model: type[Body]) -> Body:
    """The body as ``model``, whatever the Content-Type says (``curl -d`` sends a form type)."""
    raw = await request.read()
    data: Any = {}
    if raw.strip():
        try:
            data = json.loads(raw, parse_constant=_reject_constant)
        except (ValueError, UnicodeDecodeError) as err:
            raise BadRequest(problem(400, f"request body is not valid JSON: {err}")) from None
        except RecursionError:
            # Nesting deep enough to exhaust the parser's stack fits in MAX_BODY.
            raise BadRequest(problem(400, "request body is nested too deeply")) from None
    if not isinstance(data, dict):
        raise BadRequest(problem(400, "request body must be a JSON object"))
    try:
        return model.model_validate(data)
    except ValidationError as err:
        errors = [
            {"field": ".".join(str(p) for p in e["loc"]) or "(body)", "message": e["msg"]}
            for e in err.errors(include_url=False, include_input=False)
        ]
        detail = "; ".join(f"{e['field']}: {e['message']}" for e in errors)
        raise BadRequest(problem(422, f"invalid request body: {detail}", errors=errors)) from None


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not allowed")


def path_app(request: web.Request) -> str:
    app = request.match_info["app"]
    if not APP_ID.fullmatch(app):
        raise BadRequest(problem(400, f"invalid app id {app!r}: use 1-64 of A-Z a-z 0-9 . _ -"))
    return app


def path_id(request: web.Request, name: str, what: str) -> int:
    text = request.match_info[name]
    if not ID.fullmatch(text) or not 1 <= int(text) <= MAX_ID:
        raise NotFound(f"{what} {text!r} not found")
    return int(text)


# -- handlers ----------------------------------------------------------------------------


class Api:
    def __init__(self, store: Store, owner: Owner) -> None:
        self.store = store
        self.owner = owner

    async def healthz(self, request: web.Request) -> web.Response:
        ready, details = self.owner.readiness()
        return _json({"status": "ok" if ready else "starting", **details}, 200 if ready else 503)

    async def list_apps(self, request: web.Request) -> web.Response:
        apps = await self.store.list_apps()
        return _json([{"app": a.app, "routes": a.routes} for a in apps])

    async def list_routes(self, request: web.Request) -> web.Response:
        routes = await self.store.list_routes(path_app(request))
        return _json([self._route_json(r) for r in routes])

    async def create_route(self, request: web.Request) -> web.Response:
        app = path_app(request)
        body = await parse_body(request, RouteBody)
        settings = _merge(self.owner.route_defaults(), body)
        route = await self.owner.create_route(app, body.frontend_ip, body.port, settings)
        location = f"/apps/{app}/routes/{route.id}"
        return _json(self._route_json(route), 201, {"Location": location})

    async def get_route(self, request: web.Request) -> web.Response:
        app, route_id = path_app(request), path_id(request, "route", "route")
        return _json(self._route_json(await self.store.get_route(app, route_id)))

    async def patch_route(self, request: web.Request) -> web.Response:
        app, route_id = path_app(request), path_id(request, "route", "route")
        body = await parse_body(request, RouteSettingsBody)
        route = await self.store.get_route(app, route_id)
        route = await self.store.update_route(app, route_id, _merge(route.settings, body))
        await self.owner.sync(route.key)
        return _json(self._route_json(route))

    async def delete_route(self, request: web.Request) -> web.Response:
        app, route_id = path_app(request), path_id(request, "route", "route")
        await self.store.delete_route(app, route_id)
        await self.owner.sync((app, route_id))
        return web.Response(status=204)

    async def list_backends(self, request: web.Request) -> web.Response:
        route = await self._route(request)
        statuses = self.owner.backend_status(route.key)
        return _json([backend_json(b, statuses.get(b.id)) for b in route.backends])

    async def add_backend(self, request: web.Request) -> web.Response:
        route = await self._route(request)
        body = await parse_body(request, BackendBody)
        backend = await self.store.add_backend(route.app, route.id, Backend(0, **body.model_dump()))
        await self.owner.sync(route.key)
        location = f"/apps/{route.app}/routes/{route.id}/backends/{backend.id}"
        return _json({"id": backend.id}, 201, {"Location": location})

    async def get_backend(self, request: web.Request) -> web.Response:
        route = await self._route(request)
        backend = self._backend(route, request)
        return _json(backend_json(backend, self.owner.backend_status(route.key).get(backend.id)))

    async def replace_backend(self, request: web.Request) -> web.Response:
        route = await self._route(request)
        backend_id = self._backend(route, request).id
        body = await parse_body(request, BackendBody)
        backend = await self.store.update_backend(
            route.app, route.id, Backend(backend_id, **body.model_dump())
        )
        await self.owner.sync(route.key)
        return _json(backend_json(backend, self.owner.backend_status(route.key).get(backend_id)))

    async def patch_backend(self, request: web.Request) -> web.Response:
        route = await self._route(request)
        current = self._backend(route, request)
        body = await parse_body(request, BackendPatchBody)
        backend = await self.store.update_backend(
            route.app, route.id, current.replace(**body.given())
        )
        await self.owner.sync(route.key)
        return _json(backend_json(backend, self.owner.backend_status(route.key).get(backend.id)))

    async def delete_backend(self, request: web.Request) -> web.Response:
        route = await self._route(request)
        backend_id = self._backend(route, request).id
        await self.store.delete_backend(route.app, route.id, backend_id)
        await self.owner.sync(route.key)
        return web.Response(status=204)

    def _route_json(self, route: Route) -> dict[str, Any]:
        return route_json(route, self.owner.backend_status(route.key))

    async def _route(self, request: web.Request) -> Route:
        app, route_id = path_app(request), path_id(request, "route", "route")
        return await self.store.get_route(app, route_id)

    def _backend(self, route: Route, request: web.Request) -> Backend:
        backend_id = path_id(request, "backend", "backend")
        backend = route.backend(backend_id)
        if backend is None:
            raise NotFound(
                f"backend {backend_id} of route {route.id} of app {route.app!r} not found"
            )
        return backend


def _merge(settings: RouteSettings, body: RouteSettingsBody) -> RouteSettings:
    changes = body.given()
    changes.pop("port", None)
    changes.pop("frontend_ip", None)
    check = changes.get("health_check")
    if check is not None:
        changes["health_check"] = HealthCheck(**check.model_dump())
    return settings.replace(**changes)


def build_app(store: Store, owner: Owner) -> web.Application:
    api = Api(store, owner)
    app = web.Application(middlewares=[problems], client_max_size=MAX_BODY)
    routes = "/apps/{app}/routes"
    route = routes + "/{route}"
    backends = route + "/backends"
    backend = backends + "/{backend}"
    app.router.add_get("/healthz", api.healthz)
    app.router.add_get("/apps", api.list_apps)
    app.router.add_get(routes, api.list_routes)
    app.router.add_put(routes, api.create_route)
    app.router.add_post(routes, api.create_route)
    app.router.add_get(route, api.get_route)
    app.router.add_patch(route, api.patch_route)
    app.router.add_delete(route, api.delete_route)
    app.router.add_get(backends, api.list_backends)
    app.router.add_put(backends, api.add_backend)
    app.router.add_post(backends, api.add_backend)
    app.router.add_get(backend, api.get_backend)
    app.router.add_post(backend, api.replace_backend)
    app.router.add_put(backend, api.replace_backend)
    app.router.add_patch(backend, api.patch_backend)
    app.router.add_delete(backend, api.delete_backend)
    return app
