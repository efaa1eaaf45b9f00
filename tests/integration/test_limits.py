"""The caps and the counters, on both engines: a route's ``max_connections``, the node's
(``--max-connections``) and each app's (``--max-connections-per-app``), counted over both
data planes at once when the native engine serves some routes and asyncio others; and the
bytes of a connection still open in the counters every reader shares (DataPlane.counts,
under /stats, /metrics, the event stream and the history)."""

from __future__ import annotations

import asyncio
import dataclasses
import socket
import struct
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from restcp.control.stats import NodeStats
from restcp.dataplane import BackendCounts, DataPlane, RouteCounts
from restcp.metrics import Metrics, generate_latest
from restcp.model import Backend, Route
from restcp.proxy.listener import Listener, bind
from restcp.proxy.native import EngineListener
from restcp.settings import Settings
from restcp.workers import NoWorkers
from tests.integration.harness import (
    ENGINES,
    HOST,
    WAIT,
    Server,
    make_route,
    read_outcome,
    run,
    toxic,
    until,
)

Client = tuple[asyncio.StreamReader, asyncio.StreamWriter]


async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while data := await reader.read(65536):
        writer.write(data)
        await writer.drain()


# A toxic keeps its route on the asyncio data plane whatever the engine (a latency of 0
# changes no byte).
ON_ASYNCIO = (toxic("latency", latency=0),)


@asynccontextmanager
async def plane(engine: str, **settings: Any) -> AsyncIterator[DataPlane]:
    """A process's data plane with these settings; shut down (and checked empty) on exit."""
    dp = DataPlane(Settings(engine=engine, **settings))
    try:
        yield dp
    finally:
        await asyncio.wait_for(dp.shutdown(0), WAIT)


async def route(
    dp: DataPlane, backend: Backend, app: str = "test", route_id: int = 1, **settings: Any
) -> Route:
    """Serve a route of ``app`` (with toxics, to stay on asyncio: ``asyncio=True``)."""
    on_asyncio = settings.pop("asyncio", False)
    sock = bind(HOST, 0)
    made = make_route(sock.getsockname()[1], (backend,), ON_ASYNCIO if on_asyncio else ())
    made = dataclasses.replace(
        made, app=app, id=route_id, settings=made.settings.replace(splice=False, **settings)
    )
    await dp.serve(made, sock)
    listener = dp.proxy._listeners[made.key]
    engine = dp.proxy.engine is not None and not on_asyncio
    assert isinstance(listener, EngineListener if engine else Listener), listener
    return made


async def served(r: Route) -> Client:
    """A client whose bytes came back through ``r``."""
    reader, writer = await asyncio.wait_for(asyncio.open_connection(HOST, r.port), WAIT)
    writer.write(b"ping")
    assert await asyncio.wait_for(reader.readexactly(4), WAIT) == b"ping"
    return reader, writer


async def refused(r: Route) -> None:
    """A client of ``r`` reset without reaching a backend."""
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(HOST, r.port), WAIT)
    except ConnectionResetError:
        return  # reset before the loop saw its connect done (the engine refuses at once)
    try:
        assert await read_outcome(reader) == "reset"
    finally:
        writer.close()


async def close(dp: DataPlane, r: Route, client: Client, left: int) -> None:
    """Close ``client`` and wait until ``r``'s backend has ``left`` open."""
    client[1].close()
    await until(lambda: counts(dp, r).backend(1).active == left)


def counts(dp: DataPlane, r: Route) -> RouteCounts:
    got = dp.counts(r.key)
    assert got is not None
    return got


def places(dp: DataPlane) -> int:
    """The places taken under the node's caps, by both data planes."""
    engine = dp.proxy.engine
    return engine.engine.places if engine is not None else len(dp.proxy.traffic)


@ENGINES
def test_a_routes_cap(loop: str, engine: str) -> None:
    """max_connections 2: a third client is reset (route_limit), and once one of the two
    has ended the next is served."""

    async def main() -> None:
        async with Server(echo) as server, plane(engine) as dp:
            r = await route(dp, server.backend(), max_connections=2)
            one, two = await served(r), await served(r)
            await refused(r)
            await until(lambda: counts(dp, r).refused == {"route_limit": 1})
            await close(dp, r, one, 1)
            three = await served(r)
            assert counts(dp, r).connections_max == 2
            for client in (two, three):
                client[1].close()
            await until(lambda: places(dp) == 0 and server.active == 0)

    run(loop, main())


@ENGINES
def test_the_node_cap_counts_both_data_planes(loop: str, engine: str) -> None:
    """--max-connections 4, filled half by a route the engine serves (native) and half by
    one with a toxic (asyncio): a fifth client of either is refused (node_limit); a place
    given back by either data plane lets a client of the other in."""

    async def main() -> None:
        async with Server(echo) as server, plane(engine, max_connections=4) as dp:
            plain = await route(dp, server.backend(), route_id=1)
            toxic_ = await route(dp, server.backend(), route_id=2, asyncio=True)
            plains = [await served(plain), await served(plain)]
            toxics = [await served(toxic_), await served(toxic_)]
            assert places(dp) == 4
            await refused(plain)
            await refused(toxic_)
            await until(lambda: counts(dp, plain).refused == {"node_limit": 1})
            await until(lambda: counts(dp, toxic_).refused == {"node_limit": 1})
            # One of the plain route's ends: the toxic route has a place again.
            await close(dp, plain, plains.pop(), 1)
            await until(lambda: places(dp) == 3)
            toxics.append(await served(toxic_))
            await refused(plain)
            # One of the toxic route's ends: the plain route has a place again.
            await close(dp, toxic_, toxics.pop(0), 2)
            await until(lambda: places(dp) == 3)
            plains.append(await served(plain))
            assert counts(dp, plain).refused == {"node_limit": 2}
            for client in plains + toxics:
                client[1].close()
            await until(lambda: places(dp) == 0 and server.active == 0)

    run(loop, main())


@ENGINES
def test_each_apps_cap_over_its_routes_on_both_data_planes(loop: str, engine: str) -> None:
    """--max-connections-per-app 2: app a's two routes (one served by the engine, one with a
    toxic) share its 2 places, a third client of either is refused (app_limit); app b has
    its own 2."""

    async def main() -> None:
        async with Server(echo) as server, plane(engine, max_connections_per_app=2) as dp:
            a1 = await route(dp, server.backend(), app="a", route_id=1)
            a2 = await route(dp, server.backend(), app="a", route_id=2, asyncio=True)
            b1 = await route(dp, server.backend(), app="b", route_id=1)
            first, second = await served(a1), await served(a2)
            await refused(a1)
            await refused(a2)
            await until(lambda: counts(dp, a1).refused == {"app_limit": 1})
            await until(lambda: counts(dp, a2).refused == {"app_limit": 1})
            others = [await served(b1), await served(b1)]
            await refused(b1)
            await until(lambda: counts(dp, b1).refused == {"app_limit": 1})
            # a's engine connection ends: its asyncio route has a place again.
            await close(dp, a1, first, 0)
            third = await served(a2)
            for client in (second, third, *others):
                client[1].close()
            await until(lambda: places(dp) == 0 and server.active == 0)

    run(loop, main())


def scrape(metrics: Metrics) -> dict[tuple[str, str], float]:
    """Backend 1's samples in /metrics, by (name, direction)."""
    text = generate_latest(metrics.registry).decode()
    return {
        (s.name, s.labels.get("direction", "")): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.labels.get("backend") == "1"
    }


@ENGINES
def test_an_open_connections_bytes_are_counted_before_it_ends(loop: str, engine: str) -> None:
    """An open connection's bytes are in the route's counters (and /metrics) as they pass,
    the connection counted from its connect; once it ends, its bytes are counted once: no
    reading while it ends sees them twice, or not at all."""

    async def main() -> None:
        async with Server(echo) as server, plane(engine) as dp:
            metrics = Metrics(NodeStats(dp, NoWorkers()))
            r = await route(dp, server.backend())
            reader, writer = await served(r)
            writer.write(b"x" * 996)
            assert await asyncio.wait_for(reader.readexactly(996), WAIT) == b"x" * 996
            open_ = BackendCounts(1, 1, 1000, 1000, 0, 1)
            await until(lambda: counts(dp, r).backend(1) == open_)
            assert counts(dp, r).connections_max == 1
            seen = scrape(metrics)
            assert seen[("restcp_bytes_total", "in")] == 1000
            assert seen[("restcp_bytes_total", "out")] == 1000
            assert seen[("restcp_connections_total", "")] == 1
            writer.write(b"y" * 500)
            assert await asyncio.wait_for(reader.readexactly(500), WAIT) == b"y" * 500
            await until(lambda: counts(dp, r).backend(1).bytes_in == 1500)
            # Read at every loop turn while it ends: never more, never less.
            writer.close()
            ended = BackendCounts(1, 0, 1500, 1500, 0, 1)
            async with asyncio.timeout(WAIT):
                while (now := counts(dp, r).backend(1)) != ended:
                    assert (now.connections, now.bytes_in, now.bytes_out) == (1, 1500, 1500)
                    await asyncio.sleep(0)
            assert scrape(metrics)[("restcp_bytes_total", "in")] == 1500
            await until(lambda: server.active == 0)

    run(loop, main())


def test_a_connection_ended_between_two_reads_of_one_loop_turn_counts_once(loop: str) -> None:
    """The engine's open connections are read once per loop turn for every route; a
    connection that ends, and whose record is read back, within that turn leaves the read
    stale: its bytes must not count twice (as open and as ended)."""

    async def main() -> None:
        async with Server(echo) as server, plane("native") as dp:
            r = await route(dp, server.backend())
            # A plain socket, through the loop (its backend is on it), closed at once after.
            client = socket.socket()
            client.setblocking(False)
            aio = asyncio.get_running_loop()
            await asyncio.wait_for(aio.sock_connect(client, (HOST, r.port)), WAIT)
            await aio.sock_sendall(client, b"z" * 100)
            got = b""
            while len(got) < 100:
                got += await asyncio.wait_for(aio.sock_recv(client, 100), WAIT)
            engine = dp.proxy.engine
            assert engine is not None
            await until(lambda: counts(dp, r).backend(1).bytes_in == 100)
            # From here on, one loop turn: no await until the second read.
            assert counts(dp, r).backend(1).bytes_out == 100
            client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            client.close()  # a reset: the engine ends it without the loop's help
            deadline = time.monotonic() + WAIT
            while engine.engine.active:
                assert time.monotonic() < deadline, "the engine did not end the connection"
                time.sleep(0.001)  # noqa: ASYNC251 - the loop must not turn before the reads
            engine._drain()  # as its notify_fd's reader would in this same turn
            again = counts(dp, r).backend(1)
            assert (again.active, again.bytes_in, again.bytes_out) == (0, 100, 100)
            await until(lambda: server.active == 0)

    run(loop, main())


@ENGINES
def test_a_client_held_before_its_route_is_known_takes_a_node_place(loop: str, engine: str) -> None:
    """A client read by SNI (or in its TLS handshake) holds a place under the node's cap
    before it is a connection (Traffic.hold, as the SniListener takes it): a client of a
    route the engine serves finds the node full, and has room once it is given back."""

    async def main() -> None:
        async with Server(echo) as server, plane(engine, max_connections=2) as dp:
            r = await route(dp, server.backend())
            first = await served(r)
            traffic = dp.proxy.traffic
            assert traffic.hold(None) is None  # the SNI client's place
            assert traffic.hold(None) == "node_limit"
            await refused(r)
            await until(lambda: counts(dp, r).refused == {"node_limit": 1})
            traffic.unhold(None)
            second = await served(r)
            for client in (first, second):
                client[1].close()
            await until(lambda: places(dp) == 0 and server.active == 0)

    run(loop, main())
