"""Routes with ``splice``: a connection's bytes move through a SplicePipe (from the connect
on a ``"splice": true`` route; once moved there on an ``"auto"`` one), and every promise of
the relay still holds: exact bytes, half-close both ways, backpressure, reset propagation,
timeouts, aborts, and no fd or pipe left behind.

The scenarios a spliced relay shares with the transports' one (half-close both ways, reset
propagation, the idle timeout) run on both, parametrized over ``splice``, in test_relay.py
and test_flow.py; this file holds what is the spliced relay's own.

Each test checks that the connection really was spliced (the node's pipe pool has served a
pipe: the transport relay never touches it), so none of them passes through the transports
by accident. Those marked ``SPLICED`` also run on an ``"auto"`` route whose connection the
test moved to the splice pipe (and back, and there again: Proxy.relay_spliced).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import random
import socket
import time
from collections.abc import Iterator

import pytest

from restcp.model import Route
from restcp.proxy import connection as connection_module
from restcp.proxy.splicer import PipePool
from tests.helpers import tcp_states
from tests.integration.endings import (
    backend_reset,
    client_reset,
    echo_or_reset,
    full_close,
    half_close,
)
from tests.integration.harness import (
    HOST,
    MB,
    SMALL_BUFFER,
    WAIT,
    Server,
    access_lines,
    digest_all,
    drain,
    flooder,
    payload,
    pipes_of,
    proxy,
    read_all,
    read_outcome,
    reset,
    run,
    sends_then_reads,
    sha,
    spliced,
    stalled,
    until,
    used_pipes,
)

SPLICED = pytest.mark.parametrize("splice", [True, "auto"], ids=["splice", "switched"])


def kernel_objects() -> int:
    """Sockets, pipes and epoll sets this process holds (libuv keeps a spare fd of another
    kind)."""
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):  # the listing's own fd is gone already
            target = os.readlink(f"/proc/self/fd/{fd}")
            count += target.startswith(("socket:", "pipe:", "anon_inode:[eventpoll]"))
    return count


def rss() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.parametrize("size", [1, 65537, 3 * MB + 5, 50 * MB])
def test_bytes_exact_both_ways(loop: str, size: int, caplog: pytest.LogCaptureFixture) -> None:
    """Both peers send ``size`` random bytes and a FIN at once; each gets the other's, exact."""
    up, down = payload(size), payload(size)
    backend = sends_then_reads(down, digest_all)

    async def main() -> None:
        async with Server(backend) as server, proxy(server.backend(), splice=True) as px:
            reader, writer = await px.connect()
            writer.write(up)
            writer.write_eof()
            assert await digest_all(reader) == (size, sha(down))
            assert await server.result() == (size, sha(up))
            writer.close()
            await asyncio.wait_for(px.manager.traffic.wait_empty(), WAIT)
            # Small messages are copied, bulk goes through pipes.
            assert used_pipes(px) or size < 1 * MB

    caplog.set_level(logging.INFO, "restcp.access")
    run(loop, main())
    assert spliced(caplog) == [True]
    (line,) = access_lines(caplog)
    assert f"bytes_up={size} bytes_down={size}" in line
    assert line.endswith("end=closed")


def test_proxy_header_and_early_bytes_of_both_sides_go_first(
    loop: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Bytes both peers send before the hand-over (the client's request and FIN, the
    backend's banner) are held by the relay and go out first, after the PROXY header."""
    request = payload(100_000)

    async def backend(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bytes:
        writer.write(b"banner\n")
        header = await reader.readline()
        got = await reader.read()
        writer.write(b"bye")
        writer.write_eof()
        return header + got

    async def main() -> None:
        async with (
            Server(backend) as server,
            proxy(server.backend(), splice=True, proxy_protocol="v1") as px,
        ):
            reader, writer = await px.connect()
            writer.write(request)
            writer.write_eof()
            assert await read_all(reader) == b"banner\nbye"
            got = await server.result()
            assert got.startswith(b"PROXY TCP4 127.0.0.1 127.0.0.1 ")
            assert got.split(b"\r\n", 1)[1] == request
            writer.close()
            await asyncio.wait_for(px.manager.traffic.wait_empty(), WAIT)

    caplog.set_level(logging.INFO, "restcp.access")
    run(loop, main())
    assert spliced(caplog) == [True]


def test_slow_reader_stalls_the_sender(loop: str) -> None:
    """A backend floods a client that reads nothing: its writes stall well short of the flood
    (the pipe is bounded, and the relay stops reading a pipe that cannot drain), the proxy's
    memory does not grow; then the client drains and gets every byte, in order."""
    flood = 64 * MB
    data = payload(flood)
    sent = [0]
    backend = flooder(data, sent)

    async def main() -> None:
        loop_ = asyncio.get_running_loop()
        async with Server(backend) as server, proxy(server.backend(), splice=True) as px:
            client = socket.socket()
            client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SMALL_BUFFER)
            client.setblocking(False)
            await loop_.sock_connect(client, (HOST, px.port))
            await px.relay_spliced()
            before = rss()
            await until(lambda: sent[0] > 0)
            await stalled(sent)
            # The kernel's socket buffers on the way (autotuned, several MB each) plus one
            # pipe: a relay that kept reading the backend would let it send all 64 MB.
            assert sent[0] < 24 * MB, f"backend wrote {sent[0] / MB:.1f} MB to a stalled client"
            assert rss() - before < 4 * MB, "the proxy's memory grew while the client stalled"
            received = await drain(client)
            client.close()
            assert sent[0] == flood
            assert received == data
            await server.result()

    run(loop, main())


@SPLICED
def test_reset_of_a_half_closed_client_is_seen_while_nothing_flows(
    loop: str, splice: bool | str, caplog: pytest.LogCaptureFixture
) -> None:
    """The client sends its FIN, then a RST, while the backend sends nothing: no splice runs
    into the error, yet epoll reports it, and the backend is reset at once (the transport
    relay, which stops reading at EOF, would only see it at its next write)."""
    relay_gone = asyncio.Event()

    async def backend(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> str:
        assert await reader.read() == b"last words"
        await relay_gone.wait()
        try:
            writer.write(b"anyone there?")
            await writer.drain()
        except ConnectionError:
            return "reset"
        return "still open"

    async def main() -> None:
        async with Server(backend) as server, proxy(server.backend(), splice=splice) as px:
            _reader, writer = await px.connect()
            relay = await px.relay_spliced()
            writer.write(b"last words")
            writer.write_eof()
            await until(lambda: relay.client_eof)
            reset(writer)
            await until(lambda: not px.manager.traffic)
            relay_gone.set()
            assert await server.result() == "reset"

    caplog.set_level(logging.INFO, "restcp.access")
    run(loop, main())
    (line,) = access_lines(caplog)
    assert line.endswith("end=client_reset")


@SPLICED
def test_half_close_timeout(
    loop: str, splice: bool | str, caplog: pytest.LogCaptureFixture
) -> None:
    """The client half-closes and the backend never finishes: closed after the timeout."""
    done = asyncio.Event()

    async def backend(reader: asyncio.StreamReader, _writer: asyncio.StreamWriter) -> str:
        outcome = await read_outcome(reader)
        await done.wait()  # the backend's own direction stays open
        return outcome

    async def main() -> None:
        async with (
            Server(backend) as server,
            proxy(server.backend(), half_close_timeout=0.3, splice=splice) as px,
        ):
            reader, writer = await px.connect()
            await px.relay_spliced()
            writer.write_eof()
            started = time.monotonic()
            assert await read_outcome(reader) == "eof"
            assert time.monotonic() - started >= 0.3 * 0.9
            done.set()
            assert await server.result() == "eof"
            writer.close()

    caplog.set_level(logging.INFO, "restcp.access")
    run(loop, main())
    (line,) = access_lines(caplog)
    assert line.endswith("end=half_close_timeout")


@pytest.mark.parametrize("how", ["relay", "shutdown"])
def test_abort_mid_transfer(loop: str, how: str, caplog: pytest.LogCaptureFixture) -> None:
    """A relay reset while bytes flow both ways (a drain deadline, a disabled backend, the
    node's shutdown): both peers get a RST, and nothing is left open."""

    async def backend(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> str:
        async def pour() -> None:
            with contextlib.suppress(ConnectionError):
                while True:
                    writer.write(b"d" * 65536)
                    await writer.drain()

        pouring = asyncio.create_task(pour())
        try:
            return await read_outcome(reader)
        finally:
            pouring.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await pouring

    async def main() -> None:
        before = kernel_objects()
        async with Server(backend) as server, proxy(server.backend(), splice=True) as px:
            reader, writer = await px.connect()
            await asyncio.wait_for(reader.readexactly(1 * MB), WAIT)
            writer.write(payload(MB))
            relay = px.only_relay()
            assert relay.spliced
            if how == "relay":
                relay.abort("drain_timeout")
            else:
                await asyncio.wait_for(px.manager.shutdown(drain_timeout=0), WAIT)
            assert await read_outcome(reader) == "reset"
            assert await server.result() == "reset"
            writer.close()
            await asyncio.wait_for(px.manager.traffic.wait_empty(), WAIT)
        await until(lambda: kernel_objects() == before)

    caplog.set_level(logging.INFO, "restcp.access")
    run(loop, main())
    (line,) = access_lines(caplog)
    assert line.endswith("end=drain_timeout" if how == "relay" else "end=shutdown")


@SPLICED
def test_disabling_the_backend_resets_its_spliced_connections(
    loop: str, splice: bool | str
) -> None:
    async def backend(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> str:
        writer.write(b"hi")
        return await read_outcome(reader)

    async def main() -> None:
        async with Server(backend) as server, proxy(server.backend(), splice=splice) as px:
            reader, writer = await px.connect()
            assert await asyncio.wait_for(reader.readexactly(2), WAIT) == b"hi"
            await px.relay_spliced()
            runtime = px.manager.runtime(px.route.key)
            assert runtime is not None
            route = px.route
            off = route.backends[0].replace(state="disabled")
            runtime.update(Route(route.app, route.id, route.frontend_ip, route.port,
                                 route.settings, (off,)))  # fmt: skip
            assert await read_outcome(reader) == "reset"
            assert await server.result() == "reset"
            writer.close()

    run(loop, main())


# -- leaks ----------------------------------------------------------------------------------


def test_no_fd_or_pipe_left_after_many_connections(loop: str) -> None:
    """Connections ending every way, many at once: afterwards the process holds the sockets
    and pipes it held before, plus the pool's empty pipes (bounded) and the splicer's epoll
    set, and nothing in CLOSE_WAIT; after the node's shutdown, not even those."""
    # Big enough to be spliced (COPY_CHUNK), not only copied.
    scenarios = (
        functools.partial(half_close, most=2 * MB),
        full_close,
        functools.partial(client_reset, size=100_000),
        backend_reset,
    )

    async def main() -> None:
        before = kernel_objects()
        async with Server(echo_or_reset) as server, proxy(server.backend(), splice=True) as px:
            baseline = kernel_objects()
            rng = random.Random(5)
            jobs = [rng.choice(scenarios) for _ in range(160)]
            for at in range(0, len(jobs), 40):
                batch = jobs[at : at + 40]
                await asyncio.wait_for(asyncio.gather(*(job(px.port) for job in batch)), WAIT)
            await asyncio.wait_for(px.manager.traffic.wait_empty(), WAIT)
            await until(lambda: server.active == 0)
            pool = pipes_of(px)
            assert 0 < len(pool) <= 16
            splicer = px.manager.traffic.splicer
            assert splicer.descriptors() == 2 * len(pool) + 1
            await until(lambda: kernel_objects() == baseline + splicer.descriptors())
            states = tcp_states(os.getpid())
            assert "CLOSE_WAIT" not in states
            assert set(states) <= {"LISTEN", "CLOSE"}, states
        await until(lambda: kernel_objects() == before)

    run(loop, main())


# -- when splicing is not to be had -----------------------------------------------------------


@contextlib.contextmanager
def no_fds_for_dups(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    def refuse(*_args: object, **_kwargs: object) -> None:
        raise OSError(24, "Too many open files")

    monkeypatch.setattr(connection_module, "SplicePipe", refuse)
    yield


def test_without_fds_for_the_hand_over_the_transports_relay(
    loop: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """EMFILE at the hand-over: the relay writes what it held and relays as usual."""
    up, down = payload(2 * MB), payload(2 * MB)
    backend = sends_then_reads(down)

    async def main() -> None:
        async with (
            Server(backend) as server,
            proxy(server.backend(), splice=True, proxy_protocol="v1") as px,
        ):
            reader, writer = await px.connect()
            writer.write(up)
            writer.write_eof()
            assert await read_all(reader) == down
            got = await server.result()
            assert got.split(b"\r\n", 1)[1] == up
            writer.close()
            await asyncio.wait_for(px.manager.traffic.wait_empty(), WAIT)
            assert not used_pipes(px)

    caplog.set_level(logging.INFO, "restcp.access")
    with no_fds_for_dups(monkeypatch):
        run(loop, main())
    assert spliced(caplog) == [False]


def test_without_pipes_a_way_copies(loop: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Out of fds for a pipe mid-connection: the bytes go through Python, exact."""
    up, down = payload(3 * MB), payload(3 * MB)
    backend = sends_then_reads(down, digest_all)
    monkeypatch.setattr(PipePool, "take", lambda self: None)

    async def main() -> None:
        async with Server(backend) as server, proxy(server.backend(), splice=True) as px:
            reader, writer = await px.connect()
            relay = await px.relay_connected()
            writer.write(up)
            writer.write_eof()
            assert await digest_all(reader) == (len(down), sha(down))
            assert await server.result() == (len(up), sha(up))
            assert relay.spliced
            writer.close()

    run(loop, main())


def test_a_route_change_applies_to_new_connections(loop: str) -> None:
    """Splice turned off: the open connection stays spliced, the next one is not."""

    async def main() -> None:
        async with Server(echo_or_reset) as server, proxy(server.backend(), splice=True) as px:
            first_r, first_w = await px.connect()
            first = await px.relay_connected()
            await until(lambda: first.spliced)
            runtime = px.manager.runtime(px.route.key)
            assert runtime is not None
            route = px.route
            runtime.update(Route(route.app, route.id, route.frontend_ip, route.port,
                                 route.settings.replace(splice=False), route.backends))  # fmt: skip
            second_r, second_w = await px.connect()
            await until(lambda: len(px.manager.traffic) == 2)
            (second,) = [r for r in px.manager.traffic if r is not first]
            await until(lambda: second.backend is not None)
            for reader, writer in ((first_r, first_w), (second_r, second_w)):
                writer.write(b"still here")
                assert await asyncio.wait_for(reader.readexactly(10), WAIT) == b"still here"
            assert first.spliced
            assert not second.spliced
            assert second.client_transport is not None
            for writer in (first_w, second_w):
                writer.close()

    run(loop, main())
