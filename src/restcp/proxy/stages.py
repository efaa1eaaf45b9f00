"""Toxics at work: one *stage* per toxic, on one way of one connection.

A proxy.staged_pipe.StagedPipe passes what each of its ways reads through that way's
stages, in the route's order, and the way's *sink* at the end writes it to the other peer::

    source ─► stage 1 ─► stage 2 ─► ... ─► sink: write / write_eof / the connection ends

What passes is *items*, each with the loop time it was read at: chunks of bytes; the
source's FIN; and END marks, which a stage sends to close the connection *in order* (the
bytes before it go out first, through the stages after it; the way drops what comes after
it). A stage hands an item on with ``next.push`` at once, or holds it and hands it on from
a loop timer (one per stage at most, cancelled when the stage goes):

    type        holds                                  its timer
    latency     each item until read + latency ±       the head's moment
                jitter (never before the one ahead)
    bandwidth   what exceeds the rate: pieces of       the next piece's moment
                QUANTUM's worth, paced
    slicer      the chunk being cut into pieces        the next piece's moment (delay
                                                       after the last one's, CATCH_UP)
    slow_close  the FIN (and an END) for ``delay``     the mark's moment
    timeout     everything, until the timeout: then    start + timeout (0: none)
                drops it and sends END; removal
                flushes it and sends END
    reset_peer  nothing                                start + timeout: the connection
                                                       is reset (SO_LINGER 0)
    limit_data  nothing: ``bytes`` pass, the rest is   (a limit already reached)
                dropped and END follows them
    limit_time  nothing; END at the time, then drops   start + time

``start`` is the moment the stage was made: when the connection met the toxic (at its
connect, or when the toxic was added under it). A stage that is changed (a PATCH) applies
its new attributes at once, to what it holds too; one that is removed hands what it holds,
in order, to the stage after it (``take``).

Each stage counts into its toxic's ``Tally`` on the route (bytes held now, bytes dropped,
connections that met it): plain integers, read at scrape time (dataplane.py).

The draws of a connection for a toxic (toxicity first, then jitter or slice sizes) come
from ``core.toxics.draws(seed, route, connection number, toxic)``: ``Meeting`` makes them,
once per connection and toxic.

The module is over 500 lines: a short class per type, beside the base they share and the
table above, read together (a module per type would split one protocol over eight files).
"""

from __future__ import annotations

import asyncio
import random
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

from restcp.core.toxics import affects, draws, meets
from restcp.model import RouteKey, Stream, Toxic, ToxicType

# The loops count whole milliseconds, and may round a timer's delay down: a stage's timer
# is set EARLY later than its moment, and a moment less than EARLY away counts as come, so
# nothing goes out before its time.
EARLY = 0.001
# Bandwidth: pieces of this many seconds' worth of the rate; a late timer may catch up
# this much (so a rate is kept within a few percent whatever the loop's lateness).
QUANTUM = 0.02
SLACK = 0.02
# Slicer: a piece's gap counts from when the one before it was due, so that the timer's
# EARLY and the loop's rounding (a millisecond or so per piece) do not stretch every gap;
# up to this much lateness is caught up, so a gap is never much below ``delay``.
CATCH_UP = 2 * EARLY


class Mark:
    """A FIN (``reason`` None) or an END: the connection is to close, for ``reason``."""

    __slots__ = ("reason",)

    def __init__(self, reason: str | None) -> None:
        self.reason = reason

    def __repr__(self) -> str:
        return "FIN" if self.reason is None else f"END({self.reason})"


FIN = Mark(None)
Item = bytes | Mark


def size(item: Item) -> int:
    return len(item) if isinstance(item, bytes) else 0


@dataclass(slots=True)
class Tally:
    """One toxic's counters on a route: connections that met it, bytes its stages hold now,
    bytes they dropped."""

    type: ToxicType
    stream: Stream
    connections: int = 0
    held: int = 0
    dropped: int = 0


class Downstream(Protocol):
    """What a stage hands items to: the next stage, or the way's sink."""

    def push(self, item: Item, at: float) -> None: ...


class Way(Downstream, Protocol):
    """The way a stage works in (proxy.staged_pipe): its loop, whether it has stopped, how
    much its stages hold (its source is read while that is low), and the reset."""

    loop: asyncio.AbstractEventLoop
    stopped: bool
    backlog: int

    def relieved(self) -> None:
        """Bytes left a stage: the source may be read again."""

    def reset(self, reason: str) -> None:
        """Reset the connection now (both peers, SO_LINGER 0)."""


class Stage:
    """One toxic on one way of one connection (see the module). Its queue holds tuples
    whose first two members are the item and the time it was read."""

    __slots__ = ("held", "next", "queue", "rng", "started", "tally", "timer", "toxic", "way")

    def __init__(self, toxic: Toxic, way: Way, rng: random.Random, tally: Tally) -> None:
        self.toxic = toxic
        self.way = way
        self.rng = rng
        self.tally = tally
        self.next: Downstream = way
        self.queue: deque[tuple[Any, ...]] = deque()
        self.held = 0  # bytes in the queue
        self.timer: asyncio.TimerHandle | None = None
        self.started = way.loop.time()
        self.begin()
        self.configure(toxic)

    def begin(self) -> None:
        """Set the stage's own state up (before its first ``configure``)."""

    def configure(self, toxic: Toxic) -> None:
        """Read the toxic's attributes, when made and when changed (applied to what it
        holds too)."""

    def change(self, toxic: Toxic) -> None:
        """The toxic was changed: its new attributes apply now."""
        self.toxic = toxic
        self.configure(toxic)

    def push(self, item: Item, at: float) -> None:
        raise NotImplementedError

    def fire(self) -> None:
        """Its timer's moment has come."""

    # -- holding, and letting go ---------------------------------------------------------

    def hold(self, entry: tuple[Any, ...], n: int) -> None:
        self.queue.append(entry)
        if n:
            self.held += n
            self.way.backlog += n
            self.tally.held += n

    def let_go(self, n: int) -> None:
        if n:
            self.held -= n
            self.way.backlog -= n
            self.tally.held -= n
            self.way.relieved()

    def drop(self, n: int) -> None:
        self.tally.dropped += n

    def arm(self, when: float) -> None:
        if self.timer is not None:
            self.timer.cancel()
        self.timer = self.way.loop.call_at(when + EARLY, self._fired)

    def disarm(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def _fired(self) -> None:
        self.timer = None
        if not self.way.stopped:
            self.fire()

    def remove(self) -> list[tuple[Item, float]]:
        """The toxic is removed from the connection: what the stage holds, oldest first,
        for the stage after it, and what its removal sends (``take``)."""
        return self.take()

    def take(self) -> list[tuple[Item, float]]:
        """The stage goes: what it holds, oldest first, no longer counted as held; its
        timer cancelled."""
        self.disarm()
        items = [(entry[0], entry[1]) for entry in self.queue]
        self.queue.clear()
        if self.held:
            self.way.backlog -= self.held
            self.tally.held -= self.held
            self.held = 0
        return items


class Latency(Stage):
    """Each item held until its read time + latency ± jitter (drawn per chunk), and never
    before the item ahead of it: delays do not add up, order is kept."""

    __slots__ = ("delay", "jitter", "last")

    def begin(self) -> None:
        self.last = 0.0  # the moment the last item is due

    def configure(self, toxic: Toxic) -> None:
        self.delay = toxic.attribute("latency") / 1000
        self.jitter = toxic.attribute("jitter") / 1000
        if not self.queue:
            self.last = 0.0
            return
        # Changed: what is held is due by the new latency (each keeps its jitter draw).
        last = 0.0
        for i, (item, at, _due, offset) in enumerate(self.queue):
            last = max(at + max(0.0, self.delay + offset), last)
            self.queue[i] = (item, at, last, offset)
        self.last = last
        if self.queue:
            self.arm(self.queue[0][2])

    def push(self, item: Item, at: float) -> None:
        offset = 0.0
        if self.jitter and isinstance(item, bytes):
            offset = self.rng.uniform(-self.jitter, self.jitter)
        due = max(at + max(0.0, self.delay + offset), self.last)
        self.last = due
        if not self.queue and due <= self.way.loop.time() + EARLY:
            self.next.push(item, at)
            return
        self.hold((item, at, due, offset), size(item))
        if len(self.queue) == 1:
            self.arm(due)

    def fire(self) -> None:
        queue, way = self.queue, self.way
        now = way.loop.time() + EARLY
        while queue and queue[0][2] <= now:
            item, at, _due, _offset = queue.popleft()
            self.let_go(size(item))
            self.next.push(item, at)
            if way.stopped:
                return
        if queue:
            self.arm(queue[0][2])


class _Paced(Stage):
    """A stage that lets its queue out piece by piece, a piece when ``free_at`` has come."""

    __slots__ = ("free_at",)

    def begin(self) -> None:
        self.free_at = 0.0

    def push(self, item: Item, at: float) -> None:
        self.hold((item, at), size(item))
        if self.timer is None:
            self.fire()

    def piece(self, length: int) -> int:
        """How many bytes of a chunk of ``length`` go next."""
        raise NotImplementedError

    def sent(self, n: int, now: float) -> None:
        """``n`` bytes went at ``now``: when the next piece may go."""
        raise NotImplementedError

    def fire(self) -> None:
        queue, way = self.queue, self.way
        now = way.loop.time()
        while queue:
            if self.free_at > now + EARLY:
                self.arm(self.free_at)
                return
            item, at = queue[0]
            if not isinstance(item, bytes):
                queue.popleft()
                self.next.push(item, at)
            else:
                n = self.piece(len(item))
                if n < len(item):
                    queue[0] = (item[n:], at)
                    item = item[:n]
                else:
                    queue.popleft()
                self.let_go(n)
                self.sent(n, now)
                self.next.push(item, at)
            if way.stopped:
                return

    def change(self, toxic: Toxic) -> None:
        super().change(toxic)
        self.disarm()
        if self.queue:
            self.fire()


class Bandwidth(_Paced):
    """Bytes let out at ``rate`` KB/s, in pieces of QUANTUM's worth."""

    __slots__ = ("quantum", "rate")

    def configure(self, toxic: Toxic) -> None:
        self.rate = toxic.attribute("rate") * 1000.0  # bytes per second
        self.quantum = max(1, int(self.rate * QUANTUM))

    def piece(self, length: int) -> int:
        return min(length, self.quantum)

    def sent(self, n: int, now: float) -> None:
        # From the moment the last piece was due, not from now: a late timer does not slow
        # the rate down (up to SLACK of lateness is caught up).
        self.free_at = max(self.free_at, now - SLACK) + n / self.rate


class Slicer(_Paced):
    """Chunks cut into pieces of average_size ± size_variation bytes (drawn per piece; a
    chunk's last piece is what is left), ``delay`` µs apart."""

    __slots__ = ("average", "delay", "variation")

    def configure(self, toxic: Toxic) -> None:
        self.average = toxic.attribute("average_size")
        self.variation = toxic.attribute("size_variation")
        self.delay = toxic.attribute("delay") / 1_000_000

    def piece(self, length: int) -> int:
        n = self.average
        if self.variation:
            n += self.rng.randint(-self.variation, self.variation)
        return min(length, n)

    def sent(self, n: int, now: float) -> None:
        if self.delay:
            # From the moment this piece was due if it went on time or nearly (CATCH_UP),
            # else from now: the pieces keep their pace, and a gap is delay - CATCH_UP at
            # the least.
            due = self.free_at if self.free_at >= now - CATCH_UP else now
            self.free_at = due + self.delay


class SlowClose(Stage):
    """Bytes pass; the FIN (and an END) is held ``delay`` from its arrival."""

    __slots__ = ("delay",)

    def configure(self, toxic: Toxic) -> None:
        self.delay = toxic.attribute("delay") / 1000
        if self.queue:
            self.arm(self.queue[0][2] + self.delay)

    def push(self, item: Item, at: float) -> None:
        if isinstance(item, bytes) and not self.queue:
            self.next.push(item, at)
            return
        arrived = self.way.loop.time()
        self.hold((item, at, arrived), size(item))
        if len(self.queue) == 1:
            self.arm(arrived + self.delay)

    def fire(self) -> None:
        queue, way = self.queue, self.way
        now = way.loop.time() + EARLY
        while queue and queue[0][2] + self.delay <= now:
            item, at, _arrived = queue.popleft()
            self.let_go(size(item))
            self.next.push(item, at)
            if way.stopped:
                return
        if queue:
            self.arm(queue[0][2] + self.delay)


class _Timed(Stage):
    """A stage with one moment, ``start`` + an attribute (``done`` once it has come)."""

    __slots__ = ("after", "done")
    ATTRIBUTE: ClassVar[str]

    def begin(self) -> None:
        self.done = False

    def configure(self, toxic: Toxic) -> None:
        self.after = toxic.attribute(self.ATTRIBUTE) / 1000
        if not self.done and self.armed():
            # A moment already past (a shorter value) comes on the loop's next turn.
            self.arm(self.started + self.after)
        else:
            self.disarm()

    def armed(self) -> bool:
        return True

    def pass_or_drop(self, item: Item, at: float) -> None:
        if self.done:
            self.drop(size(item))
        else:
            self.next.push(item, at)


class Timeout(_Timed):
    """Everything held; at start + timeout (0: never) it is dropped and the connection
    closes. Removed before that, it hands what it held on, then the close (a connection a
    timeout held is closed either way, as toxiproxy does)."""

    __slots__ = ()
    ATTRIBUTE = "timeout"

    def armed(self) -> bool:
        return self.after > 0

    def push(self, item: Item, at: float) -> None:
        if self.done:
            self.drop(size(item))
        else:
            self.hold((item, at), size(item))

    def fire(self) -> None:
        self.done = True
        dropped = self.held
        self.take()
        self.drop(dropped)
        self.next.push(Mark("toxic_timeout"), self.way.loop.time())

    def remove(self) -> list[tuple[Item, float]]:
        items = self.take()
        if not self.done:
            self.done = True
            items.append((Mark("toxic_timeout"), self.way.loop.time()))
        return items


class ResetPeer(_Timed):
    """Bytes pass; at start + timeout both peers are reset (SO_LINGER 0)."""

    __slots__ = ()
    ATTRIBUTE = "timeout"

    def push(self, item: Item, at: float) -> None:
        self.next.push(item, at)

    def fire(self) -> None:
        self.done = True
        self.way.reset("toxic_reset_peer")


class LimitTime(_Timed):
    """Bytes pass until start + time; then the connection closes (END), and what comes
    after is dropped."""

    __slots__ = ()
    ATTRIBUTE = "time"

    def push(self, item: Item, at: float) -> None:
        self.pass_or_drop(item, at)

    def fire(self) -> None:
        self.done = True
        self.next.push(Mark("toxic_limit_time"), self.way.loop.time())


class LimitData(Stage):
    """The first ``bytes`` bytes pass, then the connection closes (END); the rest is
    dropped."""

    __slots__ = ("done", "limit", "passed")

    def begin(self) -> None:
        self.passed = 0
        self.done = False

    def configure(self, toxic: Toxic) -> None:
        self.limit = toxic.attribute("bytes")
        if not self.done and self.passed >= self.limit:
            self.arm(self.way.loop.time())  # reached already: closes on the next turn

    def push(self, item: Item, at: float) -> None:
        if self.done:
            self.drop(size(item))
            return
        if not isinstance(item, bytes):
            self.next.push(item, at)
            return
        room = self.limit - self.passed
        if len(item) < room:
            self.passed += len(item)
            self.next.push(item, at)
            return
        self.done = True
        self.passed = self.limit
        self.drop(len(item) - room)
        if room:
            self.next.push(item[:room], at)
            if self.way.stopped:
                return
        self.next.push(Mark("toxic_limit_data"), at)

    def fire(self) -> None:
        if not self.done and self.passed >= self.limit:
            self.done = True
            self.next.push(Mark("toxic_limit_data"), self.way.loop.time())


STAGES: dict[ToxicType, type[Stage]] = {
    "latency": Latency,
    "bandwidth": Bandwidth,
    "slicer": Slicer,
    "slow_close": SlowClose,
    "timeout": Timeout,
    "reset_peer": ResetPeer,
    "limit_data": LimitData,
    "limit_time": LimitTime,
}


@dataclass(frozen=True, slots=True)
class Staging:
    """A toxic a connection meets, with its draws and its tally: what a stage is made of."""

    toxic: Toxic
    rng: random.Random
    tally: Tally


def make_stage(staging: Staging, way: Way) -> Stage:
    return STAGES[staging.toxic.type](staging.toxic, way, staging.rng, staging.tally)


class Meeting:
    """One connection's encounters with its route's toxics: which it meets (toxicity drawn
    once per toxic, the verdict kept while the toxicity and ``clients`` stay as they were)
    and, in order, the names of those it has met (the access line's)."""

    __slots__ = ("_draws", "client_ip", "met", "number")

    def __init__(self, number: int, client_ip: str | None) -> None:
        self.number = number
        self.client_ip = client_ip
        # name -> (toxicity, clients, whether it meets it, its draws after the first)
        self._draws: dict[str, tuple[float, tuple[str, ...], bool, random.Random]] = {}
        # The toxics it has met, by name, in order (a toxic removed and added again under
        # the same name has a new tally, which counts it again).
        self.met: dict[str, Tally] = {}

    def staging(
        self, toxics: Iterable[Toxic], seed: int, route: RouteKey, tallies: Mapping[str, Tally]
    ) -> tuple[Sequence[Staging], Sequence[Staging]]:
        """The toxics this connection meets, up and down, in the route's order."""
        up: list[Staging] = []
        down: list[Staging] = []
        for toxic in toxics:
            drawn = self._draws.get(toxic.name)
            if drawn is None or drawn[0] != toxic.toxicity or drawn[1] != toxic.clients:
                # The same first draw whatever the toxicity: a change moves the verdict
                # with it (raised, a connection that met it still meets it).
                rng = draws(seed, route, self.number, toxic.name)
                verdict = meets(toxic, rng) and affects(toxic, self.client_ip)
                if drawn is not None:
                    rng = drawn[3]  # the stage's draws go on where they were
                drawn = self._draws[toxic.name] = (toxic.toxicity, toxic.clients, verdict, rng)
            if not drawn[2]:
                continue
            tally = tallies[toxic.name]
            if self.met.get(toxic.name) is not tally:
                self.met[toxic.name] = tally
                tally.connections += 1
            (up if toxic.stream == "upstream" else down).append(Staging(toxic, drawn[3], tally))
        return up, down
