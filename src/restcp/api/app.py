"""The HTTP API on aiohttp: the seed's endpoints, byte for byte, and a few more.

Handlers validate, read the store, and write routes, backends and toxics through the node's
route service (``Owner.routes``), which answers once the change is applied, so a response means
the change is live: a new route's port is accepting, a deleted route's port refuses. Tokens
are written to the store directly. Every error is an RFC 9457 problem document.

Which endpoints exist, and who may call each, is the table of api/endpoints.py; tokens and the
browser checks run as middleware before a handler (api/auth.py). What aiohttp answers before
any middleware (requests it cannot parse) is answered in api/server.py.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import re
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from datetime import UTC, datetime
from http import HTTPStatus
from importlib import resources
from typing import Any, TypeVar, cast

from aiohttp import HttpVersion11, web
from aiohttp.web import RequestPayloadError
from pydantic import BaseModel, ValidationError

from restcp import __version__
from restcp.api import events
from restcp.api.auth import (
    ENDPOINTS,
    PRINCIPAL,
    ApiConfig,
    Principal,
    Refused,
    authenticator,
    guard,
    hash_token,
)
from restcp.api.endpoints import ENDPOINTS as TABLE
from restcp.api.endpoints import Endpoint
from restcp.api.events import View
from restcp.api.history import RateRing
from restcp.api.openapi import build_spec
from restcp.api.owner import Owner
from restcp.api.schemas import (
    APP_ID_RULE,
    BackendBody,
    BackendPatchBody,
    CertificateBody,
    CertificatePutBody,
    RouteBody,
    RouteSettingsBody,
    TokenBody,
    is_app_id,
)
from restcp.api.stats import StatsHistory, node_totals, ring_rates
from restcp.api.toxics import ToxicBody, ToxicPatchBody
from restcp.core.certificates import CertificateError, check_ca_bundle, describe, inspect
from restcp.core.toxics import ToxicError
from restcp.errors import (
    Conflict,
    EpochMismatch,
    Forbidden,
    InvalidSpec,
    NotFound,
    NotYetApplied,
    Provisioning,
    RestcpError,
    Unavailable,
)
from restcp.model import (
    Backend,
    BackendStatus,
    BackendTls,
    Certificate,
    HealthCheck,
    Route,
    RouteKey,
    RouteSettings,
    TlsSettings,
    Toxic,
)
from restcp.store import Store
from restcp.tasks import cancel_and_wait

log = logging.getLogger("restcp.api")

# ASCII digits only, and few enough that int() never meets Python's digit limit: str.isdigit()
# accepts "²", which int() refuses.
ID = re.compile(r"[0-9]{1,19}")
MAX_ID = 2**63 - 1
MAX_BODY = 64 * 1024

# Streams of one scope closer together than this (seconds) share one view of the routes.
SHARED = 0.5
# How often the sampler reads the counters into the rate ring and, in a cluster, publishes
# them and reads the other nodes' (Api._sample).
SAMPLE_INTERVAL = 1.0

# The Server header of every answer: not aiohttp's, which names its version and Python's.
SERVER = "restcp"
# How long a client may take to send a request's body (and its head: api/server.py).
REQUEST_TIMEOUT = web.AppKey("request_timeout", float)

Body = TypeVar("Body", bound=BaseModel)
T = TypeVar("T")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


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
        "replaced": [
            {"ip": r.ip, "port": r.port, "active_connections": r.active_connections}
            for r in status.replaced
        ],
        "last_check": None
        if status.checked_at is None
        else {"at": status.checked_at, "ok": bool(status.check_ok), "reason": status.check_reason},
    }


def toxic_json(toxic: Toxic) -> dict[str, Any]:
    return {
        "name": toxic.name,
        "type": toxic.type,
        "stream": toxic.stream,
        "toxicity": toxic.toxicity,
        "attributes": dict(toxic.attributes),
        "clients": list(toxic.clients),
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
        "toxics": [toxic_json(t) for t in route.toxics],
    }


def certificate_json(certificate: Certificate) -> dict[str, Any]:
    """A certificate as the API shows it: never its key."""
    info = describe(certificate.cert)
    return {
        "name": certificate.name,
        "names": list(info.names),
        "subject": info.subject,
        "issuer": info.issuer,
        "not_before": _iso(info.not_before),
        "not_after": _iso(info.not_after),
        "fingerprint_sha256": info.fingerprint_sha256,
        "chain": info.chain,
        "cert": certificate.cert,
    }


def _iso(moment: datetime) -> str:
    return moment.isoformat(timespec="seconds").replace("+00:00", "Z")


def dumps(data: Any) -> str:
    """A JSON answer's body; the newline puts a terminal's prompt back on a line of its own."""
    return json.dumps(data) + "\n"


def _json(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        text=dumps(data), status=status, content_type="application/json", headers=headers
    )


# -- errors ------------------------------------------------------------------------------

_TITLES = {
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    409: "Conflict",
    413: "Content Too Large",
    422: "Unprocessable Content",
    500: "Internal Server Error",
    503: "Service Unavailable",
}
_STATUS: dict[type[RestcpError], int] = {
    NotFound: 404,
    Forbidden: 403,
    Conflict: 409,
    InvalidSpec: 422,
    Unavailable: 503,
    EpochMismatch: 503,
}


def problem(status: int, detail: str, **extra: Any) -> web.Response:
    title = _TITLES.get(status) or HTTPStatus(status).phrase
    body = {"type": "about:blank", "title": title, "status": status}
    body["detail"] = detail
    body.update(extra)
    return web.Response(text=dumps(body), status=status, content_type="application/problem+json")


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
    except Refused as err:
        response = problem(err.status, err.detail)
        response.headers.update(err.headers)
        return response
    except (ToxicError, CertificateError) as err:
        # What core.toxics refuses in a toxic's body (or a change it may not make), and
        # what core.certificates finds wrong with a certificate.
        errors = [{"field": err.field, "message": err.message}]
        return problem(422, f"invalid request body: {err}", errors=errors)
    except RestcpError as err:
        # The status of the nearest class listed: DuplicateBackend is a Conflict.
        status = next((_STATUS[t] for t in type(err).__mro__ if t in _STATUS), 500)
        return problem(status, str(err))
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
    raw = await read_body(request)
    data: Any = {}
    # No body is {} (the seed's `curl -XPUT`); whitespace alone is no JSON text.
    if raw:
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


async def read_body(request: web.Request) -> bytes:
    """The whole body, within the request timeout. A client that breaks off its body, or sends
    a body that does not parse, made a mistake: it gets a 4xx (if it is still there), and the
    log a line without a traceback, not a report of a bug."""
    try:
        async with asyncio.timeout(request.app[REQUEST_TIMEOUT]):
            return await request.read()
    except TimeoutError:
        log.info("refused a request from %s: its body was not sent in time", request.remote)
        response = problem(408, "the request body did not arrive within --api-request-timeout")
        response.force_close()
        raise BadRequest(response) from None
    except RequestPayloadError:
        log.info("refused a request from %s: its body does not parse", request.remote)
        raise BadRequest(
            problem(400, "the body does not match its Content-Length or Transfer-Encoding")
        ) from None
    except ConnectionResetError:
        # Nobody is left to answer: the response is only there to end the handler.
        log.debug("%s closed its connection before its request body was complete", request.remote)
        raise BadRequest(
            problem(400, "the connection closed before the body was complete")
        ) from None


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not allowed")


def path_app(request: web.Request) -> str:
    app = request.match_info["app"]
    if not is_app_id(app):
        raise BadRequest(problem(400, f"invalid app id {app!r}: use {APP_ID_RULE}"))
    return app


def path_id(request: web.Request, name: str, what: str) -> int:
    text = request.match_info[name]
    if not ID.fullmatch(text) or not 1 <= int(text) <= MAX_ID:
        raise NotFound(f"{what} {text!r} not found")
    return int(text)


# -- handlers ----------------------------------------------------------------------------


class Api:
    """The API's handlers, one method per row of endpoints.py.

    They validate (schemas.py), read the store, and hand every write of a route or a backend
    to the node's route service (``owner.routes``), so an answer means the change is served;
    apps, tokens and the cluster commands are theirs alone.
    """

    def __init__(
        self,
        store: Store,
        owner: Owner,
        config: ApiConfig,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.owner = owner
        self.config = config
        self.clock = clock
        # Held from counting an app's routes to creating one, so that concurrent requests
        # cannot all pass the quota check before any of them creates (a create handed to
        # another node is not under the route service's lock). Backends are counted by the
        # route service, under its lock.
        self._quota = asyncio.Lock()
        self._spec = dumps(build_spec(config.auth_on, config.frontend_ips))
        self.history = StatsHistory(lambda: owner.samples())
        # The sampler's own readings: a reader's GET /stats must not be handed one the
        # sampler took up to a second ago (a route created since would be missing).
        self._sampled = StatsHistory(lambda: owner.samples())
        # Five minutes of each route's rates, a sample a second (api/history.py).
        self.ring = RateRing()
        # The stats of the routes other nodes of the cluster serve, as they published them
        # at the last sample, each naming its node.
        self.elsewhere: dict[RouteKey, dict[str, Any]] = {}
        # Set when the API shuts down: event streams end, so they never hold a stopping node.
        self.closing = asyncio.Event()
        # The last view of each scope the streams show (an app, or None: every app).
        self._views: dict[str | None, tuple[float, View]] = {}

    async def dashboard(self, request: web.Request) -> web.Response:
        return _asset("index.html")

    async def dashboard_asset(self, request: web.Request) -> web.Response:
        return _asset(request.match_info["asset"])

    async def stats(self, request: web.Request) -> web.Response:
        return _json(self._stats(None))

    async def app_stats(self, request: web.Request) -> web.Response:
        return _json(self._stats(path_app(request)))

    async def events(self, request: web.Request) -> web.StreamResponse:
        return await self._stream(request, None)

    async def app_events(self, request: web.Request) -> web.StreamResponse:
        return await self._stream(request, path_app(request))

    async def route_stats_history(self, request: web.Request) -> web.Response:
        app, route_id = path_app(request), path_id(request, "route", "route")
        await self.store.get_route(app, route_id)  # NotFound: 404
        return _json(
            {"app": app, "id": route_id, "interval": SAMPLE_INTERVAL}
            | self.ring.series((app, route_id))
        )

    def _local(
        self, app: str | None, history: StatsHistory | None = None
    ) -> tuple[dict[RouteKey, dict[str, Any]], bool]:
        """The stats of the routes this node serves (of ``app``'s), each naming this node,
        and whether they have rates yet."""
        routes, measured = (history or self.history).routes_json(app)
        node_id = self.owner.node_id
        for shown in routes.values():
            shown["node"] = node_id
        return routes, measured

    def _everywhere(
        self, local: Mapping[RouteKey, dict[str, Any]], app: str | None
    ) -> dict[RouteKey, dict[str, Any]]:
        """``local`` and the routes other nodes serve (of ``app``'s), as they published them."""
        shown = {k: v for k, v in self.elsewhere.items() if app is None or k[0] == app}
        shown.update(local)
        return shown

    async def _sample(self) -> None:
        """One sample: read this node's counters and record every route's rates in the ring
        (the other nodes' as they published them last), then publish this node's to the
        other nodes of a cluster and read theirs for the next sample."""
        local, _ = self._local(None, self._sampled)
        self.ring.record(
            self.clock(),
            {key: ring_rates(shown) for key, shown in self._everywhere(local, None).items()},
        )
        try:
            # Bounded: a Redis that does not answer must not hold up the next sample.
            async with asyncio.timeout(SAMPLE_INTERVAL):
                published = await self.owner.exchange_stats(
                    lambda: json.dumps(list(local.values()))
                )
        except (Unavailable, TimeoutError):
            # Redis is away: the other nodes' counters are unknown until it is back.
            published = {}
        elsewhere: dict[RouteKey, dict[str, Any]] = {}
        for node_id, text in sorted(published.items()):
            try:
                for shown in json.loads(text):
                    shown["node"] = node_id
                    ring_rates(shown)  # it has what the ring keeps
                    elsewhere[(str(shown["app"]), int(shown["id"]))] = shown
            except (ValueError, TypeError, KeyError, AttributeError):
                log.warning("node %s published counters this node cannot read", node_id)
        self.elsewhere = elsewhere

    async def _sample_forever(self) -> None:
        loop = asyncio.get_running_loop()
        next_at = loop.time()
        while True:
            try:
                await self._sample()
            except Exception:
                # A bug: say so, and keep the dashboard's charts going.
                log.exception("bug: taking a sample of the counters failed")
            # On a fixed beat, so that samples stay a second apart however long one took.
            next_at = max(next_at + SAMPLE_INTERVAL, loop.time())
            await asyncio.sleep(next_at - loop.time())

    def _stats(self, app: str | None) -> dict[str, Any]:
        local, measured = self._local(app)
        routes = self._everywhere(local, app)
        listed = [routes[key] for key in sorted(routes)]
        return {"node": self._node_json(list(local.values()), measured), "routes": listed}

    def _node_json(self, routes: list[dict[str, Any]], measured: bool) -> dict[str, Any]:
        ready, details = self.owner.readiness()
        started = self.owner.started_at
        return {
            "version": __version__,
            "started_at": started,
            "uptime": round(max(0.0, self.clock() - started), 3),
            # As /healthz says it (ok, degraded, standby, ...).
            "status": details.get("status", "ok" if ready else "starting"),
            "routes": len(routes),
            **node_totals(routes, measured),
        }

    async def _stream(self, request: web.Request, app: str | None) -> web.StreamResponse:
        accept = request.headers.get("Accept", "")
        if "text/event-stream" not in accept:
            return problem(
                406,
                "this endpoint streams Server-Sent Events: send 'Accept: text/event-stream' "
                "(GET /stats answers once, as JSON)",
            )
        principal: Principal = request[PRINCIPAL]
        admin_token = self.config.admin_token_sha256

        async def view() -> View:
            return await self._view(app)

        async def allowed() -> bool:
            # A stream outlives its request's check: revoking its token, or rotating the
            # admin token, ends it within a second.
            if principal.token_id is not None and principal.app is not None:
                tokens = await self.store.list_tokens(principal.app)
                return any(t.id == principal.token_id for t in tokens)
            return self.config.admin_token_sha256 == admin_token

        return await events.stream(request, view, allowed, self.closing)

    async def _view(self, app: str | None) -> View:
        """What a stream of ``app``'s routes (every app's: None) shows now. Streams of one
        scope share a view taken less than SHARED seconds ago: ten open dashboards cost
        the node one reading of the store a second, not ten."""
        now = time.monotonic()
        for scope in [k for k, (at, _) in self._views.items() if now - at > 5 * SHARED]:
            del self._views[scope]
        cached = self._views.get(app)
        if cached is not None and now - cached[0] < SHARED:
            return cached[1]
        if app is None:
            stored = await self.store.all_routes()
        else:
            try:
                stored = await self.store.list_routes(app)
            except NotFound:
                stored = []
        local, measured = self._local(app)
        stats = self._everywhere(local, app)
        routes = {}
        for route in sorted(stored, key=lambda r: r.key):
            shown = self._route_json(route)
            # null: served by no node whose counters this node has (none live, Redis away).
            shown["stats"] = stats.get(route.key)
            routes[f"{route.app}/{route.id}"] = shown
        node = self._node_json(list(local.values()), measured)
        if app is None:
            node["nodes"] = await self.owner.nodes()
        view = (node, routes)
        self._views[app] = (now, view)
        return view

    async def openapi(self, request: web.Request) -> web.Response:
        return web.Response(text=self._spec, content_type="application/json")

    async def metrics(self, request: web.Request) -> web.Response:
        body, content_type = self.owner.metrics_text()
        return web.Response(body=body, headers={"Content-Type": content_type})

    async def healthz(self, request: web.Request) -> web.Response:
        ready, details = self.owner.readiness()
        body = {"status": "ok" if ready else "starting", **details}
        principal: Principal | None = request.get(PRINCIPAL)
        if principal is None or not principal.is_admin:
            # Open to anyone: which apps have which routes, the cluster's node ids, frontend
            # IPs and Redis errors (which name its address) are not theirs to see.
            body.pop("unbound", None)
            body.pop("cluster", None)
            body.pop("workers", None)
        return _json(body, 200 if ready else 503)

    async def nodes(self, request: web.Request) -> web.Response:
        return _json(await self.owner.nodes())

    async def reseed(self, request: web.Request) -> web.Response:
        done, report = await self.owner.routes.reseed()
        if not done:
            detail = (
                f"{len(report['conflicts'])} routes conflict with what Redis holds: not "
                "written, and the node keeps serving its snapshot; remove or change them "
                "in Redis and reseed again, or adopt Redis's state"
            )
            return problem(409, detail, **report)
        return _json(report)

    async def adopt(self, request: web.Request) -> web.Response:
        return _json(await self.owner.routes.adopt())

    async def list_apps(self, request: web.Request) -> web.Response:
        apps = await self.store.list_apps()
        return _json([{"app": a.app, "routes": a.routes} for a in apps])

    async def list_routes(self, request: web.Request) -> web.Response:
        routes = await self.store.list_routes(path_app(request))
        return _json([self._route_json(r) for r in routes])

    async def create_route(self, request: web.Request) -> web.Response:
        app = path_app(request)
        body = await parse_body(request, RouteBody)
        settings = _merge(self.owner.routes.route_defaults(), body)
        async with self._quota:
            limit = self.config.max_routes_per_app
            count = next((a.routes for a in await self.store.list_apps() if a.app == app), 0)
            if count >= limit:
                raise Conflict(
                    f"app {app!r} has {count} routes, the most --max-routes-per-app "
                    f"({limit}) allows: delete one first"
                )
            try:
                route = await self.owner.routes.create_route(
                    app, body.frontend_ip, body.port, settings
                )
            except Provisioning as pending:
                # Handed to another node that has not answered yet: the route appears here.
                body_202 = {
                    "id": pending.route_id,
                    "app": app,
                    "frontend_ip": pending.frontend_ip,
                    "status": "provisioning",
                }
                location = f"/apps/{app}/routes/{pending.route_id}"
                return _json(body_202, 202, {"Location": location})
        location = f"/apps/{app}/routes/{route.id}"
        return _json(self._route_json(route), 201, {"Location": location})

    async def get_route(self, request: web.Request) -> web.Response:
        app, route_id = path_app(request), path_id(request, "route", "route")
        route = await self.store.get_route(app, route_id)
        return _json(route_json(route, await self.owner.backend_statuses(route)))

    async def patch_route(self, request: web.Request) -> web.Response:
        app, route_id = path_app(request), path_id(request, "route", "route")
        body = await parse_body(request, RouteSettingsBody)
        route, applied = await _written(
            self.owner.routes.update_route((app, route_id), lambda s: _merge(s, body))
        )
        return _answer(self._route_json(route), 200, applied)

    async def delete_route(self, request: web.Request) -> web.Response:
        app, route_id = path_app(request), path_id(request, "route", "route")
        _, applied = await _written(self.owner.routes.delete_route((app, route_id)))
        return _answer({"id": route_id, "app": app}, 204, applied)

    async def list_backends(self, request: web.Request) -> web.Response:
        route = await self._route(request)
        statuses = await self.owner.backend_statuses(route)
        return _json([backend_json(b, statuses.get(b.id)) for b in route.backends])

    async def add_backend(self, request: web.Request) -> web.Response:
        route = await self._route(request)
        body = await parse_body(request, BackendBody)
        # The route service counts the backends as it adds one: no concurrent add overshoots.
        backend, applied = await _written(
            self.owner.routes.add_backend(
                route.key, Backend(0, **body.model_dump()), self.config.max_backends_per_route
            )
        )
        location = f"/apps/{route.app}/routes/{route.id}/backends/{backend.id}"
        return _answer({"id": backend.id}, 201, applied, {"Location": location})

    async def get_backend(self, request: web.Request) -> web.Response:
        route = await self._route(request)
        backend = self._backend(route, request)
        statuses = await self.owner.backend_statuses(route)
        return _json(backend_json(backend, statuses.get(backend.id)))

    async def replace_backend(self, request: web.Request) -> web.Response:
        route = await self._route(request)
        backend_id = self._backend(route, request).id
        body = await parse_body(request, BackendBody)
        backend, applied = await _written(
            self.owner.routes.update_backend(
                route.key, backend_id, lambda current: Backend(current.id, **body.model_dump())
            )
        )
        status = self.owner.backend_status(route.key).get(backend_id)
        return _answer(backend_json(backend, status), 200, applied)

    async def patch_backend(self, request: web.Request) -> web.Response:
        route = await self._route(request)
        current = self._backend(route, request)
        body = await parse_body(request, BackendPatchBody)
        changes = body.given()
        backend, applied = await _written(
            self.owner.routes.update_backend(
                route.key, current.id, lambda stored: stored.replace(**changes)
            )
        )
        status = self.owner.backend_status(route.key).get(backend.id)
        return _answer(backend_json(backend, status), 200, applied)

    async def delete_backend(self, request: web.Request) -> web.Response:
        route = await self._route(request)
        backend_id = self._backend(route, request).id
        _, applied = await _written(self.owner.routes.delete_backend(route.key, backend_id))
        return _answer({"id": backend_id}, 204, applied)

    async def list_toxics(self, request: web.Request) -> web.Response:
        route = await self._route(request)
        return _json([toxic_json(t) for t in route.toxics])

    async def create_toxic(self, request: web.Request) -> web.Response:
        route = await self._route(request)
        toxic = (await parse_body(request, ToxicBody)).toxic()
        # The route service counts the toxics as it adds one, as it does backends.
        toxic, applied = await _written(
            self.owner.routes.add_toxic(route.key, toxic, self.config.max_toxics_per_route)
        )
        location = f"/apps/{route.app}/routes/{route.id}/toxics/{toxic.name}"
        return _answer(toxic_json(toxic), 201, applied, {"Location": location})

    async def get_toxic(self, request: web.Request) -> web.Response:
        route = await self._route(request)
        return _json(toxic_json(self._toxic(route, request)))

    async def patch_toxic(self, request: web.Request) -> web.Response:
        route = await self._route(request)
        name = self._toxic(route, request).name
        body = await parse_body(request, ToxicPatchBody)
        toxic, applied = await _written(self.owner.routes.update_toxic(route.key, name, body.apply))
        return _answer(toxic_json(toxic), 200, applied)

    async def delete_toxic(self, request: web.Request) -> web.Response:
        route = await self._route(request)
        name = self._toxic(route, request).name
        _, applied = await _written(self.owner.routes.delete_toxic(route.key, name))
        return _answer({"name": name}, 204, applied)

    async def list_certificates(self, request: web.Request) -> web.Response:
        return _json([certificate_json(c) for c in await self.store.list_certificates()])

    async def get_certificate(self, request: web.Request) -> web.Response:
        name = request.match_info["certificate"]
        return _json(certificate_json(await self.store.get_certificate(name)))

    async def create_certificate(self, request: web.Request) -> web.Response:
        body = await parse_body(request, CertificateBody)
        certificate = _certificate(body.name, body)
        await self.owner.routes.create_certificate(certificate)
        log.info("certificate %r added", certificate.name)
        location = {"Location": f"/certificates/{certificate.name}"}
        return _json(certificate_json(certificate), 201, location)

    async def put_certificate(self, request: web.Request) -> web.Response:
        name = request.match_info["certificate"]
        if not is_app_id(name):
            raise BadRequest(problem(400, f"invalid certificate name {name!r}: use {APP_ID_RULE}"))
        certificate = _certificate(name, await parse_body(request, CertificatePutBody))
        created, applied = await _written(self.owner.routes.put_certificate(certificate))
        log.info("certificate %r %s", name, "added" if created else "replaced")
        headers = {"Location": f"/certificates/{name}"} if created else None
        return _answer(certificate_json(certificate), 201 if created else 200, applied, headers)

    async def delete_certificate(self, request: web.Request) -> web.Response:
        name = request.match_info["certificate"]
        await self.owner.routes.delete_certificate(name)
        log.info("certificate %r removed", name)
        return web.Response(status=204)

    async def create_token(self, request: web.Request) -> web.Response:
        app = path_app(request)
        await parse_body(request, TokenBody)
        token = secrets.token_urlsafe(32)
        info = await self.store.create_token(app, hash_token(token), self.clock())
        body = {"id": info.id, "token": token, "created_at": _timestamp(info.created_at)}
        # The one answer that carries a token: no cache anywhere may keep it.
        headers = {"Location": f"/apps/{app}/tokens/{info.id}", "Cache-Control": "no-store"}
        log.info("token %d of app %r created", info.id, app)
        return _json(body, 201, headers)

    async def list_tokens(self, request: web.Request) -> web.Response:
        tokens = await self.store.list_tokens(path_app(request))
        return _json([{"id": t.id, "created_at": _timestamp(t.created_at)} for t in tokens])

    async def delete_token(self, request: web.Request) -> web.Response:
        app, token_id = path_app(request), path_id(request, "token", "token")
        await self.store.delete_token(app, token_id)
        log.info("token %d of app %r revoked", token_id, app)
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

    def _toxic(self, route: Route, request: web.Request) -> Toxic:
        name = request.match_info["toxic"]
        toxic = route.toxic(name)
        if toxic is None:
            raise NotFound(f"toxic {name!r} of route {route.id} of app {route.app!r} not found")
        return toxic


# The dashboard's files (docs/dashboard.md), shipped in the package: no CDN, works offline.
_UI = resources.files("restcp.api").joinpath("ui")
_TYPES = {
    ".html": "text/html",
    ".js": "text/javascript",
    ".css": "text/css",
    ".svg": "image/svg+xml",
    ".txt": "text/plain",
}
# The page loads nothing but its own files, talks to this API only, and may not be framed
# (a framed page could be clicked into actions by another site).
_PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; script-src 'self'; style-src 'self'; "
    "img-src 'self' data:; connect-src 'self'; object-src 'none'; base-uri 'none'; "
    "form-action 'self'; frame-ancestors 'none'",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


def _asset(name: str) -> web.Response:
    """One of the dashboard's files, by its name (no directories: nothing else is reachable)."""
    suffix = name[name.rfind(".") :] if "." in name else ""
    if "/" in name or name.startswith(".") or suffix not in _TYPES:
        raise NotFound(f"no dashboard file {name!r}")
    entry = _UI.joinpath(name)
    if not entry.is_file():
        raise NotFound(f"no dashboard file {name!r}")
    charset = None if suffix == ".svg" else "utf-8"
    return web.Response(
        body=entry.read_bytes(),
        content_type=_TYPES[suffix],
        charset=charset,
        headers=_PAGE_HEADERS,
    )


async def _written(write: Awaitable[T]) -> tuple[T, bool]:
    """What a change through the route service returned, and whether it is applied where
    its route is served (False: stored, but the node serving it has not applied it yet)."""
    try:
        return await write, True
    except NotYetApplied as pending:
        return cast(T, pending.result), False


def _answer(
    body: dict[str, Any], status: int, applied: bool, headers: dict[str, str] | None = None
) -> web.Response:
    """The answer to a change: ``status`` with ``body`` (none for a 204) once applied where
    the route is served; else 202, with ``body`` and "status": "provisioning"."""
    if not applied:
        return _json({**body, "status": "provisioning"}, 202, headers)
    if status == 204:
        return web.Response(status=204, headers=headers)
    return _json(body, status, headers)


def _certificate(name: str, body: CertificatePutBody) -> Certificate:
    """The certificate of a body, once judged valid (CertificateError otherwise: a 422)."""
    inspect(body.cert, body.key)
    return Certificate(name, body.cert, body.key)


def _merge(settings: RouteSettings, body: RouteSettingsBody) -> RouteSettings:
    changes = body.given()
    changes.pop("port", None)
    changes.pop("frontend_ip", None)
    check = changes.get("health_check")
    if check is not None:
        changes["health_check"] = HealthCheck(**check.model_dump())
    tls = changes.get("tls")
    if tls is not None:
        if tls.client_ca is not None:
            check_ca_bundle(tls.client_ca, "tls.client_ca")
        fields = tls.model_dump()
        changes["tls"] = TlsSettings(
            **{**fields, "certificates": tuple(tls.certificates), "alpn": tuple(tls.alpn)}
        )
    backend_tls = changes.get("backend_tls")
    if backend_tls is not None:
        if backend_tls.ca is not None:
            check_ca_bundle(backend_tls.ca, "backend_tls.ca")
        changes["backend_tls"] = BackendTls(**backend_tls.model_dump())
    merged = settings.replace(**changes)
    if merged.backend_tls is not None and merged.proxy_protocol is not None:
        # The header goes before the backend's first byte, and that is a TLS ClientHello:
        # a PROXY header inside the session is no backend's protocol.
        raise InvalidSpec(
            "backend_tls: a route speaking TLS to its backends cannot send them a PROXY "
            "protocol header (set proxy_protocol to null, or backend_tls to null)"
        )
    return merged


def _timestamp(seconds: float) -> str:
    return _iso(datetime.fromtimestamp(seconds, UTC))


async def _server_header(request: web.Request, response: web.StreamResponse) -> None:
    response.headers["Server"] = SERVER


async def _expect(request: web.Request) -> None:
    """``Expect: 100-continue`` is met as aiohttp meets it; any other expectation is ignored,
    as RFC 9110 allows, rather than refused by aiohttp with a 417 that quotes it back (and
    that no endpoint documents)."""
    expect = request.headers.get("Expect", "")
    if request.version == HttpVersion11 and expect.lower() == "100-continue":
        await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        # What was written so far is no part of the answer.
        request.writer.output_size = 0


def build_app(
    store: Store,
    owner: Owner,
    config: ApiConfig | None = None,
    clock: Callable[[], float] = time.time,
) -> web.Application:
    """The API of the endpoints of api/endpoints.py; ``config`` None: no tokens, defaults."""
    config = config or ApiConfig()
    api = Api(store, owner, config, clock)
    app = web.Application(
        middlewares=[problems, guard(config), authenticator(config, store)],
        client_max_size=MAX_BODY,
    )
    app[REQUEST_TIMEOUT] = config.request_timeout

    async def _closing(_: web.Application) -> None:
        api.closing.set()

    async def _sampler(_: web.Application) -> AsyncIterator[None]:
        # Owned by the application: started with it, cancelled and awaited when it stops.
        task = asyncio.create_task(api._sample_forever(), name="stats-sampler")
        yield
        await cancel_and_wait([task], 5.0, log)

    app.on_shutdown.append(_closing)
    app.cleanup_ctx.append(_sampler)
    app.on_response_prepare.append(_server_header)
    registered: dict[web.AbstractRoute, Endpoint] = {}
    resources: dict[str, web.Resource] = {}
    for endpoint in TABLE:
        resource = resources.get(endpoint.path)
        if resource is None:
            resource = resources[endpoint.path] = app.router.add_resource(endpoint.path)
        handler: Handler = getattr(api, endpoint.handler)
        route = resource.add_route(endpoint.method, handler, expect_handler=_expect)
        registered[route] = endpoint
        if endpoint.method == "GET":
            registered[resource.add_route("HEAD", handler, expect_handler=_expect)] = endpoint
    app[ENDPOINTS] = registered
    return app
