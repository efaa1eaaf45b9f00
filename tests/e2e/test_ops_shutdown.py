"""SIGTERM with a hundred connections mid-exchange: none is cut, none is lost, none waits.

The fixed sequence under test: stop accepting at once, let open connections finish (up to
--drain-timeout), exit 0 as soon as they have, and come back with every route and backend.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import time
from pathlib import Path

from tests.e2e.conftest import StartNode, assert_clean_log, create_route, serve_args, snapshot
from tests.e2e.peers import Backend, assert_refused, attach, connect, echo, recv_all, recv_exactly
from tests.e2e.test_ops_metrics import exchange
from tests.helpers import free_port_range

CLIENTS = 100
DRAIN = 5.0
HALF = 16 * 1024


def payload(i: int) -> bytes:
    """Distinct bytes per client, so a reply crossed with another client's shows."""
    return (f"{i:03d}".encode() + bytes(range(256))) * (2 * HALF // 259 + 1)


def test_sigterm_drains_open_connections_and_keeps_the_state(
    start_node: StartNode, tmp_path: Path
) -> None:
    lo, hi = free_port_range()
    args = serve_args(tmp_path / "s.db", lo, hi, "--drain-timeout", str(DRAIN))
    node = start_node(*args)
    ports = [create_route(node, "sd")["port"] for _ in range(2)]
    clients: list[tuple[socket.socket, bytes]] = []
    with Backend(echo) as backend, Backend(echo) as heavier:
        for route in (1, 2):
            attach(node, "sd", route, backend.port)
        attach(node, "sd", 2, heavier.port, weight=3)
        before = snapshot(node)
        try:
            for i in range(CLIENTS):
                sock = connect(ports[i % 2], timeout=10)
                data = payload(i)[: 2 * HALF]
                clients.append((sock, data))
                # Half the exchange before the signal: every pipe is open and has carried
                # bytes both ways.
                sock.sendall(data[:HALF])
                assert recv_exactly(sock, HALF) == data[:HALF]

            signalled = time.monotonic()
            node.proc.send_signal(signal.SIGTERM)
            node.wait_for_line(f"draining {CLIENTS} connections", timeout=DRAIN)
            # The line is written once every listener is closed: new clients are refused.
            stopped_accepting = time.monotonic() - signalled
            assert stopped_accepting < 1.0, stopped_accepting
            for port in ports:
                assert_refused(port)
            assert node.proc.poll() is None  # still draining: the clients hold it open

            # The other half after the signal, then a half-close; everything comes back.
            for sock, data in clients:
                sock.sendall(data[HALF:])
                sock.shutdown(socket.SHUT_WR)
            for i, (sock, data) in enumerate(clients):
                assert recv_exactly(sock, HALF) == data[HALF:], i
                assert recv_all(sock) == b"", i
        finally:
            for sock, _ in clients:
                sock.close()

        try:
            code = node.proc.wait(timeout=DRAIN)
        except subprocess.TimeoutExpired:
            log = "\n".join(node.lines)
            raise AssertionError(f"not exited at the drain deadline:\n{log}") from None
        exited_after = time.monotonic() - signalled
        print(
            f"{CLIENTS} clients: listeners closed {stopped_accepting:.3f}s after SIGTERM, "
            f"exit {code} after {exited_after:.3f}s (drain timeout {DRAIN}s)"
        )
        assert code == 0
        assert exited_after < DRAIN / 2, exited_after  # ended by its clients, not the deadline
        node.wait_for_line("restcp.node stopped")  # the last line: all of the log is read
        log = "\n".join(node.lines)
        assert "drain deadline passed" not in log
        assert log.count("end=closed") == CLIENTS
        assert node.lines[-1].endswith(" restcp.node stopped")
        assert_clean_log(node)

        again = start_node(*args)
        assert snapshot(again) == before
        for port in ports:
            assert exchange(port, b"back")[1] == b"back"


def test_the_drain_deadline_resets_what_is_left(start_node: StartNode, tmp_path: Path) -> None:
    lo, hi = free_port_range()
    node = start_node(*serve_args(tmp_path / "t.db", lo, hi, "--drain-timeout", "0.5"))
    port = create_route(node, "late")["port"]
    with Backend(echo) as backend:
        attach(node, "late", 1, backend.port)
        with connect(port, timeout=10) as sock:
            sock.sendall(b"ping")
            assert recv_exactly(sock, 4) == b"ping"
            signalled = time.monotonic()
            node.proc.send_signal(signal.SIGTERM)
            # A client that never finishes: reset at the deadline, and the node exits 0.
            assert node.proc.wait(timeout=5) == 0
            elapsed = time.monotonic() - signalled
            try:
                leftover = sock.recv(1)
            except ConnectionResetError:
                leftover = b""
            assert leftover == b""
        assert 0.5 <= elapsed < 3, elapsed
        node.wait_for_line("drain deadline passed: resetting 1 connections")
        node.wait_for_line("end=shutdown")
