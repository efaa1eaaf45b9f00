"""What toxics show: each toxic's counters through a process's DataPlane, the node's stats
and the /metrics exposition, read back with prometheus_client's own parser."""

from __future__ import annotations

import asyncio
import dataclasses

from prometheus_client.parser import text_string_to_metric_families

from restcp.control.stats import NodeStats
from restcp.dataplane import DataPlane, RouteCounts, ToxicCounts
from restcp.metrics import Metrics, generate_latest
from restcp.proxy.listener import bind
from restcp.settings import Settings
from restcp.workers import NoWorkers
from tests.integration.endings import echo_or_reset
from tests.integration.harness import (
    HOST,
    WAIT,
    Server,
    make_route,
    read_all,
    run,
    toxic,
    until,
)


def scrape(metrics: Metrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = generate_latest(metrics.registry).decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name.startswith("restcp_toxic_")
    }


def test_each_toxic_counts_connections_bytes_held_and_bytes_dropped(loop: str) -> None:
    """Three connections through a 10-byte limit upstream and a 5 s latency downstream:
    both toxics met three times, the latency holding each echo (held, while it holds them);
    then 7 bytes more: the limit drops what passed its 10 bytes and closes the connections,
    the latency's held bytes flushed (a graceful close): nothing held any more."""
    limit = toxic("limit_data", "upstream", bytes=10)
    slow = toxic("latency", latency=5000)

    async def main() -> None:
        plane = DataPlane(Settings())
        metrics = Metrics(NodeStats(plane, NoWorkers()))
        async with Server(echo_or_reset) as server:
            sock = bind(HOST, 0)
            route = make_route(sock.getsockname()[1], (server.backend(),), (limit, slow))
            route = dataclasses.replace(route, settings=route.settings.replace(splice=False))
            await plane.serve(route, sock)
            clients = []
            for _ in range(3):
                reader, writer = await asyncio.open_connection(HOST, route.port)
                writer.write(b"0123456")  # 7 bytes: under the limit
                clients.append((reader, writer))
            runtime = plane.runtime(route.key)
            assert runtime is not None
            await until(lambda: runtime.tallies["latency_downstream"].held == 21)
            counts = plane.counts(route.key)
            assert counts is not None
            assert counts.toxics == {
                "limit_data_upstream": ToxicCounts("limit_data", "upstream", 3, 0, 0),
                "latency_downstream": ToxicCounts("latency", "downstream", 3, 21, 0),
            }
            labels = (("app", "test"), ("route", "1"))
            seen = scrape(metrics)
            for name, type_, stream, met, held, dropped in (
                ("limit_data_upstream", "limit_data", "upstream", 3, 0, 0),
                ("latency_downstream", "latency", "downstream", 3, 21, 0),
            ):
                key = tuple(sorted((*labels, ("toxic", name), ("type", type_), ("stream", stream))))
                assert seen[("restcp_toxic_connections_total", key)] == met
                assert seen[("restcp_toxic_held_bytes", key)] == held
                assert seen[("restcp_toxic_dropped_bytes_total", key)] == dropped
            # 7 more bytes each: 3 pass the limit, 4 are dropped, and the connection closes
            # before the backend's echo of the 3 can come back.
            for reader, writer in clients:
                writer.write(b"abcdefg")
                got = await asyncio.wait_for(read_all(reader), WAIT)
                assert got == b"0123456"
                writer.close()
            await until(lambda: not runtime.connections)
            counts = plane.counts(route.key)
            assert counts is not None
            assert counts.toxics["limit_data_upstream"] == ToxicCounts(
                "limit_data", "upstream", 3, 0, 12
            )
            assert counts.toxics["latency_downstream"] == ToxicCounts(
                "latency", "downstream", 3, 0, 0
            )
            await plane.shutdown(0)

    run(loop, main())


def test_toxic_counts_add_up_over_processes_and_an_ended_one_holds_nothing() -> None:
    ours = RouteCounts(toxics={"t": ToxicCounts("latency", "downstream", 2, 100, 5)})
    theirs = RouteCounts(toxics={"t": ToxicCounts("latency", "downstream", 3, 10, 1)})
    total = ours + theirs
    assert total.toxics == {"t": ToxicCounts("latency", "downstream", 5, 110, 6)}
    assert total.ended().toxics == {"t": ToxicCounts("latency", "downstream", 5, 0, 6)}
    assert ours.toxics == {"t": ToxicCounts("latency", "downstream", 2, 100, 5)}
