"""One client <-> backend pipe.

    client ──► ClientSide.data_received ──► backend transport.write ──► backend
    client ◄── client transport.write ◄── _BackendSide.data_received ◄── backend

Flow control: when a side's transport buffer passes its high-water mark, asyncio calls
``pause_writing`` on that side's protocol and we stop reading the *other* side until
``resume_writing``; the kernel's socket buffers then push back on the fast peer, so memory
per connection stays bounded whatever the two peers do.

Half-close: ``eof_received`` returns True to keep the transport open and forwards the FIN
with ``write_eof`` (shutdown(SHUT_WR) once the buffer is flushed); the other direction keeps
flowing. A side that has sent its FIN is never paused or resumed again: resuming a reader
past EOF makes both loops read the EOF a second time. The pipe closes when both directions
have ended, or at once, with a reset of the other side, when either peer resets.

Until a backend accepts, the client is not read: nothing is buffered for a backend that may
never come. asyncio honours the ``pause_reading`` in ``connection_made``; uvloop starts
reading right after ``connection_made`` returns, so the first chunk that arrives early is
held (one read, at most 256 KiB) and reading paused from there. The connect attempt runs in
a task the Relay owns and cancels.

Ending: the first reason recorded is the one logged. A graceful end closes both transports
after their buffers flush; the idle timer keeps running until both are gone, so a peer that
stops reading cannot hold a closing pipe open for ever: it is reset after ``idle_timeout``
without progress. Each relay logs one access line, once both transports are lost and no
connect is running.
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

from restcp.model import Backend, is_host_name

log = logging.getLogger("restcp.proxy")
access_log = logging.getLogger("restcp.access")

_LINGER_RESET = struct.pack("ii", 1, 0)


class RouteContext(Protocol):
    """What a relay needs from its route (proxy.runtime.RouteRuntime): settings, admission,
    a picker, PROXY headers, and a place to report to."""

    app: str
    route_id: int
    connect_timeout: float
    idle_timeout: float
    half_close_timeout: float

    def admit(self) -> str | None: ...

    def pick(self, tried: set[int], key: bytes) -> Backend | None: ...

    async def resolve(self, host: str, port: int) -> str:
        """The allowed address a host-name backend resolves to now; OSError if none."""

    def proxy_header(
        self, backend: Backend, client: tuple[str, int] | None, frontend: tuple[str, int] | None
    ) -> bytes | None: ...

    def started(self, relay: Relay) -> None: ...

    def connected(self, relay: Relay) -> None: ...

    def connect_failed(self, backend: Backend, reason: str) -> None: ...

    def finished(self, relay: Relay) -> None: ...


class Relay:
    """The state of one pipe. It ends once both transports are lost and no connect is running."""

    __slots__ = (
        "_attempt",
        "_backend",
        "_backend_full",
        "_client",
        "_client_full",
        "_connect_task",
        "_early",
        "_half_close_handle",
        "_idle_handle",
        "_last_activity",
        "_loop",
        "_reported",
        "_sides",
        "_started",
        "backend",
        "backend_eof",
        "bytes_down",
        "bytes_up",
        "client_addr",
        "client_eof",
        "end_reason",
        "refused",
        "route",
    )

    def __init__(self, route: RouteContext, loop: asyncio.AbstractEventLoop) -> None:
        self.route = route
        self._loop = loop
        self._client: asyncio.Transport | None = None
        self._backend: asyncio.Transport | None = None
        self._connect_task: asyncio.Task[None] | None = None
        self._idle_handle: asyncio.TimerHandle | None = None
        # Set between pause_writing and resume_writing of that side's transport.
        self._client_full = False
        self._backend_full = False
        self._early = b""  # client bytes that arrived before the backend connected
        # Backend connections made and not yet lost: the current one, and any attempt that
        # came up too late to be used and is being reset.
        self._sides: set[_BackendSide] = set()
        self._attempt: _BackendSide | None = None  # the create_connection in progress
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
        # Why the client was closed without reaching a backend (a limit, no backend left).
        self.refused: str | None = None
        self._half_close_handle: asyncio.TimerHandle | None = None

    @property
    def client_transport(self) -> asyncio.Transport | None:
        return self._client

    @property
    def backend_transport(self) -> asyncio.Transport | None:
        return self._backend

    # -- setting up ----------------------------------------------------------------------

    def client_made(self, transport: asyncio.Transport) -> None:
        self._client = transport
        # Registered here, not when the protocol is built: connection_made is what promises
        # a connection_lost, so a relay that is counted always reports.
        self.route.started(self)
        peer = transport.get_extra_info("peername")
        self.client_addr = (peer[0], peer[1]) if peer else None
        refusal = self.route.admit()
        if refusal is not None:
            self.refused = refusal
            self._end(refusal, reset=True)
            return
        _set_nodelay(transport)
        self._flow()
        task = self._loop.create_task(self._connect())
        task.add_done_callback(self._connect_done)
        self._connect_task = task
        if self.route.idle_timeout > 0:
            self._idle_handle = self._loop.call_later(self.route.idle_timeout, self._check_idle)

    async def _connect(self) -> None:
        tried: set[int] = set()
        key = self.client_addr[0].encode() if self.client_addr else b""
        while (backend := self.route.pick(tried, key)) is not None:
            tried.add(backend.id)
            side = self._attempt = _BackendSide(self, backend)
            try:
                async with asyncio.timeout(self.route.connect_timeout):
                    ip = backend.ip
                    if is_host_name(ip):
                        ip = await self.route.resolve(ip, backend.port)
                    await self._loop.create_connection(side.itself, ip, backend.port)
            except BaseException as err:
                self._attempt = None
                if side.transport is not None:
                    # connection_made ran, then the attempt was cancelled (by _end, or by the
                    # timeout as the connection came up). uvloop then closes the transport
                    # without ever calling connection_lost, so the side is counted lost here.
                    # Early bytes may have gone to it: no failover, the relay ends with a reset.
                    side.drop()
                    raise
                if not isinstance(err, OSError | TimeoutError):
                    raise
                reason = str(err) or "timeout"
                log.warning(
                    "connect failed app=%s route=%s backend=%s addr=%s:%s error=%s",
                    self.route.app,
                    self.route.route_id,
                    backend.id,
                    backend.ip,
                    backend.port,
                    reason,
                )
                self.route.connect_failed(backend, reason)
                continue
            self._attempt = None
            self.backend = backend
            self.route.connected(self)
            return
        self.refused = "no_backend"
        self._end("no_backend")

    def _connect_done(self, task: asyncio.Task[None]) -> None:
        self._connect_task = None
        if not task.cancelled() and (err := task.exception()) is not None:
            if not isinstance(err, OSError | TimeoutError):
                log.error("relay connect failed unexpectedly", exc_info=err)
            self._end("connect_failed", reset=True)
        self._maybe_report()

    def backend_made(self, side: _BackendSide, transport: asyncio.Transport) -> None:
        self._sides.add(side)
        _set_nodelay(transport)
        if side is not self._attempt or self._client is None or self.end_reason is not None:
            # asyncio may run connection_made after create_connection was cancelled; or the
            # client went away while we were connecting.
            _reset(transport)
            return
        self._backend = transport
        # Before any client byte: the backend reads the header first.
        header = self.route.proxy_header(side.backend, self.client_addr, self._frontend())
        if header is not None:
            transport.write(header)
        if self._early:
            # May pass the high-water mark and mark the backend full before _flow runs.
            transport.write(self._early)
            self._early = b""
        if self.client_eof:
            transport.write_eof()
        self._flow()

    # -- data and EOF --------------------------------------------------------------------

    def from_client(self, data: bytes) -> None:
        self.bytes_up += len(data)
        self._last_activity = self._loop.time()
        if self._backend is not None:
            self._backend.write(data)
        elif self.end_reason is None:
            self._early += data
            self._flow()

    def from_backend(self, data: bytes) -> None:
        self.bytes_down += len(data)
        self._last_activity = self._loop.time()
        if self._client is not None:
            self._client.write(data)

    def client_eof_received(self) -> None:
        self.client_eof = True
        if self._backend is not None:
            self._backend.write_eof()
        self._half_closed()

    def backend_eof_received(self) -> None:
        self.backend_eof = True
        if self._client is not None:
            self._client.write_eof()
        self._half_closed()

    def _half_closed(self) -> None:
        if self.client_eof and self.backend_eof:
            self._end("closed")
        elif self._half_close_handle is None and self.route.half_close_timeout > 0:
            # A peer that never finishes its half of a half-closed pipe is closed eventually.
            self._half_close_handle = self._loop.call_later(
                self.route.half_close_timeout, self._end, "half_close_timeout"
            )

    def _frontend(self) -> tuple[str, int] | None:
        sock = self._client.get_extra_info("sockname") if self._client is not None else None
        return (sock[0], sock[1]) if sock else None

    # -- flow control: a full buffer towards one peer stops reads from the other ---------

    def client_full(self, full: bool) -> None:
        self._client_full = full
        if not full:
            self._last_activity = self._loop.time()  # the client is reading: progress
        self._flow()

    def backend_full(self, full: bool) -> None:
        self._backend_full = full
        if not full:
            self._last_activity = self._loop.time()
        self._flow()

    def _flow(self) -> None:
        """Read each side exactly when what it sends has somewhere to go."""
        client, backend = self._client, self._backend
        if client is not None and not self.client_eof and not client.is_closing():
            if backend is not None and not self._backend_full:
                client.resume_reading()
            else:
                client.pause_reading()
        if backend is not None and not self.backend_eof and not backend.is_closing():
            if self._client_full:
                backend.pause_reading()
            else:
                backend.resume_reading()

    # -- ending --------------------------------------------------------------------------

    def client_lost(self, exc: Exception | None) -> None:
        self._client = None
        if self.end_reason is None:
            self._end("client_reset" if exc else "client_closed", reset=exc is not None)
        self._maybe_report()

    def backend_lost(self, side: _BackendSide, exc: Exception | None) -> None:
        self._sides.discard(side)
        if side.transport is self._backend:
            self._backend = None
            if self.end_reason is None:
                self._end("backend_reset" if exc else "backend_closed", reset=exc is not None)
        self._maybe_report()

    def _check_idle(self) -> None:
        self._idle_handle = None
        timeout = self.route.idle_timeout
        if timeout <= 0:
            return  # disabled by a route update since this relay started
        remaining = timeout - (self._loop.time() - self._last_activity)
        if remaining > 0:
            self._idle_handle = self._loop.call_later(remaining, self._check_idle)
            return
        # Data stuck in a buffer means a peer stopped reading: a graceful close would wait on
        # it for ever, and so would a pipe that is closing already.
        stuck = self.end_reason is not None or any(
            t is not None and t.get_write_buffer_size() for t in (self._client, self._backend)
        )
        self._end("idle_timeout", reset=stuck)
        if self._client is not None or self._sides:
            self._last_activity = self._loop.time()
            self._idle_handle = self._loop.call_later(timeout, self._check_idle)

    def abort(self, reason: str) -> None:
        """Reset both sides now (shutdown past its drain deadline), even mid-close."""
        self._end(reason, reset=True)

    def _end(self, reason: str, *, reset: bool = False) -> None:
        """Close both sides: gracefully (buffers flushed first) or with a reset."""
        if self.end_reason is None:
            self.end_reason = reason
        task = self._connect_task
        if task is not None and task is not asyncio.current_task():
            task.cancel()
        for transport in (self._client, self._backend):
            if transport is not None:
                if reset:
                    _reset(transport)
                elif not transport.is_closing():
                    transport.close()

    def _maybe_report(self) -> None:
        if (
            self._client is not None
            or self._sides
            or self._connect_task is not None
            or self._reported
        ):
            return
        self._reported = True
        if self._idle_handle is not None:
            self._idle_handle.cancel()
            self._idle_handle = None
        if self._half_close_handle is not None:
            self._half_close_handle.cancel()
            self._half_close_handle = None
        route = self.route
        backend = self.backend
        if not access_log.isEnabledFor(logging.INFO):
            route.finished(self)
            return
        client = f"{self.client_addr[0]}:{self.client_addr[1]}" if self.client_addr else "-"
        duration = time.monotonic() - self._started
        # The same fields twice: in the text line, and as "fields" for --log-format json.
        access_log.info(
            "app=%s route=%s client=%s backend=%s bytes_up=%d bytes_down=%d duration=%.3f end=%s",
            route.app,
            route.route_id,
            client,
            f"{backend.id}/{backend.ip}:{backend.port}" if backend else "-",
            self.bytes_up,
            self.bytes_down,
            duration,
            self.end_reason,
            extra={
                "fields": {
                    "event": "connection",
                    "app": route.app,
                    "route": route.route_id,
                    "client": client,
                    "backend": backend.id if backend else None,
                    "backend_addr": f"{backend.ip}:{backend.port}" if backend else None,
                    "bytes_up": self.bytes_up,
                    "bytes_down": self.bytes_down,
                    "duration": round(duration, 6),
                    "end": self.end_reason,
                }
            },
        )
        route.finished(self)


def _set_nodelay(transport: asyncio.Transport) -> None:
    # Both loops set it on TCP transports today; a relay of interactive protocols must not
    # depend on that, and the check costs one syscall per connection.
    sock: socket.socket | None = transport.get_extra_info("socket")
    if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def _reset(transport: asyncio.Transport) -> None:
    sock: socket.socket | None = transport.get_extra_info("socket")
    if sock is not None:
        # ValueError: uvloop's stand-in socket of a transport whose fd is closed already.
        with contextlib.suppress(OSError, ValueError):
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
        self.relay.client_full(True)

    def resume_writing(self) -> None:
        self.relay.client_full(False)

    def connection_lost(self, exc: Exception | None) -> None:
        self.relay.client_lost(exc)


class _BackendSide(asyncio.Protocol):
    """One connection attempt to a backend; it reports its loss to the relay once."""

    __slots__ = ("backend", "gone", "relay", "transport")

    def __init__(self, relay: Relay, backend: Backend) -> None:
        self.relay = relay
        self.backend = backend
        self.transport: asyncio.Transport | None = None
        self.gone = False

    def itself(self) -> _BackendSide:
        """The protocol factory of this attempt: the relay must know which side is which."""
        return self

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.relay.backend_made(self, self.transport)

    def data_received(self, data: bytes) -> None:
        self.relay.from_backend(data)

    def eof_received(self) -> bool:
        self.relay.backend_eof_received()
        return True

    def pause_writing(self) -> None:
        self.relay.backend_full(True)

    def resume_writing(self) -> None:
        self.relay.backend_full(False)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.gone:
            self.gone = True
            self.relay.backend_lost(self, exc)

    def drop(self) -> None:
        """Reset and count as lost now: the loop may not call connection_lost (see _connect)."""
        if not self.gone and self.transport is not None:
            _reset(self.transport)
            self.gone = True
            self.relay.backend_lost(self, ConnectionAbortedError("connect cancelled"))


def client_factory(
    route: RouteContext, loop: asyncio.AbstractEventLoop
) -> Callable[[], ClientSide]:
    return lambda: ClientSide(Relay(route, loop))
