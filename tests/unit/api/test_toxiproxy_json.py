"""toxiproxy's JSON in restcp's terms (api/toxiproxy_json.py): bodies read as toxiproxy's Go
decoder reads them, checked as restcp checks them, and answered in toxiproxy's shapes."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import pytest

from restcp.api.toxiproxy_json import (
    INVALID_STREAM,
    INVALID_TYPE,
    Listen,
    ToxiproxyError,
    Upstream,
    changed_toxic,
    decode,
    new_toxic,
    parse_listen,
    parse_upstream,
    populate_specs,
    proxy_change,
    proxy_json,
    proxy_spec,
    toxics_json,
)
from restcp.model import Backend, Route, RouteSettings, Toxic

FRONTENDS = ("127.0.0.1", "::1", "10.0.0.5")


@contextlib.contextmanager
def refused(status: int, start: str) -> Iterator[None]:
    """The block raises a ToxiproxyError of ``status`` whose message starts with ``start``."""
    with pytest.raises(ToxiproxyError) as caught:
        yield
    assert caught.value.status == status
    assert caught.value.message.startswith(start), caught.value.message


def route(**settings: Any) -> Route:
    return Route(
        "toxiproxy",
        3,
        "127.0.0.1",
        20001,
        RouteSettings(name="db", **settings),
        (Backend(1, "db.internal", 5432), Backend(2, "10.0.0.9", 5432)),
    )


@pytest.mark.parametrize(
    ("text", "listen", "ip"),
    [
        ("127.0.0.1:8474", Listen("127.0.0.1", 8474), "127.0.0.1"),
        ("localhost:0", Listen("localhost", 0), "127.0.0.1"),
        ("LocalHost:1", Listen("localhost", 1), "127.0.0.1"),
        ("[::1]:20000", Listen("::1", 20000), "::1"),
        ("[0:0::1]:20000", Listen("::1", 20000), "::1"),
        # Every address: the node's first frontend IP (unless it serves the wildcard itself).
        ("", Listen("", 0), "127.0.0.1"),
        ("0.0.0.0:5000", Listen("0.0.0.0", 5000), "127.0.0.1"),
        ("[::]:5000", Listen("::", 5000), "127.0.0.1"),
        # Not served here: create_route refuses it (or, in a cluster, its node binds it).
        ("10.9.9.9:1", Listen("10.9.9.9", 1), "10.9.9.9"),
    ],
)
def test_listen(text: str, listen: Listen, ip: str) -> None:
    assert parse_listen(text) == listen
    assert listen.ip(FRONTENDS) == ip


def test_localhost_is_the_loopback_address_served() -> None:
    assert Listen("localhost", 0).ip(("::1",)) == "::1"
    assert Listen("0.0.0.0", 0).ip(("0.0.0.0", "127.0.0.1")) == "0.0.0.0"


@pytest.mark.parametrize("text", ["db.internal:1", "127.0.0.1", "127.0.0.1:x", ":80", "::1:80"])
def test_a_listen_that_is_no_ip_and_port_is_a_bad_body(text: str) -> None:
    with refused(400, "bad request body: listen: "):
        parse_listen(text)


def test_port_zero_matches_any_port_of_the_same_address() -> None:
    served = route()
    assert Listen("127.0.0.1", 0).matches(served, FRONTENDS)
    assert Listen("localhost", 20001).matches(served, FRONTENDS)
    assert not Listen("127.0.0.1", 20002).matches(served, FRONTENDS)
    assert not Listen("::1", 0).matches(served, FRONTENDS)


def test_upstream() -> None:
    assert parse_upstream("DB.Internal:5432") == Upstream("db.internal", 5432)
    assert str(parse_upstream("[0::1]:6379")) == "[::1]:6379"
    for bad in ("db", "db:0", "db:70000", "-x-:1", "[::1:80"):
        with refused(400, "bad request body: upstream: "):
            parse_upstream(bad)


def test_a_new_proxy() -> None:
    spec = proxy_spec({"name": "db", "upstream": "127.0.0.1:5432", "unknown": [1]})
    assert (spec.name, spec.listen, spec.enabled) == ("db", Listen("", 0), True)
    assert proxy_spec({"name": "db", "upstream": "h:1", "enabled": False}).enabled is False
    with refused(400, "missing required field: name"):
        proxy_spec({"upstream": "h:1"})
    with refused(400, "missing required field: upstream"):
        proxy_spec({"name": "db", "upstream": ""})
    for wrong in ({"name": 1}, {"listen": 5}, {"enabled": "yes"}, {"upstream": None}):
        with refused(400, "bad request body: "):
            proxy_spec({"name": "db", "upstream": "h:1", **wrong})
    with refused(400, "bad request body: "):
        proxy_spec([])


def test_a_proxy_update_gives_what_it_names() -> None:
    assert proxy_change({}, route(enabled=False)) == (None, None, False)
    assert proxy_change({"enabled": True, "name": "ignored"}, route()) == (None, None, True)
    listen, upstream, enabled = proxy_change({"listen": "localhost:9", "upstream": "h:2"}, route())
    assert (listen, upstream, enabled) == (Listen("localhost", 9), Upstream("h", 2), True)


def test_populate_checks_every_proxy_first() -> None:
    specs = populate_specs([{"name": "a", "upstream": "h:1"}, {"name": "b", "upstream": "h:2"}])
    assert [s.name for s in specs] == ["a", "b"]
    with refused(400, "missing required field: upstream at proxy 2"):
        populate_specs([{"name": "a", "upstream": "h:1"}, {"name": "b"}])
    # null is "not given": enabled.
    assert populate_specs([{"name": "a", "upstream": "h:1", "enabled": None}])[0].enabled
    with refused(400, "bad request body: "):
        populate_specs({"name": "a"})


def test_a_proxy_in_toxiproxys_shape() -> None:
    toxics = (
        Toxic("slow", "latency", "downstream", 1.0, (("jitter", 0), ("latency", 5))),
        Toxic("cut", "limit_data", "upstream", 0.5, (("bytes", 9),), ("10.0.0.0/8",)),
    )
    served = Route("toxiproxy", 3, "::1", 20001, RouteSettings(name="db"), route().backends, toxics)
    assert proxy_json(served) == {
        "name": "db",
        "listen": "[::1]:20001",
        "upstream": "db.internal:5432",
        "enabled": True,
        # The upstream chain first, each as added; clients is restcp's alone.
        "toxics": [
            {
                "attributes": {"bytes": 9},
                "name": "cut",
                "type": "limit_data",
                "stream": "upstream",
                "toxicity": 0.5,
            },
            {
                "attributes": {"jitter": 0, "latency": 5},
                "name": "slow",
                "type": "latency",
                "stream": "downstream",
                "toxicity": 1.0,
            },
        ],
    }
    assert proxy_json(Route("toxiproxy", 4, "127.0.0.1", 1))["upstream"] == ""
    assert toxics_json(Route("toxiproxy", 4, "127.0.0.1", 1)) == []


def test_a_new_toxic() -> None:
    toxic = new_toxic({"type": "latency", "attributes": {"latency": 50, "bogus": 1}, "x": 2})
    assert toxic == Toxic(
        "latency_downstream", "latency", "downstream", 1.0, (("jitter", 0), ("latency", 50))
    )
    assert new_toxic({"type": "latency", "stream": "UpStream"}).stream == "upstream"
    # An attribute restcp requires is toxiproxy's zero when omitted; 0 may be refused.
    assert new_toxic({"type": "limit_data", "stream": "upstream"}).attributes == (("bytes", 0),)
    with refused(400, "bad request body: attributes.rate: "):
        new_toxic({"type": "bandwidth"})
    # No attributes, an empty name: toxiproxy's defaults.
    default = new_toxic({"type": "slow_close", "attributes": None, "name": "", "toxicity": 0})
    assert (default.name, default.toxicity, default.attributes) == (
        "slow_close_downstream",
        0.0,
        (("delay", 0),),
    )


def test_toxic_refusals_in_toxiproxys_order() -> None:
    # The stream is judged before the type, as toxiproxy's AddToxicJson does.
    with refused(400, INVALID_STREAM):
        new_toxic({"type": "nope", "stream": "sideways"})
    with refused(400, INVALID_TYPE):
        new_toxic({"type": "nope"})
    with refused(400, INVALID_TYPE):
        new_toxic({})
    for body in (
        {"type": "latency", "toxicity": 1.5},
        {"type": "latency", "toxicity": "1"},
        {"type": "latency", "attributes": []},
        {"type": "latency", "attributes": {"latency": 1.5}},
        {"type": "latency", "name": "a/b"},
        {"type": 7},
        [],
    ):
        with refused(400, "bad request body: "):
            new_toxic(body)


def test_a_toxic_update_merges_attributes_and_sets_toxicity() -> None:
    toxic = Toxic("slow", "latency", "downstream", 1.0, (("jitter", 3), ("latency", 5)))
    changed = changed_toxic({"attributes": {"latency": 9}, "type": "bandwidth", "name": "x"}, toxic)
    assert changed == toxic.replace(attributes=(("jitter", 3), ("latency", 9)))
    assert changed_toxic({"toxicity": 0.5}, toxic) == toxic.replace(toxicity=0.5)
    assert changed_toxic({}, toxic) == toxic
    with refused(400, "bad request body: attributes.jitter: "):
        changed_toxic({"attributes": {"jitter": -1}}, toxic)


def test_decode() -> None:
    assert decode(b'{"a": 1}') == {"a": 1}
    with refused(400, "bad request body: EOF"):
        decode(b"  ")
    with refused(400, "bad request body: "):
        decode(b"\xff")
    with refused(400, "bad request body: "):
        decode(b"[" * 100_000)


def test_an_error_in_toxiproxys_shape() -> None:
    assert ToxiproxyError(404, "proxy not found").body() == {
        "error": "proxy not found",
        "status": 404,
    }
