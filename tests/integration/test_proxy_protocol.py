"""PROXY protocol headers and host-name backends, on both data planes (ENGINES): the
native engine builds the header in C and asks Python to resolve a host name at each
connect; what the backend reads, what is counted and logged must be asyncio's."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import socket
from typing import Any

import pytest

from restcp.core import proxy_protocol
from restcp.core.reconcile import Update
from restcp.model import Backend, ProxyProtocol
from restcp.proxy import runtime as runtime_module
from tests.integration.harness import (
    ENGINES,
    HOST,
    MB,
    WAIT,
    Proxy,
    Server,
    access_lines,
    open_sockets,
    payload,
    proxy,
    read_all,
    read_outcome,
    run,
    spliced,
    stalled,
    until,
)


async def everything(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bytes:
    return await reader.read()


async def send(px: Proxy, data: bytes) -> tuple[str, int]:
    """``data`` and a FIN from a new client, then its end: the client's address."""
    reader, writer = await px.connect()
    client = writer.get_extra_info("sockname")[:2]
    writer.write(data)
    writer.write_eof()
    assert await read_all(reader) == b""
    writer.close()
    return client[0], client[1]


# (the route's setting, the backend's, the header sent): the backend's own wins, "none"
# included.
CASES = [
    ("v1", None, "v1"),
    ("v2", None, "v2"),
    ("v2", "none", None),
    ("v2", "v1", "v1"),
    (None, "v2", "v2"),
    (None, None, None),
]


@ENGINES
@pytest.mark.parametrize(("route_pp", "backend_pp", "sent"), CASES)
def test_header_then_the_client_bytes(
    loop: str,
    engine: str,
    route_pp: ProxyProtocol | None,
    backend_pp: str | None,
    sent: ProxyProtocol | None,
    caplog: pytest.LogCaptureFixture,
) -> None:
    data = payload(100_000)

    async def main() -> None:
        async with Server(everything) as server:
            backend = dataclasses.replace(server.backend(), proxy_protocol=backend_pp)
            async with proxy(backend, proxy_protocol=route_pp, engine=engine) as px:
                frontend = (HOST, px.port)
                for body in (data, b""):  # no client byte: the header alone
                    client = await send(px, body)
                    header = b"" if sent is None else proxy_protocol.header(sent, client, frontend)
                    assert await server.result() == header + body

    caplog.set_level(logging.INFO, "restcp.access")
    run(loop, main())
    # The header is not the client's: bytes_up counts the client's bytes alone.
    lines = access_lines(caplog)
    assert [line.split("bytes_up=")[1].split()[0] for line in lines] == [str(len(data)), "0"]


# The engine's splicing routes too: its header waits in the up direction's buffer, which
# goes out before anything is spliced (asyncio's splice pipe: test_splice.py).
@pytest.mark.parametrize(
    ("engine", "splice"),
    [("asyncio", False), ("native", False), ("native", True), ("native", "auto")],
    ids=["asyncio", "native", "native-spliced", "native-auto"],
)
def test_header_first_past_a_banner_and_a_full_backend(
    loop: str, engine: str, splice: bool | str, caplog: pytest.LogCaptureFixture
) -> None:
    """The backend speaks first and reads nothing until the client's bytes back up in
    every buffer: the header still goes first, then every client byte in order (also when
    the engine splices them, from the first byte or from bulk on)."""
    # More than every buffer on the way holds (the sockets' on loopback, the relay's).
    data = payload(32 * MB)
    full = asyncio.Event()

    async def backend(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bytes:
        writer.write(b"banner\n")
        await writer.drain()
        await full.wait()
        return await reader.read()

    async def main() -> None:
        async with (
            Server(backend) as server,
            proxy(server.backend(), proxy_protocol="v2", engine=engine, splice=splice) as px,
        ):
            reader, writer = await px.connect()
            client = writer.get_extra_info("sockname")[:2]
            assert await asyncio.wait_for(reader.readline(), WAIT) == b"banner\n"
            sent = [0]

            async def send_all() -> None:
                for at in range(0, len(data), MB):
                    writer.write(data[at : at + MB])
                    await writer.drain()
                    sent[0] = at + MB
                writer.write_eof()

            sending = asyncio.create_task(send_all())
            await stalled(sent)  # backed up: the backend reads nothing
            assert sent[0] < len(data)
            full.set()
            await asyncio.wait_for(sending, WAIT)
            header = proxy_protocol.header("v2", (client[0], client[1]), (HOST, px.port))
            got = await server.result()
            assert got[: len(header)] == header
            assert got[len(header) :] == data
            assert await read_all(reader) == b""
            writer.close()

    caplog.set_level(logging.INFO, "restcp.access")
    run(loop, main())
    assert spliced(caplog) == [bool(splice)]


@ENGINES
def test_header_set_live(loop: str, engine: str) -> None:
    """A change of the route's setting applies to the next client (the engine's table)."""

    async def main() -> None:
        async with Server(everything) as server, proxy(server.backend(), engine=engine) as px:
            frontend = (HOST, px.port)
            await send(px, b"one")
            assert await server.result() == b"one"
            await px.change(proxy_protocol="v1")
            client = await send(px, b"two")
            assert await server.result() == proxy_protocol.v1(client, frontend) + b"two"
            await px.change(proxy_protocol=None)
            await send(px, b"three")
            assert await server.result() == b"three"

    run(loop, main())


# ---- host names ------------------------------------------------------------------------


@dataclasses.dataclass
class Resolver:
    """Stands in for the name service behind resolve_allowed: ``failing`` names do not
    resolve, ``held`` ones answer (``to``) once ``release`` is set; others are real."""

    real: Any
    failing: set[str] = dataclasses.field(default_factory=set)
    held: dict[str, str] = dataclasses.field(default_factory=dict)
    release: asyncio.Event | None = None
    asked: list[str] = dataclasses.field(default_factory=list)

    async def __call__(self, host: str, port: int, refusal: Any) -> str:
        self.asked.append(host)
        if host in self.failing:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        if host in self.held:
            if self.release is None:
                self.release = asyncio.Event()
            await self.release.wait()
            return self.held[host]
        result: str = await self.real(host, port, refusal)
        return result


@pytest.fixture
def resolver(monkeypatch: pytest.MonkeyPatch) -> Resolver:
    fake = Resolver(runtime_module.resolve_allowed)
    monkeypatch.setattr(runtime_module, "resolve_allowed", fake)
    return fake


def named(backend_id: int, host: str, port: int, **fields: Any) -> Backend:
    return Backend(backend_id, host, port, **fields)


async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while data := await reader.read(65536):
        writer.write(data)
        await writer.drain()


async def round_trip(px: Proxy, message: bytes) -> None:
    reader, writer = await px.connect()
    writer.write(message)
    assert await asyncio.wait_for(reader.readexactly(len(message)), WAIT) == message
    writer.close()


@ENGINES
def test_host_name_resolved_at_each_connect(
    loop: str, engine: str, resolver: Resolver, caplog: pytest.LogCaptureFixture
) -> None:
    """``localhost`` through the real resolver, every connect; with a PROXY header."""

    async def main() -> None:
        async with Server(everything) as server:
            backend = named(1, "localhost", server.port, proxy_protocol="v1")
            async with proxy(backend, engine=engine) as px:
                for _ in range(3):
                    client = await send(px, b"hi")
                    header = proxy_protocol.v1(client, (HOST, px.port))
                    assert await server.result() == header + b"hi"
        assert resolver.asked == ["localhost"] * 3

    caplog.set_level(logging.INFO, "restcp.access")
    run(loop, main())
    lines = access_lines(caplog)
    assert len(lines) == 3
    assert all("backend=1/localhost:" in line and line.endswith("end=closed") for line in lines)


@ENGINES
def test_unresolvable_name_fails_over(
    loop: str, engine: str, resolver: Resolver, caplog: pytest.LogCaptureFixture
) -> None:
    """A name that does not resolve is a failed connect: logged, counted towards the
    backend's health, and the next backend serves the client."""
    resolver.failing.add("gone.test")
    ports: list[int] = []

    async def main() -> None:
        async with Server(echo) as server:
            ports.append(server.port)
            bad = named(1, "gone.test", server.port)
            async with proxy(bad, server.backend(2), engine=engine, passive_fall=1) as px:
                runtime = px.manager.runtime(px.route.key)
                assert runtime is not None
                # Random picks: until the bad one has been tried (it is then down).
                trips = 0
                while "gone.test" not in resolver.asked:
                    await round_trip(px, b"ping")
                    trips += 1
                await round_trip(px, b"pong")
                member = runtime.members[1]
                assert member.connect_failures == 1
                assert not member.health.usable
                assert server.accepted == trips + 1
                assert resolver.asked == ["gone.test"]

    caplog.set_level(logging.INFO)
    run(loop, main())
    failures = [r.getMessage() for r in caplog.records if "connect failed" in r.getMessage()]
    assert failures == [
        f"connect failed app=test route=1 backend=1 addr=gone.test:{ports[0]}"
        f" error=[Errno {socket.EAI_NONAME}] Name or service not known"
    ]


@ENGINES
def test_only_an_unresolvable_name(
    loop: str, engine: str, resolver: Resolver, caplog: pytest.LogCaptureFixture
) -> None:
    resolver.failing.add("gone.test")

    async def main() -> None:
        async with proxy(named(1, "gone.test", 9), engine=engine) as px:
            reader, writer = await px.connect()
            assert await read_all(reader) == b""
            writer.close()

    caplog.set_level(logging.INFO, "restcp.access")
    run(loop, main())
    (line,) = access_lines(caplog)
    assert line.endswith("end=no_backend")


@ENGINES
def test_resolution_past_the_connect_timeout(
    loop: str, engine: str, resolver: Resolver, caplog: pytest.LogCaptureFixture
) -> None:
    """A name that answers after connect_timeout: a timed-out connect (the next backend
    serves the client), and its late answer connects nowhere."""

    async def main() -> None:
        async with Server(echo) as server:
            resolver.held["slow.test"] = HOST
            slow = named(1, "slow.test", server.port)
            async with proxy(
                slow, server.backend(2), balance="round_robin", connect_timeout=0.3,
                engine=engine,
            ) as px:  # fmt: skip
                runtime = px.manager.runtime(px.route.key)
                assert runtime is not None
                while "slow.test" not in resolver.asked:
                    await round_trip(px, b"ping")
                assert runtime.members[1].connect_failures == 1
                accepted = server.accepted
                assert resolver.release is not None
                resolver.release.set()
                # One more client, one more accept: the late answer made none.
                await round_trip(px, b"pong")
                assert server.accepted == accepted + 1
                assert runtime.members[1].connect_failures == 1

    caplog.set_level(logging.INFO)
    run(loop, main())
    assert any(
        "backend=1 addr=slow.test:" in r.getMessage() and r.getMessage().endswith("error=timeout")
        for r in caplog.records
    )


@ENGINES
def test_backend_deleted_while_its_name_resolves(
    loop: str, engine: str, resolver: Resolver
) -> None:
    """As asyncio's Connector: the attempt goes on to the address the name resolves to."""

    async def main() -> None:
        async with Server(echo) as one, Server(echo) as two:
            resolver.held["slow.test"] = HOST
            slow = named(1, "slow.test", one.port)
            async with proxy(slow, two.backend(2), engine=engine, balance="round_robin") as px:
                reader, writer = await px.connect()
                await until(lambda: resolver.asked == ["slow.test"])
                route = dataclasses.replace(px.route, backends=px.route.backends[1:])
                await px.manager.apply([Update(route)])
                px.route = route
                assert resolver.release is not None
                resolver.release.set()
                writer.write(b"ping")
                assert await asyncio.wait_for(reader.readexactly(4), WAIT) == b"ping"
                assert (one.accepted, two.accepted) == (1, 0)
                writer.close()

    run(loop, main())


def test_backend_deleted_before_its_name_is_asked(
    loop: str, resolver: Resolver, caplog: pytest.LogCaptureFixture
) -> None:
    """The engine asks for a name, and the backend is deleted before Python reads the
    request (a loop turn): its name is gone, the next backend serves the client, and the
    detour is logged and counted."""

    async def main() -> None:
        async with Server(echo) as one, Server(echo) as two:
            slow = named(1, "localhost", one.port)
            async with proxy(slow, two.backend(2), engine="native", balance="round_robin") as px:
                native = px.manager.engine
                assert native is not None
                running = asyncio.get_running_loop()
                running.remove_reader(native.engine.notify_fd)  # the request waits
                try:
                    reader, writer = await px.connect()
                    await until(lambda: native.engine.active == 1)
                    route = dataclasses.replace(px.route, backends=px.route.backends[1:])
                    await px.manager.apply([Update(route)])
                    px.route = route
                finally:
                    running.add_reader(native.engine.notify_fd, native._drain)
                native._drain()
                writer.write(b"ping")
                assert await asyncio.wait_for(reader.readexactly(4), WAIT) == b"ping"
                assert (one.accepted, two.accepted) == (0, 1)
                assert native.resolves_dropped == 1
                assert resolver.asked == []
                writer.close()

    caplog.set_level(logging.INFO)
    run(loop, main())
    assert any(
        "connect skipped app=test route=1 backend=1" in r.getMessage() for r in caplog.records
    )


@ENGINES
def test_shutdown_while_a_name_resolves(
    loop: str, engine: str, resolver: Resolver, caplog: pytest.LogCaptureFixture
) -> None:
    """The node stops while a connect waits for its name: the client is reset, the
    resolution is given up (no task left), no socket is left open."""

    async def main() -> None:
        before = open_sockets()
        resolver.held["slow.test"] = HOST
        async with proxy(named(1, "slow.test", 9), connect_timeout=30, engine=engine) as px:
            reader, writer = await px.connect()
            await until(lambda: resolver.asked == ["slow.test"])
            await asyncio.wait_for(px.manager.shutdown(drain_timeout=0), WAIT)
            assert await read_outcome(reader) == "reset"
            writer.close()
        assert open_sockets() == before

    caplog.set_level(logging.INFO, "restcp.access")
    run(loop, main())
    (line,) = access_lines(caplog)
    assert line.endswith("end=shutdown")
