"""Backend addresses: what counts as an IP literal, what as a host name, and nothing else."""

from __future__ import annotations

import ipaddress
import socket

import pytest
from hypothesis import given
from hypothesis import strategies as st

from restcp.model import canonical_host, is_host_name


@pytest.mark.parametrize(
    ("text", "canonical"),
    [
        ("127.0.0.1", "127.0.0.1"),
        ("::FFFF:1.2.3.4", "::ffff:102:304"),
        ("LocalHost", "localhost"),
        ("db-1.Internal", "db-1.internal"),
        ("a.b.c.", "a.b.c."),
        ("x" * 63 + ".example", "x" * 63 + ".example"),
    ],
)
def test_canonical_forms(text: str, canonical: str) -> None:
    assert canonical_host(text) == canonical


@pytest.mark.parametrize(
    "text",
    [
        "",
        ".",
        "2130706433",  # 127.0.0.1 to inet_aton
        "0x7f000001",
        "0x7f.1",
        "127.1",
        "1.2.3",
        "a.1",
        "a.1com",
        "-a.example",
        "a-.example",
        "a..b",
        "a b",
        "a_b.example",
        "x" * 64 + ".example",
        "a." * 127 + "com",  # 257 characters
        "127.0.0.1:80",
        "[::1]",
        "\u00e9.example",
        "\uff11.example",
        "localhost ",
    ],
)
def test_everything_else_is_refused(text: str) -> None:
    with pytest.raises(ValueError, match="address literal or a DNS host name"):
        canonical_host(text)


@given(st.ip_addresses())
def test_ip_literals_are_never_names(
    address: ipaddress.IPv4Address | ipaddress.IPv6Address,
) -> None:
    assert not is_host_name(canonical_host(str(address)))


@given(
    st.from_regex(r"[a-z0-9]([a-z0-9-]{0,10}[a-z0-9])?(\.[a-z][a-z0-9]{0,10}){1,3}", fullmatch=True)
)
def test_names_are_names_and_never_numbers(name: str) -> None:
    assert is_host_name(canonical_host(name))
    # Whatever a name is, the C library does not read it as an address.
    with pytest.raises(OSError, match="illegal IP address"):
        socket.inet_aton(name)
