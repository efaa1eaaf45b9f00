"""The pieces of api/auth.py and the settings it is built from, one attack string at a time."""

from __future__ import annotations

import hashlib

import pytest

from restcp.api.auth import ApiConfig, _same_origin, hash_token, split_host
from restcp.settings import Settings, is_loopback, parse_api_token, parse_host_name

LOOPBACK = ApiConfig(api_host="127.0.0.1", allowed_hosts=frozenset({"restcp.internal"}))
WILDCARD = ApiConfig(api_host="0.0.0.0")
BOUND = ApiConfig(api_host="10.0.0.5")


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("localhost", ("localhost", None)),
        ("LocalHost:8001", ("localhost", 8001)),
        ("[::1]:8001", ("::1", 8001)),
        ("[::1]", ("::1", None)),
        ("127.0.0.1:1", ("127.0.0.1", 1)),
        ("[::1", None),
        ("[::1]x", None),
        ("::1", None),  # unbracketed IPv6 is "" + port ":1"
        ("a:b", None),
        ("a:0", None),
        ("a:65536", None),
        ("a:٨٠", None),
        ("a:", None),
        (":80", None),
        ("", None),
    ],
)
def test_split_host(value: str, expected: tuple[str, int | None] | None) -> None:
    assert split_host(value) == expected


@pytest.mark.parametrize(
    ("config", "name", "allowed"),
    [
        (LOOPBACK, "localhost", True),
        (LOOPBACK, "localhost.", True),
        (LOOPBACK, "127.0.0.1", True),
        (LOOPBACK, "127.9.9.9", True),
        (LOOPBACK, "::1", True),
        (LOOPBACK, "::ffff:127.0.0.1", True),
        (LOOPBACK, "restcp.internal", True),
        (LOOPBACK, "evil.restcp.internal", False),
        (LOOPBACK, "restcp.internal.evil", False),
        (LOOPBACK, "localhost.evil.example", False),
        (LOOPBACK, "evil.example", False),
        (LOOPBACK, "10.0.0.5", False),
        (LOOPBACK, "0.0.0.0", False),
        (LOOPBACK, "::", False),
        (LOOPBACK, "2130706433", False),  # 127.0.0.1 as a number: a name, not an address
        (LOOPBACK, "0x7f.1", False),
        (BOUND, "10.0.0.5", True),
        (BOUND, "10.0.0.6", False),
        (BOUND, "localhost", True),
        (WILDCARD, "192.0.2.7", True),
        (WILDCARD, "2001:db8::1", True),
        (WILDCARD, "evil.example", False),
    ],
)
def test_host_allowed(config: ApiConfig, name: str, allowed: bool) -> None:
    assert config.host_allowed(name) is allowed


@pytest.mark.parametrize(
    ("origin", "host", "same"),
    [
        ("http://localhost:8001", "localhost:8001", True),
        ("http://LOCALHOST:8001", "localhost:8001", True),
        ("https://localhost", "localhost:443", True),
        ("http://localhost", "localhost", True),
        ("http://[::1]:8001", "[0::1]:8001", True),
        ("http://localhost:8001", "localhost:8002", False),
        ("http://localhost:8001", "127.0.0.1:8001", False),
        ("http://localhost", "localhost:443", False),
        ("null", "localhost:8001", False),
        ("http://localhost:8001/", "localhost:8001", False),
        ("http://x@localhost:8001", "localhost:8001", False),
        ("http://localhost:8001?x", "localhost:8001", False),
        ("ws://localhost:8001", "localhost:8001", False),
        ("http://localhost:8001", None, False),
        ("http://localhost:8001.evil", "localhost:8001", False),
    ],
)
def test_same_origin(origin: str, host: str | None, same: bool) -> None:
    assert _same_origin(origin, host) is same


def test_tokens_are_stored_as_sha256_hex() -> None:
    assert hash_token("abc") == hashlib.sha256(b"abc").hexdigest()


def test_the_config_keeps_a_digest_not_the_token() -> None:
    token = "a-real-admin-token-0123456789"
    config = ApiConfig.from_settings(Settings(api_token=token, max_routes_per_app=7))
    assert config.admin_token_sha256 == hashlib.sha256(token.encode()).digest()
    assert token not in repr(config)
    assert token not in repr(Settings(api_token=token))
    assert config.max_routes_per_app == 7
    assert config.auth_on
    assert not ApiConfig.from_settings(Settings()).auth_on


@pytest.mark.parametrize(
    "token",
    ["x" * 15, "", "has space-0123456789", "colon:0123456789abc", "tab\t0123456789abcde",
     "=leading-equals-0123", "ünïcode-0123456789ab", "new\nline-0123456789"],
)  # fmt: skip
def test_bad_admin_tokens(token: str) -> None:
    with pytest.raises(ValueError, match="API token"):
        parse_api_token(token)


@pytest.mark.parametrize("token", ["x" * 16, "A-z_0.9~+/" * 2 + "==", "a" * 43])
def test_good_admin_tokens(token: str) -> None:
    assert parse_api_token(token) == token


@pytest.mark.parametrize(
    ("text", "name"),
    [("Example.COM", "example.com"), ("restcp.internal.", "restcp.internal"), ("[::1]", "::1"),
     ("::0001", "::1"), ("10.0.0.1", "10.0.0.1"), ("a-b", "a-b")],
)  # fmt: skip
def test_host_names(text: str, name: str) -> None:
    assert parse_host_name(text) == name


@pytest.mark.parametrize("text", ["", "a b", "x:80", "-a.com", "a-.com", "a..b", "a/b", "*.x"])
def test_bad_host_names(text: str) -> None:
    with pytest.raises(ValueError, match="not a host name"):
        parse_host_name(text)


@pytest.mark.parametrize(
    ("host", "loopback"),
    [("127.0.0.1", True), ("127.255.0.1", True), ("::1", True), ("::ffff:127.0.0.1", True),
     ("0.0.0.0", False), ("::", False), ("10.0.0.1", False), ("localhost", False)],
)  # fmt: skip
def test_is_loopback(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_exposed_without_token() -> None:
    assert Settings(api_host="0.0.0.0").exposed_without_token()
    assert not Settings(api_host="0.0.0.0", api_token="x" * 16).exposed_without_token()
    assert not Settings(api_host="::1").exposed_without_token()
