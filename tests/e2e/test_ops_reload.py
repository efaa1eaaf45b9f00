"""SIGHUP reloads a running node: the admin token file is read again (a rotation), and every
route is resynced from the store, while the process, its listeners and the connections they
relay go on untouched."""

from __future__ import annotations

import signal
import socket
from pathlib import Path

from tests.e2e.conftest import StartNode, add_backend, serve_args, wait_until
from tests.e2e.peers import Backend, connect, echo, held_port, recv_exactly, round_trip
from tests.e2e.test_auth import ADMIN, bearer
from tests.helpers import Node, free_port_range

ROTATED = "the-rotated-admin-token-42"


def reload(node: Node, after: str) -> None:
    """SIGHUP, then wait for the node's word that the reload finished."""
    done = sum("reloaded routes=" in line for line in node.lines)
    node.proc.send_signal(signal.SIGHUP)
    wait_until(
        lambda: sum("reloaded routes=" in line for line in node.lines) > done, "the reload done"
    )
    assert any(after in line for line in node.lines), node.lines


def status(node: Node, token: str) -> int:
    return node.call("GET", "/apps", headers=bearer(token)).status


def test_sighup_rotates_the_admin_token_and_keeps_connections(
    start_node: StartNode, tmp_path: Path
) -> None:
    lo, hi = free_port_range()
    token_file = tmp_path / "token"
    token_file.write_text(ADMIN + "\n")
    node = start_node(*serve_args(tmp_path / "r.db", lo, hi, "--api-token-file", str(token_file)))
    created = node.call("PUT", "/apps/web/routes", headers=bearer(ADMIN))
    assert created.status == 201, created
    port = created.json()["port"]
    with Backend(echo) as backend:
        response = node.call(
            "PUT",
            "/apps/web/routes/1/backends",
            {"ip": "127.0.0.1", "port": backend.port},
            headers=bearer(ADMIN),
        )
        assert response.status == 201, response
        with connect(port) as held:
            held.sendall(b"before")
            assert recv_exactly(held, 6) == b"before"

            token_file.write_text(ROTATED + "\n")
            reload(node, "admin token read again")
            assert status(node, ADMIN) == 401
            assert status(node, ROTATED) == 200

            # A file that no longer holds a valid token keeps the one in use.
            token_file.write_text("short\n")
            reload(node, "keeping the admin token in use")
            assert status(node, ROTATED) == 200
            assert status(node, "short-but-not-the-token") == 401

            # The connection opened before the reloads is still relayed, and so are new ones.
            held.sendall(b"after")
            assert recv_exactly(held, 5) == b"after"
            held.shutdown(socket.SHUT_WR)
        assert round_trip(port, b"new\n") == b"new\n"
        assert backend.accepted == 2
    assert node.proc.poll() is None
    assert node.stop() == 0


def test_sighup_binds_a_route_whose_port_was_freed_without_waiting_for_the_timer(
    start_node: StartNode, tmp_path: Path
) -> None:
    lo, hi = free_port_range()
    # A resync timer far beyond the test: only the reload can bind the route.
    args = serve_args(tmp_path / "r.db", lo, hi, "--resync-interval", "3600")
    first = start_node(*args)
    with Backend(echo) as backend:
        assert first.call("PUT", "/apps/held/routes").status == 201
        add_backend(first, "held", 1, backend.port)
        assert first.stop() == 0
        with held_port(lo):
            node = start_node(*args)
            assert node.call("GET", "/healthz").status == 503
        reload(node, "reloaded routes=1")
        health = node.call("GET", "/healthz")
        assert health.status == 200, health
        assert round_trip(lo, b"bound by the reload\n") == b"bound by the reload\n"
    assert node.stop() == 0


def test_sighup_without_a_token_file_only_resyncs(start_node: StartNode, tmp_path: Path) -> None:
    lo, hi = free_port_range()
    node = start_node(*serve_args(tmp_path / "r.db", lo, hi, "--api-token", ADMIN))
    reload(node, "reloaded routes=0")
    assert not any("admin token" in line for line in node.lines)
    assert status(node, ADMIN) == 200
    assert node.stop() == 0
