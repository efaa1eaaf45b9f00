"""The default pipe: a connection relayed through its two asyncio transports.

    client ──► TransportPipe.data_received ──► backend transport.write ──► backend
    client ◄── client transport.write ◄── BackendEnd.data_received ◄── backend

Each transport's protocol is one *end* of the pipe, and an end writes what it reads
straight into the other transport: the hot path is one Python call per chunk, with the
counters and the activity time updated on the owner (proxy.connection.Connection) in
place. The client's end is the TransportPipe itself (one object less per connection, a
tenth of what an idle one holds besides its transports); the backend's is a BackendEnd,
one per connect attempt. The ends are made before the pipe starts (at accept, at each
attempt) and, until it starts, *hold* what their peer sends (at most one read: they pause
their transport after it), so nothing is buffered for a backend that may never come.

Flow control: when a transport's write buffer passes its high-water mark, asyncio calls
``pause_writing`` on that transport's end, and the pipe stops reading the *other* peer
until ``resume_writing``; the kernel's socket buffers then push back on the fast peer, so
the memory of a connection stays bounded whatever its peers do.

Half-close: ``eof_received`` returns True to keep the transport open and passes the FIN on
with ``write_eof`` (shutdown(SHUT_WR) once the buffer is flushed); the other direction keeps
flowing. An end that has read its FIN is never paused or resumed again: resuming a reader
past EOF makes both loops read the EOF a second time. Resets and the ending are the
owner's: an end reports ``connection_lost`` and the owner closes or resets both transports.

Splice: on a splice route the ends report a read that fills ``BULK`` (``owner.bulk``),
after writing it on; the owner hands the transports' sockets to a proxy.splice.SplicePipe
if both write buffers are empty then (else it tries again at the next bulk read). The
transports stay open under it, their reading paused (``stop``), and this pipe takes over
again (``start``) when the splice pipe hands back.
"""

from __future__ import annotations

import asyncio
import sys
from typing import ClassVar, Protocol, cast

from restcp.proxy.pipes import Held, PipeOwner, settled

# A read this big is bulk: uvloop reads at most 256 KiB at a time, asyncio too; a whole
# 64 KiB means the peer sends faster than we read, and a splice pays for itself.
BULK = 64 * 1024
NEVER = sys.maxsize  # the bulk threshold of a connection that never splices


class Attempts(Protocol):
    """Who a BackendEnd reports to until it is handed over (proxy.connector.Connector)."""

    def made(self, end: BackendEnd) -> None: ...

    def lost(self, end: BackendEnd, exc: Exception | None) -> None: ...


class _End(asyncio.Protocol):
    """One transport of the pipe, as its protocol. ``peer`` is the other transport while
    the pipe runs (None: hold what comes).

    ``data_received`` is written out in each end, one per counter: the hot path of the
    relay takes no branch on the direction and makes no call but the write."""

    __slots__ = ("bulk_at", "eof", "full", "held", "loop", "owner", "peer", "transport")

    UP: ClassVar[bool]  # whether this end reads the client (its bytes go up)
    # Its transport is a TLS session (terminated, or to the backend): one that ends at the
    # peer's close_notify, whatever eof_received says. A class's, not a slot: an idle
    # connection holds two ends, and a slot each is bytes on every one.
    tls: ClassVar[bool] = False

    def __init__(self, owner: PipeOwner, loop: asyncio.AbstractEventLoop, bulk_at: int) -> None:
        self.owner = owner
        # For its clock: cached per iteration under uvloop, no syscall.
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        self.peer: asyncio.Transport | None = None
        self.bulk_at = bulk_at
        self.held = b""  # read before the pipe started
        self.eof = False  # this end's peer sent its FIN
        self.full = False  # this end's transport is above its high-water mark

    def hold(self, data: bytes) -> None:
        self.held += data
        if self.transport is not None:
            self.transport.pause_reading()

    def eof_received(self) -> bool:
        self.eof = True
        if self.peer is not None:
            self.peer.write_eof()
            self.owner.eof(self.UP)
        # Kept open for the other way, but a TLS transport (asyncio would log that keeping
        # one open has no effect).
        return not self.tls

    # This end's write buffer is full: stop reading the other peer until it drains.
    def pause_writing(self) -> None:
        self.full = True
        self.pipe().flow()

    def resume_writing(self) -> None:
        self.full = False
        self.owner.last_activity = self.loop.time()  # the peer is reading: progress
        self.pipe().flow()

    def pipe(self) -> TransportPipe:
        raise NotImplementedError


class BackendEnd(_End):
    """The protocol of one connect attempt's transport. Until its connector hands it over
    (``connector`` None from then on) the attempt is the connector's, and so is its loss."""

    __slots__ = ("_pipe", "connector", "error", "gone")
    UP = False

    def __init__(self, pipe: TransportPipe, connector: Attempts) -> None:
        super().__init__(pipe.owner, pipe.loop, pipe.bulk_at)
        self._pipe = pipe
        self.connector: Attempts | None = connector
        self.gone = False  # its connection_lost came (or was counted: Connector drops it)
        self.error: Exception | None = None  # what it was lost with

    def pipe(self) -> TransportPipe:
        return self._pipe

    def itself(self) -> BackendEnd:
        """The protocol factory of this attempt: the connector must know which is which."""
        return self

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        if self.connector is not None:
            self.connector.made(self)

    def data_received(self, data: bytes) -> None:
        owner = self.owner
        owner.bytes_down += len(data)
        owner.last_activity = self.loop.time()
        peer = self.peer
        if peer is not None:
            peer.write(data)
            if len(data) >= self.bulk_at:
                owner.bulk(False)
        else:
            self.hold(data)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.gone:
            return
        self.gone = True
        self.error = exc
        if self.connector is not None:
            self.connector.lost(self, exc)
        else:
            self.owner.backend_lost(exc)


class TlsBackendEnd(BackendEnd):
    """The end of a connect attempt that speaks TLS to the backend (proxy/origination.py)."""

    __slots__ = ()
    tls = True


class TransportPipe(_End):
    """Relays through the two transports (see the module's docstring). It is the client
    transport's protocol, from accept to the end of the connection; ``attach`` gives it
    the backend end that connected. It runs while its ends have their peers."""

    __slots__ = ("backend",)
    UP = True
    raw: ClassVar[bool] = False

    def __init__(
        self, owner: PipeOwner, loop: asyncio.AbstractEventLoop, *, bulk: bool = False
    ) -> None:
        super().__init__(owner, loop, BULK if bulk else NEVER)
        self.backend: BackendEnd | None = None

    def pipe(self) -> TransportPipe:
        return self

    @property
    def running(self) -> bool:
        return self.peer is not None

    # -- the client transport's protocol -------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.owner.client_made(self.transport)

    def data_received(self, data: bytes) -> None:
        owner = self.owner
        owner.bytes_up += len(data)
        owner.last_activity = self.loop.time()
        peer = self.peer
        if peer is not None:
            peer.write(data)
            if len(data) >= self.bulk_at:
                owner.bulk(True)
        else:
            self.hold(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self.owner.client_lost(exc)

    # -- its backend end -----------------------------------------------------------------

    def attempt(self, connector: Attempts, tls: bool = False) -> BackendEnd:
        """The protocol of a new connect attempt (``tls``: one over TLS)."""
        return TlsBackendEnd(self, connector) if tls else BackendEnd(self, connector)

    def attach(self, end: BackendEnd) -> None:
        """The backend connected through ``end``: the pipe's from now on."""
        self.backend = end

    def watch_bulk(self, on: bool) -> None:
        """Report bulk reads (``owner.bulk``) or not: off once splicing proved impossible."""
        self.bulk_at = BULK if on else NEVER
        if self.backend is not None:
            self.backend.bulk_at = self.bulk_at

    # -- the Pipe interface --------------------------------------------------------------

    def start(self, held: Held) -> None:
        backend = self.backend
        c = self.transport
        assert backend is not None
        assert c is not None
        b = backend.transport
        assert b is not None
        # Back from another transport pipe: take the protocols back (a restart of each
        # transport's reading, so never on the first start: the ends are its protocols).
        if c.get_protocol() is not self:
            c.set_protocol(self)
        if b.get_protocol() is not backend:
            b.set_protocol(backend)
        up, down = held.up + self.held, held.down + backend.held
        self.held = backend.held = b""
        # FINs read now (by this pipe's ends before it started, or by the last pipe) and not
        # passed on yet go after the bytes before them.
        up_fin = (self.eof or held.up_eof) and not held.up_shut
        down_fin = (backend.eof or held.down_eof) and not held.down_shut
        self.eof = self.eof or held.up_eof
        backend.eof = backend.eof or held.down_eof
        self.peer, backend.peer = b, c
        if up:
            b.write(up)
        if up_fin:
            b.write_eof()
        if down:
            c.write(down)
        if down_fin:
            c.write_eof()
        self.flow()
        # Last: the owner may end the connection on hearing of both FINs.
        if up_fin:
            self.owner.eof(True)
        if down_fin and self.running:
            self.owner.eof(False)

    def stop(self, keep: bool) -> Held:
        backend = self.backend
        running = self.running
        up_eof = self.eof
        down_eof = backend is not None and backend.eof
        up = self.held if keep else b""
        down = backend.held if keep and backend is not None else b""
        # A FIN read while running was passed on at once (write_eof).
        held = settled(up_eof, down_eof, running) if not (up or down) else None
        if held is None:
            held = Held(up, down, up_eof, down_eof, up_eof and running, down_eof and running)
        for end in (self, backend):
            if end is None:
                continue
            end.held = b""
            end.peer = None
            # Quiet under the next pipe (or while closing): a raw one reads the sockets.
            transport = end.transport
            if running and transport is not None and not end.eof and not transport.is_closing():
                transport.pause_reading()
        return held

    def holding(self) -> bool:
        return bool(self.held or (self.backend is not None and self.backend.held))

    # -- flow control --------------------------------------------------------------------

    def flow(self) -> None:
        """Read each peer exactly when what it sends has somewhere to go."""
        backend = self.backend
        if self.peer is None or backend is None:
            return
        c, b = self.transport, backend.transport
        assert c is not None
        assert b is not None
        if not self.eof and not c.is_closing():
            if backend.full:
                c.pause_reading()
            else:
                c.resume_reading()
        if not backend.eof and not b.is_closing():
            if self.full:
                b.pause_reading()
            else:
                b.resume_reading()


class TlsTransportPipe(TransportPipe):
    """The TransportPipe of a connection whose client's TLS the proxy terminates."""

    __slots__ = ()
    tls = True
