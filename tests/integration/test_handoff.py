"""A route served by the native engine gains a toxic: its open connections move to the
asyncio data plane (proxy/handoff.py) with every byte in flight, their FINs, counters and
places, and meet the toxic at once."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from restcp.core.reconcile import Update
from restcp.proxy.connection import AdoptedConnection
from restcp.proxy.listener import Listener
from restcp.proxy.native import EngineListener, NativeEngine
from restcp.proxy.sni_listener import SniListener
from restcp.proxy.staged_pipe import StagedPipe
from tests.integration.harness import (
    MB,
    WAIT,
    Proxy,
    Server,
    access_lines,
    open_fds,
    open_sockets,
    payload,
    pipes_of,
    proxy,
    read_outcome,
    run,
    sha,
    silent_backend,
    toxic,
    until,
)
from tests.integration.test_engine_fuzz import END, WRITE, Side

# A toxic that delays nothing: the connection goes through its stages all the same.
NO_DELAY = (toxic("latency", latency=0),)


def engine_of(px: Proxy) -> NativeEngine:
    assert px.manager.engine is not None
    return px.manager.engine


def spy_handoffs(px: Proxy, monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """What each Engine.handoff of the test handed over (relaying, connecting)."""
    native = engine_of(px)
    seen: list[Any] = []
    original = native.handoff

    def handoff(slot: int) -> Any:
        result = original(slot)
        seen.append(result)
        return result

    monkeypatch.setattr(native, "handoff", handoff)
    return seen


def open_pipes(px: Proxy) -> int:
    """The process's pipe fds, but those the asyncio splice pipes keep in their pool."""
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            count += os.readlink(f"/proc/self/fd/{fd}").startswith("pipe:")
    return count - 2 * len(pipes_of(px))


async def quiet(*sizes: Any, still: float = 0.3) -> None:
    """Until the write buffers ``sizes`` report have not moved for ``still`` seconds and are
    not empty: both peers are blocked on full sockets, and the engine holds what it read."""
    last: tuple[int, ...] = ()
    since = asyncio.get_running_loop().time()
    async with asyncio.timeout(WAIT):
        while True:
            now = tuple(size() for size in sizes)
            loop_now = asyncio.get_running_loop().time()
            if now != last or not all(now):
                last, since = now, loop_now
            elif loop_now - since >= still:
                return
            await asyncio.sleep(0.02)


@pytest.mark.parametrize("splice", [False, True, "auto"])
def test_bytes_in_flight_both_ways_cross_the_handoff_exactly(
    loop: str, splice: bool | str, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Both peers write 48 MiB before reading a byte, so the engine holds bytes each way
    (its buffer; on a splice route, its pipes) when a toxic moves the route: after it,
    each peer reads exactly what the other wrote, then its FIN; one access line counts
    them, and the route's and its backend's counters count the connection once."""
    # More than the sockets' buffers and a pipe can hold between them, however far the
    # kernel grows them (16 MiB was sometimes all taken in: a writer never blocked).
    up, down = payload(48 * MB), payload(48 * MB)
    go = asyncio.Event()
    backend_writers: list[asyncio.StreamWriter] = []

    async def backend(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> str:
        backend_writers.append(writer)
        writer.write(down)
        writer.write_eof()
        await go.wait()
        got = await reader.read()
        await writer.drain()
        return sha(got)

    async def main() -> None:
        async with (
            Server(backend) as server,
            proxy(server.backend(), engine="native", splice=splice) as px,
        ):
            handed = spy_handoffs(px, monkeypatch)
            sockets, pipes, fds = open_sockets(), open_pipes(px), open_fds()
            reader, writer = await px.connect()
            writer.write(up)
            writer.write_eof()
            await until(lambda: bool(backend_writers))
            await quiet(
                writer.transport.get_write_buffer_size,
                backend_writers[0].transport.get_write_buffer_size,
            )
            native = engine_of(px)
            assert (len(native), native.engine.places) == (1, 1)
            await px.change(toxics=NO_DELAY)
            assert isinstance(px.manager._listeners[px.route.key], Listener)
            ((relaying, connecting),) = handed
            assert connecting == []
            ((_c, _b, held_up, held_down, up_fins, down_fins, *_rest),) = relaying
            # Bytes were held each way, no FIN had been read yet.
            assert held_up
            assert held_down
            assert (up_fins, down_fins) == ((False, False), (False, False))
            # Off the engine, on asyncio, through the toxic's stages; its place came along.
            assert len(native) == 0
            relay = px.only_relay()
            assert isinstance(relay.pipe, StagedPipe)
            assert native.engine.places == 1
            runtime = relay.route
            assert len(list(runtime.live_bytes())) == 1  # counted open once, not twice
            go.set()
            received = await asyncio.wait_for(reader.read(), WAIT * 3)
            assert sha(received) == sha(down)
            assert await server.result(WAIT * 3) == sha(up)
            writer.close()
            await asyncio.wait_for(px.manager.traffic.wait_empty(), WAIT)
            member = runtime.members[1]
            assert (member.active, member.connections) == (0, 1)
            assert (member.bytes_up, member.bytes_down) == (len(up), len(down))
            assert runtime.accepted == 1
            assert list(runtime.live_bytes()) == []
            assert native.engine.places == 0
            # The engine's pipes are closed, and no socket is left behind.
            await until(lambda: open_sockets() == sockets)
            assert open_pipes(px) == pipes
            # Nothing else either, but what the asyncio splice pipes keep for the next ones
            # (their epoll set, their pooled pipes).
            assert open_fds() == fds + px.manager.traffic.splicer.descriptors()

    caplog.set_level(logging.INFO, "restcp.access")
    run(loop, main())
    (line,) = access_lines(caplog)
    assert f"bytes_up={48 * MB} bytes_down={48 * MB}" in line
    assert line.endswith("end=closed toxics=latency_downstream")


def test_a_half_closed_connection_stays_half_closed_across_the_handoff(
    loop: str, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The client's FIN went through the engine before the move: its direction stays
    closed, and the backend's answer and FIN still reach the client after it."""
    release, asked = asyncio.Event(), asyncio.Event()

    async def backend(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bytes:
        question = await reader.read()  # to the client's FIN
        asked.set()
        await release.wait()
        writer.write(b"answer to " + question)
        writer.write_eof()
        return question

    async def main() -> None:
        async with Server(backend) as server, proxy(server.backend(), engine="native") as px:
            handed = spy_handoffs(px, monkeypatch)
            sockets = open_sockets()
            reader, writer = await px.connect()
            writer.write(b"question")
            writer.write_eof()
            await asyncio.wait_for(asked.wait(), WAIT)
            await px.change(toxics=NO_DELAY)
            ((relaying, _connecting),) = handed
            ((_c, _b, held_up, held_down, up_fins, down_fins, *_rest),) = relaying
            assert (held_up, held_down, up_fins, down_fins) == (
                b"", b"", (True, True), (False, False),
            )  # fmt: skip
            relay = px.only_relay()
            assert (relay.client_eof, relay.backend_eof) == (True, False)
            release.set()
            assert await asyncio.wait_for(reader.read(), WAIT) == b"answer to question"
            assert await server.result() == b"question"
            writer.close()
            await asyncio.wait_for(px.manager.traffic.wait_empty(), WAIT)
            await until(lambda: open_sockets() == sockets)

    caplog.set_level(logging.INFO, "restcp.access")
    run(loop, main())
    (line,) = access_lines(caplog)
    assert "bytes_up=8 bytes_down=18" in line
    assert line.endswith("end=closed toxics=latency_downstream")


def test_a_client_still_connecting_is_connected_by_asyncio(
    loop: str, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A client whose backend has not answered yet when the route moves: the engine drops
    its attempt and the asyncio data plane takes the client as a new one (admitted,
    connected to the route's backends as they are now)."""

    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()

    async def main() -> None:
        with silent_backend(1) as silent:
            async with (
                Server(echo) as server,
                proxy(silent, engine="native", connect_timeout=30.0) as px,
            ):
                handed = spy_handoffs(px, monkeypatch)
                sockets = open_sockets()
                native = engine_of(px)
                listener = px.manager._listeners[px.route.key]
                assert isinstance(listener, EngineListener)
                slot = listener._slot
                assert slot is not None
                reader, writer = await px.connect()
                writer.write(b"hello")
                await until(lambda: [row[3] for row in native.engine.loads(slot)] == [1])
                route = dataclasses.replace(
                    px.route, backends=(server.backend(2),), toxics=NO_DELAY
                )
                await px.manager.apply([Update(route)])
                px.route = route
                ((relaying, connecting),) = handed
                assert (len(relaying), len(connecting)) == (0, 1)
                # Its attempt is over on the engine; the client relays through asyncio.
                assert [row[2:] for row in native.engine.loads(slot)] == [(0, 0)]
                assert len(native) == 0
                assert await asyncio.wait_for(reader.readexactly(5), WAIT) == b"hello"
                assert native.engine.places == 1  # its one place, taken by asyncio's admission
                writer.close()
                await asyncio.wait_for(px.manager.traffic.wait_empty(), WAIT)
                assert native.engine.places == 0
                runtime = px.manager.runtime(route.key)
                assert runtime is not None
                assert runtime.accepted == 1
                assert server.accepted == 1
                # The dropped attempt's socket went with it.
                await until(lambda: open_sockets() == sockets)

    caplog.set_level(logging.INFO, "restcp.access")
    run(loop, main())
    (line,) = access_lines(caplog)
    assert " backend=2/" in line
    assert "bytes_up=5 bytes_down=5" in line


def test_server_names_given_to_an_engine_route_take_its_connections_along(loop: str) -> None:
    """Server names move the route's socket to an SniListener (ProxyManager._relisten):
    its open connections go to asyncio too, and relay as before (plain: what the route
    gained applies to new clients)."""

    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()

    async def main() -> None:
        async with Server(echo) as server, proxy(server.backend(), engine="native") as px:
            reader, writer = await px.connect()
            writer.write(b"before")
            assert await asyncio.wait_for(reader.readexactly(6), WAIT) == b"before"
            await px.change(sni=("*",))
            assert isinstance(px.manager._listeners[px.route.key], SniListener)
            assert len(engine_of(px)) == 0
            assert len(px.manager.traffic) == 1
            writer.write(b"after")
            assert await asyncio.wait_for(reader.readexactly(5), WAIT) == b"after"
            writer.close()

    run(loop, main())


def test_the_idle_clock_carries_over(
    loop: str, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A connection idle for a while on the engine is as idle on asyncio: its idle timeout
    runs from its last activity, not from the move. Checked on the adopted connection's
    clock, not against the wall clock (which a loaded machine stretches)."""

    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()

    async def main() -> None:
        async with (
            Server(echo) as server,
            proxy(server.backend(), engine="native", idle_timeout=1.6) as px,
        ):
            handed = spy_handoffs(px, monkeypatch)
            runtime = px.manager.runtime(px.route.key)
            assert runtime is not None
            reader, writer = await px.connect()
            try:
                writer.write(b"x")
                assert await asyncio.wait_for(reader.readexactly(1), WAIT) == b"x"
                await asyncio.sleep(0.8)  # idle on the engine
                moving = asyncio.get_running_loop().time()
                await px.change(toxics=NO_DELAY)
                ((relaying, _connecting),) = handed
                ((*_first, idle_for, _half_for, _spliced, _moved),) = relaying
                assert idle_for >= 0.8
                (adopted,) = runtime.connections
                assert isinstance(adopted, AdoptedConnection)
                # Its last activity is the engine's, from before the move (a clock started
                # at the move would read later than ``moving``).
                last = adopted.last_activity
                assert last < moving - 0.4
                assert await read_outcome(reader) == "eof"
                assert asyncio.get_running_loop().time() >= last + 1.6
            finally:
                writer.close()

    caplog.set_level(logging.INFO, "restcp.access")
    run(loop, main())
    (line,) = access_lines(caplog)
    assert line.endswith("end=idle_timeout toxics=latency_downstream")


HANDOFF_ACTIONS = st.tuples(
    st.lists(st.one_of(WRITE, WRITE, END), max_size=6),
    st.lists(st.one_of(WRITE, WRITE, END), max_size=6),
)


async def handoff_scenario(
    before: list[tuple[str, int]], after: list[tuple[str, int]], engine: str
) -> tuple[str, int, int]:
    """Play ``before`` on the engine, move the route (a toxic that delays nothing) while
    what was written may still be in flight, then play ``after``: (how it ended, bytes
    the client sent, the backend sent)."""
    backend_side: asyncio.Future[Side] = asyncio.get_running_loop().create_future()
    finished = asyncio.Event()

    async def backend(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        side = Side(reader, writer)
        side.start()
        backend_side.set_result(side)
        await finished.wait()

    async with Server(backend) as server, proxy(server.backend(), engine=engine) as px:
        baseline = open_fds()
        reader, writer = await px.connect()
        client = Side(reader, writer)
        client.start()
        back = await asyncio.wait_for(backend_side, WAIT)
        # Relaying on the engine (the backend may accept before the engine has seen its
        # connect complete: one still connecting is connected again by asyncio, a case of
        # its own above).
        listener = px.manager._listeners[px.route.key]
        assert isinstance(listener, EngineListener)
        slot = listener._slot
        assert slot is not None
        await until(lambda: [row[2] for row in engine_of(px).engine.loads(slot)] == [1])
        sides = {"client": client, "backend": back}
        was_reset = False
        for step, actions in enumerate((before, after)):
            if step == 1:
                moved = len(engine_of(px))
                await px.change(toxics=NO_DELAY)
                assert len(engine_of(px)) == 0
                event(f"handed over: {moved}")
            for action, size in actions:
                if was_reset:
                    break
                who, _, what = action.partition("_")
                if action == "pause":
                    await asyncio.sleep(0.01)
                elif what == "write":
                    await sides[who].write(size)
                elif what == "fin":
                    sides[who].fin()
                else:
                    sides[who].reset()
                    was_reset = True
        if not was_reset:
            client.fin()
            back.fin()
        outcomes = await asyncio.wait_for(
            asyncio.gather(client.outcome, back.outcome),  # type: ignore[arg-type]
            WAIT,
        )
        if not was_reset:
            assert outcomes == ["eof", "eof"]
            assert bytes(back.got) == bytes(client.sent)
            assert bytes(client.got) == bytes(back.sent)
        else:
            assert back.sent.startswith(client.got)
            assert client.sent.startswith(back.got)
            # A reset after the resetting peer's FIN goes unseen by asyncio's transports
            # until the next write (they read that peer no more), where the engine passes it
            # on at once: the other peer's close ends the connection on either.
            for side in (client, back):
                side.writer.close()
        await asyncio.wait_for(px.manager.traffic.wait_empty(), WAIT)
        assert engine_of(px).engine.places == 0
        finished.set()
        await server.result()
        writer.close()
        await until(lambda: open_fds() == baseline + px.manager.traffic.splicer.descriptors())
        return "reset" if was_reset else "closed", len(client.sent), len(back.sent)


@settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(actions=HANDOFF_ACTIONS)
@pytest.mark.parametrize("engine", ["native", "native-splice", "native-auto"])
def test_any_interleaving_across_a_handoff_is_relayed_exactly(
    engine: str,
    actions: tuple[list[tuple[str, int]], list[tuple[str, int]]],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """test_engine_fuzz's interleavings, with the route moved to asyncio in the middle:
    every byte once and in order (a prefix after a reset), one access line, nothing left
    open."""
    caplog.clear()
    caplog.set_level(logging.INFO, "restcp.access")
    ending, up, down = run("uvloop", handoff_scenario(*actions, engine))
    (line,) = access_lines(caplog)
    if ending == "closed":
        assert f"bytes_up={up} bytes_down={down} " in line, line
        assert " end=closed" in line, line
