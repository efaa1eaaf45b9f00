"""Reaching a backend: failover past dead ones, giving up at once or after connect_timeout."""

from __future__ import annotations

import asyncio
import logging
import time

import pytest

from tests.integration.harness import (
    ENGINES,
    WAIT,
    Server,
    proxy,
    read_all,
    read_outcome,
    refusing_backend,
    run,
    silent_backend,
    until,
)


async def echo_all(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bytes:
    got = await reader.read()
    writer.write(got)
    return got


@ENGINES
def test_failover_past_a_refusing_backend(loop: str, engine: str) -> None:
    """Round robin picks the dead backend first; the client must not notice."""
    dead, holder = refusing_backend(1)

    async def main() -> None:
        async with (
            Server(echo_all) as server,
            proxy(dead, server.backend(2), balance="round_robin", engine=engine) as px,
        ):
            for _ in range(4):  # the cursor starts on the dead one every other time
                reader, writer = await px.connect()
                writer.write(b"ping")
                writer.write_eof()
                assert await read_all(reader) == b"ping"
                writer.close()
                await server.result()
            assert server.accepted == 4

    with holder:
        run(loop, main())


@ENGINES
def test_no_live_backend_closes_at_once(
    loop: str, engine: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Only refused backends: the client is let go now, not after a timeout."""
    dead1, holder1 = refusing_backend(1)
    dead2, holder2 = refusing_backend(2)

    async def main() -> None:
        async with proxy(dead1, dead2, connect_timeout=30, engine=engine) as px:
            started = time.monotonic()
            reader, writer = await px.connect()
            assert await read_outcome(reader, within=2) in ("eof", "reset")
            assert time.monotonic() - started < 2
            writer.close()

    caplog.set_level(logging.INFO, "restcp")
    with holder1, holder2:
        run(loop, main())
    (line,) = [r.getMessage() for r in caplog.records if r.name == "restcp.access"]
    assert line.endswith("end=no_backend")
    assert sum("connect failed" in r.getMessage() for r in caplog.records) == 2


@ENGINES
def test_no_backends_at_all(loop: str, engine: str) -> None:
    async def main() -> None:
        async with proxy(engine=engine) as px:
            reader, writer = await px.connect()
            assert await read_outcome(reader, within=2) in ("eof", "reset")
            writer.close()

    run(loop, main())


@ENGINES
def test_connect_timeout(loop: str, engine: str, caplog: pytest.LogCaptureFixture) -> None:
    """A backend that never answers the SYN: the client is closed after ~connect_timeout."""
    timeout = 0.5

    async def main() -> None:
        with silent_backend() as silent:
            async with proxy(silent, connect_timeout=timeout, engine=engine) as px:
                started = time.monotonic()
                reader, writer = await px.connect()
                assert await read_outcome(reader, within=5) in ("eof", "reset")
                elapsed = time.monotonic() - started
                assert timeout * 0.9 <= elapsed < timeout + 1.5, elapsed
                writer.close()

    caplog.set_level(logging.INFO, "restcp")
    run(loop, main())
    assert any("connect failed" in r.getMessage() for r in caplog.records)


@ENGINES
def test_early_bytes_survive_a_slow_connect(loop: str, engine: str) -> None:
    """The client sends its request and FIN before any backend has accepted (the first one
    is silent until connect_timeout); the live second backend must still get all of it."""
    request = b"early request " * 1000

    async def main() -> None:
        with silent_backend(1) as silent:
            async with (
                Server(echo_all) as server,
                proxy(
                    silent,
                    server.backend(2),
                    balance="round_robin",
                    connect_timeout=0.3,
                    engine=engine,
                ) as px,
            ):
                reader, writer = await px.connect()
                writer.write(request)
                writer.write_eof()
                assert await read_all(reader) == request
                assert await server.result() == request
                writer.close()

    run(loop, main())


def test_connects_in_flight_are_counted_out(loop: str) -> None:
    """Each pick ends in exactly one of connected, connect_failed, connect_abandoned: after a
    client that left mid-connect, and clients that failed over past a connect timeout, no
    member still counts a connect in flight (max_connections would refuse clients for it)."""

    async def main() -> None:
        with silent_backend(1) as silent:
            async with proxy(silent, connect_timeout=30) as px:
                runtime = px.manager.runtime(px.route.key)
                assert runtime is not None
                reader, writer = await px.connect()
                await until(lambda: runtime.members[1].connecting == 1)
                # Ended from our side: asyncio does not see a client's RST while it is not
                # reading that client, and it is not read until a backend connects.
                px.only_relay().abort("drain_timeout")
                assert await read_outcome(reader) == "reset"
                writer.close()
                await asyncio.wait_for(px.manager.traffic.wait_empty(), WAIT)
                assert runtime.members[1].connecting == 0
            async with (
                Server(echo_all) as server,
                proxy(silent, server.backend(2), balance="round_robin", connect_timeout=0.2) as px,
            ):
                runtime = px.manager.runtime(px.route.key)
                assert runtime is not None
                for _ in range(3):
                    reader, writer = await px.connect()
                    writer.write(b"ping")
                    writer.write_eof()
                    assert await read_all(reader) == b"ping"
                    writer.close()
                    await server.result()
                await asyncio.wait_for(px.manager.traffic.wait_empty(), WAIT)
                assert [m.connecting for m in runtime.members.values()] == [0, 0]
                assert [m.active for m in runtime.members.values()] == [0, 0]

    run(loop, main())
