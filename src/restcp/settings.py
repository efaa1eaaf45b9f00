"""One Settings object: every CLI flag and RESTCP_* environment variable maps onto a field."""

from __future__ import annotations

import ipaddress
import re
import socket
from dataclasses import dataclass, field

from restcp.model import DEFAULT_CONNECT_TIMEOUT, DEFAULT_IDLE_TIMEOUT


@dataclass(frozen=True)
class Settings:
    api_host: str = "127.0.0.1"
    api_port: int = 8001
    store: str = "sqlite:///restcp.db"
    frontend_ips: tuple[str, ...] = ("127.0.0.1",)
    port_range: tuple[int, int] = (10000, 19999)
    log_level: str = "info"
    log_format: str = "text"
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT
    idle_timeout: float = DEFAULT_IDLE_TIMEOUT
    drain_timeout: float = 30.0
    # How often the node re-reads the whole store, so that no change is ever lost for long.
    resync_interval: float = 5.0
    # Cluster (Redis store) only: how long a node that does not serve a route's frontend IP
    # waits for the owner to bind it, and how long a node's claim on a frontend IP lives
    # without being renewed (a dead node's IPs are taken over after this).
    provision_timeout: float = 5.0
    lease_ttl: float = 10.0
    # Cluster (Redis store) only: what stays the same when this node is restarted, so that
    # it may take back at once the leases its dead predecessor of that name held on this
    # host (cluster/identity.py).
    node_name: str = field(default_factory=lambda: default_node_name())
    # Cluster (Redis store) only: the local file of what this node serves, which it serves
    # from when it starts with Redis down, and writes back when Redis lost it; None: none.
    snapshot: str | None = "restcp-snapshot.db"
    # Backend address policy: CIDRs allowed (empty: all not denied) and denied on top of
    # core.policy.DEFAULT_DENY.
    backend_allow: tuple[str, ...] = ()
    backend_deny: tuple[str, ...] = ()
    # Relayed connections the node holds at once; None is no cap.
    max_connections: int | None = None
    max_connections_per_app: int | None = None
    # The admin token of the API; None turns authentication off. Kept out of repr() so that
    # no log line or traceback that prints the settings prints the token.
    api_token: str | None = field(default=None, repr=False)
    # Where the admin token came from, if from a file: SIGHUP reads it again (rotation).
    api_token_file: str | None = None
    # A token that reaches GET /metrics only (a Prometheus scraper's), and its file.
    metrics_token: str | None = field(default=None, repr=False)
    metrics_token_file: str | None = None
    # Serve an API without a token on a non-loopback address (refused otherwise).
    insecure: bool = False
    # Host names the API answers to besides its address and loopback names (the name given
    # in --api, --api-allowed-host); a browser's request for any other name is refused.
    api_allowed_hosts: tuple[str, ...] = ()
    # Seconds an API client has to send a request's head (from connecting, or from the
    # previous answer), and as long again for its body; an idle kept-alive connection closes.
    api_request_timeout: float = 30.0
    max_routes_per_app: int = 1000
    max_backends_per_route: int = 100
    max_toxics_per_route: int = 32
    # Data-plane processes: 1 is this process alone; N > 1 adds N-1 workers that serve the
    # same routes on SO_REUSEPORT sockets (restcp/workers/).
    workers: int = 1
    # Which data plane serves the routes it can: "native" (the compiled engine,
    # restcp.engine, for plain routes; docs/engine.md), or "asyncio" (every route).
    engine: str = "native"
    # The seed of every random draw of the toxics (toxicity, jitter, slicer sizes), unless a
    # route has its own; None: the node draws one at start and logs it (--seed replays it).
    seed: int | None = None
    # toxiproxy's REST API (api/toxiproxy.py) on this address, over the routes of
    # toxiproxy_app; None: not served. toxiproxy_config: its -config file, read at start.
    toxiproxy_api: tuple[str, int] | None = None
    toxiproxy_app: str = "toxiproxy"
    toxiproxy_config: str | None = None

    def exposed_without_token(self) -> bool:
        """Whether anyone beyond this machine may reach an API that asks for no token."""
        return self.api_token is None and not is_loopback(self.api_host)

    def toxiproxy_exposed(self) -> bool:
        """Whether toxiproxy's API (which never asks for a token) is reachable from beyond
        this machine."""
        return self.toxiproxy_api is not None and not is_loopback(self.toxiproxy_api[0])


# What a node name may hold; "@" separates it from the rest of a node id.
_NODE_NAME = re.compile(r"[A-Za-z0-9._-]{1,64}")


def parse_node_name(text: str) -> str:
    if not _NODE_NAME.fullmatch(text):
        raise ValueError(f"{text!r} is not a node name: use 1-64 of A-Z a-z 0-9 . _ -")
    return text


def default_node_name() -> str:
    """The host name, with any character a node name may not hold replaced by ``-``."""
    return re.sub(r"[^A-Za-z0-9._-]", "-", socket.gethostname())[:64] or "restcp"


def parse_host_port(text: str) -> tuple[str, int]:
    """``HOST:PORT`` or ``[V6]:PORT``; ValueError with a readable message otherwise."""
    host, sep, port_text = text.rpartition(":")
    if not sep or not host:
        raise ValueError(f"{text!r} is not HOST:PORT")
    if host.startswith("["):
        if not host.endswith("]") or len(host) == 2:
            raise ValueError(f"{text!r} is not HOST:PORT: unbalanced or empty brackets")
        host = host[1:-1]
    elif ":" in host or "]" in host:
        # Unbracketed, "::1:8001" could be ::1 on port 8001 or the address ::1:8001 alone.
        raise ValueError(f"{text!r} is not HOST:PORT: put an IPv6 address in brackets, [::1]:8001")
    port = _port(port_text, allow_zero=True)
    return host, port


def parse_port_range(text: str) -> tuple[int, int]:
    lo_text, sep, hi_text = text.partition("-")
    lo = _port(lo_text)
    hi = _port(hi_text) if sep else lo
    if lo > hi:
        raise ValueError(f"port range {text!r} is empty: LO must not exceed HI")
    return lo, hi


def parse_ip(text: str) -> str:
    """A canonical IP literal (so ``::0001`` and ``::1`` are one frontend)."""
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        raise ValueError(f"{text!r} is not an IPv4 or IPv6 address") from None


def _port(text: str, *, allow_zero: bool = False) -> int:
    # isdigit() alone admits "²" (int() then fails) and other scripts' digits such as "٨٠".
    if not (text.isascii() and text.isdigit()):
        raise ValueError(f"{text!r} is not a port number")
    port = int(text)
    lowest = 0 if allow_zero else 1
    if not lowest <= port <= 65535:
        raise ValueError(f"port {port} is outside {lowest}-65535")
    return port


# RFC 6750's b64token: what may follow "Bearer " in an Authorization header.
_B64TOKEN = re.compile(r"[A-Za-z0-9\-._~+/]+=*")
MIN_TOKEN_LENGTH = 16
# A DNS name (labels of letters, digits and hyphens), as a Host header may carry it.
_HOST_NAME = re.compile(r"(?!-)[a-z0-9-]{1,63}(?<!-)(\.(?!-)[a-z0-9-]{1,63}(?<!-))*\.?")


def parse_api_token(text: str) -> str:
    """An admin token as given (a file's trailing newline removed by the caller)."""
    if not _B64TOKEN.fullmatch(text):
        raise ValueError(
            "the API token may only contain A-Z a-z 0-9 - . _ ~ + / (and = at its end), "
            "as a Bearer token must"
        )
    if len(text) < MIN_TOKEN_LENGTH:
        raise ValueError(
            f"the API token is {len(text)} characters long; use at least {MIN_TOKEN_LENGTH} "
            "random ones, e.g. from: python3 -c 'import secrets; print(secrets.token_urlsafe(32))'"
        )
    return text


def read_token_file(path: str, flag: str = "--api-token-file") -> str:
    """The token in ``path`` (its trailing newline removed); ValueError saying why not."""
    try:
        with open(path, encoding="utf-8") as file:
            # Bounded: a token is short, and a path to /dev/zero must not hang the start.
            text = file.read(4097)
    except (OSError, UnicodeDecodeError) as err:
        raise ValueError(f"{flag} {path}: cannot read it: {err}") from None
    if len(text) > 4096:
        raise ValueError(f"{flag} {path}: too long for a token")
    try:
        return parse_api_token(text.strip())
    except ValueError as err:
        raise ValueError(f"{flag} {path}: {err}") from None


def parse_host_name(text: str) -> str:
    """A name or IP literal a Host header may carry, lowercased, without a port."""
    name = text.strip().lower()
    try:
        return parse_ip(name.removeprefix("[").removesuffix("]"))
    except ValueError:
        pass
    if len(name) > 253 or not _HOST_NAME.fullmatch(name):
        raise ValueError(f"{text!r} is not a host name or an IP address (and takes no port)")
    return name.rstrip(".")


def is_loopback(host: str) -> bool:
    """Whether ``host`` (an IP literal) is reachable from this machine only."""
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_loopback
