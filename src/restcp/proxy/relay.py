"""One client <-> backend pipe.

    client ──► _ClientSide.data_received ──► backend transport.write ──► backend
    client ◄── client transport.write ◄── _BackendSide.data_received ◄── backend

Flow control: when a side's transport buffer passes its high-water mark, asyncio calls
``pause_writing`` on that side's protocol and we stop reading the *other* side until
``resume_writing``; the kernel's socket buffers then push back on the fast peer, so memory
per connection stays bounded whatever the two peers do.

Half-close: ``eof_received`` returns True to keep the transport open and forwards the FIN
with ``write_eof`` (shutdown(SHUT_WR) once the buffer is flushed); the other direction keeps
flowing. The pipe closes when both directions have ended, or at once, with a reset of the
other side, when either peer resets.

Until a backend accepts, the client is not read: nothing is buffered for a backend that may
never come. The connect attempt runs in a task the Relay owns and cancels.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import struct
import time
from collections.abc import Callable
from typing import Protocol, cast

from restcp.model import Backend

log = logging.getLogger("restcp.access")

_LINGER_RESET = struct.pack("ii", 1, 0)


class RouteContext(Protocol):
    """What a relay needs from its route: settings, a picker, and a place to report to."""

    app: str
    route_id: int
    connect_timeout: float
    idle_timeout: float

    def pick(self, tried: set[int]) -> Backend | None: ...

    def finished(self, relay: Relay) -> None: ...


class Relay:
    """The state of one pipe. It ends once both transports are lost and no connect is running."""

    __slots__ = (
        "_backend",
        "_client",
        "_connect_task",
        "_idle_handle",
        "_last_activity",
        "_loop",
        "_open",
        "_reported",
        "_started",
        "backend",
        "backend_eof",
        "bytes_down",
        "bytes_up",
        "client_addr",
        "client_eof",
        "end_reason",
        "route",
    )

    def __init__(self, route: RouteContext, loop: asyncio.AbstractEventLoop) -> None:
        self.route = route
        self._loop = loop
        self._client: asyncio.Transport | None = None
        self._backend: asyncio.Transport | None = None
        self._connect_task: asyncio.Task[None] | None = None
        self._idle_handle: asyncio.TimerHandle | None = None
        self._open = 0  # transports made and not yet lost
        self._reported = False
        self._started = time.monotonic()
        self._last_activity = loop.time()
        self.backend: Backend | None = None
        self.client_addr: tuple[str, int] | None = None
        self.bytes_up = 0  # client -> backend
        self.bytes_down = 0  # backend -> client
        self.client_eof = False
        self.backend_eof = False
        self.end_reason: str | None = None

    # -- setting up ----------------------------------------------------------------------

    def client_made(self, transport: asyncio.Transport) -> None:
        self._client = transport
        self._open += 1
        peer = transport.get_extra_info("peername")
        self.client_addr = (peer[0], peer[1]) if peer else None
        transport.pause_reading()
        task = self._loop.create_task(self._connect())
        task.add_done_callback(self._connect_done)
        self._connect_task = task
        if self.route.idle_timeout > 0:
            self._idle_handle = self._loop.call_later(self.route.idle_timeout, self._check_idle)

    async def _connect(self) -> None:
        tried: set[int] = set()
        while (backend := self.route.pick(tried)) is not None:
            tried.add(backend.id)
            try:
                async with asyncio.timeout(self.route.connect_timeout):
                    await self._loop.create_connection(
                        lambda: _BackendSide(self), backend.ip, backend.port
                    )
            except (OSError, TimeoutError) as err:
                log.warning(
                    "connect failed app=%s route=%s backend=%s addr=%s:%s error=%s",
                    self.route.app,
                    self.route.route_id,
                    backend.id,
                    backend.ip,
                    backend.port,
                    err or "timeout",
                )
                continue
            self.backend = backend
            return
        self._end("no_backend")

    def _connect_done(self, _task: asyncio.Task[None]) -> None:
        self._connect_task = None
        self._maybe_report()

    def backend_made(self, transport: asyncio.Transport) -> None:
        self._backend = transport
        self._open += 1
        client = self._client
        if client is None or self.end_reason is not None:
            transport.close()  # the client went away while we were connecting
        elif self.client_eof:
            transport.write_eof()
        else:
            client.resume_reading()

    # -- data and EOF --------------------------------------------------------------------

    def from_client(self, data: bytes) -> None:
        self.bytes_up += len(data)
        self._last_activity = self._loop.time()
        if self._backend is not None:
            self._backend.write(data)

    def from_backend(self, data: bytes) -> None:
        self.bytes_down += len(data)
        self._last_activity = self._loop.time()
        if self._client is not None:
            self._client.write(data)

    def client_eof_received(self) -> None:
        self.client_eof = True
        if self._backend is not None:
            self._backend.write_eof()
        if self.backend_eof:
            self._end("closed")

    def backend_eof_received(self) -> None:
        self.backend_eof = True
        if self._client is not None:
            self._client.write_eof()
        if self.client_eof:
            self._end("closed")

    # -- flow control: a full buffer towards one peer stops reads from the other ---------

    def pause_backend(self) -> None:
        if self._backend is not None and not self._backend.is_closing():
            self._backend.pause_reading()

    def resume_backend(self) -> None:
        if self._backend is not None and not self._backend.is_closing():
            self._backend.resume_reading()

    def pause_client(self) -> None:
        if self._client is not None and not self._client.is_closing():
            self._client.pause_reading()

    def resume_client(self) -> None:
        if self._client is not None and not self._client.is_closing():
            self._client.resume_reading()

    # -- ending --------------------------------------------------------------------------

    def client_lost(self, exc: Exception | None) -> None:
        self._client = None
        self._open -= 1
        if self.end_reason is None:
            self._end("client_reset" if exc else "client_closed", reset=exc is not None)
        self._maybe_report()

    def backend_lost(self, exc: Exception | None) -> None:
        self._backend = None
        self._open -= 1
        if self.end_reason is None:
            self._end("backend_reset" if exc else "backend_closed", reset=exc is not None)
        self._maybe_report()

    def _check_idle(self) -> None:
        remaining = self.route.idle_timeout - (self._loop.time() - self._last_activity)
        if remaining > 0:
            self._idle_handle = self._loop.call_later(remaining, self._check_idle)
        else:
            self._idle_handle = None
            self._end("idle_timeout")

    def abort(self, reason: str) -> None:
        """Reset both sides now (shutdown past its drain deadline)."""
        if self.end_reason is None:
            self._end(reason, reset=True)

    def _end(self, reason: str, *, reset: bool = False) -> None:
        """Close both sides: gracefully (buffers flushed first) or with a reset."""
        self.end_reason = reason
        if self._idle_handle is not None:
            self._idle_handle.cancel()
            self._idle_handle = None
        task = self._connect_task
        if task is not None and task is not asyncio.current_task():
            task.cancel()
        for transport in (self._client, self._backend):
            if transport is not None:
                if reset:
                    _reset(transport)
                else:
                    transport.close()

    def _maybe_report(self) -> None:
        if self._open or self._connect_task is not None or self._reported:
            return
        self._reported = True
        route = self.route
        backend = self.backend
        log.info(
            "app=%s route=%s client=%s backend=%s bytes_up=%d bytes_down=%d duration=%.3f end=%s",
            route.app,
            route.route_id,
            f"{self.client_addr[0]}:{self.client_addr[1]}" if self.client_addr else "-",
            f"{backend.id}/{backend.ip}:{backend.port}" if backend else "-",
            self.bytes_up,
            self.bytes_down,
            time.monotonic() - self._started,
            self.end_reason,
        )
        route.finished(self)


def _reset(transport: asyncio.Transport) -> None:
    sock: socket.socket | None = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
    transport.abort()


class ClientSide(asyncio.Protocol):
    __slots__ = ("relay",)

    def __init__(self, relay: Relay) -> None:
        self.relay = relay

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.relay.client_made(cast(asyncio.Transport, transport))

    def data_received(self, data: bytes) -> None:
        self.relay.from_client(data)

    def eof_received(self) -> bool:
        self.relay.client_eof_received()
        return True

    # Our write buffer to the client is full: stop reading the backend until it drains.
    def pause_writing(self) -> None:
        self.relay.pause_backend()

    def resume_writing(self) -> None:
        self.relay.resume_backend()

    def connection_lost(self, exc: Exception | None) -> None:
        self.relay.client_lost(exc)


class _BackendSide(asyncio.Protocol):
    __slots__ = ("relay",)

    def __init__(self, relay: Relay) -> None:
        self.relay = relay

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.relay.backend_made(cast(asyncio.Transport, transport))

    def data_received(self, data: bytes) -> None:
        self.relay.from_backend(data)

    def eof_received(self) -> bool:
        self.relay.backend_eof_received()
        return True

    def pause_writing(self) -> None:
        self.relay.pause_client()

    def resume_writing(self) -> None:
        self.relay.resume_client()

    def connection_lost(self, exc: Exception | None) -> None:
        self.relay.backend_lost(exc)


def client_factory(
    route: RouteContext, loop: asyncio.AbstractEventLoop
) -> Callable[[], ClientSide]:
    return lambda: ClientSide(Relay(route, loop))
