"""``bind(share=True)`` and ``bind(join=True)``: what ``--workers`` relies on from Linux."""

from __future__ import annotations

import socket

import pytest

from restcp.proxy.listener import bind, is_address_taken


def _connect_all(port: int, count: int) -> list[socket.socket]:
    return [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(count)]


def _accept_all(sock: socket.socket) -> int:
    accepted = 0
    while True:
        try:
            conn, _ = sock.accept()
        except BlockingIOError:
            return accepted
        conn.close()
        accepted += 1


def test_a_shared_socket_lets_joiners_in_and_linux_spreads_connections() -> None:
    main = bind("127.0.0.1", 0, share=True)
    port = main.getsockname()[1]
    joined = bind("127.0.0.1", port, join=True)
    clients = _connect_all(port, 64)
    try:
        # Each is in one accept queue; with 64 clients both get some (a miss: 2**-63).
        counts = (_accept_all(main), _accept_all(joined))
        assert sum(counts) == 64
        assert min(counts) > 0, counts
    finally:
        for sock in (main, joined, *clients):
            sock.close()


def test_a_socket_that_only_binds_gets_no_connections() -> None:
    main = bind("127.0.0.1", 0, share=True)
    port = main.getsockname()[1]
    starting = socket.socket()
    starting.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    starting.bind(("127.0.0.1", port))  # a worker that has not listened yet
    clients = _connect_all(port, 32)
    try:
        assert _accept_all(main) == 32
    finally:
        for sock in (main, starting, *clients):
            sock.close()


@pytest.mark.parametrize("holder_reuseport", [False, True], ids=["plain", "so_reuseport"])
def test_sharing_still_refuses_a_port_someone_else_holds(holder_reuseport: bool) -> None:
    with socket.socket() as holder:
        if holder_reuseport:
            holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        with pytest.raises(OSError, match="in use") as refused:
            bind("127.0.0.1", port, share=True)
        assert is_address_taken(refused.value)


def test_without_sharing_nobody_can_join() -> None:
    main = bind("127.0.0.1", 0)
    try:
        with pytest.raises(OSError, match="in use") as refused:
            bind("127.0.0.1", main.getsockname()[1], join=True)
        assert is_address_taken(refused.value)
    finally:
        main.close()
