"""The three scenarios of the original restcp_tests.erl, against a real `restcp serve`."""

from __future__ import annotations

import hashlib
import signal
from pathlib import Path

from tests.e2e.conftest import (
    StartNode,
    add_backend,
    create_route,
    port_range,
    seed_fields,
    serve_args,
)
from tests.e2e.peers import Backend, assert_refused, connect, recv_all, sender
from tests.helpers import Node, free_port_range

WORDS = Path("/usr/share/dict/words")


def test_api_sequence(node: Node) -> None:
    lo, _ = port_range(node)
    created = node.call("PUT", "/apps/123/routes")
    assert created.status == 201
    assert created.headers["Content-Type"].startswith("application/json")
    assert created.headers["Location"] == "/apps/123/routes/1"
    # The seed's two fields, first and in the seed's order.
    assert list(created.json())[:2] == ["id", "url"]
    assert created.json()["id"] == 1
    assert created.json()["url"] == f"tcp://127.0.0.1:{lo}/"
    connect(lo).close()  # bound and accepting before the response

    added = node.call("PUT", "/apps/123/routes/1/backends", {"ip": "127.0.0.1", "port": 9999})
    assert (added.status, added.json()) == (201, {"id": 1})

    backends = node.call("GET", "/apps/123/routes/1/backends")
    assert backends.status == 200
    assert [{"ip": b["ip"], "port": b["port"]} for b in backends.json()] == [
        {"ip": "127.0.0.1", "port": 9999}
    ]

    routes = node.call("GET", "/apps/123/routes")
    assert routes.status == 200
    # Byte for byte where the seed's fields are: same names, order and separators.
    assert routes.body.startswith(
        f'[{{"id": 1, "url": "tcp://127.0.0.1:{lo}/", '
        '"backends": [{"ip": "127.0.0.1", "port": 9999'.encode()
    ), routes.body
    seed_view = [
        {"id": r["id"], "url": r["url"], "backends": [(b["ip"], b["port"]) for b in r["backends"]]}
        for r in routes.json()
    ]
    assert seed_view == [
        {"id": 1, "url": f"tcp://127.0.0.1:{lo}/", "backends": [("127.0.0.1", 9999)]}
    ]

    replaced = node.call("POST", "/apps/123/routes/1/backends/1", {"ip": "127.0.0.1", "port": 8888})
    assert replaced.status == 200
    assert seed_fields(replaced.json()) == {"ip": "127.0.0.1", "port": 8888, "id": 1}
    backends = node.call("GET", "/apps/123/routes/1/backends")
    assert [seed_fields(b) for b in backends.json()] == [{"ip": "127.0.0.1", "port": 8888, "id": 1}]
    one = node.call("GET", "/apps/123/routes/1/backends/1")
    assert (one.status, seed_fields(one.json())) == (
        200,
        {"ip": "127.0.0.1", "port": 8888, "id": 1},
    )

    deleted = node.call("DELETE", "/apps/123/routes/1/backends/1")
    assert (deleted.status, deleted.body) == (204, b"")
    assert node.call("GET", "/apps/123/routes/1/backends").json() == []
    assert node.call("GET", "/apps/123/routes/1/backends/1").status == 404

    deleted = node.call("DELETE", "/apps/123/routes/1")
    assert (deleted.status, deleted.body) == (204, b"")
    # The listener is gone by the time the response arrives, not some time later.
    assert_refused(lo)
    routes = node.call("GET", "/apps/123/routes")
    assert (routes.status, routes.json()) == (200, [])
    assert node.call("GET", "/apps/123/routes/1").status == 404


def test_large_payload_reaches_the_client_exactly(node: Node) -> None:
    payload = WORDS.read_bytes() if WORDS.is_file() else b""
    # At least 2 MB whatever the dictionary holds; a counter makes a lost or repeated block
    # change the digest.
    payload += b"".join(b"%08d " % i + b"x" * 55 + b"\n" for i in range(32768))
    with Backend(sender(payload)) as backend:
        port = create_route(node, "big")["port"]
        add_backend(node, "big", 1, backend.port)
        for _ in range(3):
            with connect(port) as client:
                received = recv_all(client)
            assert len(received) == len(payload)
            assert hashlib.sha256(received).digest() == hashlib.sha256(payload).digest()
        assert backend.accepted == 3


def test_setup_and_teardown(tmp_path: Path, start_node: StartNode) -> None:
    """Start, serve, stop cleanly; a second start on the same store is the same service."""
    lo, hi = free_port_range()
    args = serve_args(tmp_path / "restcp.db", lo, hi)
    node = start_node(*args)
    health = node.call("GET", "/healthz")
    assert (health.status, health.json()["status"], health.json()["routes"]) == (200, "ok", 0)
    assert node.call("GET", "/apps").json() == []
    assert node.call("PUT", "/apps/123/routes").status == 201
    assert node.stop(signal.SIGTERM) == 0
    assert any(line.endswith(" stopped") for line in node.lines), node.lines
    assert_refused(node.api_port)
    assert_refused(lo)
    again = start_node(*args)
    health = again.call("GET", "/healthz")
    assert (health.status, health.json()["routes"], health.json()["unbound"]) == (200, 1, [])
    assert again.call("GET", "/apps").json() == [{"app": "123", "routes": 1}]
    connect(lo).close()
    assert again.stop(signal.SIGTERM) == 0
