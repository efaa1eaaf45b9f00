"""In-process harness for the data plane: an event loop per test, a proxy, test peers.

Everything runs on one loop in the test's thread: the proxy under test, the backends it
relays to and the clients. Nothing sleeps to wait for a server: sockets are bound before
they are used, and every wait is on a condition with a deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import os
import socket
import struct
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar

import pytest
import uvloop

from restcp import engine as native_engine
from restcp.core import toxics
from restcp.core.reconcile import Update
from restcp.model import Backend, Route, RouteSettings, Stream, Toxic, ToxicType
from restcp.proxy.connection import Connection
from restcp.proxy.listener import bind
from restcp.proxy.manager import ProxyManager
from restcp.proxy.native import EngineListener, NativeEngine
from restcp.proxy.splice import SplicePipe
from restcp.proxy.splicer import PipePool

T = TypeVar("T")

HOST = "127.0.0.1"
LOOPS: dict[str, Callable[[], asyncio.AbstractEventLoop]] = {
    "uvloop": uvloop.new_event_loop,
    "asyncio": asyncio.new_event_loop,
}
# Loops of failed tests, kept from the garbage collector (see run).
_abandoned: list[asyncio.AbstractEventLoop] = []
# Long enough for a loaded 2-core CI box, short enough that a hang fails fast.
WAIT = 10.0
# For a scenario both pipes must pass alike: the transports' one and the splice one.
SPLICE = pytest.mark.parametrize("splice", [False, True], ids=["transports", "splice"])
# ... and on a splice pipe that took over from the transport pipe mid-connection ("auto"
# routes; Proxy.relay_spliced moves the connection).
# ... and on the native engine ("native": the route's splice setting is false, and the
# engine serves it; "native-splice": true, "native-auto": "auto", moved to splicing by
# Proxy.splicing; see proxy()).
PIPES = pytest.mark.parametrize(
    "splice",
    [False, True, "auto", "native", "native-splice", "native-auto"],
    ids=["transports", "splice", "switched", "native", "native-splice", "native-auto"],
)
# The route's splice setting of each native engine case.
NATIVE_SPLICE: dict[str, bool | str] = {
    "native": False,
    "native-splice": True,
    "native-auto": "auto",
}


def splices(splice: bool | str) -> bool:
    """Whether a PIPES case relays on a splice pipe (or, on the engine, splices)."""
    return splice in (True, "auto", "native-splice", "native-auto")


# For a scenario the native relay engine (restcp.engine) must pass as the asyncio pipes do.
ENGINES = pytest.mark.parametrize("engine", ["asyncio", "native"])
# ... and one that moves bulk, on the engine splicing too: "native-splice" a route with
# splice true, "native-auto" one with "auto" (it splices where a read fills 64 KiB).
BULK_ENGINES = pytest.mark.parametrize(
    "engine", ["asyncio", "native", "native-splice", "native-auto"]
)


def native() -> NativeEngine:
    """The compiled engine: a build without it fails the test (it is never skipped)."""
    module, why = native_engine.load()
    assert module is not None, why
    return NativeEngine(module)


def run(loop_name: str, main: Coroutine[Any, Any, T]) -> T:
    """Run ``main`` on a fresh loop of that kind and check it left nothing behind: no task
    still pending and no error reported to the loop's exception handler (a protocol callback
    that raised, a task exception never retrieved...)."""
    errors: list[dict[str, Any]] = []

    async def checked() -> T:
        asyncio.get_running_loop().set_exception_handler(lambda _loop, ctx: errors.append(ctx))
        result = await main
        # Closed transports report on the next loop turns; give them a few before judging.
        for _ in range(10):
            await asyncio.sleep(0)
        pending = asyncio.all_tasks() - {asyncio.current_task()}
        assert not pending, f"tasks left pending: {pending}"
        return result

    loop = LOOPS[loop_name]()
    try:
        result = loop.run_until_complete(checked())
    except BaseException:
        # uvloop's close() runs the loop until every handle is gone, and a socket that the
        # failure left open can keep it running for ever, in C, where not even pytest-timeout
        # reaches: the failure would become a hang. A failed test's loop is abandoned
        # instead; its sockets close when the process exits.
        _abandoned.append(loop)
        raise
    loop.run_until_complete(loop.shutdown_asyncgens())
    loop.close()
    assert not errors, f"errors reported to the loop: {errors}"
    return result


async def until(condition: Callable[[], bool], within: float = WAIT) -> None:
    """Poll ``condition`` every 5 ms until it holds, for at most ``within`` seconds.

    For states that nothing signals (a relay's counters, a transport's buffer): where the
    test owns an event, it awaits that instead."""
    async with asyncio.timeout(within):
        while not condition():  # noqa: ASYNC110 - nothing to await: the state is polled
            await asyncio.sleep(0.005)


def reset(writer: asyncio.StreamWriter) -> None:
    """Close with SO_LINGER 0: the kernel sends a RST instead of a FIN."""
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


async def read_all(reader: asyncio.StreamReader, within: float = WAIT) -> bytes:
    return await asyncio.wait_for(reader.read(), within)


async def read_outcome(reader: asyncio.StreamReader, within: float = WAIT) -> str:
    """'eof' or 'reset': how the peer ended, after discarding whatever it still sent."""
    try:
        async with asyncio.timeout(within):
            while await reader.read(1 << 16):
                pass
    except ConnectionResetError:
        return "reset"
    return "eof"


async def stalled(sent: list[int], quiet: float = 0.3) -> None:
    """Wait until a sender's count of sent bytes (``sent[0]``) has not moved for ``quiet``
    seconds: it is blocked on a full socket."""
    last, since = -1, time.monotonic()
    async with asyncio.timeout(WAIT):
        while time.monotonic() - since < quiet:
            if sent[0] != last:
                last, since = sent[0], time.monotonic()
            await asyncio.sleep(0.02)


async def drain(sock: socket.socket) -> bytes:
    """Everything ``sock`` receives up to EOF."""
    received = bytearray()
    async with asyncio.timeout(WAIT):
        while chunk := await asyncio.get_running_loop().sock_recv(sock, 1 << 20):
            received += chunk
    return bytes(received)


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def open_sockets() -> int:
    """The process's sockets (not all its fds: libuv keeps a spare fd, opened with its
    first listener, to shed connections when the process runs out of fds)."""
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):  # the listing's own fd is gone already
            count += os.readlink(f"/proc/self/fd/{fd}").startswith("socket:")
    return count


def payload(size: int) -> bytes:
    return os.urandom(size)


async def digest_all(reader: asyncio.StreamReader) -> tuple[int, str]:
    """(size, sha256) of everything up to EOF, without keeping it."""
    digest, size = hashlib.sha256(), 0
    async with asyncio.timeout(WAIT * 3):
        while chunk := await reader.read(1 << 20):
            digest.update(chunk)
            size += len(chunk)
    return size, digest.hexdigest()


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


MB = 1 << 20
# A socket buffer far below what the kernel autotunes to: a stalled reader shows sooner.
SMALL_BUFFER = 64 * 1024
Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[Any]]


async def _everything(reader: asyncio.StreamReader) -> bytes:
    return await reader.read()


def sends_then_reads(
    down: bytes, read: Callable[[asyncio.StreamReader], Awaitable[Any]] = _everything
) -> Handler:
    """A backend that sends ``down`` and its FIN at once, then reads to EOF before waiting
    for its own bytes to go: full duplex. It returns what ``read`` makes of what came (the
    bytes themselves by default)."""

    async def backend(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> Any:
        writer.write(down)
        writer.write_eof()
        got = await read(reader)
        await writer.drain()
        return got

    return backend


def flooder(data: bytes, sent: list[int]) -> Handler:
    """A backend that writes ``data`` in 256 KiB pieces through a SMALL_BUFFER send buffer,
    then its FIN, counting in ``sent[0]`` the bytes the kernel has taken."""

    async def flood(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.get_extra_info("socket").setsockopt(
            socket.SOL_SOCKET, socket.SO_SNDBUF, SMALL_BUFFER
        )
        view = memoryview(data)
        for at in range(0, len(data), 256 * 1024):
            writer.write(view[at : at + 256 * 1024])
            await writer.drain()  # returns once the kernel took the bytes (below low water)
            sent[0] = at + len(view[at : at + 256 * 1024])
        writer.write_eof()

    return flood


def access_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "restcp.access"]


def spliced(caplog: pytest.LogCaptureFixture) -> list[bool]:
    """Whether each connection logged went to a SplicePipe (its access event says)."""
    return [
        getattr(r, "fields", {})["spliced"] for r in caplog.records if r.name == "restcp.access"
    ]


@dataclass
class Server:
    """A backend on 127.0.0.1:0 that runs ``handler`` for each connection.

    What each handler returns (or raises) is queued in ``results`` in order, so a test awaits
    what the backend saw instead of sharing state with it. Handlers still running when the
    server is closed are cancelled and awaited: no task outlives the test.
    """

    handler: Handler
    port: int = 0
    backlog: int = 100  # asyncio's default; a thousand clients at once need more
    accepted: int = 0
    results: asyncio.Queue[Any] = field(default_factory=asyncio.Queue)
    writers: list[asyncio.StreamWriter] = field(default_factory=list)
    _server: asyncio.Server | None = None
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)

    async def __aenter__(self) -> Server:
        self._server = await asyncio.start_server(self._serve, HOST, 0, backlog=self.backlog)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *_exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        # uvloop's wait_closed waits for every accepted connection to close: after a failed
        # test the proxy may still hold one open, and the failure must not become a hang.
        # (asyncio's abort() of a transport already closed fails: hence the check.)
        for writer in self.writers:
            if not writer.transport.is_closing():
                writer.transport.abort()
        await asyncio.wait_for(self._server.wait_closed(), WAIT)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self.accepted += 1
        self.writers.append(writer)
        try:
            result: Any = await self.handler(reader, writer)
        except asyncio.CancelledError:
            writer.transport.abort()
            raise
        except Exception as err:  # handed to the test, which decides if it was expected
            result = err
        finally:
            writer.close()
            self._tasks.discard(task)
        self.results.put_nowait(result)

    @property
    def active(self) -> int:
        """Connections whose handler is still running."""
        return len(self._tasks)

    async def result(self, within: float = WAIT) -> Any:
        value = await asyncio.wait_for(self.results.get(), within)
        if isinstance(value, Exception):
            raise value
        return value

    def backend(self, backend_id: int = 1) -> Backend:
        return Backend(backend_id, HOST, self.port)


async def _nothing(_reader: asyncio.StreamReader, _writer: asyncio.StreamWriter) -> None:
    return None


def refusing_backend(backend_id: int = 1) -> tuple[Backend, socket.socket]:
    """A backend whose port refuses connections: bound (so nobody else takes the port while the
    test runs) but not listening, so the kernel answers a SYN with a RST."""
    sock = socket.socket()
    sock.bind((HOST, 0))
    return Backend(backend_id, HOST, sock.getsockname()[1]), sock


@contextlib.contextmanager
def silent_backend(backend_id: int = 1) -> Any:
    """A backend that never accepts: a listen(0) socket whose accept queue is full, so the
    kernel drops every further SYN and a connect hangs until the connector gives up."""
    sock = socket.socket()
    fillers: list[socket.socket] = []
    try:
        sock.bind((HOST, 0))
        sock.listen(0)
        addr = sock.getsockname()
        # A queue of backlog 0 holds one connection; one more settles the matter. Each filler
        # connects without blocking so one that is not taken does not stall the test.
        for _ in range(2):
            filler = socket.socket()
            fillers.append(filler)
            filler.setblocking(False)
            filler.connect_ex(addr)
        yield Backend(backend_id, HOST, addr[1])
    finally:
        for s in (*fillers, sock):
            s.close()


@dataclass
class Proxy:
    manager: ProxyManager
    route: Route

    @property
    def port(self) -> int:
        return self.route.port

    async def change(self, toxics: tuple[Toxic, ...] | None = None, **settings: Any) -> None:
        """Apply the route with these toxics and settings changed, as the node would."""
        route = dataclasses.replace(
            self.route,
            settings=self.route.settings.replace(**settings),
            toxics=self.route.toxics if toxics is None else toxics,
        )
        await self.manager.apply([Update(route)])
        self.route = route

    async def connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await asyncio.wait_for(asyncio.open_connection(HOST, self.port), WAIT)

    def only_relay(self) -> Connection:
        relays = list(self.manager.traffic)
        assert len(relays) == 1, relays
        return relays[0]

    async def relay_connected(self) -> Connection:
        """The one live relay, once its backend connection is up."""
        await until(lambda: len(self.manager.traffic) == 1)
        relay = self.only_relay()
        await until(lambda: relay.backend is not None)
        return relay

    async def splicing(self) -> None:
        """The one live connection relays on a splice pipe (relay_spliced), or, on the
        engine, relays and splices: at once on a ``"splice": true`` route; an ``"auto"``
        one's is moved to splicing as a bulk read would (Engine.bulk), rather than hoping
        for a read of the right size."""
        listener = self.manager._listeners[self.route.key]
        if not isinstance(listener, EngineListener):
            await self.relay_spliced()
            return
        members = listener.runtime.members.values()
        await until(lambda: sum(m.active for m in members) == 1)
        if self.route.settings.splice == "auto":
            assert listener._slot is not None
            assert self.manager.engine is not None
            assert self.manager.engine.engine.bulk(listener._slot) == 1

    async def relay_spliced(self) -> Connection:
        """The one live relay, on a SplicePipe: at once on a ``"splice": true`` route. On an
        ``"auto"`` one the test moves it there, back to the transports and there again (so
        the scenario runs on a splice pipe that took over twice), rather than hoping for a
        read of the right size."""
        relay = await self.relay_connected()
        if self.route.settings.splice == "auto":
            for pipe in ("splice", "transports", "splice"):
                await until(lambda pipe=pipe: switch(relay, pipe))  # type: ignore[misc]
        await until(lambda: isinstance(relay.pipe, SplicePipe))
        return relay


def switch(connection: Connection, to: str) -> bool:
    """Move ``connection`` to its splice pipe or its transports now, as a bulk read or a
    chatty splice pipe would: False if it could not be done now (see Connection.switch)."""
    if to == "splice":
        return connection.switch(connection.splice_pipe, raw=True)
    return connection.switch(lambda: connection.transports, raw=False)


def pipes_of(px: Proxy) -> PipePool:
    return px.manager.traffic.splicer.pipes


def used_pipes(px: Proxy) -> bool:
    """A pipe was taken and given back: bytes went through the kernel, not Python."""
    return len(pipes_of(px)) > 0


def make_route(
    port: int, backends: tuple[Backend, ...], toxics: tuple[Toxic, ...] = (), **settings: Any
) -> Route:
    return Route("test", 1, HOST, port, RouteSettings(**settings), backends, toxics)


def toxic(
    type_: ToxicType,
    stream: Stream = "downstream",
    *,
    name: str | None = None,
    toxicity: float = 1.0,
    clients: tuple[str, ...] = (),
    **attributes: int,
) -> Toxic:
    """A toxic as the API stores it: every attribute, defaults filled in."""
    return Toxic(
        name or toxics.default_name(type_, stream),
        type_,
        stream,
        toxicity,
        toxics.attributes(type_, attributes),
        clients,
    )


@asynccontextmanager
async def proxy(
    *backends: Backend,
    toxics: tuple[Toxic, ...] = (),
    node_seed: int | None = None,
    engine: str = "asyncio",
    **settings: Any,
) -> AsyncIterator[Proxy]:
    """A ProxyManager serving one route on 127.0.0.1:0 (``splice`` false unless given). On
    exit every relay must have ended
    on its own (a relay that never reports is a leak), then the manager is shut down.
    ``node_seed``: the node's seed of the toxics' draws (``seed`` is the route's own).
    ``engine`` "native": the native engine serves the route (the test fails if it does not)."""
    # A native case names the route's splice setting too (NATIVE_SPLICE), as ``splice``
    # (PIPES) or as ``engine`` (BULK_ENGINES); plain "native" keeps what the test gives.
    case = settings["splice"] if settings.get("splice") in NATIVE_SPLICE else engine
    if case in NATIVE_SPLICE:
        engine = "native"
        if case != "native" or settings.get("splice") == "native":
            settings["splice"] = NATIVE_SPLICE[case]
    manager = ProxyManager(seed=node_seed, engine=native() if engine == "native" else None)
    sock = bind(HOST, 0)
    # The transport pipe alone unless the test asks for splicing (the route's default,
    # "auto", may move a bulk transfer to the splice pipe).
    settings.setdefault("splice", False)
    route = make_route(sock.getsockname()[1], backends, toxics, **settings)
    await manager.serve(route, sock)
    if engine == "native":
        assert isinstance(manager._listeners[route.key], EngineListener)
    try:
        yield Proxy(manager, route)
        await asyncio.wait_for(manager.traffic.wait_empty(), WAIT)
        if manager.engine is not None:
            await asyncio.wait_for(manager.engine.wait_empty(), WAIT)
    finally:
        await asyncio.wait_for(manager.shutdown(drain_timeout=0), WAIT)
