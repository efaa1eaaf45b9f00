"""Toxics set through a real node's HTTP API, acting on live connections: a toxic added
under an open connection applies to it at once, its removal lets go of what it held, in
order, and the access line and /metrics name it; a route's ``enabled: false`` refuses new
clients and closes the open ones, ``true`` brings the same port back; and ``--seed``
replays which connections meet a toxic, from one node to the next; a node killed with
SIGKILL serves its toxics again, on the first new connections, once restarted."""

from __future__ import annotations

import signal
import socket
import time
from pathlib import Path
from typing import Any

import pytest

from restcp.core.toxics import draws, meets
from restcp.model import Toxic
from tests.e2e.conftest import (
    StartNode,
    add_backend,
    assert_clean_log,
    create_route,
    serve_args,
    wait_until,
)
from tests.e2e.peers import (
    Backend,
    assert_refused,
    closed_by_peer,
    connect,
    echo,
    recv_all,
    recv_exactly,
    round_trip,
)
from tests.e2e.test_ops_metrics import Scrape
from tests.helpers import Node, free_port_range

ROUTE = "/apps/web/routes/1"
TOXICS = f"{ROUTE}/toxics"


def start(start_node: StartNode, store: Path, *extra: str) -> Node:
    lo, hi = free_port_range()
    return start_node(*serve_args(store, lo, hi, *extra))


def call(node: Node, method: str, path: str, body: Any = None, status: int = 200) -> Any:
    response = node.call(method, path, body)
    assert response.status == status, response
    return response.json() if response.body else None


def echo_time(sock: socket.socket, message: bytes) -> float:
    """Seconds from sending ``message`` until its echo is back, whole."""
    began = time.monotonic()
    sock.sendall(message)
    assert recv_exactly(sock, len(message)) == message
    return time.monotonic() - began


def address(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"{host}:{port}"


def access_line(node: Node, client: str) -> str:
    """The access line of the connection from ``client`` (once it is written)."""
    needle = f"client={client} "
    wait_until(lambda: any(needle in line for line in node.lines), "access line")
    [line] = [line for line in node.lines if needle in line]
    return line


@pytest.mark.parametrize("engine", ["asyncio", "native"])
def test_a_toxic_added_through_the_api_acts_on_an_open_connection(
    start_node: StartNode, tmp_path: Path, engine: str
) -> None:
    """On ``--engine native`` the connection is the engine's until the toxic comes: the
    route moves to asyncio, and the connection with it (docs/engine.md)."""
    node = start(start_node, tmp_path / "restcp.db", "--engine", engine)
    port = create_route(node, "web")["port"]
    with Backend(echo) as backend:
        add_backend(node, "web", 1, backend.port)
        with connect(port, timeout=10) as sock:
            client = address(sock)
            assert echo_time(sock, b"before") < 2
            served = node.wait_for_line("listening app=web route=1 url=")
            assert ("engine=native" in served) == (engine == "native"), served
            # Added under the open connection: its echoes are held 2 s from now on.
            call(node, "PUT", TOXICS, {"type": "latency", "attributes": {"latency": 2000}}, 201)
            assert echo_time(sock, b"held") >= 2
            metrics = Scrape(node)
            labels: dict[str, str | int] = {
                "app": "web",
                "route": 1,
                "toxic": "latency_downstream",
                "type": "latency",
                "stream": "downstream",
            }
            assert metrics.value("restcp_toxic_connections_total", **labels) == 1
            assert metrics.value("restcp_toxic_held_bytes", **labels) == 0
            # Lowered by a PATCH: what it holds and what comes next go out sooner.
            call(node, "PATCH", f"{TOXICS}/latency_downstream", {"attributes": {"latency": 0}})
            assert echo_time(sock, b"patched") < 2
            call(node, "PATCH", f"{TOXICS}/latency_downstream", {"attributes": {"latency": 60000}})
            # Held for a minute; the DELETE lets it go at once, in order.
            sock.sendall(b"one ")
            sock.sendall(b"two")
            wait_until(
                lambda: Scrape(node).value("restcp_toxic_held_bytes", **labels) == 7,
                "the echo held by the toxic",
            )
            began = time.monotonic()
            call(node, "DELETE", f"{TOXICS}/latency_downstream", status=204)
            assert recv_exactly(sock, 7) == b"one two"
            assert time.monotonic() - began < 30
            assert echo_time(sock, b"after") < 2
            sock.shutdown(socket.SHUT_WR)
            assert recv_all(sock) == b""
        line = access_line(node, client)
    assert line.endswith(" end=closed toxics=latency_downstream"), line
    assert_clean_log(node)


def test_a_toxic_on_the_route_meets_each_new_connection_and_can_end_it(
    start_node: StartNode, tmp_path: Path
) -> None:
    """A limit_data of 5 bytes downstream, added before the client came: 5 bytes of the
    echo reach the client, then the connection closes, in order; the rest is dropped and
    counted so, and the access line says why."""
    node = start(start_node, tmp_path / "restcp.db")
    port = create_route(node, "web")["port"]
    with Backend(echo) as backend:
        add_backend(node, "web", 1, backend.port)
        call(node, "PUT", TOXICS, {"type": "limit_data", "attributes": {"bytes": 5}}, 201)
        with connect(port, timeout=10) as sock:
            client = address(sock)
            sock.sendall(b"hello, world")
            assert recv_all(sock) == b"hello"
        line = access_line(node, client)
    assert line.endswith(" end=toxic_limit_data toxics=limit_data_downstream"), line
    # What was read from the backend past the limit (the rest of the echo, as far as it
    # had come) is what the toxic dropped.
    read = int(line.split(" bytes_down=")[1].split()[0])
    dropped = Scrape(node).value(
        "restcp_toxic_dropped_bytes_total",
        app="web",
        route=1,
        toxic="limit_data_downstream",
        type="limit_data",
        stream="downstream",
    )
    assert dropped == read - 5


def test_a_route_disabled_refuses_new_clients_and_closes_open_ones(
    start_node: StartNode, tmp_path: Path
) -> None:
    node = start(start_node, tmp_path / "restcp.db")
    port = create_route(node, "web")["port"]
    with Backend(echo) as backend:
        add_backend(node, "web", 1, backend.port)
        with connect(port, timeout=10) as sock:
            client = address(sock)
            assert echo_time(sock, b"up") < 2
            route = call(node, "PATCH", ROUTE, {"enabled": False})
            assert (route["enabled"], route["port"]) == (False, port)
            assert closed_by_peer(sock)
            assert_refused(port)
        line = access_line(node, client)
        assert line.endswith(" end=route_disabled"), line
        # Down it stays down across a GET, and comes back on the same port.
        assert call(node, "GET", ROUTE)["enabled"] is False
        assert_refused(port)
        assert call(node, "PATCH", ROUTE, {"enabled": True})["enabled"] is True
        assert round_trip(port, b"back") == b"back"
    assert_clean_log(node)


def affected(node: Node, port: int, connections: int) -> set[int]:
    """Which of ``connections`` clients, one after the other, met a limit_data of 1 byte
    (their echo is cut to 1 byte), by their number on the route (from 1)."""
    hit = set()
    for n in range(1, connections + 1):
        with connect(port, timeout=10) as sock:
            sock.sendall(b"ab")
            sock.shutdown(socket.SHUT_WR)
            got = recv_all(sock)
        assert got in (b"a", b"ab"), got
        if got == b"a":
            hit.add(n)
    return hit


def test_a_seed_replays_which_connections_meet_a_toxic(
    start_node: StartNode, tmp_path: Path
) -> None:
    """Toxicity 0.5 over 60 connections on three fresh nodes: --seed 7 twice gives one
    set, the set core.toxics draws for that seed; --seed 8 another; a route's own seed
    wins over the node's."""
    connections = 60
    body = {"type": "limit_data", "toxicity": 0.5, "attributes": {"bytes": 1}}
    sets = []
    with Backend(echo) as backend:
        for i, (node_seed, route_seed) in enumerate([(7, None), (7, None), (8, None), (8, 7)]):
            node = start(start_node, tmp_path / f"{i}.db", "--seed", str(node_seed))
            port = create_route(node, "web")["port"]
            add_backend(node, "web", 1, backend.port)
            if route_seed is not None:
                call(node, "PATCH", ROUTE, {"seed": route_seed})
            made = call(node, "PUT", TOXICS, body, 201)
            sets.append(affected(node, port, connections))
            node.stop()
    limit = Toxic(made["name"], "limit_data", "downstream", 0.5)
    expected = {
        n for n in range(1, connections + 1) if meets(limit, draws(7, ("web", 1), n, limit.name))
    }
    assert 10 < len(expected) < 50
    assert sets[0] == expected
    assert sets[1] == expected
    assert sets[2] != expected
    assert sets[3] == expected


def test_toxics_act_on_new_connections_after_a_kill_9(
    start_node: StartNode, tmp_path: Path
) -> None:
    """A node killed with SIGKILL (nothing written on the way out) and started again on the
    same SQLite store serves its routes' toxics to the first new connections: a latency
    delays each echo by its value; a limit_data of toxicity 0.5 under the route's seed cuts
    the same connections (by their number, counted again from 1) as before the kill, the
    ones core.toxics draws; a route down stays down."""
    connections = 30
    lo, hi = free_port_range()
    args = serve_args(tmp_path / "restcp.db", lo, hi)
    cut = {"type": "limit_data", "toxicity": 0.5, "attributes": {"bytes": 1}}
    with Backend(echo) as backend:
        first = start_node(*args)
        slow_port = create_route(first, "web")["port"]
        add_backend(first, "web", 1, backend.port)
        call(first, "PUT", TOXICS, {"type": "latency", "attributes": {"latency": 300}}, 201)
        cut_port = create_route(first, "web", seed=7)["port"]
        add_backend(first, "web", 2, backend.port)
        made = call(first, "PUT", "/apps/web/routes/2/toxics", cut, 201)
        down_port = create_route(first, "web", enabled=False)["port"]
        add_backend(first, "web", 3, backend.port)
        with connect(slow_port, timeout=10) as sock:
            assert echo_time(sock, b"before") >= 0.3 - 0.001
        before = affected(first, cut_port, connections)
        assert first.stop(signal.SIGKILL) == -signal.SIGKILL

        second = start_node(*args)
        with connect(slow_port, timeout=10) as sock:
            assert 0.3 - 0.001 <= echo_time(sock, b"after") < 0.3 + 0.5
            assert 0.3 - 0.001 <= echo_time(sock, b"again") < 0.3 + 0.5
        limit = Toxic(made["name"], "limit_data", "downstream", 0.5)
        expected = {
            n
            for n in range(1, connections + 1)
            if meets(limit, draws(7, ("web", 2), n, limit.name))
        }
        assert 0 < len(expected) < connections
        assert before == expected
        assert affected(second, cut_port, connections) == expected
        assert_refused(down_port)
        # Its toxics are the route's still: removed, the latency is gone at once.
        call(second, "DELETE", f"{TOXICS}/latency_downstream", status=204)
        with connect(slow_port, timeout=10) as sock:
            assert echo_time(sock, b"fast") < 0.3
    assert_clean_log(second)
