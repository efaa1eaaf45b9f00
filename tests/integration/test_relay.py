"""One relay end to end: bytes, EOFs, resets and flow control between real sockets."""

from __future__ import annotations

import asyncio
import logging
import socket

import pytest

from tests.integration.harness import (
    BULK_ENGINES,
    MB,
    PIPES,
    SPLICE,
    WAIT,
    Server,
    access_lines,
    payload,
    proxy,
    read_all,
    read_outcome,
    reset,
    run,
    sends_then_reads,
    spliced,
    splices,
    used_pipes,
)


@BULK_ENGINES
def test_client_speaks_first(loop: str, engine: str, caplog: pytest.LogCaptureFixture) -> None:
    """Request then response, several MB each way, each ended by a half-close."""
    request, response = payload(4 * MB), payload(3 * MB)

    async def backend(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bytes:
        got = await reader.read()  # up to the client's FIN, forwarded by the proxy
        writer.write(response)
        await writer.drain()
        return got

    async def main() -> None:
        async with Server(backend) as server, proxy(server.backend(), engine=engine) as px:
            reader, writer = await px.connect()
            writer.write(request)
            writer.write_eof()
            assert await read_all(reader) == response
            assert await server.result() == request
            writer.close()

    caplog.set_level(logging.INFO, "restcp.access")
    run(loop, main())
    (line,) = access_lines(caplog)
    assert f"bytes_up={len(request)} bytes_down={len(response)}" in line
    assert line.endswith("end=closed")


@BULK_ENGINES
def test_backend_speaks_first(loop: str, engine: str, caplog: pytest.LogCaptureFixture) -> None:
    """A banner large enough to fill every buffer on the way, then the client's answer."""
    banner, answer = payload(4 * MB), payload(2 * MB)

    async def backend(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bytes:
        writer.write(banner)
        await writer.drain()
        got = await reader.readexactly(len(answer))
        writer.write(b"bye")
        writer.write_eof()
        return got

    async def main() -> None:
        async with Server(backend) as server, proxy(server.backend(), engine=engine) as px:
            reader, writer = await px.connect()
            assert await asyncio.wait_for(reader.readexactly(len(banner)), WAIT) == banner
            writer.write(answer)
            assert await read_all(reader) == b"bye"
            assert await server.result() == answer
            writer.close()

    caplog.set_level(logging.INFO, "restcp.access")
    run(loop, main())
    (line,) = access_lines(caplog)
    assert f"bytes_up={len(answer)} bytes_down={len(banner) + 3}" in line
    assert line.endswith("end=closed")


@BULK_ENGINES
def test_both_ways_at_once(loop: str, engine: str) -> None:
    """Full duplex: both peers write several MB before reading anything, so each direction's
    backpressure must not block the other one (a relay that pauses the wrong side deadlocks)."""
    up, down = payload(6 * MB), payload(6 * MB)
    backend = sends_then_reads(down)

    async def main() -> None:
        async with Server(backend) as server, proxy(server.backend(), engine=engine) as px:
            reader, writer = await px.connect()
            writer.write(up)
            writer.write_eof()
            assert await read_all(reader) == down
            assert await server.result() == up
            writer.close()

    run(loop, main())


@BULK_ENGINES
def test_backend_sends_then_closes(loop: str, engine: str) -> None:
    """The original restcp's connectivity test: the backend writes a large payload and closes
    its socket at once; the client must get every byte, then EOF."""
    data = payload(8 * MB)

    async def backend(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(data)
        await writer.drain()
        writer.close()

    async def main() -> None:
        async with Server(backend) as server, proxy(server.backend(), engine=engine) as px:
            reader, writer = await px.connect()
            assert await read_all(reader) == data
            await server.result()
            writer.close()

    run(loop, main())


@PIPES
def test_client_half_close(loop: str, splice: bool | str, caplog: pytest.LogCaptureFixture) -> None:
    """Client SHUT_WR: the backend sees EOF, yet can still send megabytes after it, and the
    client gets them all. (Spliced: the client's bytes and FIN come after the hand-over.)"""
    tail = payload(4 * MB)

    async def backend(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bytes:
        got = await reader.read()
        for at in range(0, len(tail), MB):  # several writes after the EOF, not one lucky packet
            writer.write(tail[at : at + MB])
            await writer.drain()
        return got

    async def main() -> None:
        async with Server(backend) as server, proxy(server.backend(), splice=splice) as px:
            reader, writer = await px.connect()
            if splices(splice):
                await px.splicing()
            writer.write(b"question")
            writer.write_eof()
            assert await server.result() == b"question"
            assert await read_all(reader) == tail
            writer.close()

    caplog.set_level(logging.INFO, "restcp.access")
    run(loop, main())
    assert spliced(caplog) == [splices(splice)]


@SPLICE
def test_backend_half_close(loop: str, splice: bool, caplog: pytest.LogCaptureFixture) -> None:
    """The mirror: backend SHUT_WR first; the client sees EOF and keeps sending; the backend
    receives all of it."""
    tail = payload(4 * MB)

    async def backend(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bytes:
        writer.write(b"banner")
        writer.write_eof()
        return await reader.read()

    async def main() -> None:
        async with Server(backend) as server, proxy(server.backend(), splice=splice) as px:
            reader, writer = await px.connect()
            assert await read_all(reader) == b"banner"
            writer.write(tail)
            await writer.drain()
            writer.write(b"end")
            writer.write_eof()
            assert await server.result() == tail + b"end"
            writer.close()
            await asyncio.wait_for(px.manager.traffic.wait_empty(), WAIT)
            assert used_pipes(px) is splice

    caplog.set_level(logging.INFO, "restcp.access")
    run(loop, main())
    assert spliced(caplog) == [splice]
    (line,) = access_lines(caplog)
    assert f"bytes_up={len(tail) + 3} bytes_down=6" in line
    assert line.endswith("end=closed")


@PIPES
@pytest.mark.parametrize("who", ["client", "backend"])
def test_reset_propagates(
    loop: str, who: str, splice: bool | str, caplog: pytest.LogCaptureFixture
) -> None:
    """A RST from one peer resets the other at once, rather than closing it cleanly: the peer
    must not take a truncated stream for a complete one. (Spliced: mid-transfer, with a
    megabyte of the client's on its way.)"""
    backend_writer: asyncio.Future[asyncio.StreamWriter]

    async def backend(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> str:
        writer.write(b"hello")
        backend_writer.set_result(writer)
        return await read_outcome(reader)

    async def main() -> None:
        nonlocal backend_writer
        backend_writer = asyncio.get_running_loop().create_future()
        async with Server(backend) as server, proxy(server.backend(), splice=splice) as px:
            reader, writer = await px.connect()
            assert await asyncio.wait_for(reader.readexactly(5), WAIT) == b"hello"
            if splices(splice):
                await px.splicing()
                writer.write(payload(MB))
            if who == "client":
                reset(writer)
                assert await server.result() == "reset"
            else:
                reset(await backend_writer)
                assert await read_outcome(reader) == "reset"
                writer.close()
                await server.result()

    caplog.set_level(logging.INFO, "restcp.access")
    run(loop, main())
    assert spliced(caplog) == [splices(splice)]
    (line,) = access_lines(caplog)
    assert line.endswith(f"end={who}_reset")


def test_nodelay_both_sides(loop: str) -> None:
    """Small writes of interactive protocols must not wait for Nagle's ack delay."""

    async def backend(reader: asyncio.StreamReader, _writer: asyncio.StreamWriter) -> None:
        await reader.read()

    async def main() -> None:
        async with Server(backend) as server, proxy(server.backend()) as px:
            _reader, writer = await px.connect()
            relay = await px.relay_connected()
            for side in (relay.client_transport, relay.backend_transport):
                assert side is not None
                sock = side.get_extra_info("socket")
                assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
            writer.close()
            await server.result()

    run(loop, main())
