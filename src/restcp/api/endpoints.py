"""The route table of the API, the one place that lists its endpoints.

``build_app`` registers exactly these (api/app.py), the auth middleware reads each one's
``access`` (api/auth.py), and the OpenAPI document is generated from them (api/openapi.py),
so the document cannot describe an endpoint the server does not have, or miss one it has.

Each endpoint names its success replies and the problems only it produces; the problems
every endpoint of a kind shares are added by ``problems_of``: 401/403/503 wherever a token
is checked, 400/404 for an app in the path, 404 for an id in the path, 400/413/422 where a
body is read.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from pydantic import BaseModel

from restcp.api.schemas import (
    AdoptOut,
    AppOut,
    BackendBody,
    BackendCreated,
    BackendOut,
    BackendPatchBody,
    CertificateBody,
    CertificateOut,
    CertificatePutBody,
    HealthOut,
    NodeOut,
    ReseedOut,
    RouteBody,
    RouteOut,
    RouteSettingsBody,
    StatsHistoryOut,
    StatsOut,
    TokenBody,
    TokenCreated,
    TokenOut,
    ToxicOut,
)
from restcp.api.toxics import ToxicBody, ToxicPatchBody

# public: no token needed (and the browser checks are skipped: nothing there changes or
# tells anything secret); admin: the admin token only; app: the admin token, or a token of
# the app named in the path; metrics: the admin token or the metrics token.
Access = Literal["public", "admin", "app", "metrics"]
METHODS = ("GET", "PUT", "POST", "PATCH", "DELETE")


@dataclass(frozen=True)
class Reply:
    """A success reply. ``model`` None: no body (204) or a body the model cannot describe."""

    status: int
    description: str
    model: type[BaseModel] | None = None
    array: bool = False
    media_type: str = "application/json"
    headers: tuple[str, ...] = ()


@dataclass(frozen=True)
class Endpoint:
    method: str
    path: str
    # The name of the method of api.app.Api that serves it.
    handler: str
    summary: str
    access: Access
    replies: tuple[Reply, ...]
    body: type[BaseModel] | None = None
    body_required: bool = False
    # Problem statuses beyond the ones problems_of derives, with what causes them here.
    problems: dict[int, str] = field(default_factory=dict)

    @property
    def operation_id(self) -> str:
        twins = [e for e in ENDPOINTS if e.handler == self.handler]
        return self.handler if twins[0] is self else f"{self.handler}_{self.method.lower()}"


def problems_of(endpoint: Endpoint, auth: bool = True) -> dict[int, str]:
    """Every problem status ``endpoint`` can answer, with its causes; ``auth`` False: on a
    node that asks for no token (no 401, and no refusal of a kind of token)."""
    causes: dict[int, list[str]] = {}

    def add(status: int, cause: str) -> None:
        causes.setdefault(status, []).append(cause)

    if endpoint.access != "public":
        if auth:
            add(401, "no valid token")
        add(403, "a request from a browser for another site or host name")
        if auth and endpoint.access == "admin":
            add(403, "an app token on an endpoint for the admin token only")
        if auth and endpoint.access == "metrics":
            add(403, "an app token: this endpoint needs the admin or the metrics token")
        if auth and endpoint.access != "metrics":
            add(403, "the metrics token, which reaches GET /metrics only")
        add(503, "the store is unavailable")
    if "{app}" in endpoint.path:
        add(400, "an invalid app id")
        if auth and endpoint.access == "app":
            add(404, "another app than the app token's")
    for name in ("route", "backend", "toxic", "token", "certificate"):
        if f"{{{name}}}" in endpoint.path:
            add(404, f"an unknown {name}")
    if endpoint.body is not None:
        add(400, "a body that is not a JSON object")
        add(413, "a body over 64 KiB")
        add(422, "an invalid field")
    for status, cause in endpoint.problems.items():
        add(status, cause)
    return {status: "; ".join(texts) for status, texts in sorted(causes.items())}


ROUTES = "/apps/{app}/routes"
ROUTE = ROUTES + "/{route}"
BACKENDS = ROUTE + "/backends"
BACKEND = BACKENDS + "/{backend}"
TOXICS = ROUTE + "/toxics"
TOXIC = TOXICS + "/{toxic}"
TOKENS = "/apps/{app}/tokens"
TOKEN = TOKENS + "/{token}"
CERTIFICATES = "/certificates"
CERTIFICATE = CERTIFICATES + "/{certificate}"

_CREATED = ("Location",)
_NO_CONTENT = Reply(204, "done; no body")
# Redis store only: a route for a frontend IP another node serves (docs/cluster.md).
_PROVISIONING = Reply(
    202,
    "handed to the node serving the frontend IP, which did not answer within "
    "--provision-timeout: {id, app, frontend_ip, status: provisioning}; the route appears "
    "at Location once bound",
    headers=_CREATED,
)
# Redis store only: a change of a route another node serves (docs/cluster.md, "Every write
# through any node").
_APPLYING = Reply(
    202,
    "Redis store: stored, but the node serving the route's frontend IP did not apply it "
    "within --provision-timeout: the body a 2xx would have (for a delete, the id), with "
    "status: provisioning; that node applies it when it can",
)
_CHANGE_PROBLEMS = {
    503: "Redis store: no live node serves the route's frontend IP (nothing stored)",
}
_ROUTE_CREATE_PROBLEMS = {
    409: "the port is taken or cannot be bound, no port is left in the range, the app "
    "has --max-routes-per-app routes already, or another route of the app has its name",
    422: "tls names a certificate not stored, or its client_ca does not parse; "
    "backend_tls names a certificate not stored, its ca does not parse, or it comes with "
    "sni or proxy_protocol",
    503: "Redis store: no live node serves the frontend IP",
}
_DUPLICATE = "another backend of the route has this ip and port"
_ADD_BACKEND_PROBLEMS = {
    403: "the backend's address is in a network the node's policy denies",
    409: f"the route has --max-backends-per-route backends already, or {_DUPLICATE}",
    422: "a proxy_protocol on a route with backend_tls",
    **_CHANGE_PROBLEMS,
}
_SET_BACKEND_PROBLEMS = {
    403: "the backend's address is in a network the node's policy denies",
    409: _DUPLICATE,
    422: "a proxy_protocol on a route with backend_tls",
    **_CHANGE_PROBLEMS,
}
_ADD_TOXIC_PROBLEMS = {
    409: "the route has a toxic of this name, or --max-toxics-per-route toxics already",
    **_CHANGE_PROBLEMS,
}
_TOXIC_CREATED = Reply(201, "the toxic, applied", ToxicOut, headers=_CREATED)
_PAGE = Reply(200, "the dashboard's page (docs/dashboard.md)", media_type="text/html")
_EVENTS = Reply(
    200,
    "Server-Sent Events: a snapshot (the node; every route, its stats), then an update "
    "about every second (the node; the routes that changed; the ones removed)",
    media_type="text/event-stream",
)
_NOT_A_STREAM = {406: "the request does not accept text/event-stream"}

ENDPOINTS: tuple[Endpoint, ...] = (
    Endpoint(
        "GET", "/healthz", "healthz", "Readiness of this node", "public",
        (Reply(200, "every stored route of this node is bound (status ok; or degraded, "
                    "empty, foreign with a Redis store: serving, see docs/cluster.md)",
               HealthOut),
         Reply(503, "starting, standby, or a stored route's port cannot be bound", HealthOut)),
    ),
    Endpoint(
        "GET", "/openapi.json", "openapi", "This document", "public",
        (Reply(200, "the OpenAPI 3.1 document of this API"),),
    ),
    Endpoint(
        "GET", "/", "dashboard", "The dashboard (its page asks for a token)", "public",
        (_PAGE,),
    ),
    Endpoint(
        "GET", "/ui/", "dashboard", "The dashboard (as /)", "public",
        (_PAGE,),
    ),
    Endpoint(
        "GET", "/ui/{asset}", "dashboard_asset", "A file of the dashboard", "public",
        (Reply(200, "a script, style sheet or license of the page", media_type="text/plain"),),
        problems={404: "no such file"},
    ),
    Endpoint(
        "GET", "/stats", "stats", "This node's counters and rates, per route and backend",
        "admin",
        (Reply(200, "this node, and each route it serves", StatsOut),),
    ),
    Endpoint(
        "GET", "/events", "events", "Every route and its counters, live (Server-Sent Events)",
        "admin", (_EVENTS,), problems=_NOT_A_STREAM,
    ),
    Endpoint(
        "GET", "/metrics", "metrics", "Metrics in the Prometheus text format", "metrics",
        (Reply(200, "the node's counters and gauges", media_type="text/plain"),),
    ),
    Endpoint(
        "GET", "/nodes", "nodes", "The cluster's live nodes and their frontend IPs", "admin",
        (Reply(200, "each live node; with an embedded store, this one", NodeOut, array=True),),
    ),
    Endpoint(
        "POST", "/cluster/reseed", "reseed",
        "Write this node's snapshot back into a Redis that lost it", "admin",
        (Reply(200, "every route written or found identical, and the node follows Redis "
                    "again; nothing written when Redis holds the node's epoch already",
               ReseedOut),),
        problems={
            409: "the store is embedded, or routes conflict with what Redis holds (the "
            "report is in the problem: written, unchanged, conflicts, skipped)",
            503: "Redis is unreachable, or the node holds no lease yet",
        },
    ),
    Endpoint(
        "POST", "/cluster/adopt", "adopt",
        "Follow Redis's state as it is, giving up routes it lacks", "admin",
        (Reply(200, "the epoch followed now", AdoptOut),),
        problems={409: "the store is embedded", 503: "Redis is unreachable"},
    ),
    Endpoint(
        "GET", "/apps", "list_apps", "List apps with their route counts", "admin",
        (Reply(200, "every app that ever had a route", AppOut, array=True),),
    ),
    Endpoint(
        "GET", "/apps/{app}/stats", "app_stats", "The app's routes' counters on this node",
        "app",
        (Reply(200, "this node, and each route of the app it serves", StatsOut),),
    ),
    Endpoint(
        "GET", "/apps/{app}/events", "app_events",
        "The app's routes and their counters, live (Server-Sent Events)", "app",
        (_EVENTS,), problems=_NOT_A_STREAM,
    ),
    Endpoint(
        "GET", ROUTES, "list_routes", "List an app's routes", "app",
        (Reply(200, "the app's routes, by id", RouteOut, array=True),),
        problems={404: "an app that never had a route"},
    ),
    Endpoint(
        "PUT", ROUTES, "create_route", "Create a route", "app",
        (Reply(201, "the route, bound and accepting", RouteOut, headers=_CREATED),
         _PROVISIONING),
        body=RouteBody, problems=_ROUTE_CREATE_PROBLEMS,
    ),
    Endpoint(
        "POST", ROUTES, "create_route", "Create a route (as PUT)", "app",
        (Reply(201, "the route, bound and accepting", RouteOut, headers=_CREATED),
         _PROVISIONING),
        body=RouteBody, problems=_ROUTE_CREATE_PROBLEMS,
    ),
    Endpoint(
        "GET", ROUTE, "get_route", "One route", "app",
        (Reply(200, "the route", RouteOut),),
    ),
    Endpoint(
        "GET", ROUTE + "/stats/history", "route_stats_history",
        "The route's rates over the last five minutes, a sample a second", "app",
        (Reply(200, "the samples, oldest first, as columns", StatsHistoryOut),),
    ),
    Endpoint(
        "PATCH", ROUTE, "patch_route", "Change a route's settings", "app",
        (Reply(200, "the route as changed", RouteOut), _APPLYING),
        body=RouteSettingsBody,
        problems={
            409: "another route of the app has this name",
            422: "tls names a certificate not stored, or its client_ca does not parse; "
            "backend_tls names a certificate not stored, its ca does not parse, or it comes "
            "with sni or proxy_protocol (the route's, or a backend's)",
            **_CHANGE_PROBLEMS,
        },
    ),
    Endpoint(
        "DELETE", ROUTE, "delete_route", "Destroy a route; its port refuses at once", "app",
        (_NO_CONTENT, _APPLYING),
        problems=_CHANGE_PROBLEMS,
    ),
    Endpoint(
        "GET", BACKENDS, "list_backends", "List a route's backends", "app",
        (Reply(200, "the route's backends, by id", BackendOut, array=True),),
    ),
    Endpoint(
        "PUT", BACKENDS, "add_backend", "Attach a backend", "app",
        (Reply(201, "the new backend's id", BackendCreated, headers=_CREATED), _APPLYING),
        body=BackendBody, body_required=True, problems=_ADD_BACKEND_PROBLEMS,
    ),
    Endpoint(
        "POST", BACKENDS, "add_backend", "Attach a backend (as PUT)", "app",
        (Reply(201, "the new backend's id", BackendCreated, headers=_CREATED), _APPLYING),
        body=BackendBody, body_required=True, problems=_ADD_BACKEND_PROBLEMS,
    ),
    Endpoint(
        "GET", BACKEND, "get_backend", "One backend", "app",
        (Reply(200, "the backend", BackendOut),),
    ),
    Endpoint(
        "POST", BACKEND, "replace_backend", "Replace a backend: address and settings", "app",
        (Reply(200, "the backend as replaced", BackendOut), _APPLYING),
        body=BackendBody, body_required=True, problems=_SET_BACKEND_PROBLEMS,
    ),
    Endpoint(
        "PUT", BACKEND, "replace_backend", "Replace a backend (as POST)", "app",
        (Reply(200, "the backend as replaced", BackendOut), _APPLYING),
        body=BackendBody, body_required=True, problems=_SET_BACKEND_PROBLEMS,
    ),
    Endpoint(
        "PATCH", BACKEND, "patch_backend", "Change some of a backend's fields", "app",
        (Reply(200, "the backend as changed", BackendOut), _APPLYING),
        body=BackendPatchBody, problems=_SET_BACKEND_PROBLEMS,
    ),
    Endpoint(
        "DELETE", BACKEND, "delete_backend", "Detach a backend", "app",
        (_NO_CONTENT, _APPLYING),
        problems=_CHANGE_PROBLEMS,
    ),
    Endpoint(
        "GET", TOXICS, "list_toxics", "List a route's toxics", "app",
        (Reply(200, "the route's toxics, in the order they were added", ToxicOut, array=True),),
    ),
    Endpoint(
        "PUT", TOXICS, "create_toxic", "Add a toxic (docs/toxics.md)", "app",
        (_TOXIC_CREATED, _APPLYING),
        body=ToxicBody, body_required=True, problems=_ADD_TOXIC_PROBLEMS,
    ),
    Endpoint(
        "POST", TOXICS, "create_toxic", "Add a toxic (as PUT)", "app",
        (_TOXIC_CREATED, _APPLYING),
        body=ToxicBody, body_required=True, problems=_ADD_TOXIC_PROBLEMS,
    ),
    Endpoint(
        "GET", TOXIC, "get_toxic", "One toxic", "app",
        (Reply(200, "the toxic", ToxicOut),),
    ),
    Endpoint(
        "PATCH", TOXIC, "patch_toxic",
        "Change a toxic: attributes merge, toxicity and clients replace", "app",
        (Reply(200, "the toxic as changed, applied", ToxicOut), _APPLYING),
        body=ToxicPatchBody,
        problems={
            422: "an attribute its type does not have, or a change of type or stream",
            **_CHANGE_PROBLEMS,
        },
    ),
    Endpoint(
        "DELETE", TOXIC, "delete_toxic", "Remove a toxic", "app",
        (_NO_CONTENT, _APPLYING),
        problems=_CHANGE_PROBLEMS,
    ),
    Endpoint(
        "GET", CERTIFICATES, "list_certificates",
        "List the TLS certificates (never their keys)", "admin",
        (Reply(200, "every certificate, by name", CertificateOut, array=True),),
    ),
    Endpoint(
        "POST", CERTIFICATES, "create_certificate", "Add a TLS certificate and its key",
        "admin",
        (Reply(201, "the certificate as stored (not its key)", CertificateOut,
               headers=_CREATED),),
        body=CertificateBody, body_required=True,
        problems={
            409: "a certificate of this name exists (PUT /certificates/{name} replaces it)",
            422: "a chain or key that does not parse, a key that is not the leaf's, an "
            "expired leaf",
        },
    ),
    Endpoint(
        "GET", CERTIFICATE, "get_certificate", "One certificate (never its key)", "admin",
        (Reply(200, "the certificate", CertificateOut),),
    ),
    Endpoint(
        "PUT", CERTIFICATE, "put_certificate",
        "Replace a certificate (or add it): new handshakes use it at once", "admin",
        (Reply(200, "the certificate as replaced, served by every route that names it",
               CertificateOut),
         Reply(201, "the certificate, new", CertificateOut, headers=_CREATED),
         Reply(202, "Redis store: stored, but a node serving a route that names it did not "
                    "apply it within --provision-timeout: the certificate, with status: "
                    "provisioning")),
        body=CertificatePutBody, body_required=True,
        problems={
            400: "an invalid certificate name",
            422: "a chain or key that does not parse, a key that is not the leaf's, an "
            "expired leaf",
            503: "Redis store: no live node serves a route that names it (nothing stored)",
        },
    ),
    Endpoint(
        "DELETE", CERTIFICATE, "delete_certificate", "Remove a certificate", "admin",
        (_NO_CONTENT,),
        problems={409: "a route's tls names it"},
    ),
    Endpoint(
        "POST", TOKENS, "create_token", "Create a token of an app", "admin",
        (Reply(201, "the token, shown this once", TokenCreated, headers=_CREATED),),
        body=TokenBody,
    ),
    Endpoint(
        "GET", TOKENS, "list_tokens", "List an app's tokens (never the tokens)", "admin",
        (Reply(200, "the app's tokens, by id", TokenOut, array=True),),
    ),
    Endpoint(
        "DELETE", TOKEN, "delete_token", "Revoke a token at once", "admin",
        (_NO_CONTENT,),
    ),
)  # fmt: skip
