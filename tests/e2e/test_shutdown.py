"""SIGTERM and Ctrl-C stop a node cleanly: exit 0, open connections drained up to the
deadline then reset, and the store intact for the next start."""

from __future__ import annotations

import signal
import socket
import time
from pathlib import Path

import pytest

from tests.e2e.conftest import StartNode, add_backend, create_route, serve_args, snapshot
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
from tests.helpers import Node, free_port_range

DRAIN = 1.5


def say(sock: socket.socket, text: bytes) -> bytes:
    sock.sendall(text)
    return recv_exactly(sock, len(text))


def test_sigterm_drains_open_connections_and_keeps_the_store(
    tmp_path: Path, start_node: StartNode
) -> None:
    lo, hi = free_port_range()
    args = serve_args(tmp_path / "restcp.db", lo, hi, "--drain-timeout", str(DRAIN))
    node = start_node(*args)
    with Backend(echo) as backend:
        port = create_route(node, "web")["port"]
        add_backend(node, "web", 1, backend.port)
        create_route(node, "idle", balance="round_robin")
        before = snapshot(node)
        with connect(port) as finishing, connect(port) as lingering:
            assert say(finishing, b"one\n") == b"one\n"
            assert say(lingering, b"two\n") == b"two\n"

            signalled = time.monotonic()
            node.proc.send_signal(signal.SIGTERM)
            node.wait_for_line("draining 2 connections")
            assert_refused(port)  # no new clients once the drain has begun
            # A connection open at the signal goes on relaying, and may end on its own.
            assert say(finishing, b"still here\n") == b"still here\n"
            finishing.shutdown(socket.SHUT_WR)
            assert recv_all(finishing) == b""

            code = node.stop(timeout=DRAIN + 10)
            took = time.monotonic() - signalled
            assert code == 0
            assert closed_by_peer(lingering)
        assert DRAIN <= took < DRAIN + 3, took
        node.wait_for_line("drain deadline passed: resetting 1 connections")
        assert node.lines[-1].endswith(" stopped"), node.lines[-3:]

        again = start_node(*args)
        assert snapshot(again) == before
        assert round_trip(port, b"back\n") == b"back\n"


def test_ctrl_c_stops_cleanly_once_connections_end(node: Node) -> None:
    with Backend(echo) as backend:
        port = create_route(node, "web")["port"]
        add_backend(node, "web", 1, backend.port)
        with connect(port) as client:
            assert say(client, b"hi\n") == b"hi\n"
            node.proc.send_signal(signal.SIGINT)
            node.wait_for_line("draining 1 connections")
            client.shutdown(socket.SHUT_WR)
            assert recv_all(client) == b""
        # The default drain deadline is 30 s: ending well before it means the drain saw the
        # last connection go, not the deadline pass.
        assert node.stop(timeout=10) == 0
    log = "\n".join(node.lines)
    assert "signal received" in log
    assert "Traceback" not in log
    assert "KeyboardInterrupt" not in log
    assert node.lines[-1].endswith(" stopped")


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_signal_while_starting_stops_cleanly(
    tmp_path: Path, start_node: StartNode, sig: int
) -> None:
    lo, hi = free_port_range()
    node = start_node(*serve_args(tmp_path / "restcp.db", lo, hi), ready=False)
    # Logged before the heavy imports and the first bind: the signal lands mid-start, where
    # it once either escaped as a traceback or was swallowed by an import, leaving a node
    # that ran on, deaf to it.
    node.wait_for_line("starting restcp")
    code = node.stop(sig, timeout=15)
    log = "\n".join(node.lines)
    assert code == 0, log
    assert "Traceback" not in log
    assert "KeyboardInterrupt" not in log
    assert node.lines[-1].endswith(" stopped"), log
