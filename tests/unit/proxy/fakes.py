"""Stand-ins for the loop's sockets, so that a Connection's logic runs without any: events
go in as the protocol calls a transport would make (connection_made, data_received,
eof_received, connection_lost) and as the results of the connects it asked for; what it
does comes out as what it did to the fake transports and to its route.

The loop is a real asyncio loop (the connector steps real futures), with no socket opened.
The connection's clock is the test's (``Dialer.now``, starting at the loop's time, which the
node's deadline timer also reads): the test moves it on and calls ``deadline_reached``.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

from restcp.model import Backend, Route, RouteSettings
from restcp.proxy.connection import Connection
from restcp.proxy.runtime import RouteRuntime
from restcp.proxy.traffic import Traffic


class FakeSocket:
    """What a transport's ``get_extra_info("socket")`` gives: records its options."""

    def __init__(self) -> None:
        self.options: dict[tuple[int, int], bytes] = {}

    def setsockopt(self, level: int, option: int, value: bytes) -> None:
        self.options[(level, option)] = value


class FakeTransport(asyncio.Transport):
    """Records what is done to it."""

    def __init__(self, peer: tuple[str, int], local: tuple[str, int] = ("10.9.9.9", 8000)):
        super().__init__()
        self.protocol: asyncio.BaseProtocol | None = None
        self.written = bytearray()
        self.eof_written = False
        self.closed = False
        self.aborted = False
        self.reading = True
        self.buffered = 0  # what get_write_buffer_size says
        self.sock = FakeSocket()
        self._extra = {"peername": peer, "sockname": local, "socket": self.sock}

    @property
    def was_reset(self) -> bool:
        linger = self.sock.options.get((socket.SOL_SOCKET, socket.SO_LINGER))
        return self.aborted and linger is not None

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._extra.get(name, default)

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self.protocol = protocol

    def get_protocol(self) -> asyncio.BaseProtocol:
        assert self.protocol is not None
        return self.protocol

    def write(self, data: bytes | bytearray | memoryview) -> None:
        assert not self.eof_written, "written after its FIN"
        self.written += data

    def write_eof(self) -> None:
        self.eof_written = True

    def can_write_eof(self) -> bool:
        return True

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.aborted = True

    def is_closing(self) -> bool:
        return self.closed or self.aborted

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    def is_reading(self) -> bool:
        return self.reading

    def get_write_buffer_size(self) -> int:
        return self.buffered

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return (0, 0)


@dataclass
class Dial:
    """One create_connection the connector asked for; the test decides how it ends."""

    protocol: asyncio.Protocol
    host: str
    port: int
    future: asyncio.Future[FakeTransport]
    transport: FakeTransport | None = None

    def succeed(self) -> FakeTransport:
        """As asyncio does: connection_made, then the coroutine's return (a turn later)."""
        self.transport = FakeTransport((self.host, self.port))
        self.transport.set_protocol(self.protocol)
        self.protocol.connection_made(self.transport)
        self.future.set_result(self.transport)
        return self.transport

    def fail(self, err: BaseException) -> None:
        self.future.set_exception(err)


@dataclass
class Dialer:
    """The loop as a Connection sees it: the clock, and create_connection."""

    now: float = field(default_factory=lambda: asyncio.get_running_loop().time())
    dials: list[Dial] = field(default_factory=list)

    def time(self) -> float:
        return self.now

    def create_connection(
        self, factory: Callable[[], asyncio.Protocol], host: str, port: int
    ) -> Coroutine[Any, Any, tuple[FakeTransport, asyncio.Protocol]]:
        return self._connect(factory(), host, port)

    async def _connect(
        self, protocol: asyncio.Protocol, host: str, port: int
    ) -> tuple[FakeTransport, asyncio.Protocol]:
        dial = Dial(protocol, host, port, asyncio.get_running_loop().create_future())
        self.dials.append(dial)
        transport = await dial.future
        return transport, protocol


def backends(n: int) -> tuple[Backend, ...]:
    return tuple(Backend(i, f"10.0.0.{i}", 7000 + i) for i in range(1, n + 1))


def route_of(n_backends: int, **settings: Any) -> RouteRuntime:
    settings.setdefault("balance", "round_robin")
    route = Route("app", 1, "10.9.9.9", 8000, RouteSettings(**settings), backends(n_backends))
    return RouteRuntime(route, Traffic())


@dataclass
class Scene:
    """A route, its loop stand-in, and one client accepted on it."""

    runtime: RouteRuntime
    dialer: Dialer
    conn: Connection
    client: FakeTransport


def scene(n_backends: int, **settings: Any) -> Scene:
    """A route of ``n_backends`` and one client accepted on it (connecting already)."""
    runtime, dialer = route_of(n_backends, **settings), Dialer()
    conn, client = accept(runtime, dialer)
    return Scene(runtime, dialer, conn, client)


def accept(runtime: RouteRuntime, dialer: Dialer) -> tuple[Connection, FakeTransport]:
    """A client accepted on the route: its connection, and its transport once made."""
    connection = Connection(runtime, dialer, ("10.1.1.1", 40000))  # type: ignore[arg-type]
    client = FakeTransport(("10.1.1.1", 40000))
    client.set_protocol(connection.client_end)
    connection.client_end.connection_made(client)
    return connection, client


async def turns(n: int = 3) -> None:
    """Let the loop run the done callbacks of settled futures (the connector's steps)."""
    for _ in range(n):
        await asyncio.sleep(0)
