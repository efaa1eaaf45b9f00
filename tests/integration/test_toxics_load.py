"""Toxics changed live under a thousand open connections that move bytes all the while."""

from __future__ import annotations

import asyncio
import collections
import logging
import random
import statistics
import time

import pytest

from restcp.model import Toxic
from tests.integration.endings import echo_or_reset
from tests.integration.harness import WAIT, Server, access_lines, proxy, run, toxic, until

CONNECTIONS = 1000
MESSAGES = 12

# Toxics that drop nothing, in sets applied one after the other: each change adds, changes
# or removes stages under every connection, with bytes held in them.
NOT_DROPPING: list[tuple[Toxic, ...]] = [
    (toxic("latency", latency=30, jitter=20),),
    (
        toxic("latency", latency=10),
        toxic("slicer", "upstream", average_size=300, size_variation=200),
    ),
    (
        toxic("slicer", "upstream", average_size=500, size_variation=100, delay=1000),
        toxic("bandwidth", "upstream", rate=500),
        toxic("latency", latency=40),
    ),
    (),
    (toxic("slow_close", delay=30), toxic("latency", "upstream", latency=20)),
    (toxic("bandwidth", rate=300), toxic("latency", "upstream", latency=5, toxicity=0.5)),
    (toxic("slicer", average_size=100, size_variation=50),),
    (),
]


@pytest.mark.slow
def test_live_changes_under_a_thousand_connections_lose_and_reorder_nothing(
    loop: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A thousand connections each send a dozen messages of random bytes (or more, until a
    cycle of changes was made) through an echo, a few milliseconds apart, then a FIN;
    meanwhile the route's toxics go through the sets above, again and again, each change
    applied to every open connection. Every
    connection gets back exactly what it sent, in order, then EOF, and ends ``closed``;
    once all have ended, no stage holds anything. The test checks that it proved this:
    the changes came with hundreds of connections open and bytes held in stages, and most
    connections met toxics of several sets while open."""

    # Set once a whole cycle of changes was made: until then every client keeps sending, so
    # the changes meet open connections however fast this machine moves their messages.
    cycled = asyncio.Event()

    async def client(port: int, rng: random.Random) -> None:
        reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), WAIT)
        sent = bytearray()

        async def read() -> bytes:
            got = bytearray()
            while chunk := await reader.read(1 << 16):
                got += chunk
            return bytes(got)

        reading = asyncio.create_task(read())
        messages = 0
        while messages < MESSAGES or not cycled.is_set():
            data = rng.randbytes(rng.randrange(1, 3000))
            sent += data
            writer.write(data)
            messages += 1
            await asyncio.sleep(rng.random() * 0.06)
        writer.write_eof()
        assert await asyncio.wait_for(reading, WAIT * 6) == bytes(sent)
        writer.close()

    async def main() -> None:
        async with (
            Server(echo_or_reset, backlog=CONNECTIONS) as server,
            proxy(server.backend(), connect_timeout=30) as px,
        ):
            rng = random.Random(5)
            clients: list[asyncio.Task[None]] = []
            for _ in range(CONNECTIONS // 100):
                clients += [
                    asyncio.create_task(client(px.port, random.Random(rng.random())))
                    for _ in range(100)
                ]
                await asyncio.sleep(0.05)
            await until(lambda: len(px.manager.traffic) >= CONNECTIONS // 2)
            runtime = px.manager.runtime(px.route.key)
            assert runtime is not None
            took: list[float] = []
            # Before each change: the connections open, and the bytes the stages hold.
            seen: list[tuple[int, int]] = []
            changes = 0
            while not all(c.done() for c in clients) or changes < len(NOT_DROPPING):
                seen.append(
                    (len(runtime.connections), sum(t.held for t in runtime.tallies.values()))
                )
                began = time.perf_counter()
                await px.change(toxics=NOT_DROPPING[changes % len(NOT_DROPPING)])
                took.append(time.perf_counter() - began)
                changes += 1
                if changes >= len(NOT_DROPPING):
                    cycled.set()
                await asyncio.sleep(0.05)
            await asyncio.gather(*clients)
            await px.change(toxics=())
            await until(lambda: not runtime.connections)
            print(
                f"{changes} changes under up to {CONNECTIONS} connections: "
                f"median {statistics.median(took) * 1000:.1f} ms, max {max(took) * 1000:.1f} ms"
            )
            # The changes were made under the load, not beside it: a whole cycle of them
            # with a hundred connections open or more, and several with bytes held in
            # stages that the change removed or changed (what a change that lost or
            # reordered bytes would have lost).
            assert changes >= len(NOT_DROPPING)
            assert sum(open_ >= CONNECTIONS // 10 for open_, _ in seen) >= len(NOT_DROPPING), seen
            assert sum(held > 0 for _, held in seen) >= len(NOT_DROPPING) // 2, seen

    caplog.set_level(logging.INFO, "restcp.access")
    run(loop, main())
    lines = access_lines(caplog)
    assert len(lines) == CONNECTIONS
    assert all(" end=closed" in line for line in lines), [
        line for line in lines if " end=closed" not in line
    ][:3]
    # Live, not only at the connect: most connections met more toxics than one set has (at
    # most 3; the access line names each toxic a connection met), so changes reached them
    # while they were open.
    met = [line.split(" toxics=")[1].split(",") for line in lines if " toxics=" in line]
    most = max(len(toxics) for toxics in NOT_DROPPING)
    print("toxics met per connection:", sorted(collections.Counter(map(len, met)).items()))
    assert sum(len(names) > most for names in met) >= CONNECTIONS // 2, len(met)
