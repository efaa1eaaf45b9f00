"""`restcp serve --engine native` on a real node: a plain route is served by the native
engine, its connections counted in /stats and logged; a route given a toxic moves to the
asyncio data plane live, and a connection opened before the move carries on; a least_conn
route with a capped backend stays on the engine, which balances and caps it."""

from __future__ import annotations

import contextlib
import os
import socket
import threading
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from tests.e2e.conftest import StartNode, add_backend, create_route, serve_args, wait_until
from tests.e2e.peers import (
    Backend,
    Client,
    Tagged,
    attach,
    backend_of,
    connect,
    dial,
    echo,
    recv_all,
    round_trip,
)
from tests.e2e.test_ops_logs import address_of
from tests.e2e.test_ops_metrics import start_json_node
from tests.e2e.test_traffic_splice import MB, connection_event
from tests.helpers import Node, free_port_range


def exchange(sock: socket.socket, message: bytes) -> bytes:
    sock.sendall(message)
    got = b""
    while len(got) < len(message):
        chunk = sock.recv(65536)
        assert chunk, "closed by the proxy"
        got += chunk
    return got


def echoed(sock: socket.socket, data: bytes) -> bytes:
    """Send ``data`` and a FIN from a thread while reading what comes back up to EOF (an
    echo's answer to megabytes would fill every buffer on the way before they are sent)."""
    sending = threading.Thread(target=lambda: (sock.sendall(data), sock.shutdown(socket.SHUT_WR)))
    sending.start()
    got = bytearray()
    while chunk := sock.recv(1 << 20):
        got += chunk
    sending.join()
    return bytes(got)


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


def route_stats(node: Node, app: str) -> dict[str, Any]:
    routes = node.call("GET", "/stats").json()["routes"]
    found: dict[str, Any] = next(r for r in routes if r["app"] == app)
    return found


def metric(node: Node, name: str, **labels: str) -> float:
    """The value of one sample of /metrics (0 when it is not there)."""
    want = [f'{key}="{value}"' for key, value in labels.items()]
    for line in node.call("GET", "/metrics").body.decode().splitlines():
        if line.startswith(name + "{") and all(w in line for w in want):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_stats_show_an_open_engine_connections_bytes(start_node: StartNode, tmp_path: Path) -> None:
    """/stats and /metrics count an open engine connection's bytes as they pass, and the
    connection from its connect; once it ends, its bytes count once."""
    lo, hi = free_port_range()
    node = start_node(*serve_args(tmp_path / "restcp.db", lo, hi, "--engine", "native"))
    with Backend(echo) as live:
        port = create_route(node, "plain")["port"]
        add_backend(node, "plain", 1, live.port)
        assert "engine=native" in node.wait_for_line("listening app=plain route=1 url=")
        with connect(port) as sock:
            assert exchange(sock, b"a" * 1000) == b"a" * 1000

            def shown(bytes_: int, active_: int) -> bool:
                got = route_stats(node, "plain")
                return (
                    got["bytes_in"], got["bytes_out"], got["connections_active"],
                    got["connections_total"], got["connections_max"],
                ) == (bytes_, bytes_, active_, 1, 1)  # fmt: skip

            wait_until(lambda: shown(1000, 1), "the open connection's bytes in /stats")
            assert metric(node, "restcp_bytes_total", app="plain", direction="in") == 1000
            assert metric(node, "restcp_connections_total", app="plain") == 1
            assert exchange(sock, b"b" * 500) == b"b" * 500
            wait_until(lambda: shown(1500, 1), "its next bytes")
        wait_until(lambda: shown(1500, 0), "the ended connection, its bytes once")
        assert metric(node, "restcp_bytes_total", app="plain", direction="out") == 1500


def test_the_node_cap_counts_both_data_planes(start_node: StartNode, tmp_path: Path) -> None:
    """--max-connections 4, filled by two clients of a route the engine serves and two of a
    route with a toxic (asyncio): a fifth client of either is refused (node_limit); one
    that ends on the engine gives its place to a client of the asyncio route."""
    lo, hi = free_port_range()
    node = start_node(
        *serve_args(tmp_path / "restcp.db", lo, hi, "--engine", "native"),
        "--max-connections", "4",
    )  # fmt: skip
    with Backend(echo) as live:
        ports = {app: create_route(node, app)["port"] for app in ("plain", "slow")}
        for app in ports:
            add_backend(node, app, 1, live.port)
        body = {"type": "latency", "attributes": {"latency": 0}}
        assert node.call("POST", "/apps/slow/routes/1/toxics", body).status == 201
        wait_until(
            lambda: any(
                "listening app=slow route=1 url=" in line and "engine=native" not in line
                for line in node.lines
            ),
            "the toxic route on asyncio",
        )
        clients = []
        try:
            for app in ("plain", "plain", "slow", "slow"):
                clients.append(connect(ports[app]))
                assert exchange(clients[-1], b"hi") == b"hi"
            for app in ports:
                refused = dial(ports[app])
                if refused is not None:  # else reset before its connect returned
                    with refused, contextlib.suppress(ConnectionResetError):
                        assert refused.recv(10) == b""  # closed unserved
                wait_until(
                    lambda app=app: metric(  # type: ignore[misc]
                        node, "restcp_refused_connections_total", app=app, reason="node_limit"
                    ) == 1,
                    f"{app}'s client refused",
                )  # fmt: skip
            clients.pop(0).close()  # one of the engine's
            wait_until(lambda: route_stats(node, "plain")["connections_active"] == 1, "ended")
            clients.append(connect(ports["slow"]))
            assert exchange(clients[-1], b"in") == b"in"
        finally:
            for sock in clients:
                sock.close()


def test_splice_routes_are_served_by_the_engine_splicing(
    start_node: StartNode, tmp_path: Path
) -> None:
    """``splice: true`` on `--engine native`: the engine serves the route (it no longer
    stays on asyncio) and its connections are spliced, as their access events say; on an
    ``"auto"`` route, a chatty connection is not, and a bulk one is."""
    lo, hi = free_port_range()
    node = start_json_node(
        start_node, *serve_args(tmp_path / "restcp.db", lo, hi, "--engine", "native")
    )
    bulk = os.urandom(8 * MB)
    with Backend(echo) as live:
        port = create_route(node, "spliced", splice=True)["port"]
        attach(node, "spliced", 1, live.port)
        auto_port = create_route(node, "auto", splice="auto")["port"]
        attach(node, "auto", 1, live.port)
        for app in ("spliced", "auto"):
            line = node.wait_for_line(f"listening app={app} route=1 url=")
            assert "engine=native" in line, line

        with connect(port, timeout=30) as sock:
            client = address_of(sock)
            assert echoed(sock, bulk) == bulk
        event = connection_event(node, client)
        assert (event["engine"], event["spliced"]) == ("native", True)
        assert (event["bytes_up"], event["bytes_down"]) == (len(bulk), len(bulk))

        with connect(auto_port) as chatty:
            client = address_of(chatty)
            for i in range(10):
                assert exchange(chatty, b"small %d" % i) == b"small %d" % i
        event = connection_event(node, client)
        assert (event["engine"], event["spliced"]) == ("native", False)

        # The engine copies a read at most 64 KiB at a time: 8 MiB sent at once, echoed
        # while the client is still sending, fill some of them.
        with connect(auto_port, timeout=30) as sock:
            client = address_of(sock)
            assert echoed(sock, bulk) == bulk
        event = connection_event(node, client)
        assert (event["engine"], event["spliced"]) == ("native", True)


def test_proxy_header_to_a_host_name_backend(engine_node: Node) -> None:
    """A route with a PROXY v2 header and a backend named ``localhost``: the engine serves
    it (the name resolved at each connect), and the backend reads the exact header (written
    out from the spec's layout), then the client's bytes."""
    node = engine_node
    received: list[bytes] = []

    def record(conn: socket.socket) -> None:
        received.append(recv_all(conn))

    with Backend(record) as server:
        port = create_route(node, "named", proxy_protocol="v2")["port"]
        add_backend(node, "named", 1, server.port, ip="localhost")
        assert "engine=native" in node.wait_for_line("listening app=named route=1 url=")
        for count, message in enumerate((b"first", b"second"), 1):
            with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
                client_port = sock.getsockname()[1]
                sock.sendall(message)
                sock.shutdown(socket.SHUT_WR)
                assert recv_all(sock) == b""
            header = (
                b"\r\n\r\n\x00\r\nQUIT\n"  # the v2 signature
                + b"\x21\x11\x00\x0c"  # version 2 PROXY, TCP over IPv4, 12 bytes
                + socket.inet_aton("127.0.0.1") * 2
                + client_port.to_bytes(2, "big")
                + port.to_bytes(2, "big")
            )
            # The backend keeps the bytes before it closes, and the client's EOF follows.
            assert len(received) == count
            assert received[-1] == header + message
        line = node.wait_for_line("backend=1/localhost:")
        assert f"bytes_up={len(b'first')} " in line


def test_least_conn_and_a_capped_backend_on_the_engine(engine_node: Node) -> None:
    node = engine_node
    port = create_route(node, "lc", balance="least_conn")["port"]
    with ExitStack() as stack:
        a = stack.enter_context(Backend(Tagged("a")))
        b = stack.enter_context(Backend(Tagged("b")))
        attach(node, "lc", 1, a.port, max_connections=2)
        attach(node, "lc", 1, b.port)

        # Ties take turns until a is at its cap of two; b takes the rest.
        held = [stack.enter_context(Client(port)) for _ in range(6)]
        served = [client.ask("x") for client in held]
        assert sorted(served) == ["a", "a", "b", "b", "b", "b"], served
        wait_until(
            lambda: backend_of(node, "lc", 1, 2)["active_connections"] == 4, "b's four in the API"
        )
        assert backend_of(node, "lc", 1, 1)["active_connections"] == 2
        # One of a's ends: a has the fewest now (1 against 4), and takes the next client.
        held[served.index("a")].close()
        wait_until(lambda: backend_of(node, "lc", 1, 1)["active_connections"] == 1, "a's one")
        assert stack.enter_context(Client(port)).ask("y") == "a"
        # Full again: the next goes to b, whatever least_conn would say.
        assert stack.enter_context(Client(port)).ask("z") == "b"

    listening = [line for line in node.lines if "listening app=lc route=1 url=" in line]
    assert listening, node.lines
    assert all("engine=native" in line for line in listening), listening
