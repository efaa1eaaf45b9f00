from __future__ import annotations

import pytest

from restcp.settings import parse_host_port, parse_ip, parse_port_range


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1:8001", ("127.0.0.1", 8001)),
        ("localhost:8001", ("localhost", 8001)),
        ("[::1]:8001", ("::1", 8001)),
        ("[fe80::1%eth0]:80", ("fe80::1%eth0", 80)),
        # Port 0 asks the OS for a free port: tests bind the API that way.
        ("127.0.0.1:0", ("127.0.0.1", 0)),
        ("0.0.0.0:65535", ("0.0.0.0", 65535)),
    ],
)
def test_parse_host_port(text: str, expected: tuple[str, int]) -> None:
    assert parse_host_port(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "",
        "8001",
        ":8001",
        "127.0.0.1:",
        "127.0.0.1:65536",
        "127.0.0.1:-1",
        "127.0.0.1:+80",
        "127.0.0.1: 80",
        "127.0.0.1:80x",
        "127.0.0.1:٨٠",  # Arabic-Indic digits: str.isdigit() says yes
        "127.0.0.1:²",
        "[::1]",
        "::1:8001",  # ::1 port 8001, or ::1:8001 with no port?
        "[::1:8001",
        "::1]:8001",
        "[]:8001",
    ],
)
def test_parse_host_port_rejects(text: str) -> None:
    with pytest.raises(ValueError, match=r"HOST:PORT|port"):
        parse_host_port(text)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("10000-19999", (10000, 19999)),
        ("1-65535", (1, 65535)),
        ("8080", (8080, 8080)),
        ("8080-8080", (8080, 8080)),
    ],
)
def test_parse_port_range(text: str, expected: tuple[int, int]) -> None:
    assert parse_port_range(text) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("20-10", "empty"),
        ("0-10", "outside 1-65535"),
        ("10-65536", "outside 1-65535"),
        ("", "not a port number"),
        ("-10", "not a port number"),
        ("10-", "not a port number"),
        ("a-b", "not a port number"),
        ("10 - 20", "not a port number"),
        ("10-20-30", "not a port number"),
        ("٨٠-٩٠", "not a port number"),
        ("²", "not a port number"),
    ],
)
def test_parse_port_range_errors(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_port_range(text)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1", "127.0.0.1"),
        ("::1", "::1"),
        ("::0001", "::1"),
        ("0:0:0:0:0:0:0:1", "::1"),
        ("2001:DB8::0:1", "2001:db8::1"),
    ],
)
def test_parse_ip_canonicalises(text: str, expected: str) -> None:
    assert parse_ip(text) == expected


@pytest.mark.parametrize(
    "text",
    ["localhost", "example.com", "", " 127.0.0.1", "127.0.0.01", "127.1", "[::1]", "::1/128"],
)
def test_parse_ip_rejects_names_and_junk(text: str) -> None:
    with pytest.raises(ValueError, match="not an IPv4 or IPv6 address"):
        parse_ip(text)
