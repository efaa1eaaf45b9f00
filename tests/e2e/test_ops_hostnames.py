"""Backends named by a DNS host name, attacked through a real node.

A name is resolved by the API before it is stored (every address must be allowed), and
again by the data plane at every connect and every probe, each address judged by the
address policy: a name that has come to point somewhere denied, or at the node itself, is
refused then, not served from a stale answer. ``localhost`` is the name every machine
resolves (to 127.0.0.1 from /etc/hosts), so the tests deny loopback to make it hostile.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import (
    StartNode,
    create_route,
    free_port_outside,
    port_range,
    serve_args,
    snapshot,
    wait_until,
)
from tests.e2e.peers import Backend, echo
from tests.e2e.test_ops_metrics import Acceptor, exchange, metric, turned_away
from tests.e2e.test_ops_policy import assert_forbidden, relayed_to_a_new_server, writes
from tests.helpers import Node, free_port_range

LOOPBACK_DENIED = ("--backend-deny", "127.0.0.0/8", "--backend-deny", "::1/128")
CHECK = {"interval": 0.1, "timeout": 1, "rise": 1, "fall": 1}


@pytest.fixture(params=["asyncio", "native"])
def engine(request: pytest.FixtureRequest) -> tuple[str, ...]:
    """The data plane that resolves the names at connect: its ``serve`` options."""
    return ("--engine", request.param)


@pytest.fixture
def any_node(engine: tuple[str, ...], request: pytest.FixtureRequest) -> Node:
    node: Node = request.getfixturevalue("engine_node" if "native" in engine else "asyncio_node")
    return node


def on_engine(node: Node, app: str, engine: tuple[str, ...]) -> None:
    """The route is served by the data plane asked for."""
    line = node.wait_for_line(f"listening app={app} route=1 url=")
    assert ("engine=native" in line) == ("native" in engine), line


def name_backend(node: Node, app: str, port: int, **body: Any) -> int:
    response = node.call(
        "PUT", f"/apps/{app}/routes/1/backends", {"ip": "localhost", "port": port, **body}
    )
    assert response.status == 201, response
    backend_id: int = response.json()["id"]
    return backend_id


def test_a_name_backend_is_stored_as_written_and_relays(
    any_node: Node, engine: tuple[str, ...]
) -> None:
    node = any_node
    port = create_route(node, "named")["port"]
    with Backend(echo) as server:
        response = node.call(
            "PUT", "/apps/named/routes/1/backends", {"ip": "LocalHost", "port": server.port}
        )
        assert response.status == 201, response
        backend = node.call("GET", "/apps/named/routes/1/backends/1").json()
        assert (backend["ip"], backend["port"]) == ("localhost", server.port)
        on_engine(node, "named", engine)
        for payload in (b"a", b"by name" * 1000):
            assert exchange(port, payload)[1] == payload
        assert server.accepted == 2


def test_a_name_backend_is_health_checked(node: Node) -> None:
    create_route(node, "named", health_check=CHECK)
    with Acceptor() as server:
        name_backend(node, "named", server.port)
        wait_until(lambda: server.count >= 3, "three probes reached the named backend")

        def health() -> str:
            body = node.call("GET", "/apps/named/routes/1/backends/1").json()
            return str(body["health"])

        wait_until(lambda: health() == "up", "the named backend up")


def test_a_name_that_resolves_to_a_denied_address_is_refused_by_every_write(
    start_node: StartNode, tmp_path: Path
) -> None:
    lo, hi = free_port_range()
    node = start_node(*serve_args(tmp_path / "d.db", lo, hi, *LOOPBACK_DENIED))
    create_route(node, "deny")
    # An allowed address to stand in backend 1, for the writes that replace it.
    assert node.call("PUT", "/apps/deny/routes/1/backends", {"ip": "10.9.8.7", "port": 9})
    before = snapshot(node)
    for method, path, body in writes("deny", "localhost", 9):
        assert_forbidden(
            node.call(method, path, body),
            "localhost resolves to 127.0.0.1 is in the denied network 127.0.0.0/8",
        )
    response = node.call("PATCH", "/apps/deny/routes/1/backends/1", {"ip": "localhost"})
    assert_forbidden(response, "denied network 127.0.0.0/8")
    assert snapshot(node) == before


@pytest.mark.parametrize(
    "name",
    ["no-such-host.invalid", "restcp-test-missing.invalid"],
)
def test_a_name_that_does_not_resolve_is_refused_and_changes_nothing(node: Node, name: str) -> None:
    create_route(node, "missing")
    before = snapshot(node)
    response = node.call("PUT", "/apps/missing/routes/1/backends", {"ip": name, "port": 80})
    assert response.status == 422, response
    assert f"cannot resolve {name!r}" in response.json()["detail"], response.json()
    assert snapshot(node) == before


@pytest.mark.parametrize(
    "text",
    ["2130706433", "0x7f000001", "0x7f.1", "127.1", "1.2.3", "a.1", "-a.example", "a..b", "a b"],
)
def test_numbers_and_malformed_names_are_not_names(node: Node, text: str) -> None:
    # To inet_aton the first five are 127.0.0.1 or 1.2.0.3: a resolver would connect there.
    create_route(node, "numbers")
    before = snapshot(node)
    response = node.call("PUT", "/apps/numbers/routes/1/backends", {"ip": text, "port": 80})
    assert response.status == 422, response
    assert b"address literal or a DNS host name" in response.body, response
    assert snapshot(node) == before


def test_a_stored_name_is_judged_again_at_every_connect_and_probe(
    start_node: StartNode, tmp_path: Path
) -> None:
    """The policy tightened across a restart: the name now resolves only to denied
    addresses, so the relay and the checker refuse it at connect time."""
    lo, hi = free_port_range()
    store = tmp_path / "r.db"
    first = start_node(*serve_args(store, lo, hi))
    port = create_route(first, "stored", health_check=CHECK)["port"]
    with Backend(echo) as server:
        name_backend(first, "stored", server.port)
        assert exchange(port, b"before")[1] == b"before"
        wait_until(lambda: server.accepted >= 2, "probed and relayed before the restart")
        assert first.stop() == 0
        seen = server.accepted
        node = start_node(*serve_args(store, lo, hi, *LOOPBACK_DENIED))
        # The probe says why it failed, and marks the backend down.
        wait_until(
            lambda: node.call("GET", "/apps/stored/routes/1/backends/1").json()["health"] == "down",
            "the named backend marked down by its probe",
        )
        body = node.call("GET", "/apps/stored/routes/1/backends/1").json()
        assert "resolves to no allowed address" in body["health_reason"], body
        assert "127.0.0.0/8" in body["health_reason"], body
        for _ in range(3):
            assert turned_away(port, b"x")
        assert server.accepted == seen, "a refused name was connected to"
        assert metric(node, "restcp_connections_total", app="stored", route=1, backend=1) == 0


def test_a_stored_name_is_refused_at_connect_without_checks(
    start_node: StartNode, tmp_path: Path, engine: tuple[str, ...]
) -> None:
    lo, hi = free_port_range()
    store = tmp_path / "c.db"
    first = start_node(*serve_args(store, lo, hi))
    port = create_route(first, "plain")["port"]
    with Backend(echo) as server:
        name_backend(first, "plain", server.port)
        assert first.stop() == 0
        node = start_node(*serve_args(store, lo, hi, *LOOPBACK_DENIED, *engine))
        on_engine(node, "plain", engine)
        assert turned_away(port, b"x")
        node.wait_for_line("localhost resolves to no allowed address", timeout=5)
        assert server.accepted == 0
        failures = metric(node, "restcp_connect_failures_total", app="plain", route=1, backend=1)
        assert failures == 1, failures


def test_a_name_that_reaches_the_nodes_own_listener_is_refused_at_connect(
    any_node: Node, engine: tuple[str, ...]
) -> None:
    """Allowed when stored (nothing listened there); then restcp itself opens a route on
    that port. An IP backend is taken out when the route opens; a name can only be judged
    when it is resolved, at the next connect, and must be refused there."""
    node = any_node
    lo, hi = port_range(node)
    taken = free_port_outside(lo, hi)
    outer = create_route(node, "outer")["port"]
    name_backend(node, "outer", taken)
    on_engine(node, "outer", engine)
    with Backend(echo) as inner_backend:
        assert create_route(node, "inner", port=taken)["port"] == taken
        response = node.call(
            "PUT", "/apps/inner/routes/1/backends", {"ip": "127.0.0.1", "port": inner_backend.port}
        )
        assert response.status == 201, response
        assert turned_away(outer, b"loop?")
        node.wait_for_line("localhost resolves to no allowed address", timeout=5)
        assert metric(node, "restcp_connections_total", app="inner", route=1, backend=1) == 0
        assert inner_backend.accepted == 0
    # The route gone, the name reaches someone else's server again.
    assert node.call("DELETE", "/apps/inner/routes/1").status == 204
    assert relayed_to_a_new_server(outer, taken)
