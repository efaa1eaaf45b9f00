"""What the native engine shares with the control plane: a backend disabled, a route
disabled or moved to the asyncio data plane and back, the shutdown's deadline."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from restcp import engine as native_engine
from restcp.core.reconcile import Update
from restcp.engine import load, sockaddr
from restcp.model import Backend, HealthCheck
from restcp.proxy.listener import Listener
from restcp.proxy.native import EngineListener, unsupported
from tests.integration.harness import (
    MB,
    WAIT,
    Proxy,
    Server,
    access_lines,
    payload,
    proxy,
    read_outcome,
    refusing_backend,
    run,
    spliced,
    stalled,
    toxic,
    until,
)


async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while data := await reader.read(65536):
        writer.write(data)
        await writer.drain()


async def opened(px: Proxy) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A client whose first bytes came back: relayed, by whichever data plane."""
    reader, writer = await px.connect()
    writer.write(b"hello")
    assert await asyncio.wait_for(reader.readexactly(5), WAIT) == b"hello"
    return reader, writer


async def still_relays(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    writer.write(b"still")
    assert await asyncio.wait_for(reader.readexactly(5), WAIT) == b"still"


def listener_of(px: Proxy) -> object:
    return px.manager._listeners[px.route.key]


def test_disabling_a_backend_resets_its_connections_only(
    loop: str, caplog: pytest.LogCaptureFixture
) -> None:
    async def main() -> None:
        async with (
            Server(echo) as one,
            Server(echo) as two,
            proxy(one.backend(1), two.backend(2), balance="round_robin", engine="native") as px,
        ):
            first = await opened(px)
            second = await opened(px)
            assert (one.accepted, two.accepted) == (1, 1)
            route = px.route
            disabled = dataclasses.replace(
                route, backends=(route.backends[0].replace(state="disabled"), route.backends[1])
            )
            await px.manager.apply([Update(disabled)])
            px.route = disabled
            assert await read_outcome(first[0]) == "reset"
            await still_relays(*second)
            # New clients go to the enabled one alone.
            third = await opened(px)
            assert (one.accepted, two.accepted) == (1, 2)
            for _reader, writer in (first, second, third):
                writer.close()

    caplog.set_level(logging.INFO, "restcp.access")
    run(loop, main())
    assert sorted(line.rsplit("end=", 1)[1] for line in access_lines(caplog)) == [
        "backend_disabled",
        "closed",
        "closed",
    ]


def test_a_route_moves_to_asyncio_and_back_live(loop: str) -> None:
    """A toxic takes the route off the engine (the engine does not do toxics) and its
    removal brings it back: the socket is handed over, never closed; the engine's open
    connections go to asyncio with the route (test_handoff.py), asyncio's stay there."""

    async def main() -> None:
        async with Server(echo) as server, proxy(server.backend(), engine="native") as px:
            on_engine = await opened(px)
            await px.change(toxics=(toxic("latency", latency=1),))
            assert isinstance(listener_of(px), Listener)
            assert px.manager.engine is not None
            assert len(px.manager.engine) == 0
            assert len(px.manager.traffic) == 1
            on_asyncio = await opened(px)
            assert len(px.manager.traffic) == 2
            await px.change(toxics=())
            assert isinstance(listener_of(px), EngineListener)
            back = await opened(px)
            for conn in (on_engine, on_asyncio, back):
                await still_relays(*conn)
            assert len(px.manager.engine) == 1
            assert len(px.manager.traffic) == 2
            for _reader, writer in (on_engine, on_asyncio, back):
                writer.close()
            assert server.accepted == 3

    run(loop, main())


def test_disabling_the_route_resets_its_connections(
    loop: str, caplog: pytest.LogCaptureFixture
) -> None:
    async def main() -> None:
        async with Server(echo) as server, proxy(server.backend(), engine="native") as px:
            reader, writer = await opened(px)
            await px.change(enabled=False)
            assert await read_outcome(reader) == "reset"
            writer.close()
            assert px.manager.engine is not None
            await until(lambda: len(px.manager.engine or ()) == 0)

    caplog.set_level(logging.INFO, "restcp.access")
    run(loop, main())
    (line,) = access_lines(caplog)
    assert line.endswith("end=route_disabled")


def test_shutdown_resets_what_is_open_past_the_deadline(
    loop: str, caplog: pytest.LogCaptureFixture
) -> None:
    async def main() -> None:
        async with Server(echo) as server, proxy(server.backend(), engine="native") as px:
            reader, writer = await opened(px)
            await asyncio.wait_for(px.manager.shutdown(drain_timeout=0.2), WAIT)
            assert await read_outcome(reader) == "reset"
            writer.close()

    caplog.set_level(logging.INFO, "restcp.access")
    run(loop, main())
    (line,) = access_lines(caplog)
    assert line.endswith("end=shutdown")


def test_shutdown_drains_both_data_planes_under_one_count_and_deadline(
    loop: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A connection on the engine and one on asyncio (the route moved in between): the
    shutdown says it drains 2 connections, resets 2 at the deadline, and both end so."""

    async def main() -> None:
        async with Server(echo) as server, proxy(server.backend(), engine="native") as px:
            on_engine = await opened(px)
            await px.change(toxics=(toxic("latency", latency=1),))
            on_asyncio = await opened(px)
            await asyncio.wait_for(px.manager.shutdown(drain_timeout=0.2), WAIT)
            for reader, writer in (on_engine, on_asyncio):
                assert await read_outcome(reader) == "reset"
                writer.close()

    caplog.set_level(logging.INFO, "restcp")
    run(loop, main())
    said = [r.getMessage() for r in caplog.records if r.name == "restcp.proxy"]
    assert "draining 2 connections for up to 0.2s" in said
    assert "drain deadline passed: resetting 2 connections" in said
    ends = [
        field for line in access_lines(caplog) for field in line.split() if field.startswith("end=")
    ]
    assert ends == ["end=shutdown", "end=shutdown"]


def test_an_update_the_engine_cannot_serve_moves_the_route_without_error(loop: str) -> None:
    """A backend changed in the same update as a toxic came: the new table reaches the
    engine before the manager moves the route; the engine keeps its last table rather than
    read one of a route it cannot serve, and the route moves."""

    async def main() -> None:
        async with (
            Server(echo) as server,
            proxy(server.backend(), engine="native") as px,
        ):
            before = await opened(px)
            capped = dataclasses.replace(px.route.backends[0], max_connections=5)
            route = dataclasses.replace(
                px.route, backends=(capped,), toxics=(toxic("latency", latency=0),)
            )
            await px.manager.apply([Update(route)])
            px.route = route
            assert unsupported(route, px.manager._runtimes[route.key]) == "toxics"
            assert isinstance(listener_of(px), Listener)
            after = await opened(px)
            for reader, writer in (before, after):
                await still_relays(reader, writer)
                writer.close()

    run(loop, main())


def test_a_host_name_given_to_an_engine_route_keeps_it_on_the_engine(loop: str) -> None:
    """The engine resolves host names (at each connect): the route stays where it is, and
    its open connection goes on."""

    async def main() -> None:
        async with (
            Server(echo) as server,
            proxy(server.backend(), engine="native") as px,
        ):
            before = await opened(px)
            named_backend = dataclasses.replace(px.route.backends[0], ip="localhost")
            route = dataclasses.replace(px.route, backends=(named_backend,))
            await px.manager.apply([Update(route)])
            px.route = route
            assert unsupported(route, px.manager._runtimes[route.key]) is None
            assert isinstance(listener_of(px), EngineListener)
            after = await opened(px)
            for reader, writer in (before, after):
                await still_relays(reader, writer)
                writer.close()
            assert server.accepted == 2

    run(loop, main())


async def served_by(px: Proxy) -> bytes:
    """Which backend served a fresh client (each backend answers with its name)."""
    reader, writer = await px.connect()
    try:
        return await asyncio.wait_for(reader.readexactly(1), WAIT)
    finally:
        writer.close()


def named(name: bytes) -> Callable[[asyncio.StreamReader, asyncio.StreamWriter], Any]:
    async def backend(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(name)
        await reader.read()

    return backend


def test_health_verdicts_reach_the_engine(loop: str) -> None:
    """A backend the checks mark down gets no new client; marked up again, it gets its share.
    (The verdicts are reported as the checker reports them, to the route's runtime.)"""
    check = HealthCheck(interval=3600, rise=1, fall=1)

    async def main() -> None:
        async with (
            Server(named(b"1")) as one,
            Server(named(b"2")) as two,
            proxy(
                one.backend(1), two.backend(2), balance="round_robin",
                health_check=check, engine="native",
            ) as px,
        ):  # fmt: skip
            runtime = px.manager.runtime(px.route.key)
            assert runtime is not None
            runtime.check_result(1, False, "refused", 0.0)
            assert {await served_by(px) for _ in range(4)} == {b"2"}
            runtime.check_result(1, True, "", 0.0)
            assert {await served_by(px) for _ in range(4)} == {b"1", b"2"}

    run(loop, main())


def test_passive_failures_mark_a_backend_down(loop: str, caplog: pytest.LogCaptureFixture) -> None:
    """Connects refused passive_fall times mark the backend down (no checks configured):
    later clients go to the live one without trying it."""
    dead, holder = refusing_backend(1)

    async def main() -> None:
        async with (
            Server(named(b"2")) as live,
            proxy(
                dead, live.backend(2), balance="round_robin", passive_fall=2, engine="native"
            ) as px,
        ):
            for _ in range(8):
                assert await served_by(px) == b"2"
            runtime = px.manager.runtime(px.route.key)
            assert runtime is not None
            await until(lambda: runtime.members[1].health.state == "down")

    caplog.set_level(logging.INFO, "restcp")
    with holder:
        run(loop, main())
    failures = sum("connect failed" in r.getMessage() for r in caplog.records)
    assert failures == 2, failures


def pipe_fds() -> int:
    """The process's kernel pipes' descriptors (the engine's splice pipes among them)."""
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):  # the listing's own fd is gone already
            count += os.readlink(f"/proc/self/fd/{fd}").startswith("pipe:")
    return count


def test_a_splice_route_splices_both_ways_through_a_pipe_each(
    loop: str, caplog: pytest.LogCaptureFixture
) -> None:
    """``splice: true``: each direction moves its first bytes through a kernel pipe of its
    own (two descriptors each), held while the connection is open and closed with it."""

    async def main() -> None:
        async with (
            Server(echo) as server,
            proxy(server.backend(), engine="native", splice=True) as px,
        ):
            before = pipe_fds()
            reader, writer = await opened(px)
            assert pipe_fds() == before + 4
            await still_relays(reader, writer)
            writer.write_eof()
            assert await read_outcome(reader) == "eof"
            writer.close()
            assert px.manager.engine is not None
            await asyncio.wait_for(px.manager.engine.wait_empty(), WAIT)
            assert pipe_fds() == before

    caplog.set_level(logging.INFO, "restcp.access")
    run(loop, main())
    assert spliced(caplog) == [True]
    (line,) = access_lines(caplog)
    assert "bytes_up=10 bytes_down=10" in line


def test_an_auto_route_splices_a_direction_once_a_read_fills_the_buffer(
    loop: str, caplog: pytest.LogCaptureFixture
) -> None:
    """``"auto"``: small exchanges are copied (no pipe); megabytes sent to a backend that
    stopped reading fill the client's socket, so a read fills 64 KiB (the one after the
    backend resumes, at the latest) and that direction splices from then on."""
    data = payload(4 * MB)
    go, done = asyncio.Event(), asyncio.Event()
    got: asyncio.Future[bytes]

    async def late_reader(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        assert await reader.readexactly(5) == b"hello"
        writer.write(b"hello")
        await go.wait()
        got.set_result(await reader.read())
        await done.wait()  # the connection stays open until the test has looked

    async def main() -> None:
        nonlocal got
        got = asyncio.get_running_loop().create_future()
        async with (
            Server(late_reader) as server,
            proxy(server.backend(), engine="native", splice="auto") as px,
        ):
            before = pipe_fds()
            reader, writer = await opened(px)
            assert pipe_fds() == before
            sent = [0]

            async def send() -> None:
                for at in range(0, len(data), 256 * 1024):
                    writer.write(data[at : at + 256 * 1024])
                    await writer.drain()
                    sent[0] = at + 256 * 1024
                writer.write_eof()

            sending = asyncio.create_task(send())
            await until(lambda: sent[0] > 0)
            # Every buffer on the way is full: the read after the backend resumes fills
            # the engine's buffer, if none did before.
            await stalled(sent)
            go.set()
            assert await asyncio.wait_for(got, WAIT) == data
            await sending
            assert pipe_fds() == before + 2  # the client's direction only
            done.set()
            await server.result()
            assert await read_outcome(reader) == "eof"
            writer.close()
            assert px.manager.engine is not None
            await asyncio.wait_for(px.manager.engine.wait_empty(), WAIT)
            assert pipe_fds() == before

    caplog.set_level(logging.INFO, "restcp.access")
    run(loop, main())
    assert spliced(caplog) == [True]
    (line,) = access_lines(caplog)
    assert f"bytes_up={5 + len(data)} bytes_down=5" in line


def test_a_chatty_connection_on_an_auto_route_is_never_spliced(
    loop: str, caplog: pytest.LogCaptureFixture
) -> None:
    async def main() -> None:
        async with (
            Server(echo) as server,
            proxy(server.backend(), engine="native", splice="auto") as px,
        ):
            before = pipe_fds()
            reader, writer = await opened(px)
            for _ in range(20):
                await still_relays(reader, writer)
            assert pipe_fds() == before
            writer.close()

    caplog.set_level(logging.INFO, "restcp.access")
    run(loop, main())
    assert spliced(caplog) == [False]


def test_the_engine_refuses_an_unknown_splice_setting() -> None:
    """Bad input is an error, and changes nothing: no route is added."""
    module, why = native_engine.load()
    assert module is not None, why
    engine = module.Engine()
    sock = socket.socket()
    try:
        sock.setblocking(False)
        with pytest.raises(ValueError, match="splice must be 0"):
            engine.add_route(sock.fileno(), [], "random", 1.0, 0.0, 1.0, 1, -1, splice=3)
        slot = engine.add_route(sock.fileno(), [], "random", 1.0, 0.0, 1.0, 1, -1, splice=2)
        assert slot == 0  # the refused one took no slot
        with pytest.raises(ValueError, match="splice must be 0"):
            engine.update_route(slot, [], "random", 1.0, 0.0, 1.0, 1, -1, splice=-1)
        engine.retire(slot)
    finally:
        engine.close()
        sock.close()


def test_a_splice_change_applies_to_new_connections(
    loop: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The route stays on the engine when its splice setting changes; a connection open
    before keeps copying, one opened after splices."""

    async def main() -> None:
        async with (
            Server(echo) as server,
            proxy(server.backend(), engine="native", splice=False) as px,
        ):
            before = pipe_fds()
            first = await opened(px)
            await px.change(splice=True)
            assert isinstance(listener_of(px), EngineListener)
            second = await opened(px)
            await still_relays(*first)
            await still_relays(*second)
            assert pipe_fds() == before + 4  # the second connection's two ways
            first[1].close()
            await until(lambda: len(px.manager.engine or ()) == 1)
            second[1].close()

    caplog.set_level(logging.INFO, "restcp.access")
    run(loop, main())
    assert spliced(caplog) == [False, True]


@contextlib.contextmanager
def bare_engine() -> Iterator[tuple[Any, socket.socket]]:
    """An Engine of its own (no NativeEngine, no thread) and a listening socket for it."""
    module, why = load()
    assert module is not None, why
    engine = module.Engine()
    try:
        with socket.socket() as listening:
            listening.bind(("127.0.0.1", 0))
            listening.listen()
            listening.setblocking(False)
            yield engine, listening
    finally:
        engine.close()


@contextlib.contextmanager
def running(engine: Any) -> Iterator[None]:
    """``engine``'s loop on a thread of its own; stopped, and what is open reset, after."""
    thread = threading.Thread(target=engine.run, daemon=True)
    thread.start()
    try:
        yield
    finally:
        engine.stop()
        thread.join(WAIT)
        engine.abort()


def test_a_bad_table_changes_nothing() -> None:
    """A row of the wrong shape or with an unknown PROXY version: a clear error, from
    update_route and add_route alike."""
    with bare_engine() as (engine, listening):
        family, packed = sockaddr("127.0.0.1", 9)
        good = [(1, family, packed, 1, -1, 2)]
        slot = engine.add_route(listening.fileno(), good, "random", 1.0, 0.0, 0.0, 1, -1)
        for bad in ([(1, family, packed, 1)], [(1, family, packed, 1, -1, 3)]):
            with pytest.raises(ValueError, match="bad backend row"):
                engine.update_route(slot, bad, "random", 1.0, 0.0, 0.0, 1, -1)
            with pytest.raises(ValueError, match="bad backend row"):
                engine.add_route(listening.fileno(), bad, "random", 1.0, 0.0, 0.0, 1, -1)
        assert engine.counters(slot) == (0, 0, 0, 0, 0)
        engine.retire(slot)


def blocking_exchange(px: Proxy, backend: socket.socket, *, fin_first: bool) -> bytes:
    """One client through the engine with plain blocking sockets, the test's loop held
    meanwhile (no drain of the engine's records can run): what the backend received before
    the client's FIN reached it. ``fin_first``: the client sends its bytes and its FIN at
    once, before its backend is accepted (they wait in the client's socket while the engine
    connects, and come with one edge); otherwise an exchange each way, then the close."""
    assert px.manager.engine is not None
    engine = px.manager.engine.engine
    with socket.create_connection(("127.0.0.1", px.port), timeout=WAIT) as client:
        if fin_first:
            client.sendall(b"up and gone")
            client.shutdown(socket.SHUT_WR)
        conn, _ = backend.accept()
        with conn:
            conn.settimeout(WAIT)
            received = b""
            if not fin_first:
                client.sendall(b"ping")
                received = conn.recv(64)
                conn.sendall(b"pong")
                assert client.recv(64) == b"pong"
                client.shutdown(socket.SHUT_WR)
            while chunk := conn.recv(64):
                received += chunk  # until the client's FIN, relayed
        # The engine forwards the backend's close: the connection ends.
        assert client.recv(64) == b""
    deadline = time.monotonic() + WAIT
    while engine.active:
        assert time.monotonic() < deadline, "the engine kept the connection open"
        time.sleep(0.001)  # the engine's thread closes it: polled, the loop being held
    return received


@pytest.mark.parametrize("fin_first", [False, True])
def test_a_connection_that_ends_between_two_drains_is_counted_from_its_connect(
    loop: str, caplog: pytest.LogCaptureFixture, fin_first: bool
) -> None:
    """Its connect and its end reach Python in one record (the connect's is folded into
    the end's): the backend counts it as a connection all the same, and as one open at
    once, then none. With ``fin_first`` the client's bytes and FIN come before its backend
    is up: the FIN is read with them, not lost to a short read."""

    async def main() -> None:
        backend = socket.create_server(("127.0.0.1", 0))
        with backend:
            backend.settimeout(WAIT)
            server = Backend(1, "127.0.0.1", backend.getsockname()[1])
            async with proxy(server, engine="native") as px:
                runtime = px.manager.runtime(px.route.key)
                assert runtime is not None
                member = runtime.members[1]
                expected = b"up and gone" if fin_first else b"ping"
                assert blocking_exchange(px, backend, fin_first=fin_first) == expected
                await until(lambda: runtime.accepted == 1)
                assert (member.connections, member.active, member.active_max) == (1, 0, 1)
                assert member.bytes_up == len(expected)

    caplog.set_level(logging.INFO, "restcp.access")
    run(loop, main())
    (line,) = access_lines(caplog)
    assert line.endswith("end=closed"), line


def test_a_connection_open_across_a_drain_is_counted_once(loop: str) -> None:
    """The other case: its connect was drained while it was open (two records)."""

    async def main() -> None:
        async with Server(echo) as one, proxy(one.backend(1), engine="native") as px:
            runtime = px.manager.runtime(px.route.key)
            assert runtime is not None
            member = runtime.members[1]
            _reader, writer = await opened(px)
            await until(lambda: member.active == 1)
            assert member.connections == 1
            writer.close()
            await until(lambda: runtime.accepted == 1)
            assert (member.connections, member.active, member.active_max) == (1, 0, 1)

    run(loop, main())


def test_the_engine_sets_nodelay_on_the_socket_it_accepts_on() -> None:
    """Its clients inherit TCP_NODELAY from the listening socket: no setsockopt per client
    (listener.bind sets it too; this is a socket made elsewhere)."""
    with bare_engine() as (engine, listening):
        assert not listening.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
        slot = engine.add_route(listening.fileno(), [], "random", 1.0, 0.0, 0.0, 1, -1)
        assert listening.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
        engine.retire(slot)


def test_far_deadlines_wake_no_sweep_and_a_shorter_timeout_applies_at_once() -> None:
    """Timeouts are swept once one may be due, not every SWEEP ms: a relaying connection
    whose idle timeout is an hour away costs the loop no sweep while it waits. A route
    update that shortens the timeout applies to the open connection at once."""
    with socket.create_server(("127.0.0.1", 0)) as backend, bare_engine() as (engine, listening):
        family, packed = sockaddr("127.0.0.1", backend.getsockname()[1])
        table = [(1, family, packed, 1, -1, 0)]
        # Every deadline far off, the connect's too.
        slot = engine.add_route(listening.fileno(), table, "random", 3600.0, 3600.0, 0.0, 1, -1)
        with running(engine), socket.create_connection(listening.getsockname()) as client:
            served, _ = backend.accept()
            with served:
                client.sendall(b"x")
                assert served.recv(1) == b"x"
                before = engine.sweeps
                # Six SWEEP periods of a connection with nothing due (a sweep every 50 ms
                # would run six times).
                time.sleep(0.3)
                assert engine.sweeps - before <= 1
                engine.update_route(slot, table, "random", 3600.0, 0.2, 0.0, 1, -1)
                served.settimeout(WAIT)
                assert served.recv(1) == b""  # closed for idleness, 0.2 s after its byte
            ends = [record[6] for record in engine.drain()]
        assert ends[-1] == "idle_timeout", ends
