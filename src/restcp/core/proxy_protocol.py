"""PROXY protocol headers (HAProxy's send-proxy / send-proxy-v2), so a backend sees the
real client address. Spec: https://www.haproxy.org/download/3.0/doc/proxy-protocol.txt

Pure functions of the two endpoints of the client's connection: the client (source) and
the frontend address it connected to (destination).
"""

from __future__ import annotations

import ipaddress
import struct
from typing import Final, Literal

ProxyProtocol = Literal["v1", "v2"]

V2_SIGNATURE: Final = b"\r\n\r\n\x00\r\nQUIT\n"
_V2_PROXY: Final = 0x21  # version 2, command PROXY
_V2_LOCAL: Final = 0x20  # version 2, command LOCAL: no address block
_V2_TCP4: Final = 0x11
_V2_TCP6: Final = 0x21

Address = tuple[str, int]


def _ips(
    src: Address, dst: Address
) -> (
    tuple[ipaddress.IPv4Address, ipaddress.IPv4Address]
    | tuple[ipaddress.IPv6Address, ipaddress.IPv6Address]
    | None
):
    """Both addresses in one family (IPv4-mapped IPv6 folded to IPv4), or None."""
    a, b = _ip(src[0]), _ip(dst[0])
    if isinstance(a, ipaddress.IPv4Address) and isinstance(b, ipaddress.IPv4Address):
        return a, b
    if isinstance(a, ipaddress.IPv6Address) and isinstance(b, ipaddress.IPv6Address):
        return a, b
    return None


def _ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        # Not an IP literal (a Unix socket path, an empty peername): the spec's UNKNOWN.
        return None
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return ip.ipv4_mapped
        # A link-local peer comes as "fe80::1%eth0"; a zone id is not valid on a PROXY line
        # and could push it past the 107 bytes a receiver must accept.
        if ip.scope_id is not None:
            return ipaddress.IPv6Address(ip.packed)
    return ip


def v1(src: Address | None, dst: Address | None) -> bytes:
    """``PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\\r\\n`` (or ``PROXY UNKNOWN``)."""
    ips = _ips(src, dst) if src and dst else None
    if ips is None or src is None or dst is None:
        return b"PROXY UNKNOWN\r\n"
    family = "TCP4" if ips[0].version == 4 else "TCP6"
    return f"PROXY {family} {ips[0]} {ips[1]} {src[1]} {dst[1]}\r\n".encode("ascii")


def v2(src: Address | None, dst: Address | None) -> bytes:
    """The binary header: signature, version/command, family, length, addresses."""
    ips = _ips(src, dst) if src and dst else None
    if ips is None or src is None or dst is None:
        return V2_SIGNATURE + struct.pack("!BBH", _V2_LOCAL, 0x00, 0)
    family = _V2_TCP4 if ips[0].version == 4 else _V2_TCP6
    body = ips[0].packed + ips[1].packed + struct.pack("!HH", src[1], dst[1])
    return V2_SIGNATURE + struct.pack("!BBH", _V2_PROXY, family, len(body)) + body


def header(version: ProxyProtocol, src: Address | None, dst: Address | None) -> bytes:
    return v1(src, dst) if version == "v1" else v2(src, dst)
