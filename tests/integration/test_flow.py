"""Backpressure and timeouts: what a relay does when a peer stops reading or goes silent."""

from __future__ import annotations

import asyncio
import logging
import socket
import time

import pytest

from tests.integration.harness import (
    BULK_ENGINES,
    ENGINES,
    HOST,
    MB,
    PIPES,
    SMALL_BUFFER,
    WAIT,
    Server,
    access_lines,
    drain,
    flooder,
    payload,
    proxy,
    read_outcome,
    run,
    spliced,
    splices,
    stalled,
    until,
)

# The flood is far more than every socket buffer on the way can hold (the kernel autotunes
# loopback buffers up to tcp_rmem/tcp_wmem max, several MB each), so a relay that reads the
# backend regardless of its client would take most of it into memory.
FLOOD = 64 * MB
# What the backend may get rid of while the client reads nothing: the kernel buffers of the
# backend->proxy and proxy->client sockets plus the relay's own (high-water mark + one read).
BOUND = 16 * MB


@BULK_ENGINES
def test_backpressure_bounds_buffering(
    loop: str, engine: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A backend floods a client that reads nothing: the backend's writes stall well short of
    the flood, the relay holds no more than about its high-water mark and stops reading the
    backend; then the client drains and gets every byte, in order."""
    data = payload(FLOOD)
    sent = [0]
    flood = flooder(data, sent)

    async def main() -> None:
        loop_ = asyncio.get_running_loop()
        async with Server(flood) as server, proxy(server.backend(), engine=engine) as px:
            client = socket.socket()
            client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SMALL_BUFFER)
            client.setblocking(False)
            await loop_.sock_connect(client, (HOST, px.port))
            if engine.startswith("native"):
                # Its buffer is bounded by construction (64 KiB a way, in its buffer or its
                # pipe): the backend stalls.
                await until(lambda: sent[0] > 0)
                await stalled(sent)
                assert sent[0] < BOUND, f"backend wrote {sent[0] / MB:.1f} MB, not read"
                received = await drain(client)
                client.close()
                assert sent[0] == FLOOD
                assert received == data
                await server.result()
                return
            relay = await px.relay_connected()
            biggest = 0

            def relay_buffer() -> int:
                nonlocal biggest
                transport = relay.client_transport
                size = transport.get_write_buffer_size() if transport else 0
                biggest = max(biggest, size)
                return size

            await until(lambda: relay_buffer() > 0 and sent[0] > 0)
            await stalled(sent)
            relay_buffer()
            assert sent[0] < BOUND, f"backend wrote {sent[0] / MB:.1f} MB to a client not reading"
            assert biggest < 1 * MB, f"relay buffered {biggest / MB:.1f} MB"
            assert relay.backend_transport is not None
            assert not relay.backend_transport.is_reading()

            received = await drain(client)
            client.close()
            assert sent[0] == FLOOD
            assert received == data
            await server.result()

    caplog.set_level(logging.INFO, "restcp.access")
    run(loop, main())
    # The engine splices on a splice route: from the first read ("native-splice"), or from
    # one that fills 64 KiB, as the read after the client resumes does ("native-auto").
    assert spliced(caplog) == [engine in ("native-splice", "native-auto")]


@PIPES
def test_idle_timeout_closes_a_silent_connection(
    loop: str, splice: bool | str, caplog: pytest.LogCaptureFixture
) -> None:
    idle = 0.3

    async def backend(reader: asyncio.StreamReader, _writer: asyncio.StreamWriter) -> str:
        return await read_outcome(reader)

    async def main() -> None:
        async with (
            Server(backend) as server,
            proxy(server.backend(), idle_timeout=idle, splice=splice) as px,
        ):
            reader, writer = await px.connect()
            if splices(splice):
                await px.splicing()
            # Traffic resets the clock (spliced traffic too): 3 exchanges spaced by 2/3 of the
            # timeout keep it open.
            for _ in range(3):
                await asyncio.sleep(idle * 2 / 3)
                writer.write(b"x")
                await writer.drain()
            started = time.monotonic()
            assert await read_outcome(reader, within=5) == "eof"
            assert idle * 0.9 <= time.monotonic() - started < idle + 1.0
            assert await server.result() == "eof"
            writer.close()

    caplog.set_level(logging.INFO, "restcp.access")
    run(loop, main())
    assert spliced(caplog) == [splices(splice)]
    (line,) = access_lines(caplog)
    assert "bytes_up=3 " in line
    assert line.endswith("end=idle_timeout")


@ENGINES
def test_idle_timeout_zero_disables_it(loop: str, engine: str) -> None:
    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(1024):
            writer.write(data)

    async def main() -> None:
        async with (
            Server(echo) as server,
            proxy(server.backend(), idle_timeout=0, engine=engine) as px,
        ):
            reader, writer = await px.connect()
            writer.write(b"x")
            assert await asyncio.wait_for(reader.readexactly(1), WAIT) == b"x"
            # Time must pass for a timeout to fire; 0.5 s is well past any timer the relay
            # could have armed by mistake (0 would fire at once, a default one never here).
            await asyncio.sleep(0.5)
            writer.write(b"still there?")
            assert await asyncio.wait_for(reader.readexactly(12), WAIT) == b"still there?"
            writer.close()
            await server.result()

    run(loop, main())


@pytest.mark.parametrize(
    "splice",
    [False, True, "native", "native-splice", "native-auto"],
    ids=["transports", "splice", "native", "native-splice", "native-auto"],
)
def test_idle_timeout_resets_a_pipe_stuck_on_a_peer_that_stopped_reading(
    loop: str, splice: bool | str, caplog: pytest.LogCaptureFixture
) -> None:
    """Silence with data stuck in a buffer (or a pipe) is a peer that stopped reading: a
    graceful close would wait on it for ever, so the relay resets both sides."""
    idle = 0.3
    data = payload(FLOOD)

    async def flood(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> str:
        writer.write(data)
        try:
            await writer.drain()
        except ConnectionResetError:
            return "reset"
        return "sent all"

    async def main() -> None:
        loop_ = asyncio.get_running_loop()
        async with (
            Server(flood) as server,
            proxy(server.backend(), idle_timeout=idle, splice=splice) as px,
        ):
            client = socket.socket()
            client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SMALL_BUFFER)
            client.setblocking(False)
            await loop_.sock_connect(client, (HOST, px.port))
            assert await server.result() == "reset"
            await until(lambda: not px.manager.traffic)
            with pytest.raises(ConnectionResetError):
                await drain(client)
            client.close()

    caplog.set_level(logging.INFO, "restcp.access")
    run(loop, main())
    # "native-auto": the engine's reads of the flood fill 64 KiB once the client stalls.
    assert spliced(caplog) == [splices(splice)]


@BULK_ENGINES
def test_half_closed_slow_reader_still_gets_everything(loop: str, engine: str) -> None:
    """Both FINs seen, data still queued for a client that reads slowly but steadily: the
    graceful close must wait for it (the idle clock counts drain progress as activity)."""
    data = payload(4 * MB)

    async def backend(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        assert await reader.read() == b""
        writer.write(data)
        await writer.drain()

    async def main() -> None:
        async with (
            Server(backend) as server,
            proxy(server.backend(), idle_timeout=0.5, engine=engine) as px,
        ):
            reader, writer = await px.connect()
            writer.write_eof()
            received = bytearray()
            async with asyncio.timeout(WAIT * 2):
                while chunk := await reader.read(64 * 1024):
                    received += chunk
                    await asyncio.sleep(0.01)
            assert received == data
            writer.close()
            await server.result()

    run(loop, main())
