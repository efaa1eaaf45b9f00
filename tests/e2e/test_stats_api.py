"""GET /stats and the event stream (GET /events, GET /apps/{app}/events), on a real node:
counters and rates, the last health check, a change through the API seen in the stream,
an app token's view, a revoked token ending its stream, and a stream that never holds a
stopping node."""

from __future__ import annotations

import http.client
import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import StartNode, assert_clean_log, serve_args, wait_until
from tests.e2e.peers import Backend, echo
from tests.helpers import Node, free_port_range

ADMIN = "admin-token-for-the-stats-tests"
FAST_CHECK = {"interval": 0.1, "timeout": 0.5, "rise": 1, "fall": 1}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def call(node: Node, method: str, path: str, body: Any = None, token: str = ADMIN) -> Any:
    response = node.call(method, path, body, headers=bearer(token))
    assert response.status < 300, (method, path, response)
    return response.json() if response.body else None


@pytest.fixture
def node(start_node: StartNode, tmp_path: Path) -> Node:
    lo, hi = free_port_range()
    return start_node(*serve_args(tmp_path / "restcp.db", lo, hi, "--api-token", ADMIN))


@pytest.fixture
def echo_backend() -> Iterator[Backend]:
    with Backend(echo) as backend:
        yield backend


class Events:
    """One event stream, read with http.client: (name, data) at a time."""

    def __init__(self, node: Node, path: str, token: str = ADMIN) -> None:
        self.connection = http.client.HTTPConnection("127.0.0.1", node.api_port, timeout=10)
        headers = {**bearer(token), "Accept": "text/event-stream"}
        self.connection.request("GET", path, headers=headers)
        self.response = self.connection.getresponse()

    def next(self) -> tuple[str, Any]:
        name, data = "", ""
        while True:
            line = self.response.readline().decode()
            if line == "":
                raise EOFError("the stream ended")
            line = line.rstrip("\n")
            if line.startswith("event: "):
                name = line[7:]
            elif line.startswith("data: "):
                data = line[6:]
            elif line == "" and name:
                return name, json.loads(data)

    def close(self) -> None:
        self.connection.close()


def drain(events: Events) -> None:
    """Read updates until the stream ends (raising EOFError)."""
    while True:
        events.next()


def round_trip(port: int, payload: bytes) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(payload)
        got = b""
        while len(got) < len(payload):
            chunk = sock.recv(65536)
            assert chunk, "closed early"
            got += chunk
        assert got == payload


def test_stats_counts_a_connection_and_its_rates(node: Node, echo_backend: Backend) -> None:
    route = call(node, "PUT", "/apps/web/routes")
    call(node, "PUT", "/apps/web/routes/1/backends", {"ip": "127.0.0.1", "port": echo_backend.port})
    first = call(node, "GET", "/stats")
    assert first["node"]["version"] == "0.1.0"
    assert first["node"]["status"] == "ok"
    assert first["node"]["uptime"] >= 0
    assert first["node"]["routes"] == 1
    round_trip(route["port"], b"x" * 1000)

    # Rates need two readings at least MIN_INTERVAL apart: poll until the next one.
    def measured() -> bool:
        nonlocal stats
        stats = call(node, "GET", "/stats")
        return stats["routes"][0]["connections_total"] == 1 and stats["node"]["rates"] is not None

    stats: Any = None
    wait_until(measured, "a second reading with the connection counted", 5)
    shown = stats["routes"][0]
    assert (shown["app"], shown["id"]) == ("web", 1)
    assert shown["bytes_in"] == shown["bytes_out"] == 1000
    assert shown["connections_active"] == 0
    assert shown["errors"] == 0
    assert shown["backends"][0]["id"] == 1
    assert shown["backends"][0]["connections_total"] == 1
    assert set(shown["rates"]) == {
        "connections", "bytes_in", "bytes_out", "connect_failures", "refused", "errors"
    }  # fmt: skip
    assert shown["rates"]["errors"] == 0
    # The app's own view is the same route; an app that has none shows none.
    assert call(node, "GET", "/apps/web/stats")["routes"][0]["id"] == 1
    assert call(node, "GET", "/apps/other/stats")["routes"] == []


def test_a_backend_shows_its_last_check(node: Node, echo_backend: Backend) -> None:
    call(node, "PUT", "/apps/web/routes", {"health_check": FAST_CHECK})
    call(node, "PUT", "/apps/web/routes/1/backends", {"ip": "127.0.0.1", "port": echo_backend.port})
    before = call(node, "GET", "/apps/web/routes/1/backends/1")
    assert before["last_check"] is None or before["last_check"]["ok"] is True

    def checked() -> bool:
        return call(node, "GET", "/apps/web/routes/1/backends/1")["last_check"] is not None

    wait_until(checked, "a first health check", 5)
    backend = call(node, "GET", "/apps/web/routes/1/backends/1")
    assert backend["last_check"]["ok"] is True
    assert backend["last_check"]["reason"] == ""
    assert abs(backend["last_check"]["at"] - time.time()) < 5
    # A route without checks shows none.
    call(node, "PUT", "/apps/web/routes")
    call(node, "PUT", "/apps/web/routes/2/backends", {"ip": "127.0.0.1", "port": echo_backend.port})
    assert call(node, "GET", "/apps/web/routes/2/backends/1")["last_check"] is None


def test_a_change_through_the_api_reaches_the_stream_within_two_seconds(node: Node) -> None:
    call(node, "PUT", "/apps/web/routes")
    events = Events(node, "/events")
    try:
        assert events.response.status == 200
        assert events.response.headers["Content-Type"] == "text/event-stream"
        name, snapshot = events.next()
        assert name == "snapshot"
        assert [(r["app"], r["id"], r["backends"]) for r in snapshot["routes"]] == [("web", 1, [])]
        assert snapshot["routes"][0]["stats"]["connections_total"] == 0
        assert snapshot["node"]["nodes"][0]["routes_serving"] == 1

        changed_at = time.monotonic()
        call(node, "PATCH", "/apps/web/routes/1", {"balance": "round_robin"})
        while True:
            name, update = events.next()
            assert name == "update"
            assert time.monotonic() - changed_at < 2.0, "not in the stream within 2 s"
            if update["changed"]:
                break
        assert update["changed"][0]["balance"] == "round_robin"
        assert update["removed"] == []

        call(node, "DELETE", "/apps/web/routes/1")
        while True:
            name, update = events.next()
            if update["removed"]:
                break
        assert update["removed"] == ["web/1"]
    finally:
        events.close()


def test_an_app_token_streams_its_app_only_and_a_revoked_one_ends(node: Node) -> None:
    call(node, "PUT", "/apps/a/routes")
    call(node, "PUT", "/apps/b/routes")
    created = call(node, "POST", "/apps/a/tokens")
    token = created["token"]
    # The whole node's stream and stats are the admin's.
    for path in ("/events", "/stats"):
        response = node.call("GET", path, headers={**bearer(token), "Accept": "text/event-stream"})
        assert response.status == 403, response
    response = node.call("GET", "/apps/b/events", headers=bearer(token))
    assert response.status == 404
    events = Events(node, "/apps/a/events", token)
    try:
        name, snapshot = events.next()
        assert [r["app"] for r in snapshot["routes"]] == ["a"]
        assert "nodes" not in snapshot["node"]
        call(node, "DELETE", f"/apps/a/tokens/{created['id']}")
        while name != "end":
            name, data = events.next()
        assert data == {"reason": "the token no longer counts"}
        with pytest.raises(EOFError):
            events.next()
    finally:
        events.close()


def test_without_accepting_a_stream_the_answer_is_406(node: Node) -> None:
    response = node.call("GET", "/events", headers=bearer(ADMIN))
    assert response.status == 406
    assert response.headers["Content-Type"].startswith("application/problem+json")
    assert "text/event-stream" in response.json()["detail"]


def test_an_open_stream_does_not_hold_a_stopping_node(node: Node) -> None:
    events = Events(node, "/events")
    try:
        assert events.next()[0] == "snapshot"
        started = time.monotonic()
        assert node.stop() == 0
        assert time.monotonic() - started < 5
        with pytest.raises((EOFError, ConnectionError)):
            drain(events)
    finally:
        events.close()
    assert_clean_log(node)


def test_the_page_is_served_with_its_headers(node: Node) -> None:
    for path in ("/", "/ui/"):
        response = node.call("GET", path)
        assert response.status == 200, response
        assert response.headers["Content-Type"] == "text/html; charset=utf-8"
        assert "frame-ancestors 'none'" in response.headers["Content-Security-Policy"]
        assert response.headers["X-Frame-Options"] == "DENY"
        assert b"<title>restcp" in response.body
    for name in (".hidden.js", "nope.js", "app.py", "%2e%2e%2fapp.py", "..%2Fapp.py"):
        response = node.call("GET", f"/ui/{name}")
        assert response.status == 404, (name, response)
    # A dot segment is resolved away before the request: an unknown path, which needs a token.
    assert node.call("GET", "/ui/../app.py").status == 401


def test_sessions_max_is_the_most_open_at_once(node: Node, echo_backend: Backend) -> None:
    route = call(node, "PUT", "/apps/web/routes")
    call(node, "PUT", "/apps/web/routes/1/backends", {"ip": "127.0.0.1", "port": echo_backend.port})
    clients = [socket.create_connection(("127.0.0.1", route["port"]), timeout=5) for _ in range(3)]
    try:
        for client in clients:
            # An echoed byte: the connection reached its backend, so it counts there too.
            client.sendall(b"x")
            assert client.recv(1) == b"x"
    finally:
        for client in clients:
            client.close()

    def all_closed() -> bool:
        nonlocal shown
        shown = call(node, "GET", "/stats")["routes"][0]
        return shown["connections_active"] == 0

    shown: Any = None
    wait_until(all_closed, "the three connections closed", 5)
    # One more alone: the most stays three.
    round_trip(route["port"], b"y")

    def counted() -> bool:
        nonlocal shown
        shown = call(node, "GET", "/apps/web/stats")["routes"][0]
        return shown["connections_total"] == 4

    wait_until(counted, "the fourth connection counted", 5)
    assert shown["connections_max"] == 3
    assert shown["backends"][0]["connections_max"] == 3
    metrics = node.call("GET", "/metrics", headers=bearer(ADMIN)).body.decode()
    assert 'restcp_connections_max{app="web",backend="1",route="1"} 3.0' in metrics
    assert 'restcp_route_connections_max{app="web",route="1"} 3.0' in metrics


def test_the_history_has_the_last_seconds_of_a_route(node: Node, echo_backend: Backend) -> None:
    route = call(node, "PUT", "/apps/web/routes")
    call(node, "PUT", "/apps/web/routes/1/backends", {"ip": "127.0.0.1", "port": echo_backend.port})
    for _ in range(5):
        round_trip(route["port"], b"x" * 100)

    def sampled() -> bool:
        nonlocal history
        history = call(node, "GET", "/apps/web/routes/1/stats/history")
        return sum(history["connections"]) > 0 and sum(history["bytes_in"]) > 0

    history: Any = None
    wait_until(sampled, "the connections in the history", 10)
    assert (history["app"], history["id"], history["interval"]) == ("web", 1, 1.0)
    fields = ("connections", "bytes_in", "bytes_out", "errors")
    assert all(len(history[f]) == len(history["at"]) for f in fields)
    assert history["at"] == sorted(history["at"])
    assert abs(history["at"][-1] - time.time()) < 5
    assert all(value >= 0 for f in fields for value in history[f])
    # A sample a second, whoever looks: about one per second since the route began.
    assert len(history["at"]) <= 2 + history["at"][-1] - history["at"][0]
    # An app token reads its own app's; a route that does not exist is a 404.
    token = call(node, "POST", "/apps/web/tokens")["token"]
    assert node.call("GET", "/apps/web/routes/1/stats/history", headers=bearer(token)).status == 200
    assert node.call("GET", "/apps/web/routes/9/stats/history", headers=bearer(ADMIN)).status == 404
    assert node.call("GET", "/apps/no/routes/1/stats/history", headers=bearer(ADMIN)).status == 404
