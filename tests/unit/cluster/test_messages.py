"""The messages nodes send each other (cluster/messages.py): the seed's wire format, the
typed values, and the error that crosses nodes, each through its one codec."""

from __future__ import annotations

import contextlib
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from restcp.cluster.messages import (
    Changed,
    Malformed,
    Provisioned,
    ProvisionRequest,
    Refused,
    RemoteError,
    decode_notice,
    decode_reply,
    provision_channel,
    reply_channel,
)
from restcp.errors import (
    Conflict,
    EpochMismatch,
    Forbidden,
    InvalidSpec,
    NotFound,
    Provisioning,
    Unavailable,
)
from restcp.model import HealthCheck, RouteSettings

KINDS = [NotFound, Forbidden, Conflict, InvalidSpec, Unavailable]

finite = st.floats(min_value=0, max_value=1e9, allow_nan=False, allow_infinity=False)
settings = st.builds(
    RouteSettings,
    balance=st.sampled_from(["random", "round_robin", "least_conn", "source_hash"]),
    connect_timeout=finite,
    idle_timeout=finite,
    health_check=st.none() | st.builds(HealthCheck, interval=finite, send=st.none() | st.text()),
    max_connections=st.none() | st.integers(min_value=0),
    proxy_protocol=st.sampled_from([None, "v1", "v2"]),
    splice=st.booleans(),
)
requests = st.builds(
    ProvisionRequest,
    app=st.text(),
    route_id=st.integers(min_value=1),
    port=st.none() | st.integers(min_value=1, max_value=65535),
    settings=settings,
    sender=st.none() | st.text(),
)
remote_errors = st.builds(RemoteError, kind=st.sampled_from(KINDS), detail=st.text())


# -- the wire, as docs/cluster.md shows it ----------------------------------------------------


def test_the_wire_is_the_seeds() -> None:
    assert provision_channel("127.0.0.3") == "provision:127.0.0.3"
    assert reply_channel(("web", 7)) == "provision-success:web:7"
    assert Changed(("web", 7)).encode() == "web:7"
    assert Changed(("a:b", 1)).encode() == "a%3Ab:1"
    request = ProvisionRequest("web", 7, None, RouteSettings(), "node-1")
    assert set(json.loads(request.encode())) == {"app", "route", "port", "settings", "from"}
    assert json.loads(request.encode())["route"] == 7
    assert Provisioned(10004).encode() == "10004"
    refused = Refused(RemoteError(Conflict, "port 10004 of 127.0.0.3 cannot be bound"))
    assert refused.encode() == "error 409 port 10004 of 127.0.0.3 cannot be bound"


def test_notices_and_requests_share_a_channel_and_are_told_apart() -> None:
    assert decode_notice("web:7") == Changed(("web", 7))
    request = ProvisionRequest("web", 7, 10004, RouteSettings(balance="round_robin"), "n")
    assert decode_notice(request.encode()) == request
    # A request of a node that did not name itself.
    assert decode_notice('{"app": "a", "route": 2, "settings": "{}"}') == ProvisionRequest(
        "a", 2, None, RouteSettings()
    )


def test_replies_of_the_wire_decode_to_typed_values() -> None:
    assert decode_reply("10004") == Provisioned(10004)
    assert decode_reply("error 404 route 1 of app 'a' not found") == Refused(
        RemoteError(NotFound, "route 1 of app 'a' not found")
    )
    # What a bug on the answering node was sent as: nothing the asker can do but a 503.
    assert decode_reply("error 500 internal error") == Refused(
        RemoteError(Unavailable, "internal error")
    )
    assert decode_reply("error 409 ") == Refused(RemoteError(Conflict, ""))


@pytest.mark.parametrize(
    "text",
    [
        "",
        "web",
        "web:",
        "web:x",
        "web:-1",
        "web:٣",  # a digit, but not an ASCII one
        "{",
        "{}",
        '{"app": "a", "route": "x", "settings": "{}"}',
        '{"app": "a", "route": 1}',
        '{"app": "a", "route": 1, "settings": "[]"}',
        '{"app": "a", "route": 1, "settings": "{}", "port": "http"}',
    ],
)
def test_a_malformed_notice_is_malformed(text: str) -> None:
    with pytest.raises(Malformed):
        decode_notice(text)


@pytest.mark.parametrize("text", ["", "port", "10004 ", "error", "error x y", "fail 409 x"])
def test_a_malformed_reply_is_malformed(text: str) -> None:
    with pytest.raises(Malformed):
        decode_reply(text)


# -- round trips ------------------------------------------------------------------------------


@given(st.text(), st.integers(min_value=0))
def test_a_change_notice_round_trips(app: str, route_id: int) -> None:
    notice = Changed((app, route_id))
    assert not notice.encode().startswith("{")
    assert decode_notice(notice.encode()) == notice


@given(requests)
def test_a_provisioning_request_round_trips(request: ProvisionRequest) -> None:
    assert decode_notice(request.encode()) == request


@given(st.integers(min_value=0), remote_errors)
def test_replies_round_trip(port: int, error: RemoteError) -> None:
    assert decode_reply(Provisioned(port).encode()) == Provisioned(port)
    assert decode_reply(Refused(error).encode()) == Refused(error)


@given(st.sampled_from(KINDS), st.text())
def test_an_error_crosses_nodes_as_itself(kind: type[Exception], detail: str) -> None:
    sent = RemoteError.of(kind(detail))
    received = RemoteError.decode(sent.encode()).exception()
    assert type(received) is kind
    assert str(received) == detail


@pytest.mark.parametrize(
    "error",
    [
        EpochMismatch("e1", None),
        Provisioning("web", 7, "127.0.0.3"),
        ValueError("a bug"),
    ],
)
def test_other_errors_cross_as_unavailable(error: Exception) -> None:
    received = RemoteError.decode(RemoteError.of(error).encode()).exception()
    assert type(received) is Unavailable
    if isinstance(error, EpochMismatch | Provisioning):
        assert str(received) == str(error)
    else:  # a bug's text is the answering node's log's, not the user's
        assert "a bug" not in str(received)


# Near misses of requests: JSON objects with the request's keys holding anything.
near_requests = st.dictionaries(
    st.sampled_from(["app", "route", "port", "settings", "from"]),
    st.none() | st.integers() | st.text() | st.lists(st.integers()) | st.just("{}"),
).map(json.dumps)


@given(st.text() | st.text().map(lambda t: "{" + t) | near_requests)
def test_any_text_decodes_or_is_malformed(text: str) -> None:
    for decode in (decode_notice, decode_reply):
        with contextlib.suppress(Malformed):
            decode(text)
