"""What the native engine shares with the control plane: a backend disabled, a route
disabled or moved to the asyncio data plane and back, the shutdown's deadline."""

from __future__ import annotations

import asyncio
import dataclasses
import logging

import pytest

from restcp.core.reconcile import Update
from restcp.proxy.listener import Listener
from restcp.proxy.native import EngineListener
from tests.integration.harness import (
    WAIT,
    Proxy,
    Server,
    access_lines,
    proxy,
    read_outcome,
    run,
    toxic,
    until,
)


async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while data := await reader.read(65536):
        writer.write(data)
        await writer.drain()


async def opened(px: Proxy) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A client whose first bytes came back: relayed, by whichever data plane."""
    reader, writer = await px.connect()
    writer.write(b"hello")
    assert await asyncio.wait_for(reader.readexactly(5), WAIT) == b"hello"
    return reader, writer


async def still_relays(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    writer.write(b"still")
    assert await asyncio.wait_for(reader.readexactly(5), WAIT) == b"still"


def listener_of(px: Proxy) -> object:
    return px.manager._listeners[px.route.key]


def test_disabling_a_backend_resets_its_connections_only(
    loop: str, caplog: pytest.LogCaptureFixture
) -> None:
    async def main() -> None:
        async with (
            Server(echo) as one,
            Server(echo) as two,
            proxy(one.backend(1), two.backend(2), balance="round_robin", engine="native") as px,
        ):
            first = await opened(px)
            second = await opened(px)
            assert (one.accepted, two.accepted) == (1, 1)
            route = px.route
            disabled = dataclasses.replace(
                route, backends=(route.backends[0].replace(state="disabled"), route.backends[1])
            )
            await px.manager.apply([Update(disabled)])
            px.route = disabled
            assert await read_outcome(first[0]) == "reset"
            await still_relays(*second)
            # New clients go to the enabled one alone.
            third = await opened(px)
            assert (one.accepted, two.accepted) == (1, 2)
            for _reader, writer in (first, second, third):
                writer.close()

    caplog.set_level(logging.INFO, "restcp.access")
    run(loop, main())
    assert sorted(line.rsplit("end=", 1)[1] for line in access_lines(caplog)) == [
        "backend_disabled",
        "closed",
        "closed",
    ]


def test_a_route_moves_to_asyncio_and_back_live(loop: str) -> None:
    """A toxic takes the route off the engine (the engine does not do toxics) and its
    removal brings it back: the socket is handed over, never closed, and each connection
    stays on the data plane that accepted it."""

    async def main() -> None:
        async with Server(echo) as server, proxy(server.backend(), engine="native") as px:
            on_engine = await opened(px)
            await px.change(toxics=(toxic("latency", latency=1),))
            assert isinstance(listener_of(px), Listener)
            on_asyncio = await opened(px)
            assert len(px.manager.traffic) == 1
            await px.change(toxics=())
            assert isinstance(listener_of(px), EngineListener)
            back = await opened(px)
            for conn in (on_engine, on_asyncio, back):
                await still_relays(*conn)
            assert px.manager.engine is not None
            assert len(px.manager.engine) == 2
            for _reader, writer in (on_engine, on_asyncio, back):
                writer.close()
            assert server.accepted == 3

    run(loop, main())


def test_disabling_the_route_resets_its_connections(
    loop: str, caplog: pytest.LogCaptureFixture
) -> None:
    async def main() -> None:
        async with Server(echo) as server, proxy(server.backend(), engine="native") as px:
            reader, writer = await opened(px)
            await px.change(enabled=False)
            assert await read_outcome(reader) == "reset"
            writer.close()
            assert px.manager.engine is not None
            await until(lambda: len(px.manager.engine or ()) == 0)

    caplog.set_level(logging.INFO, "restcp.access")
    run(loop, main())
    (line,) = access_lines(caplog)
    assert line.endswith("end=route_disabled")


def test_shutdown_resets_what_is_open_past_the_deadline(
    loop: str, caplog: pytest.LogCaptureFixture
) -> None:
    async def main() -> None:
        async with Server(echo) as server, proxy(server.backend(), engine="native") as px:
            reader, writer = await opened(px)
            await asyncio.wait_for(px.manager.shutdown(drain_timeout=0.2), WAIT)
            assert await read_outcome(reader) == "reset"
            writer.close()

    caplog.set_level(logging.INFO, "restcp.access")
    run(loop, main())
    (line,) = access_lines(caplog)
    assert line.endswith("end=shutdown")
