"""The timed toxics (``timeout``, ``limit_time``, ``reset_peer``) count from the toxic's
start, at the byte level against a real echo backend: from the connect for a toxic already
on the route, from the moment it was added for one added under an open connection; not
from the last byte, not from the connection's own start, and not again when the toxic is
changed or when another toxic comes and goes (docs/toxics.md, "On a live connection").

Each moment is measured by the client between two clocks it owns: the toxic's start lies
between ``before`` and ``after`` (the connect, or the change's call and its return), so a
close must come no earlier than ``before + t`` (less the loops' 1 ms) and, on a loaded
machine, no later than ``after + t + LATE``: loose enough for a stall, far tighter than
any wrong start the tests tell apart (each is off by 200 ms or more).
"""

from __future__ import annotations

import asyncio
import time

import pytest

from tests.integration.endings import echo_or_reset
from tests.integration.harness import (
    WAIT,
    Proxy,
    Server,
    proxy,
    read_outcome,
    run,
    toxic,
)

MS = 0.001
LATE = 0.15


async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, data: bytes) -> None:
    writer.write(data)
    assert await asyncio.wait_for(reader.readexactly(len(data)), WAIT) == data


async def keep_echoing(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, seconds: float
) -> None:
    """Bytes flowing both ways for ``seconds``, a message every 20 ms, each echoed whole."""
    end = time.monotonic() + seconds
    n = 0
    while time.monotonic() < end:
        await echo(reader, writer, b"m%04d" % n)
        n += 1
        await asyncio.sleep(0.02)


async def ended(reader: asyncio.StreamReader, expected: str) -> float:
    """Wait for the connection's end (``eof`` or ``reset``): when it came."""
    assert await read_outcome(reader) == expected
    return time.monotonic()


async def timed_change(px: Proxy, *toxics: object) -> tuple[float, float]:
    before = time.monotonic()
    await px.change(toxics=toxics)
    return before, time.monotonic()


def within(at: float, window: tuple[float, float], after: float) -> None:
    before, until_ = window
    assert before + after - MS <= at <= until_ + after + LATE, (
        at - before,
        after,
    )


# The three timed toxics, the attribute holding their time, and how they end a connection.
each_timed_toxic = pytest.mark.parametrize(
    ("type_", "attribute", "outcome"),
    [
        ("timeout", "timeout", "eof"),
        ("limit_time", "time", "eof"),
        ("reset_peer", "timeout", "reset"),
    ],
)


@pytest.mark.parametrize("stream", ["downstream", "upstream"])
def test_a_timeout_added_under_an_open_connection_counts_from_its_addition(
    loop: str, stream: str
) -> None:
    """A connection echoes for 400 ms; a timeout of 300 ms is added: the echo stops at
    once (the bytes are held), and the connection closes 300 ms after the addition: not at
    once (400 ms after the connect), and not 300 ms after the last byte."""

    async def main() -> None:
        async with Server(echo_or_reset) as server, proxy(server.backend()) as px:
            reader, writer = await px.connect()
            await keep_echoing(reader, writer, 0.4)
            window = await timed_change(px, toxic("timeout", stream, timeout=300))
            # Bytes sent while it holds: none come back, and they do not move its clock.
            for _ in range(5):
                writer.write(b"held")
                await asyncio.sleep(0.05)
            within(await ended(reader, "eof"), window, 0.3)
            writer.close()
            (tally,) = px.manager.runtime(px.route.key).tallies.values()  # type: ignore[union-attr]
            assert tally.held == 0
            # What it held was dropped, never forwarded: upstream, the backend never saw
            # it; downstream, the backend's echo of it was dropped.
            assert tally.dropped == 20

    run(loop, main())


@pytest.mark.parametrize("stream", ["downstream", "upstream"])
def test_limit_time_added_under_an_open_connection_counts_from_its_addition(
    loop: str, stream: str
) -> None:
    """A connection echoes for 400 ms; a limit_time of 300 ms is added: bytes keep flowing,
    and the connection closes 300 ms after the addition, whatever flows meanwhile."""

    async def main() -> None:
        async with Server(echo_or_reset) as server, proxy(server.backend()) as px:
            reader, writer = await px.connect()
            await keep_echoing(reader, writer, 0.4)
            window = await timed_change(px, toxic("limit_time", stream, time=300))
            await keep_echoing(reader, writer, 0.22)  # still flowing after the addition
            within(await ended(reader, "eof"), window, 0.3)
            writer.close()

    run(loop, main())


def test_reset_peer_added_under_an_open_connection_counts_from_its_addition(loop: str) -> None:
    async def main() -> None:
        async with Server(echo_or_reset) as server, proxy(server.backend()) as px:
            reader, writer = await px.connect()
            await keep_echoing(reader, writer, 0.4)
            window = await timed_change(px, toxic("reset_peer", timeout=300))
            await keep_echoing(reader, writer, 0.2)
            within(await ended(reader, "reset"), window, 0.3)
            writer.close()

    run(loop, main())


@each_timed_toxic
def test_a_timed_toxic_on_the_route_counts_from_the_connect(
    loop: str, type_: str, attribute: str, outcome: str
) -> None:
    """On the route before the client came: the end comes ``t`` after the connect, not
    later, however the bytes flow."""

    async def main() -> None:
        async with (
            Server(echo_or_reset) as server,
            proxy(server.backend(), toxics=(toxic(type_, **{attribute: 400}),)) as px,
        ):
            before = time.monotonic()
            reader, writer = await px.connect()
            after = time.monotonic()
            await asyncio.sleep(0.2)
            writer.write(b"late")  # nothing here moves its clock
            within(await ended(reader, outcome), (before, after), 0.4)
            writer.close()

    run(loop, main())


@each_timed_toxic
def test_a_patch_of_a_timed_toxic_counts_from_its_start_not_from_the_patch(
    loop: str, type_: str, attribute: str, outcome: str
) -> None:
    """Added with 1 s; 300 ms later changed to 500 ms: the end comes 500 ms after the
    addition (not 500 ms after the change, and not 1 s after the addition). Meanwhile a
    latency comes and goes upstream, on the same connection: the timed toxic's clock does
    not start again."""

    async def main() -> None:
        async with Server(echo_or_reset) as server, proxy(server.backend()) as px:
            reader, writer = await px.connect()
            await echo(reader, writer, b"before")
            timed = toxic(type_, **{attribute: 1000})
            window = await timed_change(px, timed)
            await asyncio.sleep(0.1)
            lag = toxic("latency", "upstream", latency=10)
            await px.change(toxics=(timed, lag))
            await asyncio.sleep(0.1)
            await px.change(toxics=(timed,))
            await asyncio.sleep(0.1)
            await px.change(toxics=(toxic(type_, **{attribute: 500}),))
            within(await ended(reader, outcome), window, 0.5)
            writer.close()

    run(loop, main())


@each_timed_toxic
def test_a_patch_to_a_time_already_past_ends_the_connection_at_once(
    loop: str, type_: str, attribute: str, outcome: str
) -> None:
    async def main() -> None:
        async with Server(echo_or_reset) as server, proxy(server.backend()) as px:
            reader, writer = await px.connect()
            await echo(reader, writer, b"before")
            await px.change(toxics=(toxic(type_, **{attribute: 5000}),))
            await asyncio.sleep(0.45)
            # 250 ms from its start is past: at once (not 250 ms after the change).
            window = await timed_change(px, toxic(type_, **{attribute: 250}))
            within(await ended(reader, outcome), window, 0)
            writer.close()

    run(loop, main())
