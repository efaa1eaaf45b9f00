"""Toxics changing under open connections: added, changed and removed at once for every
connection of the route, what a removed stage held delivered in order, spliced
connections moved off the splice pipe and back, flow control through the stages, and the
route's ``enabled`` switch.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from typing import Any

import pytest

from restcp.core.reconcile import diff
from restcp.proxy.splice import SplicePipe
from restcp.proxy.staged_pipe import HIGH, StagedPipe
from tests.integration.endings import echo_or_reset
from tests.integration.harness import (
    HOST,
    MB,
    WAIT,
    Server,
    access_lines,
    flooder,
    payload,
    proxy,
    read_all,
    read_outcome,
    run,
    sha,
    stalled,
    toxic,
    until,
)


async def exchange(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, data: bytes
) -> float:
    """Send ``data`` and read its echo: the seconds it took."""
    began = time.monotonic()
    writer.write(data)
    assert await asyncio.wait_for(reader.readexactly(len(data)), WAIT) == data
    return time.monotonic() - began


def test_a_toxic_added_reaches_open_connections_at_once(loop: str) -> None:
    """An open connection relays fast; a 300 ms latency is added: its next echo takes
    300 ms; removed, the one after is fast again, on the TransportPipe."""

    async def main() -> None:
        async with Server(echo_or_reset) as server, proxy(server.backend()) as px:
            reader, writer = await px.connect()
            relay = await px.relay_connected()
            assert await exchange(reader, writer, b"a") < 0.1
            await px.change(toxics=(toxic("latency", latency=300),))
            assert isinstance(relay.pipe, StagedPipe)
            assert await exchange(reader, writer, b"b") >= 0.3 - 0.001
            await px.change(toxics=())
            assert relay.pipe is relay.transports
            assert await exchange(reader, writer, b"c") < 0.1
            writer.close()

    run(loop, main())


def test_removing_a_stage_delivers_what_it_held_in_order_at_once(loop: str) -> None:
    """Ten messages held by a 5 s latency: the toxic is removed and they all arrive, whole
    and in order, long before 5 s."""

    async def main() -> None:
        async with (
            Server(echo_or_reset) as server,
            proxy(server.backend(), toxics=(toxic("latency", latency=5000),)) as px,
        ):
            reader, writer = await px.connect()
            runtime = px.manager.runtime(px.route.key)
            assert runtime is not None
            messages = [payload(1000) for _ in range(10)]
            for message in messages:
                writer.write(message)
            await until(lambda: runtime.tallies["latency_downstream"].held == 10_000)
            began = time.monotonic()
            await px.change(toxics=())
            got = await asyncio.wait_for(reader.readexactly(10_000), WAIT)
            assert got == b"".join(messages)
            assert time.monotonic() - began < 1
            assert runtime.tallies == {}
            writer.close()

    run(loop, main())


def test_a_change_applies_to_what_a_stage_holds(loop: str) -> None:
    """A latency of 5 s holding a message is changed to 100 ms: the message comes about
    100 ms after it was read, not 5 s."""

    async def main() -> None:
        async with (
            Server(echo_or_reset) as server,
            proxy(server.backend(), toxics=(toxic("latency", latency=5000),)) as px,
        ):
            reader, writer = await px.connect()
            runtime = px.manager.runtime(px.route.key)
            assert runtime is not None
            began = time.monotonic()
            writer.write(b"ping")
            await until(lambda: runtime.tallies["latency_downstream"].held == 4)
            await px.change(toxics=(toxic("latency", latency=100),))
            assert await asyncio.wait_for(reader.readexactly(4), WAIT) == b"ping"
            assert 0.1 - 0.001 <= time.monotonic() - began < 1
            writer.close()

    run(loop, main())


def test_a_chain_of_stages_passes_every_byte_in_order(loop: str) -> None:
    """latency, slicer and bandwidth one after the other both ways, 1 MB each way at once:
    exact."""
    up, down = payload(MB), payload(MB)
    chain = (
        toxic("latency", "upstream", latency=20, jitter=10),
        toxic("slicer", "upstream", average_size=3000, size_variation=1000),
        toxic("bandwidth", "upstream", rate=5000),
        toxic("slicer", "downstream", average_size=1000, size_variation=500),
        toxic("latency", "downstream", latency=10, jitter=10),
        toxic("bandwidth", "downstream", rate=5000),
    )

    async def backend(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> str:
        writer.write(down)
        writer.write_eof()
        return sha(await reader.read())

    async def main() -> None:
        async with Server(backend) as server, proxy(server.backend(), toxics=chain) as px:
            reader, writer = await px.connect()
            writer.write(up)
            writer.write_eof()
            assert await read_all(reader) == down
            assert await server.result() == sha(up)
            writer.close()

    run(loop, main())


@pytest.mark.parametrize("splice", [True, "auto"])
def test_a_spliced_connection_meeting_a_toxic_moves_to_the_staged_pipe_and_back(
    loop: str, splice: bool | str
) -> None:
    """A connection on a SplicePipe meets a latency: it moves to a StagedPipe at once (what
    the splice pipe held going out first), the echo is exact and late; the toxic removed,
    it goes back to the SplicePipe ("splice": true) or the transports ("auto", which
    splices it again at its next bulk read)."""
    bulk = payload(4 * MB)

    async def main() -> None:
        async with (
            Server(echo_or_reset) as server,
            proxy(server.backend(), splice=splice) as px,
        ):
            reader, writer = await px.connect()
            relay = await px.relay_spliced()
            assert await exchange(reader, writer, bulk) < WAIT
            await px.change(toxics=(toxic("latency", latency=200),))
            assert isinstance(relay.pipe, StagedPipe)
            assert await exchange(reader, writer, b"held") >= 0.2 - 0.001
            assert await exchange(reader, writer, bulk) >= 0.2 - 0.001
            await px.change(toxics=())
            if splice is True:
                assert isinstance(relay.pipe, SplicePipe)
            else:
                assert relay.pipe is relay.transports
            assert await exchange(reader, writer, bulk) < WAIT
            await until(lambda: isinstance(relay.pipe, SplicePipe))
            writer.close()

    run(loop, main())


def test_a_splice_route_with_a_toxic_relays_through_the_stages_from_the_connect(
    loop: str, caplog: pytest.LogCaptureFixture
) -> None:
    """ "splice": true and a latency from the start: the connection never splices while
    the toxic is on, and the access line (text and JSON) names the toxic."""

    async def main() -> None:
        async with (
            Server(echo_or_reset) as server,
            proxy(server.backend(), splice=True, toxics=(toxic("latency", latency=50),)) as px,
        ):
            reader, writer = await px.connect()
            relay = await px.relay_connected()
            assert isinstance(relay.pipe, StagedPipe)
            data = payload(2 * MB)
            assert await exchange(reader, writer, data) >= 0.05
            assert not relay.spliced
            writer.close()

    caplog.set_level(logging.INFO, "restcp.access")
    run(loop, main())
    (line,) = access_lines(caplog)
    assert line.endswith("end=closed toxics=latency_downstream")
    (record,) = [r for r in caplog.records if r.name == "restcp.access"]
    fields: dict[str, Any] = getattr(record, "fields", {})
    assert (fields["toxics"], fields["spliced"]) == (["latency_downstream"], False)


def test_a_connection_without_toxics_logs_no_toxics_field(
    loop: str, caplog: pytest.LogCaptureFixture
) -> None:
    async def main() -> None:
        async with Server(echo_or_reset) as server, proxy(server.backend()) as px:
            reader, writer = await px.connect()
            await exchange(reader, writer, b"x")
            writer.close()

    caplog.set_level(logging.INFO, "restcp.access")
    run(loop, main())
    (line,) = access_lines(caplog)
    assert line.endswith("end=closed")
    (record,) = [r for r in caplog.records if r.name == "restcp.access"]
    assert getattr(record, "fields", {})["toxics"] == []


def test_a_slow_stage_pushes_back_on_the_reader(loop: str) -> None:
    """A backend floods 32 MB through a 10 KB/s bandwidth: the backend stalls (TCP pushes
    back on it) while the stage holds at most HIGH and one read; the client then takes it
    all, exact, once the toxic is removed."""
    data = payload(32 * MB)
    sent = [0]

    async def main() -> None:
        async with (
            Server(flooder(data, sent)) as server,
            proxy(server.backend(), toxics=(toxic("bandwidth", rate=10),)) as px,
        ):
            reader, writer = await px.connect()
            runtime = px.manager.runtime(px.route.key)
            assert runtime is not None
            await until(lambda: sent[0] > 0)
            await stalled(sent)
            assert sent[0] < len(data)
            held = runtime.tallies["bandwidth_downstream"].held
            assert 0 < held <= HIGH + 256 * 1024
            await px.change(toxics=())
            assert await read_all(reader) == data
            writer.close()
            await server.result()

    run(loop, main())


def test_disabled_the_port_refuses_and_open_connections_close_enabled_it_serves_again(
    loop: str, caplog: pytest.LogCaptureFixture
) -> None:
    async def main() -> None:
        async with Server(echo_or_reset) as server, proxy(server.backend()) as px:
            reader, writer = await px.connect()
            await exchange(reader, writer, b"one")
            await px.change(enabled=False)
            assert await read_outcome(reader) == "eof"
            writer.close()
            with pytest.raises(ConnectionRefusedError):
                await asyncio.open_connection(HOST, px.port)
            assert px.route.key in px.manager.running()
            assert not px.manager.unbound
            await px.change(enabled=True)
            reader, writer = await px.connect()
            await exchange(reader, writer, b"two")
            writer.close()

    caplog.set_level(logging.INFO, "restcp.access")
    run(loop, main())
    assert "end=route_disabled" in access_lines(caplog)[0]


def test_enabled_again_on_a_port_taken_meanwhile_is_unbound_until_it_is_free(loop: str) -> None:
    async def main() -> None:
        async with Server(echo_or_reset) as server, proxy(server.backend()) as px:
            manager, key = px.manager, px.route.key
            await px.change(enabled=False)
            thief = socket.socket()
            thief.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            thief.bind((HOST, px.port))
            thief.listen()
            try:
                await px.change(enabled=True)
                assert key in manager.unbound
                assert key not in manager.running()
                # What a resync does: the stored route is started again, and fails again.
                await manager.apply(diff({key: px.route}, manager.running()))
                assert key in manager.unbound
            finally:
                thief.close()
            await manager.apply(diff({key: px.route}, manager.running()))
            assert not manager.unbound
            reader, writer = await px.connect()
            await exchange(reader, writer, b"back")
            writer.close()

    run(loop, main())


def test_a_route_stored_disabled_is_served_without_a_listener(loop: str) -> None:
    async def main() -> None:
        async with Server(echo_or_reset) as server, proxy(server.backend()) as px:
            manager, key = px.manager, px.route.key
            manager.stop(key)
            disabled = px.route.__class__(
                px.route.app,
                px.route.id,
                px.route.frontend_ip,
                px.route.port,
                px.route.settings.replace(enabled=False),
                px.route.backends,
            )
            await manager.apply(diff({key: disabled}, manager.running()))
            assert manager.running()[key] == disabled
            assert manager.runtime(key) is not None
            with pytest.raises(ConnectionRefusedError):
                await asyncio.open_connection(HOST, px.port)
            px.route = disabled
            await px.change(enabled=True)
            reader, writer = await px.connect()
            await exchange(reader, writer, b"up")
            writer.close()

    run(loop, main())
