"""Request bodies, validated strictly: a port is a JSON number without a fraction (``80``, or
``80.0``, which JSON Schema calls an integer too), never ``"80"``, ``80.5`` or ``true``; the
app ids of paths; and the shapes of responses, for the OpenAPI document (api/openapi.py) and
as the return types of the Python client (restcp.client), which imports this module
(pydantic and restcp.model only: never aiohttp, which lint-imports checks).

Unknown fields are refused rather than ignored, so a typo is an error, not a silent default.
Which fields a request *gave* matters (``model_fields_set``): an omitted field keeps its
current value, while ``null`` is a value where a field allows it (``"health_check": null``
turns checks off, ``"max_connections": null`` removes the limit).
"""

from __future__ import annotations

import ipaddress
import re
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainValidator,
    StrictBool,
    StrictStr,
    WithJsonSchema,
    field_validator,
    model_validator,
)

# The app id's rule is the model's (the CLI checks it without pydantic); the API's modules
# take it from here.
from restcp.model import APP_ID as APP_ID
from restcp.model import APP_ID_RULE as APP_ID_RULE
from restcp.model import DOT_SEGMENTS as DOT_SEGMENTS
from restcp.model import (
    AdminState,
    BackendProxyProtocol,
    Balance,
    Health,
    ProxyProtocol,
    SpliceMode,
    Stream,
    TlsVersion,
    ToxicType,
    WhenAllDown,
    canonical_host,
    canonical_server_name,
)
from restcp.model import is_app_id as is_app_id


def _route_name(value: str) -> str:
    # A segment of toxiproxy's /proxies/{name}: the rule of an app id.
    if not is_app_id(value):
        raise ValueError(f"use {APP_ID_RULE}")
    return value


# A route's name: unique within its app; toxiproxy's API calls the route a proxy by it.
RouteName = Annotated[
    StrictStr,
    AfterValidator(_route_name),
    Field(json_schema_extra={"pattern": "^[A-Za-z0-9._-]{1,64}$", "not": {"enum": [".", ".."]}}),
]


def _integral(value: Any) -> Any:
    """A JSON number without a fraction as an int: JSON Schema counts ``78.0`` as an integer,
    so a client that writes integers as floats is right. Anything else goes on to the strict
    int check (and is refused there: ``78.5``, ``"78"``, ``true``)."""
    if type(value) is float and value.is_integer():
        return int(value)
    return value


# After the Field, so that it runs first and the bounds still show in the JSON Schema.
Integral = BeforeValidator(_integral)
Port = Annotated[int, Field(strict=True, ge=1, le=65535), Integral]
# Checked by canonical_ip; the formats tell an OpenAPI client what "an IP literal" means.
IpText = Annotated[
    StrictStr, Field(json_schema_extra={"anyOf": [{"format": "ipv4"}, {"format": "ipv6"}]})
]
# A backend's address: checked by model.canonical_host.
HostText = Annotated[
    StrictStr,
    Field(
        max_length=253,
        json_schema_extra={
            "anyOf": [{"format": "ipv4"}, {"format": "ipv6"}, {"format": "hostname"}],
            "description": "an IP literal, or a DNS name resolved at every connect",
        },
    ),
]
Seconds = Annotated[float, Field(strict=True, ge=0, le=86400 * 365, allow_inf_nan=False)]
PositiveSeconds = Annotated[float, Field(strict=True, gt=0, le=3600, allow_inf_nan=False)]
Weight = Annotated[int, Field(strict=True, ge=0, le=256), Integral]
Limit = Annotated[int, Field(strict=True, ge=1, le=10_000_000), Integral]
Count = Annotated[int, Field(strict=True, ge=1, le=100), Integral]
FallCount = Annotated[int, Field(strict=True, ge=0, le=100), Integral]
Seed = Annotated[int, Field(strict=True, ge=0, le=2**63 - 1), Integral]
# Probes are bytes on the wire: each character stands for one byte (checked by _latin1).
ProbeText = Annotated[
    str, Field(strict=True, max_length=1024, json_schema_extra={"pattern": "^[\\u0000-\\u00ff]*$"})
]


def _splice_mode(value: object) -> SpliceMode:
    if isinstance(value, bool):
        return value
    if value == "auto":
        return "auto"
    raise ValueError('must be true, false or "auto"')


# One check and one error for the three values (a union would report one per member).
Splice = Annotated[
    SpliceMode,
    PlainValidator(_splice_mode),
    WithJsonSchema({"anyOf": [{"type": "boolean"}, {"type": "string", "enum": ["auto"]}]}),
]


def canonical_ip(value: str) -> str:
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        raise ValueError("must be an IPv4 or IPv6 address literal") from None


def _server_names(value: list[str] | None) -> tuple[str, ...] | None:
    if value is None:
        return None
    # One name given twice (``a.com``, ``A.com.``) is one claim: kept once, in order.
    return tuple(dict.fromkeys(canonical_server_name(name) for name in value))


_LABEL = "[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?"
# A route's TLS server names on a shared port (core/sni.py has the patterns).
ServerNames = Annotated[
    list[
        Annotated[
            StrictStr,
            Field(
                max_length=253,
                json_schema_extra={"pattern": f"^(\\*|(\\*\\.)?{_LABEL}(\\.{_LABEL})*\\.?)$"},
            ),
        ]
    ],
    Field(
        min_length=1,
        # 100 names of 253 characters fit in a request body (api/app.py's MAX_BODY).
        max_length=100,
        description='server names (exact, "*.suffix", or "*" for the port\'s default) '
        "that pick this route on a port shared by SNI",
    ),
    AfterValidator(_server_names),
]


class RequestBody(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    def given(self) -> dict[str, Any]:
        """The fields the request named, with their values (``null`` included)."""
        return {name: getattr(self, name) for name in self.model_fields_set}


class HealthCheckBody(RequestBody):
    """An active check; ``{}`` is a TCP connect check with HAProxy's defaults."""

    interval: PositiveSeconds = 2.0
    timeout: PositiveSeconds = 1.0
    rise: Count = 2
    fall: Count = 3
    send: ProbeText | None = None
    expect: ProbeText | None = None
    initial: Health = "unknown"

    @field_validator("expect")
    @classmethod
    def _expect(cls, value: str | None) -> str | None:
        if value is not None and value.startswith("re:"):
            try:
                re.compile(value[3:].encode("latin-1"))
            except (re.error, UnicodeEncodeError) as err:
                raise ValueError(f"invalid regular expression: {err}") from None
        return value

    @field_validator("send", "expect")
    @classmethod
    def _latin1(cls, value: str | None) -> str | None:
        # Probes are bytes on the wire: each character stands for one byte (0-255).
        if value is not None:
            try:
                value.encode("latin-1")
            except UnicodeEncodeError:
                raise ValueError("use characters U+0000-U+00FF only (one byte each)") from None
        return value


class _BackendFields(RequestBody):
    """What every backend body may carry besides its address, with the defaults."""

    weight: Weight = 1
    state: AdminState = "enabled"
    drain_timeout: Seconds | None = None
    max_connections: Limit | None = None
    proxy_protocol: BackendProxyProtocol | None = None

    @field_validator("ip", check_fields=False)
    @classmethod
    def _ip(cls, value: str) -> str:
        return canonical_host(value)


class BackendBody(_BackendFields):
    """Attach (PUT/POST on the collection) or replace (POST/PUT on an id): ip and port are
    required, the rest take their defaults when omitted."""

    ip: HostText
    port: Port


class BackendPatchBody(_BackendFields):
    """PATCH of a backend: only the fields given change."""

    ip: HostText = ""
    port: Port = 1


# A certificate's name: the rule of an app id (a path segment), as a route's name.
CertificateName = RouteName
# PEM text; the body's 64 KiB bounds it.
Pem = Annotated[StrictStr, Field(min_length=1)]
# An ALPN protocol id as IANA lists them ("h2", "http/1.1"): 1-255 printable ASCII bytes.
AlpnProtocol = Annotated[StrictStr, Field(pattern=r"^[!-~]{1,255}$")]


class TlsBody(RequestBody):
    """TLS termination (docs/tls.md): ``certificates`` by name, the first the default for
    clients whose SNI matches none."""

    certificates: list[CertificateName] = Field(min_length=1, max_length=64)
    min_version: TlsVersion = "1.2"
    alpn: list[AlpnProtocol] = Field(default_factory=list, max_length=16)
    client_ca: Pem | None = None
    handshake_timeout: PositiveSeconds = 10.0

    @field_validator("certificates")
    @classmethod
    def _distinct(cls, value: list[str]) -> list[str]:
        if len(set(value)) != len(value):
            raise ValueError("names a certificate twice")
        return value


class BackendTlsBody(RequestBody):
    """TLS towards the backends (docs/tls.md): verified against ``ca`` (none: the system's
    CA store) for ``server_name`` (none: the backend's host name), unless ``verify`` is
    false; ``certificate`` (by name) shown to backends that ask for one."""

    verify: StrictBool = True
    ca: Pem | None = None
    server_name: (
        Annotated[
            StrictStr,
            Field(
                max_length=253,
                json_schema_extra={
                    "anyOf": [{"format": "hostname"}, {"format": "ipv4"}, {"format": "ipv6"}],
                    "description": "sent as SNI (a DNS name) and checked in the backend's "
                    "certificate",
                },
            ),
        ]
        | None
    ) = None
    certificate: CertificateName | None = None

    @field_validator("server_name")
    @classmethod
    def _server_name(cls, value: str | None) -> str | None:
        return None if value is None else canonical_host(value)

    @model_validator(mode="after")
    def _verified(self) -> BackendTlsBody:
        if not self.verify and self.ca is not None:
            raise ValueError("ca is what verify checks against: with verify false, leave it out")
        return self


class RouteSettingsBody(RequestBody):
    """The settable fields of a route (PATCH); omitted ones keep their current value."""

    balance: Balance = "random"
    connect_timeout: PositiveSeconds = 5.0
    idle_timeout: Seconds = 3600.0
    health_check: HealthCheckBody | None = None
    when_all_down: WhenAllDown = "fail_fast"
    max_connections: Limit | None = None
    half_close_timeout: Seconds = 60.0
    max_connect_attempts: Count = 3
    proxy_protocol: ProxyProtocol | None = None
    passive_fall: FallCount = 3
    passive_cooldown: PositiveSeconds = 10.0
    splice: Splice = "auto"
    enabled: StrictBool = True
    seed: Seed | None = None
    name: RouteName | None = None
    sni: ServerNames | None = None
    tls: TlsBody | None = None
    backend_tls: BackendTlsBody | None = None


class RouteBody(RouteSettingsBody):
    """Route creation: all optional; an empty body is the seed's ``curl -XPUT``."""

    port: Port | None = None
    frontend_ip: IpText | None = None

    @field_validator("frontend_ip")
    @classmethod
    def _frontend_ip(cls, value: str | None) -> str | None:
        return None if value is None else canonical_ip(value)


class TokenBody(RequestBody):
    """Token creation takes no settings: an empty body, or ``{}``."""


class CertificatePutBody(RequestBody):
    """A certificate's chain and key (PUT /certificates/{name}): the leaf first, then its
    intermediates; the key unencrypted (docs/tls.md)."""

    cert: Pem
    key: Pem


class CertificateBody(CertificatePutBody):
    """A new certificate (POST /certificates)."""

    name: CertificateName


# -- responses ------------------------------------------------------------------------------
# Never used to build a response (app.py writes the JSON); they describe it for OpenAPI and
# are what the client returns, and tests check each against what the handlers send (the
# client's tests read every answer with unknown fields forbidden). Unknown fields are
# refused, so a field a handler adds without adding it here fails those tests rather than
# going undocumented.


def _read_only(**kwargs: Any) -> Any:
    return Field(json_schema_extra={"readOnly": True}, **kwargs)


class _Out(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ReplacedOut(_Out):
    """An address the backend had before it was replaced, still holding open connections."""

    ip: str
    port: int
    active_connections: int


class LastCheckOut(_Out):
    """A backend's last active health check, as the node serving its route ran it."""

    at: float = Field(description="Unix seconds")
    ok: bool
    reason: str = Field(description="why it failed; empty when it passed")


class BackendOut(_Out):
    """A backend: the seed's ``ip``, ``port`` and ``id`` first, then its settings, then what
    the node serving its route observes of it (read-only)."""

    ip: str
    port: int
    id: int = _read_only()
    weight: int
    state: AdminState
    drain_timeout: float | None
    max_connections: int | None
    proxy_protocol: BackendProxyProtocol | None
    health: Health = _read_only()
    health_changed_at: float | None = _read_only(
        description="Unix seconds of the last health change"
    )
    health_reason: str = _read_only()
    active_connections: int = _read_only(description="open connections to its address")
    replaced: list[ReplacedOut] = _read_only(
        description="addresses it had before a replace that still have open connections "
        "(they stay there until they end); empty most of the time"
    )
    last_check: LastCheckOut | None = _read_only(
        default=None,
        description="the last active health check; null without checks or before the first",
    )


class HealthCheckOut(_Out):
    interval: float
    timeout: float
    rise: int
    fall: int
    send: str | None
    expect: str | None
    initial: Health


class TlsOut(_Out):
    certificates: list[str]
    min_version: TlsVersion
    alpn: list[str]
    client_ca: str | None
    handshake_timeout: float


class BackendTlsOut(_Out):
    verify: bool
    ca: str | None
    server_name: str | None
    certificate: str | None


class ToxicOut(_Out):
    """A toxic of a route (docs/toxics.md): every attribute of its type, defaults filled."""

    name: str
    type: ToxicType
    stream: Stream
    toxicity: float
    attributes: dict[str, int]
    clients: list[str]


class RouteOut(_Out):
    """A route: the seed's fields first (``id``, ``url``, ``backends``), then the rest."""

    id: int = _read_only()
    url: str = _read_only(description="tcp://FRONTEND_IP:PORT/, IPv6 in brackets")
    backends: list[BackendOut] = _read_only()
    app: str = _read_only()
    frontend_ip: str
    port: int
    balance: Balance
    connect_timeout: float
    idle_timeout: float
    health_check: HealthCheckOut | None
    when_all_down: WhenAllDown
    max_connections: int | None
    half_close_timeout: float
    max_connect_attempts: int
    proxy_protocol: ProxyProtocol | None
    passive_fall: int
    passive_cooldown: float
    splice: Splice
    enabled: bool
    seed: int | None
    name: str | None
    sni: list[str] | None
    tls: TlsOut | None
    backend_tls: BackendTlsOut | None
    toxics: list[ToxicOut] = _read_only(description="in the order they were added")


class BackendCreated(_Out):
    """The seed's answer to attaching a backend: its id only."""

    id: int = _read_only()


class AppOut(_Out):
    app: str
    routes: int = Field(description="the app's current route count")


class UnboundRoute(_Out):
    app: str
    route: int
    error: str


class WorkerOut(_Out):
    worker: int = Field(description="its index (the main process is 0)")
    pid: int | None = Field(description="its process id; null while it is being restarted")
    serving: bool = Field(description="it has applied its snapshot of the routes")


class HealthOut(_Out):
    status: Literal["ok", "starting", "degraded", "standby", "empty", "foreign"] = Field(
        description="Redis store only: degraded (200) while Redis is unreachable, the routes "
        "relaying on as last configured (or as the snapshot has them, after a start without "
        "Redis); empty (200) when Redis lost its data (no epoch) and foreign (200) when it "
        "holds another cluster epoch: the node serves on what it had and needs "
        "`restcp cluster reseed` or `adopt`; standby (503) while another node holds the "
        "lease of one of this node's frontend IPs"
    )
    routes: int = Field(description="routes this node serves")
    unbound: list[UnboundRoute] = Field(
        default_factory=list,
        description="stored routes whose port this node cannot bind now; shown only when "
        "authentication is off or to the admin token",
    )
    cluster: dict[str, Any] | None = Field(
        None, description="Redis store only: node id, Redis state, each frontend IP's lease"
    )
    workers: list[WorkerOut] | None = Field(
        None,
        description="--workers N only: each worker process; shown only when authentication "
        "is off or to the admin token",
    )


class LeaseOut(_Out):
    ip: str
    age: float = Field(description="seconds since the node acquired the IP's lease")
    routes: int = Field(description="routes stored for the IP")


class NodeOut(_Out):
    """A node as it registered in the shared store (docs/cluster.md)."""

    id: str
    api: str | None
    frontend_ips: list[str] = Field(description="the IPs it is configured for")
    leases: list[LeaseOut] = Field(description="the IPs it holds, and so serves")
    routes_serving: int = Field(description="routes it has bound")
    started_at: float | None = None
    last_seen: float | None = Field(None, description="seconds since its last heartbeat")


class RatesOut(_Out):
    """Per second, between the last two readings of the counters (GET /stats, the event
    stream: at most one reading a second, shared by every reader)."""

    connections: float
    bytes_in: float
    bytes_out: float
    connect_failures: float


class RouteRatesOut(RatesOut):
    refused: float
    errors: float = Field(description="connect failures and refused clients")


class BackendStatsOut(_Out):
    id: int
    connections_active: int
    connections_max: int = Field(
        description="the most connections open at once to it since its route started "
        "(HAProxy's smax; its address's: a new address starts from 0)"
    )
    connections_total: int
    bytes_in: int = Field(description="client to backend")
    bytes_out: int = Field(description="backend to client")
    connect_failures: int
    rates: RatesOut | None = Field(description="null on the first reading")


class RouteStatsOut(_Out):
    """A route's counters on the node that serves it (open connections' bytes included)."""

    app: str
    id: int
    node: str = Field(
        description="the node that serves it and counted these (its id in GET /nodes; "
        "'local' with an embedded store)"
    )
    connections_active: int
    connections_max: int = Field(
        description="the most clients open at once since the route started (HAProxy's smax)"
    )
    connections_total: int
    bytes_in: int
    bytes_out: int
    connect_failures: int
    refused: dict[str, int] = Field(description="clients closed without a backend, by reason")
    errors: int = Field(description="connect failures and refused clients")
    rates: RouteRatesOut | None = Field(description="null on the first reading")
    backends: list[BackendStatsOut]


class NodeStatsOut(_Out):
    """This node: its version, since when it runs, and its sums over the routes shown."""

    version: str
    started_at: float = Field(description="Unix seconds")
    uptime: float = Field(description="seconds")
    status: str = Field(description="as GET /healthz says it")
    routes: int = Field(description="routes shown that this node serves")
    connections_active: int
    rates: RouteRatesOut | None = Field(description="null on the first reading")


class StatsHistoryOut(_Out):
    """The last five minutes of a route's rates, kept by the node (wherever the route is
    served in its cluster) from a sample of the counters each second."""

    app: str
    id: int
    interval: float = Field(description="seconds between samples")
    at: list[float] = Field(description="each sample's time, Unix seconds, oldest first")
    connections: list[float] = Field(description="new connections per second")
    bytes_in: list[float] = Field(description="bytes per second, client to backend")
    bytes_out: list[float] = Field(description="bytes per second, backend to client")
    errors: list[float] = Field(description="connect failures and refused clients per second")


class StatsOut(_Out):
    """What GET /stats answers: this node, and each route it serves."""

    node: NodeStatsOut
    routes: list[RouteStatsOut]


class ReseedRoute(_Out):
    app: str
    route: int
    frontend_ip: str
    port: int | None = None
    reason: str | None = Field(None, description="why it was not written (conflicts, skipped)")


class ReseedOut(_Out):
    """What ``POST /cluster/reseed`` wrote back into Redis (docs/cluster.md)."""

    epoch: str = Field(description="the cluster epoch Redis holds now")
    previous_epoch: str | None = Field(description="the epoch this node followed before")
    written: list[ReseedRoute] = Field(description="routes written, with their ids and ports")
    unchanged: list[ReseedRoute] = Field(description="routes Redis held already, identical")
    conflicts: list[ReseedRoute] = Field(
        description="routes Redis holds with other content (or another route on their "
        "address): not written; with any, the answer is 409 and the node does not follow Redis"
    )
    skipped: list[ReseedRoute] = Field(description="routes of IPs this node holds no lease of")


class AdoptOut(_Out):
    """What ``POST /cluster/adopt`` did."""

    epoch: str = Field(description="the cluster epoch this node follows now")
    previous_epoch: str | None
    routes: int = Field(description="routes this node serves after following Redis")


class TokenCreated(_Out):
    """The one answer that carries a token: it is stored hashed and cannot be shown again."""

    id: int = _read_only()
    token: str = _read_only(description="send as 'Authorization: Bearer TOKEN'")
    created_at: datetime = _read_only()


class TokenOut(_Out):
    id: int = _read_only()
    created_at: datetime = _read_only()


class CertificateOut(_Out):
    """A certificate as stored, never its key: the chain, and what its leaf says."""

    name: str
    names: list[str] = _read_only(
        description="the leaf's DNS names and IP addresses (subjectAltName, else its CN)"
    )
    subject: str = _read_only(description="RFC 4514")
    issuer: str = _read_only(description="RFC 4514")
    not_before: datetime = _read_only()
    not_after: datetime = _read_only()
    fingerprint_sha256: str = _read_only(description="of the leaf's DER, hex")
    chain: int = _read_only(description="certificates in cert, the leaf included")
    cert: str = Field(description="PEM: the leaf first, then its intermediates")


class FieldError(_Out):
    field: str
    message: str


class Problem(_Out):
    """An RFC 9457 problem document."""

    type: str
    title: str
    status: int
    detail: str
    errors: list[FieldError] = Field(
        default_factory=list, description="422 only: each invalid field of the body"
    )
