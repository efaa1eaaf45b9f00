"""Balancing and backends' max_connections on both data planes (``ENGINES``): each balancer
sends clients where core.balancer's picker says, a backend at its cap is skipped (and a
table update does not reset its count), all of them full lets the client go
(``no_backend``), and a failover re-picks without the backends already tried."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections import Counter

import pytest

from restcp.core.balancer import LeastConnPicker, SourceHashPicker
from restcp.core.reconcile import Update
from restcp.engine import peer
from restcp.model import Backend
from restcp.proxy.native import EngineListener
from restcp.proxy.runtime import RouteRuntime
from tests.integration.harness import (
    ENGINES,
    HOST,
    WAIT,
    Handler,
    Proxy,
    Server,
    access_lines,
    proxy,
    read_outcome,
    refusing_backend,
    run,
    until,
)

Client = tuple[asyncio.StreamReader, asyncio.StreamWriter]


def tagged(tag: str) -> Handler:
    """A backend that says its name, then holds the connection until the client's EOF."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(tag.encode())
        await writer.drain()
        await reader.read()

    return serve


async def held(px: Proxy, source: str | None = None) -> tuple[str, Client]:
    """A client kept open: the name of the backend it reached, and its streams."""
    local = None if source is None else (source, 0)
    reader, writer = await asyncio.wait_for(
        asyncio.open_connection(HOST, px.port, local_addr=local), WAIT
    )
    tag = await asyncio.wait_for(reader.readexactly(1), WAIT)
    return tag.decode(), (reader, writer)


async def served_by(px: Proxy, source: str | None = None) -> str:
    name, (reader, writer) = await held(px, source)
    writer.close()
    assert await read_outcome(reader) == "eof"
    return name


def runtime_of(px: Proxy, engine: str) -> RouteRuntime:
    listener = px.manager._listeners[px.route.key]
    # Every scenario here is one the engine serves, after each change too.
    assert isinstance(listener, EngineListener) == (engine == "native"), listener
    runtime: RouteRuntime = listener.runtime
    return runtime


async def closed(px: Proxy, engine: str, client: Client, backend_id: int, left: int) -> None:
    """Close ``client`` and wait until its backend counts ``left`` open connections (on the
    engine, the count is read back after the engine's own)."""
    client[1].close()
    runtime = runtime_of(px, engine)
    await until(lambda: runtime.members[backend_id].active == left)


@ENGINES
def test_weighted_round_robin_interleaves(loop: str, engine: str) -> None:
    async def main() -> None:
        async with (
            Server(tagged("a")) as a,
            Server(tagged("b")) as b,
            Server(tagged("c")) as c,
            proxy(
                a.backend(1).replace(weight=3),
                b.backend(2),
                c.backend(3),
                balance="round_robin",
                engine=engine,
            ) as px,
        ):
            order = [await served_by(px) for _ in range(10)]
            # core.balancer's rounds: 3,1,1 give a b c a a, over and over.
            assert "".join(order) == "abcaaabcaa"
            runtime_of(px, engine)

    run(loop, main())


@ENGINES
def test_least_conn_picks_as_python(loop: str, engine: str) -> None:
    """Held clients, some closed on the way: each new one goes where LeastConnPicker, fed
    the same open connections, sends it (ties taken in turn), weights counted."""

    async def main() -> None:
        names = {"a": 1, "b": 2, "c": 3}
        async with (
            Server(tagged("a")) as a,
            Server(tagged("b")) as b,
            Server(tagged("c")) as c,
            proxy(
                a.backend(1),
                b.backend(2),
                c.backend(3).replace(weight=2),
                balance="least_conn",
                engine=engine,
            ) as px,
        ):
            runtime = runtime_of(px, engine)
            python = LeastConnPicker()
            open_: dict[int, list[Client]] = {1: [], 2: [], 3: []}

            async def one_more() -> None:
                expected = python.pick(runtime.candidates, ())
                assert expected is not None
                name, client = await held(px)
                assert names[name] == expected.id, [m.active for m in runtime.candidates]
                open_[expected.id].append(client)
                await until(lambda: runtime.members[expected.id].active == len(open_[expected.id]))

            for _ in range(8):
                await one_more()
            assert [len(open_[i]) for i in (1, 2, 3)] == [2, 2, 4]
            # Two of c's end: the next two go to c again, then the ties take turns.
            for _ in range(2):
                client = open_[3].pop()
                await closed(px, engine, client, 3, len(open_[3]))
            for _ in range(6):
                await one_more()
            for clients in open_.values():
                for _reader, writer in clients:
                    writer.close()
            runtime_of(px, engine)

    run(loop, main())


@ENGINES
def test_source_hash_pins_each_address_as_python(loop: str, engine: str) -> None:
    """Clients from 30 loopback addresses: each reaches the backend SourceHashPicker
    gives its address; behind a dead backend, the next one in the same order."""
    dead, holder = refusing_backend(2)

    async def main() -> None:
        async with (
            Server(tagged("a")) as a,
            Server(tagged("c")) as c,
            Server(tagged("d")) as d,
            proxy(
                a.backend(1),
                dead.replace(weight=2),
                c.backend(3),
                d.backend(4).replace(weight=3),
                balance="source_hash",
                passive_fall=0,  # the dead one stays a candidate: every client meets it
                engine=engine,
            ) as px,
        ):
            runtime = runtime_of(px, engine)
            python = SourceHashPicker()
            names = {1: "a", 3: "c", 4: "d"}
            spread: Counter[str] = Counter()
            for i in range(1, 31):
                source = f"127.0.0.{i}"
                key = source.encode()
                top = python.pick(runtime.candidates, (), key)
                assert top is not None
                tried = (top.id,) if top.id == 2 else ()
                expected = python.pick(runtime.candidates, tried, key)
                assert expected is not None
                assert await served_by(px, source) == names[expected.id], source
                spread[str(top.id)] += 1
            assert set(spread) == {"1", "2", "3", "4"}  # the dead one was some clients' top
            assert runtime.members[2].connect_failures == spread["2"]
            runtime_of(px, engine)

    with holder:
        run(loop, main())


@ENGINES
def test_two_choices_fails_over_to_the_live_backend(loop: str, engine: str) -> None:
    dead, holder = refusing_backend(1)

    async def main() -> None:
        async with (
            Server(tagged("b")) as b,
            proxy(dead, b.backend(2), balance="two_choices", passive_fall=0, engine=engine) as px,
        ):
            assert [await served_by(px) for _ in range(8)] == ["b"] * 8
            assert b.accepted == 8
            runtime_of(px, engine)

    with holder:
        run(loop, main())


@ENGINES
def test_a_backend_at_its_cap_is_skipped_across_updates(loop: str, engine: str) -> None:
    async def main() -> None:
        async with (
            Server(tagged("a")) as a,
            Server(tagged("b")) as b,
            proxy(
                a.backend(1).replace(weight=3, max_connections=2),
                b.backend(2),
                balance="round_robin",
                engine=engine,
            ) as px,
        ):
            clients = [await held(px) for _ in range(8)]
            assert Counter(name for name, _ in clients) == {"a": 2, "b": 6}
            # An update that has nothing to do with a: its two open connections still count.
            await px.change(idle_timeout=120.0)
            route = dataclasses.replace(
                px.route, backends=(px.route.backends[0], px.route.backends[1].replace(weight=2))
            )
            await px.manager.apply([Update(route)])
            px.route = route
            more = [await held(px) for _ in range(4)]
            assert [name for name, _ in more] == ["b"] * 4
            # One of a's ends: a takes one client again, and no more.
            on_a = next(c for name, c in clients if name == "a")
            await closed(px, engine, on_a, 1, 1)
            again = [await held(px) for _ in range(4)]
            assert Counter(name for name, _ in again) == {"a": 1, "b": 3}
            for _name, (_reader, writer) in clients + more + again:
                writer.close()
            runtime_of(px, engine)

    run(loop, main())


@ENGINES
def test_every_backend_full_lets_the_client_go(
    loop: str, engine: str, caplog: pytest.LogCaptureFixture
) -> None:
    async def main() -> None:
        async with (
            Server(tagged("a")) as a,
            Server(tagged("b")) as b,
            proxy(
                a.backend(1).replace(max_connections=1),
                b.backend(2).replace(max_connections=1),
                balance="least_conn",
                engine=engine,
            ) as px,
        ):
            first = await held(px)
            second = await held(px)
            assert {first[0], second[0]} == {"a", "b"}
            reader, writer = await px.connect()
            assert await read_outcome(reader) == "eof"  # let go, not reset
            writer.close()
            runtime = runtime_of(px, engine)
            await until(lambda: runtime.refused["no_backend"] == 1)
            assert (a.accepted, b.accepted) == (1, 1)
            await closed(px, engine, first[1], {"a": 1, "b": 2}[first[0]], 0)
            assert await served_by(px) == first[0]
            second[1][1].close()

    caplog.set_level(logging.INFO, "restcp.access")
    run(loop, main())
    ends = Counter(line.rsplit("end=", 1)[1] for line in access_lines(caplog))
    assert ends == {"closed": 3, "no_backend": 1}


@ENGINES
def test_a_new_address_counts_from_none(loop: str, engine: str) -> None:
    """A backend moved to another address takes clients there at once, whatever its old
    address still holds; moved back, its old address has its open connection again."""

    async def main() -> None:
        async with (
            Server(tagged("a")) as a,
            Server(tagged("n")) as n,
            proxy(a.backend(1).replace(max_connections=1), engine=engine) as px,
        ):

            async def move(port: int) -> None:
                backend: Backend = px.route.backends[0].replace(port=port)
                route = dataclasses.replace(px.route, backends=(backend,))
                await px.manager.apply([Update(route)])
                px.route = route

            old = await held(px)
            assert old[0] == "a"
            await move(n.port)
            new = await held(px)
            assert new[0] == "n"
            await move(a.port)
            reader, writer = await px.connect()
            assert await read_outcome(reader) == "eof"  # a's one place is still taken
            writer.close()
            for _reader, w in (old[1], new[1]):
                w.close()
            runtime_of(px, engine)

    run(loop, main())


def test_a_bad_table_row_is_refused_and_changes_nothing(loop: str) -> None:
    async def main() -> None:
        async with Server(tagged("a")) as a, proxy(a.backend(1), engine="native") as px:
            listener = px.manager._listeners[px.route.key]
            assert isinstance(listener, EngineListener)
            assert px.manager.engine is not None
            engine = px.manager.engine.engine
            slot = listener._slot
            assert slot is not None
            refused: list[tuple[list[object], str]] = [
                ([(1, 2, b"\0" * 300, 1, -1, 0)], "bad backend row"),  # past a sockaddr
                ([(1, 2, b"", 1, -1, 7)], "bad backend row"),  # no such PROXY version
                ([(1, 2, b"", -1, -1, 0)], "bad backend row"),  # a negative weight
                ([(1, 2, b"", 1)], "bad backend row"),  # the old shape
            ]
            for rows, why in refused:
                with pytest.raises(ValueError, match=why):
                    engine.update_route(slot, rows, "random", 1.0, 0.0, 1.0, 3, -1)
            with pytest.raises(ValueError, match="unknown balance"):
                engine.update_route(slot, [], "fastest", 1.0, 0.0, 1.0, 3, -1)
            assert await served_by(px) == "a"

    run(loop, main())


def test_the_engine_counts_follow_each_address_through_updates(loop: str) -> None:
    """The engine's counts per address (``Engine.loads``) through reordered, shrunk and
    regrown tables: an address keeps its count while it has open connections, in the table
    or out of it, and takes it back when it returns."""

    async def main() -> None:
        async with (
            Server(tagged("a")) as a,
            Server(tagged("b")) as b,
            Server(tagged("c")) as c,
            proxy(a.backend(1), b.backend(2), balance="round_robin", engine="native") as px,
        ):
            listener = px.manager._listeners[px.route.key]
            assert isinstance(listener, EngineListener)
            assert px.manager.engine is not None
            assert listener._slot is not None
            engine, slot = px.manager.engine.engine, listener._slot

            def loads() -> list[tuple[int, int, int, int]]:
                return [
                    (backend_id, peer(raw)[1], active, connecting)
                    for backend_id, raw, active, connecting in engine.loads(slot)
                ]

            async def serve(*backends: Backend) -> None:
                route = dataclasses.replace(px.route, backends=backends)
                await px.manager.apply([Update(route)])
                px.route = route
                assert isinstance(px.manager._listeners[px.route.key], EngineListener)

            clients = [await held(px) for _ in range(4)]
            on = {name: [client for n, client in clients if n == name] for name in "ab"}
            assert loads() == [(1, a.port, 2, 0), (2, b.port, 2, 0)]
            await serve(c.backend(3), b.backend(2), a.backend(1))
            assert loads() == [(3, c.port, 0, 0), (2, b.port, 2, 0), (1, a.port, 2, 0)]
            await serve(c.backend(3), b.backend(2))  # a's two stay counted, out of the table
            assert loads() == [(3, c.port, 0, 0), (2, b.port, 2, 0), (1, a.port, 2, 0)]
            on["a"][0][1].close()
            await until(lambda: (1, a.port, 1, 0) in loads())
            await serve(a.backend(1), c.backend(3))  # a is back with its one; b out with two
            assert loads() == [(1, a.port, 1, 0), (3, c.port, 0, 0), (2, b.port, 2, 0)]
            # Backend 3 moves to b's address: a new address of its own, counted from none.
            await serve(a.backend(1), Backend(3, HOST, b.port))
            assert loads() == [(1, a.port, 1, 0), (3, b.port, 0, 0), (2, b.port, 2, 0)]
            for _name, (_reader, writer) in clients:
                writer.close()
            await until(lambda: loads() == [(1, a.port, 0, 0), (3, b.port, 0, 0)])

    run(loop, main())


@ENGINES
def test_failover_stops_at_max_connect_attempts(
    loop: str, engine: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Two dead backends before a live one, two attempts a client: round_robin's cursor
    moves on with each failover, so every other client meets both dead ones and is let go."""
    dead1, holder1 = refusing_backend(1)
    dead2, holder2 = refusing_backend(2)

    async def main() -> None:
        async with (
            Server(tagged("c")) as c,
            proxy(
                dead1,
                dead2,
                c.backend(3),
                balance="round_robin",
                max_connect_attempts=2,
                passive_fall=0,  # the dead ones stay candidates
                engine=engine,
            ) as px,
        ):
            outcomes = []
            for _ in range(4):
                reader, writer = await px.connect()
                data = await asyncio.wait_for(reader.read(1), WAIT)
                outcomes.append(data.decode() or "let go")
                writer.close()
                assert await read_outcome(reader) == "eof"
            assert outcomes == ["let go", "c", "let go", "c"]
            runtime_of(px, engine)

    caplog.set_level(logging.INFO, "restcp")
    with holder1, holder2:
        run(loop, main())
    failed = [r.getMessage() for r in caplog.records if "connect failed" in r.getMessage()]
    assert [line.split("backend=")[1].split()[0] for line in failed] == ["1", "2", "1", "2"]
    ends = Counter(line.rsplit("end=", 1)[1] for line in access_lines(caplog))
    assert ends == {"no_backend": 2, "closed": 2}
