"""`restcp serve --engine native` on a real node: a plain route is served by the native
engine, its connections counted in /stats and logged; a route given a toxic moves to the
asyncio data plane live, and a connection opened before the move carries on."""

from __future__ import annotations

import socket
from pathlib import Path

from tests.e2e.conftest import StartNode, add_backend, create_route, serve_args, wait_until
from tests.e2e.peers import Backend, connect, echo, round_trip
from tests.helpers import Node, free_port_range


def exchange(sock: socket.socket, message: bytes) -> bytes:
    sock.sendall(message)
    got = b""
    while len(got) < len(message):
        chunk = sock.recv(65536)
        assert chunk, "closed by the proxy"
        got += chunk
    return got


def active(node: Node) -> int:
    backend = node.call("GET", "/apps/plain/routes/1/backends/1").json()
    count: int = backend["active_connections"]
    return count


def test_plain_route_on_the_engine_then_moved_live(start_node: StartNode, tmp_path: Path) -> None:
    lo, hi = free_port_range()
    node = start_node(*serve_args(tmp_path / "restcp.db", lo, hi, "--engine", "native"))
    with Backend(echo) as live:
        port = create_route(node, "plain")["port"]
        add_backend(node, "plain", 1, live.port)
        assert "engine=native" in node.wait_for_line("listening app=plain route=1 url=")

        message = b"through the engine\n" * 1000
        assert round_trip(port, message) == message
        line = node.wait_for_line("restcp.access")
        assert f"bytes_up={len(message)} bytes_down={len(message)}" in line
        assert line.rstrip().endswith("end=closed")

        def counted() -> bool:
            routes = node.call("GET", "/stats").json()["routes"]
            return bool(routes) and routes[0]["connections_total"] == 1

        wait_until(counted, "the engine's connection in /stats")

        # A toxic: the engine does not do them, so the route moves to asyncio; the open
        # connection stays on the engine and keeps relaying.
        with connect(port) as before:
            assert exchange(before, b"before the move") == b"before the move"
            wait_until(lambda: active(node) == 1, "the engine's open connection in the API")
            body = {"type": "latency", "attributes": {"latency": 1}}
            toxic = node.call("POST", "/apps/plain/routes/1/toxics", body)
            assert toxic.status == 201, toxic.json()
            wait_until(
                lambda: any(
                    "listening app=plain route=1 url=" in line and "engine=native" not in line
                    for line in node.lines
                ),
                "the route's listening line on asyncio",
            )
            assert exchange(before, b"after the move") == b"after the move"
            assert round_trip(port, b"new client\n") == b"new client\n"
        wait_until(lambda: active(node) == 0, "no open connection left in the API")
        assert live.accepted == 3


def test_workers_each_serve_on_their_engine(start_node: StartNode, tmp_path: Path) -> None:
    """--workers 2: both processes accept on the route's port with an engine of their own;
    /stats sums their connections."""
    lo, hi = free_port_range()
    args = serve_args(tmp_path / "restcp.db", lo, hi, "--engine", "native", "--workers", "2")
    node = start_node(*args)
    with Backend(echo) as live:
        port = create_route(node, "plain")["port"]
        add_backend(node, "plain", 1, live.port)
        node.wait_for_line("engine=native worker=1")
        clients = 60
        for i in range(clients):
            message = f"client {i}\n".encode()
            assert round_trip(port, message) == message
        listening = [line for line in node.lines if "listening app=plain route=1 url=" in line]
        assert len(listening) == 2, listening
        assert all("engine=native" in line for line in listening), listening

        def counted() -> bool:
            routes = node.call("GET", "/stats").json()["routes"]
            return bool(routes) and routes[0]["connections_total"] == clients

        wait_until(counted, f"{clients} connections in /stats")
        assert live.accepted == clients
