"""Pipes changing under a live connection: ``"splice": "auto"`` moves a connection to the
splice pipe at a bulk read and back to the transports once it is chatty again, and any
number of switches, in either direction, lose, duplicate or reorder no byte and no FIN.

The scenarios every pipe must pass alike (half-close, resets, timeouts) run on a switched
connection too, in test_relay.py and test_flow.py (``PIPES``); this file holds the switch's
own promises.
"""

from __future__ import annotations

import asyncio
import errno
import hashlib
import logging
import os
import socket
from typing import Any

import pytest

from restcp.proxy import connection as connection_module
from restcp.proxy.splice import SplicePipe
from restcp.proxy.transport_pipe import NEVER
from tests.integration.endings import echo_or_reset
from tests.integration.harness import (
    HOST,
    MB,
    SMALL_BUFFER,
    WAIT,
    Server,
    access_lines,
    digest_all,
    drain,
    payload,
    pipes_of,
    proxy,
    read_all,
    run,
    sends_then_reads,
    spliced,
    stalled,
    switch,
    until,
)


async def exchange(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, data: bytes) -> None:
    writer.write(data)
    assert await asyncio.wait_for(reader.readexactly(len(data)), WAIT) == data


def test_auto_splices_bulk_and_hands_chatty_back(
    loop: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Small exchanges stay on the transports (no pipe, nothing registered); a bulk one
    moves the connection to the splice pipe; small ones again bring it back; bulk again
    moves it again. The echo comes back exact throughout."""
    small, bulk = b"ping" * 8, payload(8 * MB)

    async def main() -> None:
        async with (
            Server(echo_or_reset) as server,
            proxy(server.backend(), splice="auto") as px,
        ):
            reader, writer = await px.connect()
            relay = await px.relay_connected()
            splicer = px.manager.traffic.splicer
            for _ in range(20):
                await exchange(reader, writer, small)
            assert relay.pipe is relay.transports
            assert not relay.spliced
            assert (len(splicer), len(pipes_of(px))) == (0, 0)

            await exchange(reader, writer, bulk)
            assert isinstance(relay.pipe, SplicePipe)
            assert len(splicer) == 2
            for _ in range(20):
                await exchange(reader, writer, small)
            await until(lambda: relay.pipe is relay.transports)
            assert len(splicer) == 0

            await exchange(reader, writer, bulk)
            assert isinstance(relay.pipe, SplicePipe)
            writer.close()
            assert await server.result() == 40 * len(small) + 2 * len(bulk)

    caplog.set_level(logging.INFO, "restcp.access")
    run(loop, main())
    assert spliced(caplog) == [True]
    (line,) = access_lines(caplog)
    total = 40 * len(small) + 2 * len(bulk)
    assert f"bytes_up={total} bytes_down={total}" in line


def test_a_chatty_connection_on_an_auto_route_never_splices(loop: str) -> None:
    """Many small messages each way, and a pause: the connection holds no pipe, no epoll
    registration and no descriptor more than on a route without splice."""

    async def main() -> None:
        counts = {}
        for mode in (False, "auto"):
            async with (
                Server(echo_or_reset) as server,
                proxy(server.backend(), splice=mode) as px,
            ):
                before = len(os.listdir("/proc/self/fd"))
                clients = [await px.connect() for _ in range(20)]
                for reader, writer in clients:
                    for _ in range(10):
                        await exchange(reader, writer, b"x" * 1000)
                counts[mode] = len(os.listdir("/proc/self/fd")) - before
                relays = list(px.manager.traffic)
                assert not any(r.spliced for r in relays)
                assert len(px.manager.traffic.splicer) == 0
                assert len(pipes_of(px)) == 0
                for _reader, writer in clients:
                    writer.close()
        assert counts[False] == counts["auto"] == 20 * 4

    run(loop, main())


async def stream(writer: asyncio.StreamWriter, data: bytes) -> None:
    """``data`` in 64 KiB writes, each let out before the next, then a FIN: a steady flow,
    with moments when nothing waits in the proxy's buffers."""
    view = memoryview(data)
    for at in range(0, len(data), 64 * 1024):
        writer.write(view[at : at + 64 * 1024])
        await writer.drain()
    writer.write_eof()


async def stream_until(
    writer: asyncio.StreamWriter, enough: asyncio.Event, at_least: int
) -> tuple[int, str]:
    """As ``stream``, for at least ``at_least`` bytes and until ``enough`` is set, then a
    FIN: (size, sha256) of what was sent."""
    block = memoryview(payload(4 * MB))
    digest, sent = hashlib.sha256(), 0
    while sent < at_least or not enough.is_set():
        for at in range(0, len(block), 64 * 1024):
            piece = block[at : at + 64 * 1024]
            writer.write(piece)
            digest.update(piece)
            await writer.drain()
        sent += len(block)
    writer.write_eof()
    return sent, digest.hexdigest()


def test_many_switches_under_full_duplex_load(loop: str, caplog: pytest.LogCaptureFixture) -> None:
    """Both peers stream at once, each ending with its FIN, while the connection is moved
    between the splice pipe and the transports whenever it can be (to the splice pipe: when
    the transports' buffers happen to be empty), trying at every turn of the loop; the peers
    go on until it has moved at least 3 times each way (a loaded machine offers fewer empty
    moments per megabyte): every byte arrives once and in order, each FIN after the last
    byte, and the ending is ``closed``."""
    enough = asyncio.Event()
    sizes: dict[str, int] = {}

    async def backend(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> Any:
        sending = asyncio.create_task(stream_until(writer, enough, 32 * MB))
        got = await digest_all(reader)
        return got, await sending

    async def main() -> None:
        async with (
            Server(backend) as server,
            proxy(server.backend(), splice="auto") as px,
        ):
            reader, writer = await px.connect()
            relay = await px.relay_connected()
            relay.transports.watch_bulk(False)  # the test alone moves it
            moves = {"splice": 0, "transports": 0}
            done = asyncio.Event()

            async def mover() -> None:
                to = "splice"
                while not done.is_set():
                    if switch(relay, to):
                        moves[to] += 1
                        to = "transports" if to == "splice" else "splice"
                        if min(moves.values()) >= 3:
                            enough.set()
                    await asyncio.sleep(0)

            moving = asyncio.create_task(mover())
            try:
                sending = asyncio.create_task(stream_until(writer, enough, 32 * MB))
                received_down = await digest_all(reader)
                sent_up = await sending
                received_up, sent_down = await server.result()
                assert received_down == sent_down
                assert received_up == sent_up
                sizes.update(up=sent_up[0], down=sent_down[0])
            finally:
                done.set()
                await moving
            writer.close()
            print(f"switches: {moves}")
            assert moves["splice"] >= 3
            assert moves["transports"] >= 3

    caplog.set_level(logging.INFO, "restcp.access")
    run(loop, main())
    (line,) = access_lines(caplog)
    assert line.endswith("end=closed")
    assert f"bytes_up={sizes['up']} bytes_down={sizes['down']}" in line


def test_handing_back_delivers_what_the_splice_pipe_holds(loop: str) -> None:
    """The backend floods a client that reads nothing, through the splice pipe, until the
    kernel pipe holds bytes that cannot go out; the connection then moves to the
    transports, which get those bytes, and the client, reading at last, gets every byte in
    order. (Whether the client's transport still buffers some of them after the move is the
    kernel's: a socket takes writes before it wakes its writer, so a few KiB the pipe held
    may go out at once; what is checked is that none is lost or reordered.)"""
    flood = 32 * MB
    data = payload(flood)
    sent = [0]
    go = asyncio.Event()

    async def backend(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await go.wait()
        view = memoryview(data)
        for at in range(0, flood, 256 * 1024):
            writer.write(view[at : at + 256 * 1024])
            await writer.drain()
            sent[0] = at + 256 * 1024
        writer.write_eof()

    async def main() -> None:
        loop_ = asyncio.get_running_loop()
        async with Server(backend) as server, proxy(server.backend(), splice="auto") as px:
            with socket.socket() as client:
                client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SMALL_BUFFER)
                client.setblocking(False)
                await loop_.sock_connect(client, (HOST, px.port))
                relay = await px.relay_connected()
                relay.transports.watch_bulk(False)
                assert switch(relay, "splice")
                go.set()
                await until(lambda: sent[0] > 0)
                await stalled(sent)
                assert relay.pipe is not None
                assert relay.pipe.holding(), "the splice pipe holds what the client cannot take"
                assert switch(relay, "transports")
                assert relay.pipe is relay.transports
                received = await drain(client)
            assert received == data
            await server.result()

    run(loop, main())


def test_without_fds_for_a_splice_pipe_the_transports_carry_on(
    loop: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """EMFILE when a bulk read asks for the splice pipe: the transports relay on, exact,
    and the connection asks no more."""
    up, down = payload(4 * MB), payload(4 * MB)
    backend = sends_then_reads(down)
    attempts = []

    def refuse(*_args: object, **_kwargs: object) -> None:
        attempts.append(1)
        raise OSError(errno.EMFILE, "Too many open files")

    monkeypatch.setattr(connection_module, "SplicePipe", refuse)

    async def main() -> None:
        async with Server(backend) as server, proxy(server.backend(), splice="auto") as px:
            reader, writer = await px.connect()
            relay = await px.relay_connected()
            writer.write(up)
            writer.write_eof()
            assert await read_all(reader) == down
            assert await server.result() == up
            assert relay.transports.bulk_at == NEVER
            writer.close()

    caplog.set_level(logging.INFO, "restcp")
    run(loop, main())
    assert attempts == [1]
    assert spliced(caplog) == [False]
    warnings = [r for r in caplog.records if r.getMessage().startswith("pipe switch failed")]
    assert len(warnings) == 1
