"""Every connection through a route releases what it took: no fd and no CLOSE_WAIT socket
stays in the restcp process after hundreds of connections of every ending."""

from __future__ import annotations

import socket
import struct
from collections.abc import Callable

from tests.e2e.conftest import add_backend, create_route, wait_until
from tests.e2e.peers import (
    Backend,
    closed_by_peer,
    connect,
    echo,
    recv_all,
    refusing_port,
    round_trip,
    sender,
)
from tests.helpers import Node, tcp_states

PER_KIND = 80


def echo_round_trip(port: int) -> None:
    assert round_trip(port, b"x" * 1000) == b"x" * 1000


def reset_mid_stream(port: int) -> None:
    """Send, then vanish with a reset (SO_LINGER 0) before reading the reply."""
    sock = connect(port)
    sock.sendall(b"y" * 10_000)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def hang_up_at_once(port: int) -> None:
    """Close before restcp can have reached the backend."""
    connect(port).close()


def read_to_eof(port: int) -> None:
    with connect(port) as sock:
        assert recv_all(sock) == b"z" * 5000


def expect_closed(port: int) -> None:
    with connect(port) as sock:
        assert closed_by_peer(sock)


def test_no_fd_or_close_wait_left_after_many_connections(node: Node) -> None:
    with (
        Backend(echo) as echoer,
        Backend(sender(b"z" * 5000)) as talker,
        refusing_port() as dead,
    ):
        live = create_route(node, "live")["port"]
        add_backend(node, "live", 1, echoer.port)
        first = create_route(node, "first")["port"]
        add_backend(node, "first", 1, talker.port)
        empty = create_route(node, "empty")["port"]
        gone = create_route(node, "gone")["port"]
        add_backend(node, "gone", 1, dead)

        kinds: list[tuple[Callable[[int], None], int]] = [
            (echo_round_trip, live),
            (reset_mid_stream, live),
            (hang_up_at_once, live),
            (read_to_eof, first),
            (expect_closed, empty),
            (expect_closed, gone),
        ]
        # One of each first, so whatever restcp creates lazily exists before the baseline.
        for run, port in kinds:
            run(port)
        pid = node.proc.pid
        wait_until(lambda: tcp_states(pid).count("LISTEN") == len(tcp_states(pid)), "idle")
        baseline = node.open_fds()

        for _ in range(PER_KIND):
            for run, port in kinds:
                run(port)

        # Closes travel through restcp asynchronously: poll for the end state, boundedly.
        wait_until(lambda: node.open_fds() <= baseline, "fds back to the baseline")
        assert node.open_fds() == baseline
        states = tcp_states(pid)
        assert "CLOSE_WAIT" not in states
        assert states == ["LISTEN"] * 5, states  # the API and the four routes
        assert echoer.accepted >= PER_KIND * 2
        assert talker.accepted == PER_KIND + 1
