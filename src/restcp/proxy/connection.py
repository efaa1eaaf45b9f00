"""One client's connection through the proxy, from accept to its access line.

    accept ──► Connection ── Connector ──► backend     (pick, resolve, connect, failover)
                  │
                  └── hands the connected pair to exactly one pipe at a time (pipes.py):
                        TransportPipe  (asyncio protocols: the default)
                        SplicePipe     (os.splice, once a read is bulk on a splice route)
                        StagedPipe     (through the stages of the toxics it meets)

The Connection owns what every pipe shares: the two transports, the timeouts, the byte
counters, the ending and the access line. A pipe moves bytes and reports (``PipeOwner``);
it never closes a socket. States, and the events that move a connection between them:

    state        what is going on                      leaves on
    ACCEPTED     its client end is made, no transport  client_made -> CONNECTING,
                                                       or refused -> CLOSING
    CONNECTING   the Connector reaches for a backend;  reached -> RELAYING;
                 the client's bytes are held           unreachable, broke, end -> CLOSING
    RELAYING     a pipe moves the bytes (``switch``    end -> CLOSING
                 hands them to another, at once)
    CLOSING      transports closing (or reset)         both lost, no connect -> DONE
    DONE         the route told, the access line out   -

*end* is any of: both FINs passed on ("closed"), a peer's reset or loss, a timeout, an
abort (drain deadline, disabled backend, shutdown). The first reason is the one logged.
A graceful end closes both transports after what they (and the pipe) still hold is
flushed; a reset drops it. The idle timeout keeps running while closing, so a peer that
stops reading cannot hold a closing connection open for ever: it is reset after
``idle_timeout`` without progress.

Until the backend connects, the client is not read: nothing is buffered for a backend that
may never come. asyncio honours a ``pause_reading`` in ``connection_made``; uvloop starts
reading after it returns, so the first chunk that arrives early is held (one read, at
most 256 KiB) by the client end, which then pauses.

Timeouts (connect, half-close, idle) are loop times on the connection, not timer handles:
it is filed under the nearest in the node's proxy.deadlines.Deadlines, which calls
``deadline_reached`` once it has passed (at most 1/64 of that timeout late); activity only
moves ``last_activity``, and the idle deadline is worked out from it when due.

Splice routes (the route's ``splice`` as it was when the client came): ``True`` starts every
connection on a SplicePipe once connected (what it holds by then goes out first); ``"auto"``
starts it on the TransportPipe, which reports a read that fills a whole buffer (``bulk``):
the Connection then ``switch``es to a SplicePipe, which hands back (``chatty``) once both
ways carry only small messages again. ``switch`` is the one way
pipes change, for any pipe: the current one stops and hands the next what it holds. A raw
pipe (one that writes to the sockets itself) takes over only when the transports' write
buffers are empty; a switch that finds them not empty does nothing, and the next bulk read
tries again (pipes.py says why nothing is paused to make them empty).

Toxics (proxy/stages.py): a connection that meets one (drawn once per toxic by its
``Meeting``) relays through a StagedPipe from its connect, or from the moment the toxic is
added to its route (``toxics_changed``: the RouteRuntime tells every connection), and
goes back to the pipe it had once it meets none. A route without toxics costs a
connection one test at its connect.

A connection the native engine relayed until its route moved here (proxy/handoff.py) is
an AdoptedConnection: made on both sockets at once, counted as connected already, it
starts relaying with what the engine held (``Handed``) and goes through the states as any
other from CONNECTING on.

The module is over 500 lines, a tenth of them this map: it is one state machine and the
one owner of what its pipes share; the mechanisms it drives (connecting, the pipes, the
stages, the deadlines) are modules of their own.
"""

from __future__ import annotations

import asyncio
import dataclasses
import enum
import logging
import math
from collections.abc import Callable, Sequence
from typing import Any, ClassVar, cast

from restcp import logs
from restcp.core.proxy_protocol import TlsInfo
from restcp.model import Backend, SpliceMode
from restcp.proxy.connector import Connector
from restcp.proxy.members import Member
from restcp.proxy.pipes import Held, Pipe
from restcp.proxy.runtime import RouteRuntime
from restcp.proxy.splice import SplicePipe
from restcp.proxy.splicer import CAN_SPLICE
from restcp.proxy.staged_pipe import StagedPipe
from restcp.proxy.stages import Meeting, Staging
from restcp.proxy.tls import HalfCloseless, Handshake, describe_session, session_info
from restcp.proxy.transport_pipe import BackendEnd, TlsTransportPipe, TransportPipe
from restcp.sockets import reset_transport

log = logging.getLogger("restcp.proxy")
access_log = logging.getLogger("restcp.access")


class State(enum.Enum):
    """Where a connection is (the table at the head of the module)."""

    ACCEPTED = "accepted"
    CONNECTING = "connecting"
    RELAYING = "relaying"
    CLOSING = "closing"
    DONE = "done"

    leads_to: tuple[State, ...]  # the states it may go to next


_NEXT: dict[State, tuple[State, ...]] = {
    State.ACCEPTED: (State.CONNECTING, State.CLOSING),
    State.CONNECTING: (State.RELAYING, State.CLOSING),
    State.RELAYING: (State.CLOSING,),
    State.CLOSING: (State.DONE,),
    State.DONE: (),
}
for _state, _targets in _NEXT.items():
    # On the members themselves: a check is then a look through a tuple, by identity; an
    # Enum's __hash__ is Python code, and the table was looked up four times per client.
    _state.leads_to = _targets

_NOTHING = Held()


class Connection:
    """One client's connection: its state machine, timers, counters, ending and access
    line; its bytes are its current pipe's to move (see the module)."""

    # The client transport's protocol class (TlsConnection's knows its transport is TLS).
    _client_end: ClassVar[type[TransportPipe]] = TransportPipe

    __slots__ = (
        "_connect_deadline",
        "_half_close_deadline",
        "_loop",
        "_splice",
        "_started",
        "backend",
        "backend_eof",
        "backend_transport",
        "bytes_down",
        "bytes_up",
        "client_addr",
        "client_eof",
        "client_transport",
        "connector",
        "deadline_slot",
        "end_reason",
        "last_activity",
        "meeting",
        "member",
        "number",
        "pipe",
        "refused",
        "route",
        "spliced",
        "state",
        "transports",
    )

    def __init__(
        self,
        route: RouteRuntime,
        loop: asyncio.AbstractEventLoop,
        client_addr: tuple[str, int] | None = None,
    ) -> None:
        self.route = route
        self._loop = loop
        self.state = State.ACCEPTED
        # The route's splice mode as it was when this client came: a change applies to new
        # connections.
        self._splice: SpliceMode = route.splice if CAN_SPLICE else False
        # The transport pipe exists from the start: its client end is the client
        # transport's protocol, from accept to the end.
        self.transports = self._client_end(self, loop, bulk=self._splice == "auto")
        self.pipe: Pipe | None = None  # the pipe moving the bytes (RELAYING)
        self.connector: Connector | None = None  # while connecting, or still busy
        self.client_transport: asyncio.Transport | None = None  # until lost
        self.backend_transport: asyncio.Transport | None = None
        # Loop times. The connection is filed in the deadlines under the nearest of them
        # and of its idle deadline (_refile); None: not running; inf: has fired.
        self._connect_deadline: float | None = None
        self._half_close_deadline: float | None = None
        self.deadline_slot: int | None = None  # Deadlines' own
        # Loop time, not time.monotonic(): uvloop's is cached per iteration, no syscall.
        self._started = self.last_activity = loop.time()
        self.member: Member | None = None  # the address connected to, once it is
        self.backend: Backend | None = None  # that backend, as it was when picked
        # From accept(): asking the transport again costs a conversion per client.
        self.client_addr = client_addr
        self.bytes_up = 0  # client -> backend
        self.bytes_down = 0  # backend -> client
        self.client_eof = False  # the client's FIN was passed on to the backend
        self.backend_eof = False
        self.end_reason: str | None = None
        # Why the client was closed without reaching a backend (a limit, no backend left).
        self.refused: str | None = None
        self.spliced = False  # it went to a SplicePipe at some point
        self.number = 0  # the n-th client of its route (its toxics' draws are of it)
        self.meeting: Meeting | None = None  # once its route has toxics

    @property
    def client_end(self) -> TransportPipe:
        """The client transport's protocol (what the listener gives its accept)."""
        return self.transports

    def _enter(self, state: State) -> None:
        if state not in self.state.leads_to:
            raise RuntimeError(f"connection cannot go from {self.state.name} to {state.name}")
        self.state = state

    # -- accepting and connecting (ConnectorOwner) ---------------------------------------

    def client_made(self, transport: asyncio.Transport) -> None:
        self.client_transport = transport
        # Registered here, not when the protocol is built: connection_made is what promises
        # a connection_lost, so a connection that is counted always reports.
        self.number = self.route.started(self)
        if self.client_addr is None:
            peer = transport.get_extra_info("peername")
            self.client_addr = (peer[0], peer[1]) if peer else None
        refusal = self.route.admit()
        if refusal is not None:
            self.refused = refusal
            self._end(refusal, reset=True)
            return
        self._enter(State.CONNECTING)
        # TCP_NODELAY: uvloop sets it on every socket its transports take, the listener on
        # an accepted one under asyncio, and asyncio on the transports create_connection
        # makes (test_nodelay_both_sides holds them to it).
        transport.pause_reading()
        key = self.client_addr[0].encode() if self.client_addr else b""
        self.connector = Connector(self, self.route, self._loop, self.transports, key)
        self.connector.next()

    def attempting(self) -> None:
        self._connect_deadline = self._loop.time() + self.route.connect_timeout
        self._refile()

    def reached(self, member: Member, backend: Backend, end: BackendEnd) -> None:
        self._connect_deadline = None  # its entry in the deadlines stays, and finds nothing
        self.member, self.backend = member, backend
        self.route.connected(self)
        if end.gone:  # lost between its connection_made and the connect's return
            self._end("backend_reset" if end.error else "backend_closed", reset=bool(end.error))
            return
        if end.tls and end.transport is not None:
            # TLS to the backend: a FIN towards it ends its session (proxy/origination.py).
            end.transport = cast(asyncio.Transport, HalfCloseless(end.transport))
        self.backend_transport = end.transport
        self._enter(State.RELAYING)
        transports = self.transports
        transports.attach(end)
        # Before any client byte: the backend reads the header first.
        header = self.route.proxy_header(backend, self)
        held = Held(up=header) if header is not None else _NOTHING
        if self.route.toxics:
            up, down = self._staging()
            if up or down:
                # What the ends held (early bytes, a banner) goes through the stages.
                early = transports.stop(keep=True)
                self._switch_to(lambda: self._staged(up, down, early), held)
                return
        if self._splice is True:
            # Spliced from the start: the transport pipe never starts, what its ends hold
            # goes to the splice pipe, and the transports fall quiet under it.
            early = transports.stop(keep=True)
            early = dataclasses.replace(early, up=held.up + early.up)
            for transport in (self.client_transport, self.backend_transport):
                if transport is not None:
                    transport.pause_reading()
            self._switch_to(lambda: self.splice_pipe(None), early)
            return
        self.pipe = transports
        transports.start(held)

    def unreachable(self) -> None:
        self.refused = "no_backend"
        self._end("no_backend")

    def broke(self) -> None:
        self._end("connect_failed", reset=True)

    def settled(self) -> None:
        self.connector = None  # nothing of it is needed any more
        self._maybe_report()

    def frontend(self) -> tuple[str, int] | None:
        """The address the client connected to (for a PROXY header)."""
        transport = self.client_transport
        sock = transport.get_extra_info("sockname") if transport is not None else None
        return (sock[0], sock[1]) if sock else None

    def tls_info(self) -> TlsInfo | None:
        """What its TLS handshake said (for a PROXY v2 header): none, the proxy did not
        terminate its TLS."""
        return None

    # -- what pipes report (PipeOwner) ---------------------------------------------------

    def moved(self, up: bool, count: int) -> None:
        if up:
            self.bytes_up += count
        else:
            self.bytes_down += count
        self.last_activity = self._loop.time()

    def eof(self, up: bool) -> None:
        if up:
            self.client_eof = True
        else:
            self.backend_eof = True
        if self.client_eof and self.backend_eof:
            self._end("closed")
        elif self._half_close_deadline is None and self.route.half_close_timeout > 0:
            # A peer that never finishes its half of a half-closed pipe is closed eventually.
            self._half_close_deadline = self._loop.time() + self.route.half_close_timeout
            if self.deadline_slot is None or self.deadline_slot > self._half_close_deadline * 1000:
                self._refile()

    def failed(self, side: str) -> None:
        self._end(f"{side}_reset", reset=True)

    def end(self, reason: str, *, reset: bool = False) -> None:
        """End the connection (a toxic's doing, the route disabled): gracefully, what is
        held flushed first, or with a reset."""
        self._end(reason, reset=reset)

    def bulk(self, up: bool) -> None:
        if self.pipe is self.transports:
            self.switch(lambda: self.splice_pipe(up), raw=True)

    def chatty(self) -> None:
        if self._splice == "auto" and isinstance(self.pipe, SplicePipe):
            self.switch(lambda: self.transports, raw=False)

    def client_lost(self, exc: Exception | None) -> None:
        self.client_transport = None
        if self.end_reason is None:
            self._end("client_reset" if exc else "client_closed", reset=exc is not None)
        self._maybe_report()

    def backend_lost(self, exc: Exception | None) -> None:
        self.backend_transport = None
        if self.end_reason is None:
            self._end("backend_reset" if exc else "backend_closed", reset=exc is not None)
        self._maybe_report()

    # -- switching pipes -----------------------------------------------------------------

    def switch(self, make: Callable[[], Pipe], *, raw: bool) -> bool:
        """Hand the connection to the pipe ``make`` builds, now: the current pipe stops and
        hands over what it holds. A ``raw`` pipe (one that writes to the sockets itself)
        takes over only if the transports' write buffers are empty: False if they are not
        (nothing changed; try again later), or if the connection is not relaying. If
        ``make`` fails (OSError: out of descriptors), the transport pipe takes over."""
        current = self.pipe
        if self.state is not State.RELAYING or current is None:
            return False
        if raw and any(
            t is None or t.get_write_buffer_size()
            for t in (self.client_transport, self.backend_transport)
        ):
            return False
        self._switch_to(make, current.stop(keep=True))
        return True

    def _switch_to(self, make: Callable[[], Pipe], held: Held) -> bool:
        """Start the pipe ``make`` builds with ``held``; if it cannot be had (OSError: out
        of descriptors), the transport pipe goes on with it instead, and the connection
        asks no more. Whether ``make``'s pipe took over."""
        try:
            pipe = make()
        except OSError as err:
            log.warning(
                "pipe switch failed app=%s route=%s: %s; relaying through the transports",
                self.route.app, self.route.route_id, err,
            )  # fmt: skip
            self.transports.watch_bulk(False)
            self.pipe = self.transports
            self.transports.start(held)
            return False
        self.pipe = pipe
        pipe.start(held)
        return True

    def splice_pipe(self, bulk_up: bool | None = None) -> SplicePipe:
        """A SplicePipe on this connection's sockets (``switch`` makes one with it);
        ``bulk_up``: which way brought it (SplicePipe). OSError when it cannot be had."""
        client, backend = self.client_transport, self.backend_transport
        if client is None or backend is None:
            raise OSError("a transport is gone")
        pipe = SplicePipe(
            self,
            self._loop,
            self.route.traffic.splicer,
            client.get_extra_info("socket"),
            backend.get_extra_info("socket"),
            bulk_up=bulk_up,
        )
        self.spliced = True
        return pipe

    # -- toxics --------------------------------------------------------------------------

    def toxics_changed(self) -> None:
        """The route's toxics changed: the connection meets those aimed at it now, at once
        (one not relaying yet meets them when it starts to)."""
        pipe = self.pipe
        if self.state is not State.RELAYING or pipe is None:
            return
        up, down = self._staging()
        if isinstance(pipe, StagedPipe):
            pipe.restage(up, down)
            if pipe.empty() and self.pipe is pipe and self.state is State.RELAYING:
                # Back to what the route's splice mode would have it on.
                if self._splice is True and self.switch(self.splice_pipe, raw=True):
                    return
                self.switch(lambda: self.transports, raw=False)
                if self._splice is True:
                    self.transports.watch_bulk(True)  # spliced again at a bulk read
        elif up or down:
            self.switch(lambda: self._staged(up, down), raw=False)

    def _staging(self) -> tuple[Sequence[Staging], Sequence[Staging]]:
        route = self.route
        if self.meeting is None:
            self.meeting = Meeting(self.number, self.client_addr[0] if self.client_addr else None)
        return self.meeting.staging(
            route.toxics, route.seed, (route.app, route.route_id), route.tallies
        )

    def _staged(
        self, up: Sequence[Staging], down: Sequence[Staging], early: Held | None = None
    ) -> StagedPipe:
        return StagedPipe(self, self._loop, self.transports, up, down, early)

    # -- timeouts ------------------------------------------------------------------------

    def _refile(self) -> None:
        """File the connection in the deadlines under the nearest of its timeouts, or none."""
        route = self.route
        when, timeout = math.inf, 0.0
        if self._connect_deadline is not None:
            when, timeout = self._connect_deadline, route.connect_timeout
        if self._half_close_deadline is not None and self._half_close_deadline < when:
            when, timeout = self._half_close_deadline, route.half_close_timeout
        idle = route.idle_timeout
        if idle > 0 and self.last_activity + idle < when:
            when, timeout = self.last_activity + idle, idle
        if when == math.inf:
            route.traffic.deadlines.drop(self)
        else:
            route.traffic.deadlines.file(self, when, timeout)

    def deadline_reached(self) -> None:
        """The deadlines' call: act on every timeout that has passed, then refile."""
        now = self._loop.time()
        if self._connect_deadline is not None and self._connect_deadline <= now:
            self._connect_deadline = None
            if self.connector is not None:
                self.connector.timed_out()
        if self._half_close_deadline is not None and self._half_close_deadline <= now:
            self._half_close_deadline = math.inf  # once only
            self._end("half_close_timeout")
        # Read again each time: a route update may have changed it, or turned it off (0).
        idle = self.route.idle_timeout
        if idle > 0 and self.last_activity + idle <= now:
            self._idle_timed_out(now)
        if self.state is not State.DONE:
            self._refile()

    def _idle_timed_out(self, now: float) -> None:
        # Data stuck in a buffer means a peer stopped reading: a graceful close would wait on
        # it for ever, and so would a connection that is closing already.
        stuck = (
            self.end_reason is not None
            or any(
                t is not None and t.get_write_buffer_size()
                for t in (self.client_transport, self.backend_transport)
            )
            or (self.pipe is not None and self.pipe.holding())
        )
        self._end("idle_timeout", reset=stuck)
        # Still open (a graceful close waits on a peer): reset after another idle timeout.
        self.last_activity = now

    # -- ending --------------------------------------------------------------------------

    def abort(self, reason: str) -> None:
        """Reset both sides now (shutdown past its drain deadline), even mid-close."""
        self._end(reason, reset=True)

    def _end(self, reason: str, *, reset: bool = False) -> None:
        """Close both sides: gracefully (what is held flushed first) or with a reset."""
        if self.end_reason is None:
            self.end_reason = reason
        if self.state is not State.CLOSING and self.state is not State.DONE:
            self._enter(State.CLOSING)
        if self.connector is not None and self.connector.running:
            self.connector.abandon()
        held = _NOTHING
        if self.pipe is not None:
            held = self.pipe.stop(keep=not reset)
            self.pipe = None
        for transport, rest in (
            (self.client_transport, held.down),
            (self.backend_transport, held.up),
        ):
            if transport is None:
                continue
            if reset:
                reset_transport(transport)
            elif not transport.is_closing():
                if rest:
                    transport.write(rest)
                transport.close()

    def _maybe_report(self) -> None:
        if (
            self.client_transport is not None
            or self.backend_transport is not None
            or (self.connector is not None and self.connector.busy)
            or self.state is State.DONE
        ):
            return
        self._enter(State.DONE)
        self.connector = None
        route = self.route
        route.traffic.deadlines.drop(self)
        if access_log.isEnabledFor(logging.INFO):
            self._log_access()
        route.finished(self)

    def _log_access(self, tls: tuple[str, str, str | None] | None = None) -> None:
        """The access line; ``tls``: (version, cipher, SNI) of a terminated connection."""
        route, backend = self.route, self.backend
        client = f"{self.client_addr[0]}:{self.client_addr[1]}" if self.client_addr else "-"
        met = list(self.meeting.met) if self.meeting is not None else []
        duration = self._loop.time() - self._started
        fields: dict[str, Any] = {
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
            "spliced": self.spliced,
            "toxics": met,
        }
        suffix = f" toxics={','.join(met)}" if met else ""
        if tls is not None:
            version, cipher, sni = tls
            fields.update(tls_version=version, tls_cipher=cipher, sni=sni)
            suffix += f" tls={version} cipher={cipher} sni={sni or '-'}"
        # The same fields twice: in the text line, and as "fields" for --log-format json.
        logs.access(
            "app=%s route=%s client=%s backend=%s bytes_up=%d bytes_down=%d duration=%.3f end=%s%s",
            (
                route.app,
                route.route_id,
                client,
                f"{backend.id}/{backend.ip}:{backend.port}" if backend else "-",
                self.bytes_up,
                self.bytes_down,
                duration,
                self.end_reason,
                # Only on a connection that met toxics, or terminated TLS: the line of others
                # is as it was.
                suffix,
            ),
            fields,
        )


@dataclasses.dataclass(frozen=True, slots=True)
class Handed:
    """A relaying connection as the native engine hands it over (proxy/handoff.py): what
    it held each way and how far its FINs had got, its counts, and its clocks as ages."""

    held: Held
    bytes_up: int
    bytes_down: int
    age: float  # since its accept
    idle_for: float  # since its last activity
    half_for: float  # since a direction was shut (-1: none is)
    spliced: bool


class AdoptedConnection(Connection):
    """A connection the native engine relayed until its route moved to the asyncio data
    plane (proxy/handoff.py). Counted by its route from the moment it is made (its bytes
    so far, as the engine counted them, among the route's live ones), without counting it
    again: the engine's record counted it connected, and its place under the node's caps
    comes with it (RouteRuntime.adopt). Its backend transport is made first (``end``,
    whose loss is noted meanwhile), then its client's, whose ``client_made`` starts it
    relaying as ``reached`` starts a new one."""

    __slots__ = ("_end_made", "_handed")

    def __init__(
        self,
        route: RouteRuntime,
        loop: asyncio.AbstractEventLoop,
        client_addr: tuple[str, int] | None,
        handed: Handed,
        member: Member | None,
        backend: Backend | None,
    ) -> None:
        super().__init__(route, loop, client_addr)
        self._handed = handed
        self.member, self.backend = member, backend
        self.spliced = handed.spliced
        self.bytes_up, self.bytes_down = handed.bytes_up, handed.bytes_down
        now = loop.time()
        self._started = now - handed.age
        self.last_activity = now - handed.idle_for
        self._end_made = self.transports.attempt(self)
        self.number = route.started(self)
        route.adopt(self)

    @property
    def backend_end(self) -> BackendEnd:
        """The backend transport's protocol (made before the client's)."""
        return self._end_made

    # The backend end reports here until ``client_made`` hands it over: a loss meanwhile
    # is in its ``gone``.
    def made(self, end: BackendEnd) -> None:
        pass

    def lost(self, end: BackendEnd, exc: Exception | None) -> None:
        pass

    def not_made(self) -> None:
        """Its transports could not be made (proxy/handoff.py reset its sockets): it ends
        here, with its access line and counters."""
        end = self._end_made
        end.connector = None
        if end.transport is not None and not end.gone:
            self.backend_transport = end.transport
        self._end("aborted", reset=True)
        self._maybe_report()

    def client_made(self, transport: asyncio.Transport) -> None:
        self.client_transport = transport
        handed, end = self._handed, self._end_made
        end.connector = None  # its loss is the connection's from now on
        if end.transport is not None and not end.gone:
            self.backend_transport = end.transport
        if self.end_reason is not None:
            # Reset meanwhile (the shutdown's deadline): its transports go the same way.
            self._end(self.end_reason, reset=True)
            return
        self._enter(State.CONNECTING)
        transport.pause_reading()
        if self.backend_transport is None:
            self._end("backend_reset" if end.error else "backend_closed", reset=bool(end.error))
            return
        self._enter(State.RELAYING)
        held = handed.held
        # A FIN passed on by the engine is this connection's already; the half-close
        # timeout runs from when the engine passed it.
        self.client_eof, self.backend_eof = held.up_shut, held.down_shut
        timeout = self.route.half_close_timeout
        if handed.half_for >= 0 and timeout > 0:
            self._half_close_deadline = self._loop.time() - handed.half_for + timeout
        transports = self.transports
        transports.attach(end)
        self.pipe = transports
        # What the engine held goes first (before what the ends read since), FINs after it.
        transports.start(held)
        if self.state is State.RELAYING and self.pipe is transports:
            if self.route.toxics:
                self.toxics_changed()
            elif self._splice is True:
                transports.watch_bulk(True)  # spliced again at a bulk read
        if self.state is not State.DONE:
            self._refile()


class TlsConnection(Connection):
    """A connection whose TLS the proxy terminates (proxy/tls.py): made once the handshake
    is done, it relays the plain bytes as any other does, through a transport that turns a
    FIN towards the client into the end of its session, and its access line names the TLS
    version, cipher and SNI. A route without TLS never makes one."""

    __slots__ = ("_session", "handshake")
    _client_end = TlsTransportPipe

    handshake: Handshake  # its handshake (set by tls_client_protocol)

    def client_made(self, transport: asyncio.Transport) -> None:
        # Its handshake's place under the limits is given back first: admit() judges the
        # Connection as it judges any other.
        self.handshake.done()
        self._session = describe_session(transport)
        wrapped = cast(asyncio.Transport, HalfCloseless(transport))
        self.transports.transport = wrapped
        super().client_made(wrapped)

    def _log_access(self, tls: tuple[str, str, str | None] | None = None) -> None:
        super()._log_access(self._session)

    def tls_info(self) -> TlsInfo | None:
        transport = self.client_transport
        ssl_object = transport.get_extra_info("ssl_object") if transport is not None else None
        if ssl_object is None:
            return None
        return session_info(ssl_object)


def client_protocol(
    route: RouteRuntime, loop: asyncio.AbstractEventLoop, client_addr: tuple[str, int] | None
) -> TransportPipe:
    """The protocol of one accepted client, whose address accept() gave already."""
    return Connection(route, loop, client_addr).transports


def tls_client_protocol(
    route: RouteRuntime,
    loop: asyncio.AbstractEventLoop,
    client_addr: tuple[str, int] | None,
    handshake: Handshake,
) -> TransportPipe:
    """As client_protocol, for a route that terminates TLS: the protocol the TLS transport
    gets once ``handshake`` is done."""
    connection = TlsConnection(route, loop, client_addr)
    connection.handshake = handshake
    return connection.transports
