"""Listeners and the manager: live route updates, stopping, and the draining shutdown."""

from __future__ import annotations

import asyncio
import dataclasses
import errno
import logging
import socket
import time

import pytest

from restcp.core.reconcile import Stop, Update
from restcp.model import Backend
from restcp.proxy.listener import bind
from restcp.proxy.manager import ProxyManager
from tests.integration.harness import (
    HOST,
    WAIT,
    Server,
    make_route,
    proxy,
    read_all,
    read_outcome,
    run,
    until,
)


async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> int:
    total = 0
    while data := await reader.read(65536):
        total += len(data)
        writer.write(data)
        await writer.drain()
    return total


async def roundtrip(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, data: bytes
) -> bytes:
    writer.write(data)
    return await asyncio.wait_for(reader.readexactly(len(data)), WAIT)


def connect_now(port: int) -> int:
    """A blocking connect, made without yielding to the loop: 0 or the errno it failed with.
    On loopback the kernel answers at once: a listening socket completes the handshake from
    its backlog, a closed one refuses."""
    with socket.socket() as sock:
        sock.settimeout(WAIT)
        return sock.connect_ex((HOST, port))


def test_update_moves_new_connections_and_keeps_open_ones(loop: str) -> None:
    async def main() -> None:
        async with Server(echo) as old, Server(echo) as new, proxy(old.backend(1)) as px:
            r1, w1 = await px.connect()
            assert await roundtrip(r1, w1, b"one") == b"one"
            await px.manager.apply([Update(make_route(px.port, (new.backend(2),)))])
            r2, w2 = await px.connect()
            assert await roundtrip(r2, w2, b"two") == b"two"
            # The open connection still goes to the old backend, both ways.
            assert await roundtrip(r1, w1, b"one again") == b"one again"
            assert (old.accepted, new.accepted) == (1, 1)
            for writer in (w1, w2):
                writer.close()
            assert await old.result() == len(b"oneone again")
            assert await new.result() == len(b"two")

    run(loop, main())


def test_stop_refuses_at_once_and_open_relays_go_on(loop: str) -> None:
    async def main() -> None:
        async with Server(echo) as server, proxy(server.backend()) as px:
            reader, writer = await px.connect()
            assert await roundtrip(reader, writer, b"before") == b"before"
            px.manager.stop(px.route.key)
            assert connect_now(px.port) == errno.ECONNREFUSED
            assert px.manager.running() == {}
            assert await roundtrip(reader, writer, b"after") == b"after"
            writer.write_eof()
            assert await read_all(reader) == b""
            writer.close()
            assert await server.result() == len(b"beforeafter")

    run(loop, main())


def test_stop_through_apply(loop: str) -> None:
    async def main() -> None:
        async with Server(echo) as server, proxy(server.backend()) as px:
            await px.manager.apply([Stop(px.route.key)])
            assert connect_now(px.port) == errno.ECONNREFUSED

    run(loop, main())


def test_shutdown_lets_connections_finish_before_the_deadline(
    loop: str, caplog: pytest.LogCaptureFixture
) -> None:
    async def main() -> None:
        async with Server(echo) as server:
            manager = ProxyManager()
            sock = bind(HOST, 0)
            route = make_route(sock.getsockname()[1], (server.backend(),))
            await manager.serve(route, sock)
            reader, writer = await asyncio.open_connection(HOST, route.port)
            assert await roundtrip(reader, writer, b"hi") == b"hi"

            async def finish_soon() -> bytes:
                await asyncio.sleep(0.2)
                data = await roundtrip(reader, writer, b"last words")
                writer.write_eof()
                await read_all(reader)
                return data

            started = time.monotonic()
            finisher = asyncio.create_task(finish_soon())
            await manager.shutdown(drain_timeout=5)
            elapsed = time.monotonic() - started
            assert await finisher == b"last words"
            assert elapsed < 2, elapsed
            assert connect_now(route.port) == errno.ECONNREFUSED
            assert not manager.traffic
            writer.close()
            await server.result()

    caplog.set_level(logging.INFO, "restcp.access")
    run(loop, main())
    (line,) = [r.getMessage() for r in caplog.records if r.name == "restcp.access"]
    assert line.endswith("end=closed")


def test_shutdown_resets_connections_past_the_deadline(loop: str) -> None:
    deadline = 0.3

    async def main() -> None:
        async with Server(echo) as server:
            manager = ProxyManager()
            sock = bind(HOST, 0)
            route = make_route(sock.getsockname()[1], (server.backend(),))
            await manager.serve(route, sock)
            clients = [await asyncio.open_connection(HOST, route.port) for _ in range(3)]
            for reader, writer in clients:
                assert await roundtrip(reader, writer, b"hi") == b"hi"
            started = time.monotonic()
            await manager.shutdown(drain_timeout=deadline)
            elapsed = time.monotonic() - started
            assert deadline * 0.9 <= elapsed < deadline + 1, elapsed
            assert not manager.traffic
            for reader, writer in clients:
                assert await read_outcome(reader) == "reset"
                writer.close()
            for _ in clients:
                with pytest.raises(ConnectionResetError):
                    await server.result()

    run(loop, main())


def test_shutdown_with_nothing_open_returns_at_once(loop: str) -> None:
    async def main() -> None:
        manager = ProxyManager()
        sock = bind(HOST, 0)
        await manager.serve(make_route(sock.getsockname()[1], ()), sock)
        started = time.monotonic()
        await manager.shutdown(drain_timeout=30)
        assert time.monotonic() - started < 0.5

    run(loop, main())


def test_shutdown_resets_a_relay_still_connecting(loop: str) -> None:
    """A relay waiting on a silent backend is reset at the deadline, its connect cancelled."""
    from tests.integration.harness import silent_backend

    async def main() -> None:
        with silent_backend() as silent:
            manager = ProxyManager()
            sock = bind(HOST, 0)
            route = make_route(sock.getsockname()[1], (silent,), connect_timeout=30)
            await manager.serve(route, sock)
            reader, writer = await asyncio.open_connection(HOST, route.port)
            await until(lambda: len(manager.traffic) == 1)
            started = time.monotonic()
            await manager.shutdown(drain_timeout=0.2)
            assert time.monotonic() - started < 1.5
            assert await read_outcome(reader) in ("reset", "eof")
            writer.close()

    run(loop, main())


def test_the_manager_indexes_routes_by_their_backends_ports(loop: str) -> None:
    """backends_on(port) follows every start, update and stop: it is what decides which
    routes the address policy judges again when a listener opens or closes on a port."""

    async def main() -> None:
        manager = ProxyManager()
        sock = bind(HOST, 0)
        first = make_route(sock.getsockname()[1], (Backend(1, HOST, 7001), Backend(2, HOST, 7002)))
        await manager.serve(first, sock)
        assert manager.backends_on(7001) == manager.backends_on(7002) == {first.key}
        moved = dataclasses.replace(first, backends=(Backend(1, HOST, 7003),))
        await manager.apply([Update(moved)])
        assert (manager.backends_on(7001), manager.backends_on(7002)) == (set(), set())
        assert manager.backends_on(7003) == {first.key}
        assert manager.running() == {first.key: moved}
        manager.stop(first.key)
        assert manager.backends_on(7003) == set()
        assert dict(manager.running()) == {}
        await manager.shutdown(drain_timeout=1)

    run(loop, main())


@pytest.mark.parametrize("ip", ["127.0.0.1", "::1"])
def test_clients_accepted_on_a_bound_socket_have_nodelay(ip: str) -> None:
    """bind() sets TCP_NODELAY on the listening socket, which the kernel gives each socket
    accepted from it (the native engine relies on that instead of a call per client)."""
    with bind(ip, 0) as sock:
        sock.setblocking(True)
        with socket.create_connection(sock.getsockname()[:2], timeout=5):
            accepted, _ = sock.accept()
            with accepted:
                assert accepted.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
