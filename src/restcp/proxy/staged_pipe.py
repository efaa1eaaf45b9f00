"""The pipe of a connection that meets toxics: a transport pipe whose ways pass through stages.

    client ─► _Side ─► up way:   stage ─► stage ─► sink: backend transport.write
    client ◄─ sink: client transport.write ◄─ stage ◄─ down way ◄─ _Side ◄─ backend

A connection of a route without toxics never has one: the TransportPipe relays it, and
pays nothing for toxics. A connection that meets a toxic (at its connect, or when the toxic
is added under it) is handed to a StagedPipe with ``Connection.switch``; its ends, the
``_Side``\\ s, become the transports' protocols (``set_protocol``). What the last pipe held
was read before the toxics met the connection: it goes out first, as it is. The bytes and
FINs the ends held before any pipe ran (a backend's banner, the client's first bytes) go
through the stages.

Each way is a chain of proxy.stages.Stage, one per toxic the connection meets in that
direction, in the route's order, and its *sink* at the end: bytes are written to the
other transport, a FIN is passed on with ``write_eof`` (reported as ``owner.eof``), and an
END (a stage closing the connection in order) ends the connection gracefully: what the
other way holds is flushed, what this way holds came after the END and is dropped.

Live changes (``restage``): a toxic changed is changed in its stage (its new attributes
apply to what it holds), one added gets a new stage, one removed hands what it held, in
order, to the stage after it (or the sink). When no stage is left in either way the
connection goes back to the TransportPipe (or, on a splice route, the SplicePipe).

Flow control: a way reads its source while its destination transport is below its
high-water mark (the TransportPipe's ends keep that state for either pipe: a transport
tells only its current protocol) and its stages hold less than HIGH bytes; past HIGH the
source is paused until they hold LOW or less. So a connection's memory stays bounded
whatever a stage holds back (a timeout holding everything, a slow bandwidth).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import ClassVar

from restcp.proxy.pipes import Held, PipeOwner
from restcp.proxy.stages import FIN, Downstream, Item, Stage, Staging, make_stage, size
from restcp.proxy.transport_pipe import BackendEnd, TransportPipe

HIGH = 256 * 1024
LOW = 64 * 1024


class _Way:
    """One direction of a StagedPipe: its source read into its stages, and the sink at
    their end (proxy.stages.Way)."""

    __slots__ = ("backlog", "choked", "dst", "ended", "eof", "head", "loop", "pipe", "shut",
                 "src", "stages", "stopped", "tracks", "up")  # fmt: skip

    def __init__(
        self,
        pipe: StagedPipe,
        *,
        up: bool,
        src: asyncio.Transport,
        dst: asyncio.Transport,
        tracks: TransportPipe | BackendEnd,
    ) -> None:
        self.pipe = pipe
        self.loop = pipe.loop
        self.up = up
        self.src, self.dst = src, dst
        # The TransportPipe's end of ``dst``, whose ``full`` says its buffer is above the
        # high-water mark.
        self.tracks = tracks
        self.stages: list[Stage] = []
        self.head: Downstream = self
        self.backlog = 0  # bytes its stages hold
        self.choked = False  # above HIGH, not yet back to LOW: the source is paused
        self.eof = False  # the source's FIN was read
        self.shut = False  # ... and passed on
        self.ended = False  # an END reached the sink
        self.stopped = False

    def build(self, stagings: Sequence[Staging]) -> None:
        self.stages = [make_stage(staging, self) for staging in stagings]
        self._link()

    def _link(self) -> None:
        after: Downstream = self
        for stage in reversed(self.stages):
            stage.next = after
            after = stage
        self.head = after

    # -- from the source -----------------------------------------------------------------

    def enter(self, data: bytes, at: float) -> None:
        self.head.push(data, at)
        if self.backlog > HIGH and not self.choked and not self.stopped:
            self.choked = True
            self.pipe.flow()

    def fin(self, at: float) -> None:
        self.eof = True
        self.head.push(FIN, at)

    # -- the sink (the end of the stages) ------------------------------------------------

    def push(self, item: Item, at: float) -> None:
        if self.stopped:
            return
        if isinstance(item, bytes):
            self.dst.write(item)
        elif item.reason is None:
            if not self.shut:
                self.shut = True
                self.dst.write_eof()
                self.pipe.owner.eof(self.up)
        else:
            self.ended = True
            self.pipe.owner.end(item.reason)

    # -- what the stages ask (proxy.stages.Way) ------------------------------------------

    def relieved(self) -> None:
        if self.choked and self.backlog <= LOW and not self.stopped:
            self.choked = False
            self.pipe.flow()

    def reset(self, reason: str) -> None:
        self.pipe.owner.end(reason, reset=True)

    # -- changes -------------------------------------------------------------------------

    def restage(self, wanted: Sequence[Staging]) -> None:
        """Stages for exactly ``wanted``, in its order: kept where a stage of that toxic is
        (in the same order relative to the others kept), made where none is; the others
        removed, what they held handed on in order."""
        old = self.stages
        index = {stage.toxic.name: i for i, stage in enumerate(old)}
        stages: list[Stage] = []
        kept: set[int] = set()
        last = -1
        for staging in wanted:
            toxic = staging.toxic
            i = index.get(toxic.name, -1)
            if i > last and old[i].toxic.type == toxic.type:
                last = i
                kept.add(i)
                stage = old[i]
                if stage.toxic.attributes != toxic.attributes:
                    stage.change(toxic)
                stage.toxic = toxic
            else:
                stage = make_stage(staging, self)
            stages.append(stage)
        self.stages = stages
        self._link()
        # What a removed stage held is older than what the stages before it hold and newer
        # than what the ones after it hold: it goes to what follows the last stage kept
        # before it, the oldest first (so from the end of the old chain).
        flushes: list[tuple[Downstream, Stage]] = []
        target: Downstream = self.head
        for i, stage in enumerate(old):
            if i in kept:
                target = stage.next
            else:
                flushes.append((target, stage))
        for target, stage in reversed(flushes):
            for item, at in stage.remove():
                if self.stopped:  # an END went out meanwhile: what came after it goes
                    stage.drop(size(item))
                else:
                    target.push(item, at)

    def stop(self, keep: bool) -> bytes:
        """The bytes the stages hold, oldest first, up to an END (``keep``; the rest is
        dropped, and counted so); their timers cancelled."""
        self.stopped = True
        cut = not keep or self.ended
        chunks: list[bytes] = []
        for stage in reversed(self.stages):
            for item, _at in stage.take():
                if cut:
                    stage.drop(size(item))
                elif isinstance(item, bytes):
                    chunks.append(item)
                elif item.reason is not None:
                    cut = True
        return b"".join(chunks)


class _Side(asyncio.Protocol):
    """One transport of a StagedPipe, as its protocol: it reads into ``way``, and keeps
    its transport's write state on ``tracks`` (the TransportPipe's end of it)."""

    __slots__ = ("pipe", "tracks", "up", "way")

    def __init__(self, pipe: StagedPipe, way: _Way, tracks: TransportPipe | BackendEnd) -> None:
        self.pipe = pipe
        self.way = way
        self.up = way.up
        self.tracks = tracks

    def data_received(self, data: bytes) -> None:
        pipe = self.pipe
        owner = pipe.owner
        if self.up:
            owner.bytes_up += len(data)
        else:
            owner.bytes_down += len(data)
        now = owner.last_activity = pipe.loop.time()
        if not pipe.stopped:
            self.way.enter(data, now)

    def eof_received(self) -> bool:
        way = self.way
        if not self.pipe.stopped and not way.eof:
            way.fin(self.pipe.loop.time())
        # A TLS session ends at the peer's close_notify whatever this says.
        return not self.tracks.tls

    def pause_writing(self) -> None:
        self.tracks.full = True
        self.pipe.flow()

    def resume_writing(self) -> None:
        self.tracks.full = False
        self.pipe.owner.last_activity = self.pipe.loop.time()
        self.pipe.flow()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.up:
            self.pipe.owner.client_lost(exc)
        else:
            self.pipe.owner.backend_lost(exc)


class StagedPipe:
    """Relays through the two transports, each way through its stages (see the module)."""

    __slots__ = ("_backend", "_client", "_early", "down", "loop", "owner", "stopped", "up")

    raw: ClassVar[bool] = False

    def __init__(
        self,
        owner: PipeOwner,
        loop: asyncio.AbstractEventLoop,
        transports: TransportPipe,
        up: Sequence[Staging],
        down: Sequence[Staging],
        early: Held | None = None,
    ) -> None:
        """``transports``: the connection's TransportPipe, attached; ``early``: what its
        ends held before any pipe ran, which goes through the stages."""
        backend = transports.backend
        assert backend is not None
        c, b = transports.transport, backend.transport
        assert c is not None
        assert b is not None
        self.owner = owner
        self.loop = loop
        self.stopped = False
        self.up = _Way(self, up=True, src=c, dst=b, tracks=backend)
        self.down = _Way(self, up=False, src=b, dst=c, tracks=transports)
        self._client = _Side(self, self.up, transports)
        self._backend = _Side(self, self.down, backend)
        self._early = early
        self.up.build(up)
        self.down.build(down)

    def start(self, held: Held) -> None:
        up, down = self.up, self.down
        c, b = down.dst, up.dst
        c.set_protocol(self._client)
        b.set_protocol(self._backend)
        if held.up:
            b.write(held.up)
        if held.down:
            c.write(held.down)
        up_fin = held.up_eof and not held.up_shut
        down_fin = held.down_eof and not held.down_shut
        up.eof = up.shut = held.up_eof
        down.eof = down.shut = held.down_eof
        if up_fin:
            b.write_eof()
        if down_fin:
            c.write_eof()
        early, self._early = self._early, None
        if early is not None:
            now = self.loop.time()
            for way, data, fin in (
                (up, early.up, early.up_eof),
                (down, early.down, early.down_eof),
            ):
                if data and not self.stopped:
                    way.enter(data, now)
                if fin and not self.stopped:
                    way.fin(now)
        self.flow()
        # Last: the owner may end the connection on hearing of both FINs.
        if up_fin and not self.stopped:
            self.owner.eof(True)
        if down_fin and not self.stopped:
            self.owner.eof(False)

    def stop(self, keep: bool) -> Held:
        if self.stopped:
            return Held()
        self.stopped = True
        up, down = self.up, self.down
        held = Held(up.stop(keep), down.stop(keep), up.eof, down.eof, up.shut, down.shut)
        for way in (up, down):
            # Quiet under the next pipe (or while closing).
            if not way.eof and not way.src.is_closing():
                way.src.pause_reading()
        return held

    def holding(self) -> bool:
        """What the stages hold waits for its toxic, not for a peer."""
        return False

    def restage(self, up: Sequence[Staging], down: Sequence[Staging]) -> None:
        """The connection meets these toxics now (see the module)."""
        self.up.restage(up)
        if not self.stopped:  # an END may have gone out
            self.down.restage(down)

    def empty(self) -> bool:
        """No stage left either way: a transport pipe would do."""
        return not self.up.stages and not self.down.stages

    def flow(self) -> None:
        """Read each source exactly when what it sends has somewhere to go."""
        if self.stopped:
            return
        for way in (self.up, self.down):
            src = way.src
            if way.eof or src.is_closing():
                continue
            if way.choked or way.tracks.full:
                src.pause_reading()
            else:
                src.resume_reading()
