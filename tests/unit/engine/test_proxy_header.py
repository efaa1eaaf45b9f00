"""The native engine's PROXY headers (built in C, _relay.pyx) against the asyncio data
plane's (restcp/core/proxy_protocol.py): byte for byte, over many addresses of both
families, IPv4-mapped ones, zero runs of every shape, and addresses of two families."""

from __future__ import annotations

import ipaddress
import socket
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from restcp.core import proxy_protocol
from restcp.engine import load, sockaddr

_relay, _why = load()
assert _relay is not None, _why
VERSIONS = {1: "v1", 2: "v2"}


def scoped(ip: str, port: int, scope: int) -> bytes:
    """A struct sockaddr_in6 with a scope id (a link-local peer), as accept(2) fills it."""
    packed = socket.inet_pton(socket.AF_INET6, ip)
    return (
        struct.pack("=H", socket.AF_INET6)
        + struct.pack("!HI16s", port, 0, packed)
        + (struct.pack("=I", scope))
    )


def expected(version: int, src: tuple[str, int] | None, dst: tuple[str, int] | None) -> bytes:
    return proxy_protocol.header(VERSIONS[version], src, dst)


def engine(version: int, src: tuple[str, int] | None, dst: tuple[str, int] | None) -> bytes:
    raw_src = sockaddr(*src)[1] if src else b""
    raw_dst = sockaddr(*dst)[1] if dst else b""
    header: bytes = _relay.proxy_header(version, raw_src, raw_dst)
    return header


# Zero runs of every shape (Python's text compresses the first longest run of two or more;
# inet_ntop writes some as ::a.b.c.d), the mapped and compatible forms, the bounds.
EDGES = [
    "::", "::1", "1::", "1:0:2:3:4:5:6:7", "1:0:0:2:0:0:3:4", "1:0:0:2:0:0:0:3",
    "0:0:1:0:0:0:0:1", "1:0:0:0:2:0:0:0", "::1.2.3.4", "::ffff:1.2.3.4", "::ffff:0.0.0.0",
    "::ffff:0:1.2.3.4", "64:ff9b::1.2.3.4", "fe80::1", "2001:db8::ff00:42:8329",
    "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", "0:0:0:0:0:1:0:0", "1:2:3:4:5:6:7:0",
    "abcd:ef01:2345:6789:abcd:ef01:2345:6789", "::fff:1.2.3.4", "100::ffff:1.2.3.4",
    "0.0.0.0", "255.255.255.255", "127.0.0.1", "10.1.2.3",
]  # fmt: skip
PORTS = [0, 1, 80, 65535]


@pytest.mark.parametrize("version", [1, 2])
@pytest.mark.parametrize("src", EDGES)
@pytest.mark.parametrize("dst", ["127.0.0.1", "::1", "::ffff:10.0.0.1", "2001:db8::1"])
def test_edges(version: int, src: str, dst: str) -> None:
    for port in PORTS:
        pair = (src, port), (dst, 65535 - port)
        assert engine(version, *pair) == expected(version, *pair)


@pytest.mark.parametrize("version", [1, 2])
def test_unknown_addresses(version: int) -> None:
    """No destination (getsockname failed): v1's UNKNOWN line, v2's LOCAL header."""
    assert engine(version, ("127.0.0.1", 1), None) == expected(version, ("127.0.0.1", 1), None)
    assert engine(version, None, ("::1", 1)) == expected(version, None, ("::1", 1))


@pytest.mark.parametrize("version", [1, 2])
def test_scope_id_left_out(version: int) -> None:
    """A link-local client (accept(2) gives its scope id): the address alone, as Python."""
    got = _relay.proxy_header(version, scoped("fe80::1", 4000, 2), sockaddr("fe80::2", 80)[1])
    assert got == expected(version, ("fe80::1%2", 4000), ("fe80::2", 80))


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="version 1 or 2"):
        _relay.proxy_header(3, b"", b"")
    with pytest.raises(ValueError, match="version 1 or 2"):
        _relay.proxy_header(1, b"x" * 200, b"")


v4 = st.builds(lambda n: str(ipaddress.IPv4Address(n)), st.integers(0, 2**32 - 1))
# Random groups, with zero groups made likely so runs of every length come up.
group = st.one_of(st.just(0), st.just(0), st.integers(0, 0xFFFF))
v6 = st.builds(
    lambda gs: str(ipaddress.IPv6Address(b"".join(g.to_bytes(2, "big") for g in gs))),
    st.lists(group, min_size=8, max_size=8),
)
mapped = st.builds(lambda ip: f"::ffff:{ip}", v4)
addresses = st.tuples(st.one_of(v4, v6, mapped), st.integers(0, 65535))


@settings(max_examples=2000, deadline=None)
@given(st.sampled_from([1, 2]), addresses, addresses)
def test_random_addresses(version: int, src: tuple[str, int], dst: tuple[str, int]) -> None:
    """Of one family or two (then UNKNOWN / LOCAL, as Python)."""
    assert engine(version, src, dst) == expected(version, src, dst)
