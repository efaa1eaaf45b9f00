"""Issue #12, part 3, through a real node's API: a toxic's DELETE with a thousand
connections open through its route, each with an echo held in the toxic. Every DELETE
answers 204 once the toxic is gone from every connection (its store write, then the data
plane's change), and what the toxic held reaches each client at once, whole, in order, once.

The DELETE's time is the issue's measure: its p99 is printed, and held to the issue's
100 ms (toxiproxy's DELETE could hang for 25 s and answer 503). docs/benchmarks.md has
the figures."""

from __future__ import annotations

import asyncio
import statistics
import time
from pathlib import Path

import aiohttp
import pytest

from tests.e2e.conftest import StartNode, add_backend, assert_clean_log, create_route, serve_args
from tests.helpers import free_port_range

CONNECTIONS = 1000
ROUNDS = 40
WAIT = 30.0
TOXICS = "/apps/web/routes/1/toxics"
# Held far longer than the test: only the DELETE lets an echo out.
LATENCY = {"type": "latency", "attributes": {"latency": 600_000}}


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


class Echo:
    """An echo backend on this loop whose connections all end before it is left."""

    def __init__(self) -> None:
        self.handlers: set[asyncio.Task[None]] = set()

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.handlers.add(task)
        try:
            while data := await reader.read(1 << 16):
                writer.write(data)
                await writer.drain()
        finally:
            writer.close()
            await writer.wait_closed()


@pytest.mark.slow
def test_a_toxic_delete_under_a_thousand_open_connections_is_fast_and_loses_nothing(
    start_node: StartNode, tmp_path: Path
) -> None:
    lo, hi = free_port_range()
    node = start_node(*serve_args(tmp_path / "restcp.db", lo, hi))
    port = create_route(node, "web", connect_timeout=30)["port"]

    async def held_bytes(http: aiohttp.ClientSession) -> int:
        async with http.get(node.api + "/metrics") as response:
            text = await response.text()
        for line in text.splitlines():
            if line.startswith("restcp_toxic_held_bytes{") and 'toxic="latency_downstream"' in line:
                return int(float(line.rsplit(" ", 1)[1]))
        return 0

    async def main() -> list[float]:
        backend = Echo()
        server = await asyncio.start_server(backend.serve, "127.0.0.1", 0, backlog=CONNECTIONS)
        add_backend(node, "web", 1, server.sockets[0].getsockname()[1])
        clients: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
        took: list[float] = []
        try:
            for _ in range(CONNECTIONS):
                reader, writer = await asyncio.wait_for(
                    asyncio.open_connection("127.0.0.1", port), WAIT
                )
                clients.append((reader, writer))
                writer.write(b"hi")
                assert await asyncio.wait_for(reader.readexactly(2), WAIT) == b"hi"
            async with aiohttp.ClientSession() as http:
                for round_ in range(ROUNDS):
                    async with http.put(node.api + TOXICS, json=LATENCY) as added:
                        assert added.status == 201, await added.text()
                    messages = [b"r%03dc%04d;" % (round_, i) for i in range(CONNECTIONS)]
                    for (_, writer), message in zip(clients, messages, strict=True):
                        writer.write(message)
                    total = sum(map(len, messages))
                    async with asyncio.timeout(WAIT):
                        while await held_bytes(http) < total:  # noqa: ASYNC110 - polled: the node is another process
                            await asyncio.sleep(0.01)
                    began = time.perf_counter()
                    async with http.delete(node.api + TOXICS + "/latency_downstream") as gone:
                        took.append(time.perf_counter() - began)
                        assert gone.status == 204, await gone.text()
                    # Each echo comes back whole, and nothing else (no byte lost, doubled
                    # or reordered): the next round's message would follow it.
                    for (reader, _), message in zip(clients, messages, strict=True):
                        got = await asyncio.wait_for(reader.readexactly(len(message)), WAIT)
                        assert got == message
        finally:
            for _, writer in clients:
                writer.close()
            for _, writer in clients:
                await writer.wait_closed()
            clients.clear()
            server.close()
            # Each handler ends on its client's close, relayed by the node.
            await asyncio.wait_for(asyncio.gather(*backend.handlers, return_exceptions=True), WAIT)
            await server.wait_closed()
        return took

    took = asyncio.run(main())
    ms = [t * 1000 for t in took]
    p99 = percentile(ms, 99)
    print(
        f"DELETE of a toxic holding an echo on each of {CONNECTIONS} connections, "
        f"{ROUNDS} rounds: p50 {statistics.median(ms):.1f} ms, p99 {p99:.1f} ms, "
        f"max {max(ms):.1f} ms"
    )
    assert p99 < 100, ms
    assert_clean_log(node)
