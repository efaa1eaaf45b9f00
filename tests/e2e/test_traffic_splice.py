"""The route setting ``splice`` through a real node: set and changed through the API, relaying
a large transfer exactly both ways with os.splice, applying to new connections only, and
refusing what is not a JSON boolean.

Whether a connection was spliced is read from its access event (``"spliced"`` in the JSON
log), so none of these passes through the loop's transports by accident.
"""

from __future__ import annotations

import hashlib
import os
import socket
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import StartNode, create_route, serve_args, wait_until
from tests.e2e.peers import Backend, attach, connect, echo, recv_exactly
from tests.e2e.test_ops_logs import address_of, events
from tests.e2e.test_ops_metrics import start_json_node
from tests.helpers import Node, free_port_range

MB = 1 << 20
SIZE = 64 * MB
CHUNK = 1 * MB


def json_node(start_node: StartNode, tmp_path: Path) -> Node:
    lo, hi = free_port_range()
    return start_json_node(start_node, *serve_args(tmp_path / "s.db", lo, hi))


def pattern(seed: int) -> bytes:
    """SIZE random-looking bytes, made from a 1 MiB random block and the block's index."""
    block = os.urandom(CHUNK - 8)
    return b"".join(i.to_bytes(8, "big") + block for i in range(seed, seed + SIZE // CHUNK))


def swap(down: bytes) -> Any:
    """Read the client's bytes up to its FIN (hashing them), then send ``down`` and close."""

    def handle(conn: socket.socket) -> None:
        digest, size = hashlib.sha256(), 0
        while data := conn.recv(CHUNK):
            digest.update(data)
            size += len(data)
        conn.sendall(size.to_bytes(8, "big") + digest.digest())
        conn.sendall(down)

    return handle


def connection_event(node: Node, client: str) -> dict[str, Any]:
    wait_until(lambda: bool(events(node, "connection", client=client)), "access event")
    [line] = events(node, "connection", client=client)
    return line


def test_a_splice_route_relays_a_large_transfer_exactly(
    start_node: StartNode, tmp_path: Path
) -> None:
    node = json_node(start_node, tmp_path)
    route = create_route(node, "bulk", splice=True)
    assert route["splice"] is True
    assert node.call("GET", "/apps/bulk/routes/1").json()["splice"] is True
    up, down = pattern(0), pattern(1000)
    with Backend(swap(down)) as backend:
        attach(node, "bulk", 1, backend.port)
        with connect(route["port"], timeout=30) as sock:
            client = address_of(sock)
            sock.sendall(up)
            sock.shutdown(socket.SHUT_WR)
            summary = recv_exactly(sock, 40)
            assert int.from_bytes(summary[:8], "big") == SIZE
            assert summary[8:] == hashlib.sha256(up).digest()
            digest, size = hashlib.sha256(), 0
            while data := sock.recv(CHUNK):
                digest.update(data)
                size += len(data)
            assert (size, digest.digest()) == (SIZE, hashlib.sha256(down).digest())
    line = connection_event(node, client)
    assert (line["bytes_up"], line["bytes_down"], line["end"]) == (SIZE, SIZE + 40, "closed")
    assert line["spliced"] is True


def test_patch_toggles_splice_for_new_connections(start_node: StartNode, tmp_path: Path) -> None:
    node = json_node(start_node, tmp_path)
    port = create_route(node, "tog")["port"]
    # The default, "auto": these small exchanges are never spliced.
    assert node.call("GET", "/apps/tog/routes/1").json()["splice"] == "auto"

    def exchange(sock: socket.socket, text: bytes) -> None:
        sock.sendall(text)
        assert recv_exactly(sock, len(text)) == text

    with Backend(echo) as backend:
        attach(node, "tog", 1, backend.port)
        plain = connect(port)
        exchange(plain, b"before")
        answer = node.call("PATCH", "/apps/tog/routes/1", {"splice": True})
        assert answer.status == 200, answer
        assert answer.json()["splice"] is True
        spliced = connect(port)
        exchange(spliced, b"after")
        # The connection opened before the change carries on as it began.
        exchange(plain, b"still")
        assert node.call("PATCH", "/apps/tog/routes/1", {"splice": False}).json()["splice"] is False
        plain_again = connect(port)
        exchange(plain_again, b"off again")
        exchange(spliced, b"still spliced")
        clients = [address_of(s) for s in (plain, spliced, plain_again)]
        for sock in (plain, spliced, plain_again):
            sock.close()
        assert [connection_event(node, c)["spliced"] for c in clients] == [False, True, False]


@pytest.mark.parametrize("bad", ["true", 1, 0, None, [], {}])
def test_a_bad_splice_value_is_refused_and_changes_nothing(node: Node, bad: object) -> None:
    create_route(node, "bad")
    before = node.call("GET", "/apps/bad/routes/1").json()
    for method, path in (("PATCH", "/apps/bad/routes/1"), ("PUT", "/apps/bad/routes")):
        answer = node.call(method, path, {"splice": bad})
        assert answer.status == 422, answer
        problem = answer.json()
        assert [e["field"] for e in problem["errors"]] == ["splice"], problem
    assert node.call("GET", "/apps/bad/routes/1").json() == before
    assert len(node.call("GET", "/apps/bad/routes").json()) == 1
