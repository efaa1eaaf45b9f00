"""One Settings object: every CLI flag and RESTCP_* environment variable maps onto a field."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from restcp.model import DEFAULT_CONNECT_TIMEOUT, DEFAULT_IDLE_TIMEOUT


@dataclass(frozen=True)
class Settings:
    api_host: str = "127.0.0.1"
    api_port: int = 8001
    store: str = "sqlite:///restcp.db"
    frontend_ips: tuple[str, ...] = ("127.0.0.1",)
    port_range: tuple[int, int] = (10000, 19999)
    log_level: str = "info"
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT
    idle_timeout: float = DEFAULT_IDLE_TIMEOUT
    drain_timeout: float = 30.0
    # How often the node re-reads the whole store, so that no change is ever lost for long.
    resync_interval: float = 5.0
    # Relayed connections the node holds at once; None is no cap.
    max_connections: int | None = None


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
