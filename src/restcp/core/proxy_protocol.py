"""PROXY protocol headers (HAProxy's send-proxy / send-proxy-v2), so a backend sees the
real client address. Spec: https://www.haproxy.org/download/3.0/doc/proxy-protocol.txt

Pure functions of the two endpoints of the client's connection: the client (source) and
the frontend address it connected to (destination), and, for a connection whose TLS the
proxy terminated, what its handshake said (``TlsInfo``), which a v2 header carries in
TLVs after the addresses (spec 2.2), as HAProxy's send-proxy-v2-ssl-cn does:

    TLV:              type(1) length(2) value
    PP2_TYPE_AUTHORITY 0x02   the server name the client sent (SNI), UTF-8
    PP2_TYPE_SSL       0x20   client(1) verify(4) sub-TLVs:
        client flags   PP2_CLIENT_SSL 0x01 (always), PP2_CLIENT_CERT_CONN 0x02 (a client
                       certificate on this connection), PP2_CLIENT_CERT_SESS 0x04 (on its
                       TLS session: this connection's, or the one it resumed)
        verify         0 if the client presented a certificate and it verified, else 1
        0x21 VERSION   "TLSv1.3"      0x22 CN  the client certificate's subject CN
        0x23 CIPHER    "TLS_AES_256_GCM_SHA384"

The header's length field (16 bits) counts the addresses and the TLVs. A text longer than
MAX_TEXT bytes (more than a DNS name or an X.509 common name may be) is left out rather
than sent cut.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass
from typing import Final, Literal

ProxyProtocol = Literal["v1", "v2"]

V2_SIGNATURE: Final = b"\r\n\r\n\x00\r\nQUIT\n"
_V2_PROXY: Final = 0x21  # version 2, command PROXY
_V2_LOCAL: Final = 0x20  # version 2, command LOCAL: no address block
_V2_TCP4: Final = 0x11
_V2_TCP6: Final = 0x21

Address = tuple[str, int]

PP2_TYPE_AUTHORITY: Final = 0x02
PP2_TYPE_SSL: Final = 0x20
PP2_SUBTYPE_SSL_VERSION: Final = 0x21
PP2_SUBTYPE_SSL_CN: Final = 0x22
PP2_SUBTYPE_SSL_CIPHER: Final = 0x23
PP2_CLIENT_SSL: Final = 0x01
PP2_CLIENT_CERT_CONN: Final = 0x02
PP2_CLIENT_CERT_SESS: Final = 0x04
MAX_TEXT: Final = 255


@dataclass(frozen=True, slots=True)
class TlsInfo:
    """What a terminated connection's TLS handshake said, for the header's TLVs."""

    version: str  # "TLSv1.3"
    cipher: str  # OpenSSL's name of the cipher suite
    sni: str | None = None  # the server name the client sent
    # A client certificate: on its TLS session ("session", a resumed one included), and
    # presented in this connection's own handshake too ("connection"); None without one.
    client_certificate: Literal["connection", "session"] | None = None
    client_cn: str | None = None  # that certificate's subject common name


def tlvs(tls: TlsInfo) -> bytes:
    """The TLVs of a terminated connection: AUTHORITY (with SNI), then SSL."""
    client = PP2_CLIENT_SSL
    if tls.client_certificate is not None:
        client |= PP2_CLIENT_CERT_SESS
        if tls.client_certificate == "connection":
            client |= PP2_CLIENT_CERT_CONN
    # A certificate the client presents is verified in the handshake, which fails if it
    # does not verify: one that is there verified.
    verify = 0 if tls.client_certificate is not None else 1
    ssl = struct.pack("!BI", client, verify) + _tlv(PP2_SUBTYPE_SSL_VERSION, tls.version)
    if tls.client_certificate is not None:
        ssl += _tlv(PP2_SUBTYPE_SSL_CN, tls.client_cn)
    ssl += _tlv(PP2_SUBTYPE_SSL_CIPHER, tls.cipher)
    return _tlv(PP2_TYPE_AUTHORITY, tls.sni) + _tlv_bytes(PP2_TYPE_SSL, ssl)


def _tlv(kind: int, text: str | None) -> bytes:
    if not text:
        return b""
    value = text.encode("utf-8", "replace")
    return _tlv_bytes(kind, value) if len(value) <= MAX_TEXT else b""


def _tlv_bytes(kind: int, value: bytes) -> bytes:
    return struct.pack("!BH", kind, len(value)) + value


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


def v2(src: Address | None, dst: Address | None, tls: TlsInfo | None = None) -> bytes:
    """The binary header: signature, version/command, family, length, addresses, and the
    TLVs of ``tls`` (a connection whose TLS was terminated). Without addresses it is a
    LOCAL header, which the receiver discards whole: it has no TLVs."""
    ips = _ips(src, dst) if src and dst else None
    if ips is None or src is None or dst is None:
        return V2_SIGNATURE + struct.pack("!BBH", _V2_LOCAL, 0x00, 0)
    family = _V2_TCP4 if ips[0].version == 4 else _V2_TCP6
    body = ips[0].packed + ips[1].packed + struct.pack("!HH", src[1], dst[1])
    if tls is not None:
        body += tlvs(tls)
    return V2_SIGNATURE + struct.pack("!BBH", _V2_PROXY, family, len(body)) + body


def header(
    version: ProxyProtocol, src: Address | None, dst: Address | None, tls: TlsInfo | None = None
) -> bytes:
    """The header of ``version``; ``tls`` only in v2's TLVs (v1 has no room for it)."""
    return v1(src, dst) if version == "v1" else v2(src, dst, tls)
