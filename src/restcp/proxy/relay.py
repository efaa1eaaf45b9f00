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
held (one read, at most 256 KiB) and reading paused from there.

Connecting costs no task: a new client is the hot path of a proxy, and a Task per client
(plus an ``asyncio.timeout``) cost more than the rest of the set-up. The Relay steps the
loop's ``create_connection`` coroutine itself (``_step``): it sends into it, and the future
it yields calls ``_step`` back when done; the connect deadline is one of its timeouts;
abandoning an attempt (timeout, client gone) cancels the future it waits on, as a Task
would, and the coroutine's own cleanup closes the half-made transport. Each pick is paired
with exactly one of the route's ``connected``, ``connect_failed`` or ``connect_abandoned``,
which keeps its ``connecting`` counts exact.

Ending: the first reason recorded is the one logged. A graceful end closes both transports
after their buffers flush; the idle deadline holds until both are gone, so a peer that
stops reading cannot hold a closing pipe open for ever: it is reset after ``idle_timeout``
without progress. Each relay logs one access line, once both transports are lost and no
connect is running.

Timeouts (connect, half-close, idle) are loop times on the relay, not timer handles: the
relay is filed under the nearest in the node's proxy.deadlines.Deadlines, which calls
``deadline_reached`` once it has passed (at most 1/64 of that timeout late), and the relay
acts on whichever have passed and files itself again. Activity only moves
``_last_activity``; the idle deadline is worked out from it when the relay is due.

Splice routes (``route.splice``) take the same way up to the connect; then, instead of
resuming the client, ``_hand_over`` gives both connections to a proxy.splice.SplicePipe and
aborts the transports (the pipe has dups of their fds). Until then nothing is written to
either transport: the PROXY header and early bytes of either side are held and handed over
with the FINs seen. The Relay keeps its part, the timers, counters, ending and access line;
the pipe reports through ``splice_moved``, ``splice_eof``, ``splice_failed`` and
``splice_closed``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import socket
import struct
from collections.abc import Callable, Collection, Coroutine
from typing import Any, Protocol, cast

from restcp.model import Backend, is_host_name
from restcp.proxy.deadlines import Deadlines
from restcp.proxy.splice import CAN_SPLICE, SplicePipe, Splicer

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
    splice: bool
    splicer: Splicer
    deadlines: Deadlines

    def admit(self) -> str | None: ...

    def pick(self, tried: Collection[int], key: bytes) -> Backend | None: ...

    async def resolve(self, host: str, port: int) -> str:
        """The allowed address a host-name backend resolves to now; OSError if none."""

    def proxy_header(
        self,
        backend: Backend,
        client: tuple[str, int] | None,
        frontend: Callable[[], tuple[str, int] | None],
    ) -> bytes | None: ...

    def started(self, relay: Relay) -> None: ...

    def connected(self, relay: Relay) -> None: ...

    def connect_failed(self, backend: Backend, reason: str) -> None: ...

    def connect_abandoned(self, backend: Backend) -> None: ...

    def finished(self, relay: Relay) -> None: ...


class Relay:
    """The state of one pipe. It ends once both transports are lost and no connect is running."""

    __slots__ = (
        "_abandoning",
        "_attempt",
        "_backend",
        "_backend_full",
        "_client",
        "_client_full",
        "_connect_deadline",
        "_connecting",
        "_early",
        "_early_down",
        "_half_close_deadline",
        "_last_activity",
        "_loop",
        "_reported",
        "_sides",
        "_splice",
        "_splicing",
        "_started",
        "_tried",
        "_waiting",
        "backend",
        "backend_eof",
        "bytes_down",
        "bytes_up",
        "client_addr",
        "client_eof",
        "deadline_slot",
        "end_reason",
        "refused",
        "route",
    )

    def __init__(
        self,
        route: RouteContext,
        loop: asyncio.AbstractEventLoop,
        client_addr: tuple[str, int] | None = None,
    ) -> None:
        self.route = route
        self._loop = loop
        self._client: asyncio.Transport | None = None
        self._backend: asyncio.Transport | None = None
        # The connect in progress: the loop's coroutine, the future it waits on, its timeout.
        self._connecting: Coroutine[Any, Any, Any] | None = None
        self._waiting: asyncio.Future[Any] | None = None
        # Loop times. The relay is filed in route.deadlines under the nearest of them and
        # of its idle deadline (_refile); None: not running; inf: has fired (half-close).
        self._connect_deadline: float | None = None
        self._half_close_deadline: float | None = None
        self.deadline_slot: int | None = None  # Deadlines' own
        self._abandoning: str | None = None  # why the connect is being given up
        self._tried: tuple[int, ...] = ()  # backends tried for this client, in order
        # Set between pause_writing and resume_writing of that side's transport.
        self._client_full = False
        self._backend_full = False
        self._early = b""  # client bytes that arrived before the backend connected
        # Backend connections made and not yet lost: the current one, and any attempt that
        # came up too late to be used and is being reset. A count, not a set: each side
        # reports its loss once (_BackendSide.gone).
        self._sides = 0
        self._attempt: _BackendSide | None = None  # the connect in progress
        self._reported = False
        # Loop time, not time.monotonic(): uvloop's is cached per iteration, no syscall.
        self._started = self._last_activity = loop.time()
        self.backend: Backend | None = None
        # From accept(): asking the transport again costs a conversion per client.
        self.client_addr = client_addr
        self.bytes_up = 0  # client -> backend
        self.bytes_down = 0  # backend -> client
        self.client_eof = False
        self.backend_eof = False
        self.end_reason: str | None = None
        # Why the client was closed without reaching a backend (a limit, no backend left).
        self.refused: str | None = None
        # A splice route: the sockets go to a SplicePipe once the backend is connected.
        self._splicing = route.splice and CAN_SPLICE
        self._splice: SplicePipe | None = None
        self._early_down = b""  # (splicing) backend bytes that came before the hand-over

    @property
    def client_transport(self) -> asyncio.Transport | None:
        return self._client

    @property
    def backend_transport(self) -> asyncio.Transport | None:
        return self._backend

    @property
    def spliced(self) -> bool:
        """Whether the connections went to a SplicePipe (the transports are gone then)."""
        return self._splice is not None

    # -- setting up ----------------------------------------------------------------------

    def client_made(self, transport: asyncio.Transport) -> None:
        self._client = transport
        # Registered here, not when the protocol is built: connection_made is what promises
        # a connection_lost, so a relay that is counted always reports.
        self.route.started(self)
        if self.client_addr is None:
            peer = transport.get_extra_info("peername")
            self.client_addr = (peer[0], peer[1]) if peer else None
        refusal = self.route.admit()
        if refusal is not None:
            self.refused = refusal
            self._end(refusal, reset=True)
            return
        # TCP_NODELAY: uvloop sets it on every socket its transports take, the listener on
        # an accepted one under asyncio, and asyncio on the transports create_connection
        # makes (test_nodelay_both_sides holds them to it). Setting it through
        # get_extra_info("socket") cost three syscalls per side.
        self._flow()
        self._next_backend()

    def _next_backend(self) -> None:
        """Start connecting to the backend the route picks next, or end: none is left."""
        key = self.client_addr[0].encode() if self.client_addr else b""
        backend = self.route.pick(self._tried, key)
        if backend is None:
            self.refused = "no_backend"
            self._end("no_backend")
            return
        self._tried += (backend.id,)
        side = self._attempt = _BackendSide(self, backend)
        self._connect_deadline = self._loop.time() + self.route.connect_timeout
        self._refile()
        if is_host_name(backend.ip):
            self._connecting = self._resolve_and_connect(side)
        else:
            self._connecting = self._loop.create_connection(side.itself, backend.ip, backend.port)
        self._step()

    async def _resolve_and_connect(self, side: _BackendSide) -> None:
        backend = side.backend
        ip = await self.route.resolve(backend.ip, backend.port)
        await self._loop.create_connection(side.itself, ip, backend.port)

    def _step(self, _done: object = None) -> None:
        """Run the connect coroutine to its next wait. It only ever awaits futures, which
        call this back when done: a Task, without the Task."""
        coro = self._connecting
        if coro is None:
            return
        self._waiting = None
        try:
            waiting = coro.send(None)
        except StopIteration:
            self._connect_ended(None)
        except BaseException as err:
            self._connect_ended(err)
        else:
            if waiting is None:  # a bare yield (sleep(0)): go on next turn
                self._loop.call_soon(self._step)
                return
            self._waiting = waiting
            waiting.add_done_callback(self._step)
            if self._abandoning is not None:
                waiting.cancel()

    def _abandon_connect(self, why: str) -> None:
        """Give the connect up ("timeout": try the next backend; "end": the relay is ending).

        As a Task is cancelled: the future it waits on is cancelled, and the coroutine gets
        the CancelledError at its next step, after the callbacks the loop put on that future
        (asyncio's remove_writer of the connecting fd) have run. Closing the coroutine here
        and now would free the fd first, and such a late callback could then unregister the
        fd's next owner, the next attempt."""
        if why == "end" or self._abandoning is None:
            self._abandoning = why
        if self._waiting is not None:
            self._waiting.cancel()

    def _connect_ended(self, err: BaseException | None) -> None:
        """The connect coroutine has returned (err None) or raised."""
        self._connecting = None
        self._connect_deadline = None  # its entry in the deadlines stays, and finds nothing
        side, self._attempt = self._attempt, None
        why, self._abandoning = self._abandoning, None
        if side is None:
            return
        backend = side.backend
        if err is None and side.transport is None:
            # uvloop returns a transport closed before connection_made could run.
            err = ConnectionAbortedError("closed while connecting")
        if err is None and why != "end":
            # Connected; a timeout that fired in the same moment loses to the connection.
            self.backend = backend
            self.route.connected(self)
            if self._splicing:
                self._hand_over()
            return
        if side.transport is not None:
            # connection_made ran, then the attempt failed or was given up (asyncio runs
            # connection_made a turn before create_connection returns). The loop may close
            # that transport without calling connection_lost, so the side is counted lost
            # here. Early bytes may have gone to it: no failover, the relay ends with a reset.
            self.route.connect_abandoned(backend)
            side.drop()
            self._end("connect_failed", reset=True)
            self._maybe_report()
            return
        if why == "timeout" and isinstance(err, asyncio.CancelledError):
            err = TimeoutError()
        if why == "end" or not isinstance(err, OSError):  # TimeoutError is an OSError
            self.route.connect_abandoned(backend)
            if why != "end":
                log.error("relay connect failed unexpectedly", exc_info=err)
                self._end("connect_failed", reset=True)
            self._maybe_report()
            return
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
        if self.end_reason is None:
            self._next_backend()
        else:
            self._maybe_report()

    def backend_made(self, side: _BackendSide, transport: asyncio.Transport) -> None:
        self._sides += 1
        if side is not self._attempt or self._client is None or self.end_reason is not None:
            # asyncio may run connection_made after create_connection was abandoned; or the
            # client went away while we were connecting.
            _reset(transport)
            return
        self._backend = transport
        # Before any client byte: the backend reads the header first.
        header = self.route.proxy_header(side.backend, self.client_addr, self._frontend)
        if self._splicing:
            # Held, not written: the transports are to give their sockets up at the
            # hand-over (_connect_ended), and what one had buffered would be lost.
            if header is not None:
                self._early = header + self._early
            self._flow()  # both paused until then
            return
        if header is not None:
            transport.write(header)
        if self._early:
            # May pass the high-water mark and mark the backend full before _flow runs.
            transport.write(self._early)
            self._early = b""
        if self.client_eof:
            transport.write_eof()
        self._flow()

    def _hand_over(self) -> None:
        """Splice from now on: both connections go to a SplicePipe, the transports close."""
        client, backend = self._client, self._backend
        if client is None or backend is None or self.end_reason is not None:
            return  # ending already, through the transports
        try:
            pipe = SplicePipe(
                self,
                self._loop,
                self.route.splicer,
                client.get_extra_info("socket"),
                backend.get_extra_info("socket"),
            )
        except OSError as err:  # no fd for the dups (EMFILE): the transports relay it
            log.warning(
                "splice unavailable app=%s route=%s: %s; relaying without it",
                self.route.app, self.route.route_id, err,
            )  # fmt: skip
            self._unsplice(client, backend)
            return
        self._splice = pipe
        self._client = self._backend = None
        # Closes the transports' fds only: the connections live on in the pipe's dups. Their
        # connection_lost still comes, and only counts them gone (client_lost, backend_lost).
        client.abort()
        backend.abort()
        held_up, held_down, self._early, self._early_down = self._early, self._early_down, b"", b""
        pipe.start(held_up, held_down, self.client_eof, self.backend_eof)

    def _unsplice(self, client: asyncio.Transport, backend: asyncio.Transport) -> None:
        """Relay through the transports after all: write what was held, then flow."""
        self._splicing = False
        if self._early:
            backend.write(self._early)
            self._early = b""
        if self.client_eof:
            backend.write_eof()
        if self._early_down:
            client.write(self._early_down)
            self._early_down = b""
        if self.backend_eof:
            client.write_eof()
        if self.client_eof and self.backend_eof:
            self._end("closed")
        else:
            self._flow()

    # -- what a SplicePipe reports -------------------------------------------------------

    def splice_moved(self, up: bool, count: int) -> None:
        if up:
            self.bytes_up += count
        else:
            self.bytes_down += count
        self._last_activity = self._loop.time()

    def splice_eof(self, up: bool) -> None:
        if up:
            self.client_eof = True
        else:
            self.backend_eof = True
        self._half_closed()

    def splice_failed(self, side: str) -> None:
        self._end(f"{side}_reset", reset=True)

    def splice_closed(self) -> None:
        self._maybe_report()

    # -- data and EOF --------------------------------------------------------------------

    def from_client(self, data: bytes) -> None:
        self.bytes_up += len(data)
        self._last_activity = self._loop.time()
        if self._backend is not None and not self._splicing:
            self._backend.write(data)
        elif self.end_reason is None:
            self._early += data
            self._flow()

    def from_backend(self, data: bytes) -> None:
        self.bytes_down += len(data)
        self._last_activity = self._loop.time()
        if self._client is not None:
            if self._splicing:
                self._early_down += data  # before the hand-over: goes out first
            else:
                self._client.write(data)

    def client_eof_received(self) -> None:
        self.client_eof = True
        if self._backend is not None and not self._splicing:
            self._backend.write_eof()
        self._half_closed()

    def backend_eof_received(self) -> None:
        self.backend_eof = True
        if self._client is not None and not self._splicing:
            self._client.write_eof()
        self._half_closed()

    def _half_closed(self) -> None:
        if self.client_eof and self.backend_eof:
            if self._splicing and self._splice is None:
                return  # the hand-over sends what is held, then both FINs, then ends
            self._end("closed")
        elif self._half_close_deadline is None and self.route.half_close_timeout > 0:
            # A peer that never finishes its half of a half-closed pipe is closed eventually.
            self._half_close_deadline = self._loop.time() + self.route.half_close_timeout
            if self.deadline_slot is None or self.deadline_slot > self._half_close_deadline * 1000:
                self._refile()

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
            if backend is not None and not self._backend_full and not self._splicing:
                client.resume_reading()
            else:
                client.pause_reading()
        if backend is not None and not self.backend_eof and not backend.is_closing():
            if self._client_full or self._splicing:
                backend.pause_reading()
            else:
                backend.resume_reading()

    # -- ending --------------------------------------------------------------------------

    def client_lost(self, exc: Exception | None) -> None:
        if self._splice is not None:
            # The transport given up at the hand-over: the connection is the pipe's now.
            self._maybe_report()
            return
        self._client = None
        if self.end_reason is None:
            self._end("client_reset" if exc else "client_closed", reset=exc is not None)
        self._maybe_report()

    def backend_lost(self, side: _BackendSide, exc: Exception | None) -> None:
        self._sides -= 1
        if side.transport is self._backend:
            self._backend = None
            if self.end_reason is None:
                self._end("backend_reset" if exc else "backend_closed", reset=exc is not None)
        self._maybe_report()

    # -- timeouts ------------------------------------------------------------------------

    def _refile(self) -> None:
        """File the relay in the deadlines under the nearest of its timeouts, or under none."""
        route = self.route
        when, timeout = math.inf, 0.0
        if self._connect_deadline is not None:
            when, timeout = self._connect_deadline, route.connect_timeout
        if self._half_close_deadline is not None and self._half_close_deadline < when:
            when, timeout = self._half_close_deadline, route.half_close_timeout
        idle = route.idle_timeout
        if idle > 0 and self._last_activity + idle < when:
            when, timeout = self._last_activity + idle, idle
        if when == math.inf:
            route.deadlines.drop(self)
        else:
            route.deadlines.file(self, when, timeout)

    def deadline_reached(self) -> None:
        """The deadlines' call: act on every timeout that has passed, then refile."""
        now = self._loop.time()
        if self._connect_deadline is not None and self._connect_deadline <= now:
            self._connect_deadline = None
            self._abandon_connect("timeout")
        if self._half_close_deadline is not None and self._half_close_deadline <= now:
            self._half_close_deadline = math.inf  # once only
            self._end("half_close_timeout")
        # Read again each time: a route update may have changed it, or turned it off (0).
        idle = self.route.idle_timeout
        if idle > 0 and self._last_activity + idle <= now:
            self._idle_timed_out(now)
        if not self._reported:
            self._refile()

    def _idle_timed_out(self, now: float) -> None:
        # Data stuck in a buffer means a peer stopped reading: a graceful close would wait on
        # it for ever, and so would a pipe that is closing already.
        stuck = (
            self.end_reason is not None
            or any(
                t is not None and t.get_write_buffer_size() for t in (self._client, self._backend)
            )
            or (self._splice is not None and self._splice.holding())
        )
        self._end("idle_timeout", reset=stuck)
        # Still open (a graceful close waits on a peer): reset after another idle timeout.
        self._last_activity = now

    def abort(self, reason: str) -> None:
        """Reset both sides now (shutdown past its drain deadline), even mid-close."""
        self._end(reason, reset=True)

    def _end(self, reason: str, *, reset: bool = False) -> None:
        """Close both sides: gracefully (buffers flushed first) or with a reset."""
        if self.end_reason is None:
            self.end_reason = reason
        if self._connecting is not None:
            self._abandon_connect("end")
        for transport in (self._client, self._backend):
            if transport is not None:
                if reset:
                    _reset(transport)
                elif not transport.is_closing():
                    transport.close()
        if self._splice is not None:
            self._splice.close(reset)

    def _spliced_open(self) -> bool:
        return self._splice is not None and not self._splice.closed

    def _maybe_report(self) -> None:
        if (
            self._client is not None
            or self._sides
            or self._spliced_open()
            or self._connecting is not None
            or self._reported
        ):
            return
        self._reported = True
        route = self.route
        route.deadlines.drop(self)
        backend = self.backend
        if not access_log.isEnabledFor(logging.INFO):
            route.finished(self)
            return
        client = f"{self.client_addr[0]}:{self.client_addr[1]}" if self.client_addr else "-"
        duration = self._loop.time() - self._started
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
                    # JSON only: the text line keeps its fields.
                    "spliced": self._splice is not None,
                }
            },
        )
        route.finished(self)


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
        """Reset and count as lost now: the loop may not call connection_lost (see
        Relay._connect_ended)."""
        if not self.gone and self.transport is not None:
            _reset(self.transport)
            self.gone = True
            self.relay.backend_lost(self, ConnectionAbortedError("connect cancelled"))


def client_protocol(
    route: RouteContext, loop: asyncio.AbstractEventLoop, client_addr: tuple[str, int] | None
) -> ClientSide:
    """The protocol of one accepted client, whose address accept() gave already."""
    return ClientSide(Relay(route, loop, client_addr))
