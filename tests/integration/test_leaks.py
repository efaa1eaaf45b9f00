"""Hundreds of connections ending every way a connection ends, then nothing left behind."""

from __future__ import annotations

import asyncio
import os
import random

import pytest

from tests.helpers import tcp_states
from tests.integration.endings import (
    backend_reset,
    client_reset,
    echo_or_reset,
    full_close,
    half_close,
)
from tests.integration.harness import (
    WAIT,
    Server,
    open_fds,
    open_sockets,
    proxy,
    read_outcome,
    refusing_backend,
    reset,
    run,
    until,
)

CONNECTIONS = 300
AT_ONCE = 50


async def reset_while_connecting(port: int) -> None:
    """Gone before the relay may even have reached the backend."""
    _reader, writer = await asyncio.open_connection("127.0.0.1", port)
    reset(writer)


async def no_backend(port: int) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    assert await read_outcome(reader) in ("eof", "reset")
    writer.close()


SCENARIOS = (half_close, full_close, client_reset, reset_while_connecting, backend_reset)


@pytest.mark.parametrize(
    "splice",
    [False, "auto", "native", "native-splice", "native-auto"],
    ids=["transports", "auto", "native", "native-splice", "native-auto"],
)
def test_no_leaks_after_hundreds_of_connections(loop: str, splice: bool | str) -> None:
    """On an "auto" route the bulk ones among them move to the splice pipe, and back; on
    "native" the native engine serves both routes, on "native-splice" splicing every
    connection through a kernel pipe a way (whose descriptors must all be closed too), on
    "native-auto" the bulk ones."""
    dead, holder = refusing_backend()

    async def main() -> None:
        # Sockets, not all fds: libuv keeps a spare fd, opened with its first listener, to
        # shed connections when the process runs out of fds.
        before = open_sockets()
        async with (
            Server(echo_or_reset) as server,
            proxy(server.backend(), splice=splice) as px,
            proxy(dead, splice=splice) as nowhere,
        ):
            baseline = open_fds()
            rng = random.Random(1)
            jobs = [
                (rng.choice(SCENARIOS), px.port) if i % 6 else (no_backend, nowhere.port)
                for i in range(CONNECTIONS)
            ]
            for at in range(0, CONNECTIONS, AT_ONCE):
                batch = jobs[at : at + AT_ONCE]
                await asyncio.wait_for(asyncio.gather(*(job(port) for job, port in batch)), WAIT)

            # Every relay reported, every backend connection was closed by the proxy...
            for manager in (px.manager, nowhere.manager):
                await asyncio.wait_for(manager.traffic.wait_empty(), WAIT)
                if manager.engine is not None:
                    await asyncio.wait_for(manager.engine.wait_empty(), WAIT)
            await until(lambda: server.active == 0)
            # ...and every socket is gone: a relay that forgot a transport keeps its fd, and
            # a peer's FIN it never answered shows as CLOSE_WAIT.
            # (Plus what the splicer keeps: its epoll set and pooled pipes, on "auto".)
            splicer = px.manager.traffic.splicer
            await until(lambda: open_fds() == baseline + splicer.descriptors())
            states = tcp_states(os.getpid())
            assert "CLOSE_WAIT" not in states
            assert set(states) <= {"LISTEN", "CLOSE"}, states
            assert server.accepted >= CONNECTIONS * 2 // 3
        await until(lambda: open_sockets() == before)

    with holder:
        run(loop, main())
