"""Who may call what: browser checks, then tokens, before any handler runs.

    request ─► guard ───────────────────────► authenticate ──────────────────► handler
               Host: a name of this API?       Bearer token: admin, an app's, none?
               Origin: this API's own?         the endpoint's access (endpoints.py):
               (else 403)                      public, admin only, or the app's own

The guard stops what a browser can be made to do by a page of another site: DNS rebinding
(a page whose name now resolves to 127.0.0.1 calls the API under that name, so its Host
header is that name) and cross-site requests (they carry the page's Origin). It runs whether
tokens are on or not: a loopback API without a token is exactly what those attacks target.
There are no CORS headers anywhere, so no other origin may read an answer either.

Tokens: ``Authorization: Bearer TOKEN``, nowhere else (not a query string, which ends up in
logs, nor another header). The admin token may do everything. An app token reads and changes
its own app only: any other app's URL answers 404 as if that app did not exist, whether it
exists or not, and endpoints for the admin only answer 403. Without an admin token
(``--api-token``), authentication is off and every caller is the admin.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import logging
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from aiohttp import web
from aiohttp.typedefs import Middleware

from restcp.api.endpoints import ENDPOINTS as TABLE
from restcp.api.endpoints import Endpoint
from restcp.errors import NotFound
from restcp.settings import Settings
from restcp.store import Store, is_embedded

log = logging.getLogger("restcp.api.auth")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
# RFC 6750's b64token; anything else in the header is not a token we could have issued.
_TOKEN = re.compile(r"[A-Za-z0-9\-._~+/]{1,512}=*")
_REALM = 'Bearer realm="restcp"'
# The public paths, a template's {name} standing for one segment (/ui/{asset}).
_PUBLIC_PATHS = re.compile(
    "|".join(
        re.sub(r"\\\{[a-z_]+\\\}", "[^/]+", re.escape(e.path))
        for e in TABLE
        if e.access == "public"
    )
)


def hash_token(token: str) -> str:
    """What the store keeps of a token. A plain SHA-256 suffices where a password would need
    a slow, salted hash: tokens are 256 random bits, so there is no dictionary to try and a
    brute-force search of the hash is as hopeless as one of the token."""
    return hashlib.sha256(token.encode("ascii")).hexdigest()


@dataclass
class ApiConfig:
    # SHA-256 of the admin token (the token itself is not kept); None: authentication off.
    # Replaced in place by rotate_admin_token (SIGHUP): the middlewares hold this object.
    admin_token_sha256: bytes | None = None
    # SHA-256 of the token that reaches GET /metrics only; None: /metrics needs the admin's.
    metrics_token_sha256: bytes | None = None
    # The address the API is bound to.
    api_host: str = "127.0.0.1"
    # Names clients may use besides IP literals and localhost (lowercase, no port).
    allowed_hosts: frozenset[str] = field(default_factory=frozenset)
    max_routes_per_app: int = 1000
    max_backends_per_route: int = 100
    max_toxics_per_route: int = 32
    # Seconds a client has to send a request's head, and as long again for its body.
    request_timeout: float = 30.0
    # The frontend IPs a new route may ask for, as the OpenAPI document lists them; empty
    # with a shared store, where other nodes' IPs are asked for too (docs/cluster.md).
    frontend_ips: tuple[str, ...] = ()

    @classmethod
    def from_settings(cls, settings: Settings) -> ApiConfig:
        token, metrics = settings.api_token, settings.metrics_token
        return cls(
            admin_token_sha256=None if token is None else hashlib.sha256(token.encode()).digest(),
            metrics_token_sha256=None if metrics is None else _sha256(metrics),
            api_host=settings.api_host,
            allowed_hosts=frozenset(settings.api_allowed_hosts),
            max_routes_per_app=settings.max_routes_per_app,
            max_backends_per_route=settings.max_backends_per_route,
            max_toxics_per_route=settings.max_toxics_per_route,
            request_timeout=settings.api_request_timeout,
            frontend_ips=settings.frontend_ips if is_embedded(settings.store) else (),
        )

    def rotate_admin_token(self, token: str) -> None:
        """The admin token from now on; the old one answers 401 from the next request. Only
        a rotation: a node started without a token does not turn authentication on."""
        if self.admin_token_sha256 is None:
            raise ValueError("authentication is off: a token cannot be rotated in")
        if _sha256(token) == self.metrics_token_sha256:
            raise ValueError("the admin token must not be the metrics token")
        self.admin_token_sha256 = _sha256(token)

    def rotate_metrics_token(self, token: str) -> None:
        if self.metrics_token_sha256 is None:
            raise ValueError("no metrics token was set at start: none can be rotated in")
        if _sha256(token) == self.admin_token_sha256:
            raise ValueError("the metrics token must not be the admin token")
        self.metrics_token_sha256 = _sha256(token)

    @property
    def auth_on(self) -> bool:
        return self.admin_token_sha256 is not None

    def host_allowed(self, name: str) -> bool:
        """Whether a Host header's name (no port) is one this API answers to.

        IP literals cannot be rebound (rebinding needs a name the attacker's DNS answers),
        so the API's own address and loopback addresses are safe; so is any address when
        the API listens on all of them. Names must be localhost or configured."""
        name = name.rstrip(".")
        try:
            ip = ipaddress.ip_address(name)
        except ValueError:
            return name == "localhost" or name in self.allowed_hosts
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        bound = ipaddress.ip_address(self.api_host)
        return ip.is_loopback or ip == bound or bound.is_unspecified


def _sha256(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


@dataclass(frozen=True)
class Principal:
    """Who a request is: the admin (``app`` None), a token of one app, or the scraper (the
    metrics token)."""

    app: str | None = None
    token_id: int | None = None
    scraper: bool = False

    @property
    def is_admin(self) -> bool:
        return self.app is None and not self.scraper


ADMIN = Principal()
SCRAPER = Principal(scraper=True)
# Set on every request that got past authenticate: its Principal, or None (public
# endpoints called without a valid token).
PRINCIPAL = "restcp.principal"
ENDPOINTS = web.AppKey("restcp.endpoints", dict[web.AbstractRoute, Endpoint])


class Refused(Exception):
    """A request refused before its handler; app.problems turns it into a problem document."""

    def __init__(self, status: int, detail: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.headers = headers or {}


def endpoint_of(request: web.Request) -> Endpoint | None:
    """The table entry of the request's route; None for an unknown path or method."""
    return request.app[ENDPOINTS].get(request.match_info.route)


def split_host(value: str) -> tuple[str, int | None] | None:
    """``name[:port]`` or ``[v6][:port]`` as (lowercase name, port); None if malformed."""
    value = value.strip().lower()
    port_text: str | None = None
    if value.startswith("["):
        name, closed, rest = value[1:].partition("]")
        if not closed or (rest and not rest.startswith(":")):
            return None
        port_text = rest[1:] if rest else None
    else:
        name, colon, after = value.partition(":")
        port_text = after if colon else None
    if not name:
        return None
    if port_text is None:
        return name, None
    if not (port_text.isascii() and port_text.isdigit()) or not 0 < int(port_text) < 65536:
        return None
    return name, int(port_text)


def _same_origin(origin: str, host: str | None) -> bool:
    """Whether ``origin`` is scheme://{Host header}, the API as the browser reached it."""
    if host is None:
        return False
    parts = urlsplit(origin.strip())
    default = {"http": 80, "https": 443}.get(parts.scheme)
    if default is None or parts.path or parts.query or parts.fragment or "@" in parts.netloc:
        return False
    theirs, ours = split_host(parts.netloc), split_host(host)
    if theirs is None or ours is None:
        return False
    return (_canonical(theirs[0]), theirs[1] or default) == (
        _canonical(ours[0]),
        ours[1] or default,
    )


def _canonical(name: str) -> str:
    try:
        return str(ipaddress.ip_address(name))
    except ValueError:
        return name.rstrip(".")


def guard(config: ApiConfig) -> Middleware:
    @web.middleware
    async def browser_guard(request: web.Request, handler: Handler) -> web.StreamResponse:
        endpoint = endpoint_of(request)
        if endpoint is not None and endpoint.access == "public":
            return await handler(request)
        hosts = request.headers.getall("Host", [])
        if len(hosts) > 1:
            raise Refused(403, "more than one Host header")
        host = hosts[0] if hosts else None
        if host is not None:
            parsed = split_host(host)
            if parsed is None or not config.host_allowed(parsed[0]):
                # Checked on reads too: a rebound name is same-origin to the browser, so the
                # attacker's page could read the answer, not just send the request.
                raise Refused(
                    403,
                    f"Host {host!r} is not a name of this API, so the request may come from "
                    "a web page that made its own name point here (DNS rebinding); use the "
                    "API's address or localhost, or allow the name with --api-allowed-host",
                )
        if request.method not in SAFE_METHODS:
            # A foreign Origin on a read gets no further check: without CORS headers the
            # page that sent it cannot read the answer.
            origins = request.headers.getall("Origin", [])
            if origins and (len(origins) > 1 or not _same_origin(origins[0], host)):
                raise Refused(
                    403,
                    f"cross-origin request refused: Origin {origins[0]!r} is not this API; "
                    "a web page of another site may not change restcp",
                )
            site = request.headers.get("Sec-Fetch-Site", "").strip().lower()
            if site in ("cross-site", "same-site"):
                raise Refused(403, f"cross-origin request refused (Sec-Fetch-Site: {site})")
        return await handler(request)

    return browser_guard


def authenticator(config: ApiConfig, store: Store) -> Middleware:
    async def identify(request: web.Request) -> Principal | None:
        values = request.headers.getall("Authorization", [])
        if len(values) != 1:
            return None
        scheme, _, token = values[0].strip().partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not _TOKEN.fullmatch(token):
            return None
        digest = hashlib.sha256(token.encode("ascii")).digest()
        # Compared as digests: equal lengths always, so the time taken tells nothing of the
        # admin token, not even its length.
        assert config.admin_token_sha256 is not None
        if hmac.compare_digest(digest, config.admin_token_sha256):
            return ADMIN
        if config.metrics_token_sha256 is not None and hmac.compare_digest(
            digest, config.metrics_token_sha256
        ):
            return SCRAPER
        # App tokens are found by their hash: timing can at most tell how a hash of the
        # caller's choosing compares to stored hashes, which says nothing of a token.
        info = await store.find_token(digest.hex())
        return None if info is None else Principal(info.app, info.id)

    @web.middleware
    async def authenticate(request: web.Request, handler: Handler) -> web.StreamResponse:
        if not config.auth_on:
            request[PRINCIPAL] = ADMIN
            return await handler(request)
        endpoint = endpoint_of(request)
        access = "app" if endpoint is None else endpoint.access
        if endpoint is None and _PUBLIC_PATHS.fullmatch(request.path):
            # A method a public path does not have: its 405 tells nothing the public
            # document does not (it lists every path and method).
            access = "public"
        principal = await identify(request)
        request[PRINCIPAL] = principal
        if access == "public":
            return await handler(request)
        if principal is None:
            sent = "Authorization" in request.headers
            if sent:
                log.info(
                    "refused a request with an invalid token: %s %s from %s",
                    request.method, request.path, request.remote,
                )  # fmt: skip
            raise Refused(
                401,
                "the token is not valid: unknown or revoked"
                if sent
                else "this API needs a token: send 'Authorization: Bearer TOKEN'",
                {"WWW-Authenticate": _REALM + (', error="invalid_token"' if sent else "")},
            )
        if principal.is_admin:
            return await handler(request)
        if principal.scraper:
            if access == "metrics":
                return await handler(request)
            raise Refused(403, "the metrics token reaches GET /metrics only")
        if access in ("admin", "metrics"):
            raise Refused(
                403, "this endpoint needs the admin token; an app token has its own app only"
            )
        app = request.match_info.get("app")
        if app is not None and app != principal.app:
            # The same answer whether that app exists or not, before any lookup.
            raise NotFound(f"app {app!r} not found")
        return await handler(request)

    return authenticate
