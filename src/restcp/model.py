"""The domain values every layer shares: plain frozen dataclasses, stdlib only.

A *route* is a frontend address (``frontend_ip``:``port``) owned by an *app*; clients that
connect to it are relayed to one of the route's *backends*. Ids count from 1: route ids per
app, backend ids per route, and neither is ever reused.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re
from dataclasses import dataclass, field
from typing import Final, Literal

Balance = Literal["random", "round_robin", "least_conn", "two_choices", "source_hash"]
AdminState = Literal["enabled", "drain", "disabled"]
WhenAllDown = Literal["fail_fast", "try_all"]
ProxyProtocol = Literal["v1", "v2"]
# A backend's own PROXY protocol setting: None follows the route, "none" turns it off.
BackendProxyProtocol = Literal["v1", "v2", "none"]
Health = Literal["unknown", "up", "down"]
# A route's splice setting: False never, True for every connection from its connect,
# "auto" once a connection moves bulk (proxy/connection.py).
SpliceMode = bool | Literal["auto"]
# Faults on demand (core/toxics.py has each type's attributes, units and defaults).
ToxicType = Literal[
    "latency",
    "bandwidth",
    "slow_close",
    "timeout",
    "reset_peer",
    "slicer",
    "limit_data",
    "limit_time",
]
# upstream: client -> backend; downstream: backend -> client (toxiproxy's words).
Stream = Literal["upstream", "downstream"]
# The oldest TLS version a terminating route accepts.
TlsVersion = Literal["1.2", "1.3"]

DEFAULT_CONNECT_TIMEOUT: Final = 5.0
DEFAULT_HANDSHAKE_TIMEOUT: Final = 10.0
DEFAULT_IDLE_TIMEOUT: Final = 3600.0
DEFAULT_HALF_CLOSE_TIMEOUT: Final = 60.0
MAX_WEIGHT: Final = 256


@dataclass(frozen=True, slots=True)
class Backend:
    """One address a route relays to, and how much traffic it may take."""

    id: int
    # An IP literal, or a DNS host name that the data plane resolves (and the address policy
    # judges) at every connect and every probe: see canonical_host.
    ip: str
    port: int
    # 0-256; a backend of weight 2 gets twice the new clients of one of weight 1; 0 gets none.
    weight: int = 1
    # enabled: takes traffic; drain: no new clients, open ones finish (or are closed after
    # drain_timeout); disabled: no traffic and no health checks.
    state: AdminState = "enabled"
    drain_timeout: float | None = None
    max_connections: int | None = None
    proxy_protocol: BackendProxyProtocol | None = None

    def replace(self, **changes: object) -> Backend:
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]


@dataclass(frozen=True, slots=True)
class HealthCheck:
    """An active check, with HAProxy's defaults. ``send``/``expect`` make it a request/reply
    probe; ``expect`` is a prefix of the reply, or ``re:PATTERN`` for a regular expression."""

    interval: float = 2.0
    timeout: float = 1.0
    rise: int = 2
    fall: int = 3
    send: str | None = None
    expect: str | None = None
    # The health a backend has before its first check; "unknown" takes traffic.
    initial: Health = "unknown"


@dataclass(frozen=True, slots=True)
class Certificate:
    """A certificate chain and its private key, by name (docs/tls.md). Validated before it
    is stored (core/certificates.py); the key never leaves the node's store but for the
    data plane that terminates TLS with it."""

    name: str
    cert: str  # PEM: the leaf first, then its intermediates
    key: str  # PEM

    def __repr__(self) -> str:
        # Never the key in a log line or a traceback.
        return f"Certificate(name={self.name!r})"


@dataclass(frozen=True, slots=True)
class TlsSettings:
    """A route that terminates TLS (docs/tls.md): its clients' handshakes are answered with
    one of ``certificates`` (by name; the one whose names match the client's SNI), and the
    backends get the plain bytes."""

    certificates: tuple[str, ...]
    min_version: TlsVersion = "1.2"
    # Protocols offered in ALPN, in the route's order of preference; () offers none.
    alpn: tuple[str, ...] = ()
    # PEM CA bundle: clients must present a certificate it issued (mTLS); None asks none.
    client_ca: str | None = None
    # Seconds a client has from accept to a finished handshake.
    handshake_timeout: float = DEFAULT_HANDSHAKE_TIMEOUT


@dataclass(frozen=True, slots=True)
class BackendTls:
    """TLS towards a route's backends (docs/tls.md): each connect, and each health probe, is
    a TLS handshake with the backend, and the bytes go encrypted."""

    # Check the backend's certificate: issued by ``ca`` (None: the system's CA store) for
    # ``server_name``. False takes any certificate (a self-signed backend, on trust).
    verify: bool = True
    # PEM CA bundle the backend's certificate must come from; None: the system's store.
    ca: str | None = None
    # The name sent as SNI and checked in the backend's certificate; None: the backend's
    # host when it is a DNS name (an IP literal is checked against the certificate's IP
    # addresses, and no SNI is sent).
    server_name: str | None = None
    # A stored certificate (by name) presented to backends that ask for one (mTLS).
    certificate: str | None = None


@dataclass(frozen=True, slots=True)
class RouteSettings:
    """What a user may set on a route; everything but the address and the backends."""

    balance: Balance = "random"
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT
    # Seconds a connection may stay silent both ways before it is closed; 0 disables.
    idle_timeout: float = DEFAULT_IDLE_TIMEOUT
    # Off by default: a check opens connections the backend may not expect (a one-shot
    # `ncat -l` would be used up by the first probe).
    health_check: HealthCheck | None = None
    when_all_down: WhenAllDown = "fail_fast"
    # Open connections the route accepts at once; None is no limit.
    max_connections: int | None = None
    # Seconds a half-closed connection may wait for the other direction to end; 0 disables.
    half_close_timeout: float = DEFAULT_HALF_CLOSE_TIMEOUT
    # Backends tried for one client before it is closed (each a different backend).
    max_connect_attempts: int = 3
    proxy_protocol: ProxyProtocol | None = None
    # Connect failures in a row on real traffic that mark a backend down; 0 turns it off.
    passive_fall: int = 3
    # Without active checks, seconds until a passively downed backend is tried again.
    passive_cooldown: float = 10.0
    # Relay with os.splice through kernel pipes (proxy/splice.py): bulk bytes stay in the
    # kernel, for less CPU per byte; each direction that is moving bulk holds a pipe. True:
    # every connection, from its connect; "auto": a connection once a read of it is bulk
    # (chatty and idle ones cost what they cost without splice: the default).
    splice: SpliceMode = "auto"
    # False: the port refuses new clients and open connections are closed (toxiproxy's
    # "down"); True again serves on the same port.
    enabled: bool = True
    # The seed of the route's random draws (toxicity, jitter, slicer sizes); None: the
    # node's --seed, or a random one when that is not set either.
    seed: int | None = None
    # A name unique within the route's app (None: none), by which toxiproxy's API
    # (api/toxiproxy.py) knows it as a proxy.
    name: str | None = None
    # The TLS server names the route takes on a port it shares with other routes (SNI
    # routing, docs/tls.md): exact names, "*.suffix" wildcards, "*" for the port's default;
    # canonical (core/sni.py). None: the route has its port to itself.
    sni: tuple[str, ...] | None = None
    # Terminate TLS from clients (None: the bytes are relayed as they come).
    tls: TlsSettings | None = None
    # Speak TLS to the backends (None: plain TCP, or whatever the client sent).
    backend_tls: BackendTls | None = None

    def certificate_names(self) -> tuple[str, ...]:
        """The stored certificates the route is served with: its tls's, then the client
        certificate it shows its backends."""
        names = self.tls.certificates if self.tls is not None else ()
        backend = self.backend_tls
        if (
            backend is not None
            and backend.certificate is not None
            and backend.certificate not in names
        ):
            names = (*names, backend.certificate)
        return names

    def replace(self, **changes: object) -> RouteSettings:
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]


@dataclass(frozen=True, slots=True)
class Toxic:
    """A fault applied to a route's connections, in one direction (``stream``).

    ``attributes`` holds every attribute of the type (core.toxics.SPECS), defaults filled
    in, as sorted (name, value) pairs, so that equal toxics compare equal. ``toxicity`` is
    the chance that a connection meets it, drawn once per connection; ``clients`` (CIDR
    networks, canonical) limits it to connections from those addresses (empty: all)."""

    name: str
    type: ToxicType
    stream: Stream = "downstream"
    toxicity: float = 1.0
    attributes: tuple[tuple[str, int], ...] = ()
    clients: tuple[str, ...] = ()

    def attribute(self, name: str) -> int:
        for key, value in self.attributes:
            if key == name:
                return value
        raise KeyError(name)

    def replace(self, **changes: object) -> Toxic:
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]


@dataclass(frozen=True, slots=True)
class Route:
    """A route as stored: its address is the one its owner bound."""

    app: str
    id: int
    frontend_ip: str
    port: int
    settings: RouteSettings = field(default_factory=RouteSettings)
    backends: tuple[Backend, ...] = ()
    # In the order they were added: a connection's bytes pass them in that order.
    toxics: tuple[Toxic, ...] = ()
    # The certificates its ``settings`` name (certificate_names), as stored when the route
    # was read for serving (the route service fills them in; stores leave them empty): a replaced
    # certificate makes the route served differently, so it is part of what a route is.
    certificates: tuple[Certificate, ...] = ()
    # Bumped by every stored change of the route or its backends (a shared store's; 0 in an
    # embedded one): the node serving the route acknowledges the version it applied. Not
    # part of what a route is: two reads of one state compare equal whatever their version.
    version: int = field(default=0, compare=False)

    @property
    def key(self) -> RouteKey:
        return (self.app, self.id)

    @property
    def url(self) -> str:
        return f"tcp://{format_host(self.frontend_ip)}:{self.port}/"

    def backend(self, backend_id: int) -> Backend | None:
        for backend in self.backends:
            if backend.id == backend_id:
                return backend
        return None

    def toxic(self, name: str) -> Toxic | None:
        for toxic in self.toxics:
            if toxic.name == name:
                return toxic
        return None


RouteKey = tuple[str, int]


# An app id in a path: 1-64 of A-Z a-z 0-9 . _ -, but not "." or "..": URL path resolution
# removes those segments (RFC 3986 5.2.4), so curl, browsers and proxies would send another
# path, and a Location naming them would point elsewhere.
APP_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")
DOT_SEGMENTS = (".", "..")
APP_ID_RULE = "1-64 of A-Z a-z 0-9 . _ -, not . or .."


def is_app_id(text: str) -> bool:
    return APP_ID.fullmatch(text) is not None and text not in DOT_SEGMENTS


_LABEL = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?")


def canonical_host(text: str) -> str:
    """A backend address as stored: an IP literal in canonical form, or a DNS host name in
    lower case. ValueError for anything else.

    A name's last label must start with a letter (as every top-level domain does): a name
    the resolver would read as a number instead (``2130706433``, ``0x7f.1``, ``1.2.3``, all
    127.0.0.1 or worse to inet_aton) is refused, not guessed at."""
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        pass
    name = text.lower()
    labels = name[:-1].split(".") if name.endswith(".") else name.split(".")
    if (
        len(name) > 253
        or not all(_LABEL.fullmatch(label) for label in labels)
        or not labels[-1][0].isalpha()
    ):
        raise ValueError("must be an IPv4 or IPv6 address literal or a DNS host name")
    return name


_SNI_LABEL = re.compile(r"[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?")


def canonical_server_name(pattern: str) -> str:
    """A route's server name pattern (``RouteSettings.sni``) as stored: lower case, no
    trailing dot. ValueError if it is none of a DNS name, ``*.`` and a DNS name, or ``*``
    (core/sni.py says what each matches)."""
    if pattern == "*":
        return pattern
    text = pattern.lower().removesuffix(".")
    name = text[2:] if text.startswith("*.") else text
    labels = name.split(".")
    if not name or len(name) > 253 or not all(_SNI_LABEL.fullmatch(label) for label in labels):
        raise ValueError(
            f"{pattern!r} is not a server name: a DNS name (ASCII; an IDNA name in its "
            "xn-- form), *. and a DNS name, or * for the port's default"
        )
    return text


def is_host_name(host: str) -> bool:
    """Whether a canonical_host value is a name to resolve (else an IP literal). Cheap enough
    for every connect: a literal is all digits and dots (IPv4) or has a colon (IPv6), and a
    name never is, since its last label starts with a letter."""
    return ":" not in host and not host.replace(".", "").isdigit()


def format_host(ip: str) -> str:
    """An IP literal as it appears in a URL: IPv6 in brackets."""
    return f"[{ip}]" if ":" in ip else ip


@dataclass(frozen=True, slots=True)
class ReplacedAddress:
    """An address a backend had before it was replaced, with the connections to it that
    are still open (they end there: a connection stays with the address it reached)."""

    ip: str
    port: int
    active_connections: int


@dataclass(frozen=True, slots=True)
class BackendStatus:
    """What the node serving a route observes of one backend (read-only in the API)."""

    health: Health = "unknown"
    # Wall-clock time (Unix seconds) and cause of the last health change.
    health_changed_at: float | None = None
    health_reason: str = ""
    # Open connections to its current address.
    active_connections: int = 0
    # Earlier addresses of it that still have open connections, until their last ends.
    replaced: tuple[ReplacedAddress, ...] = ()
    # The last active check (None: none yet, or no checks): Unix seconds, passed, why not.
    checked_at: float | None = None
    check_ok: bool | None = None
    check_reason: str = ""
