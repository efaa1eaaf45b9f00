"""The seam between a connection and what moves its bytes: the Pipe and its owner.

A proxy.connection.Connection owns a client's connection from accept to its access line:
the two transports, the timers, the counters and the ending. What moves the bytes between
its two peers is a *pipe*, and a connection hands its connected pair to exactly one pipe at
a time::

    Connection ──start(held)──► pipe ──► bytes both ways, flow control, FINs
        ▲                         │
        └── PipeOwner callbacks ──┘  moved, eof, failed, end, bulk, chatty, *_lost

Pipes of today: proxy.transport_pipe.TransportPipe (asyncio protocols on the two
transports: the default), proxy.splice.SplicePipe (``os.splice`` on the transports'
sockets, for bulk) and proxy.staged_pipe.StagedPipe (through the stages of the toxics a
connection meets). A switch is ``Connection.switch``: the current pipe stops and hands
over what it holds (``Held``: bytes read and not yet delivered, and how far each FIN has
got), and the next one starts with it, so no byte is lost or reordered.

Two kinds of pipe, by what they write to:

- a *transport* pipe writes through the transports; it may take over from any pipe at
  once, since what the transports still buffer goes out before anything it writes;
- a *raw* pipe (``raw = True``) writes to the sockets themselves, so it takes over only at
  a moment when the transports' write buffers are empty (the Connection checks, and a
  switch that finds them not empty is tried again later). It pauses nothing to get there:
  holding one direction back until the other's buffer drains couples the two, and peers
  that both write before they read would wait on each other for ever. The transports stay
  open and idle under a raw pipe (reading paused, protocols unchanged), and come back into
  use when a transport pipe takes over again.

No pipe ever closes a socket: ending is the Connection's (``stop`` the pipe, then close or
reset the transports), so there is one ending for every pipe.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import ClassVar, Protocol


@dataclass(frozen=True, slots=True)
class Held:
    """What a pipe hands the next one: the bytes it has read and not yet delivered, in
    order, each way, and how far each peer's FIN has got (read; forwarded)."""

    up: bytes = b""  # client -> backend
    down: bytes = b""  # backend -> client
    up_eof: bool = False  # the client's FIN has been read ...
    down_eof: bool = False
    up_shut: bool = False  # ... and passed on to the backend (shutdown(SHUT_WR) done)
    down_shut: bool = False


# Every Held without bytes, made once: a transport pipe stops with one at every ending.
_SETTLED = {
    (up, down, on): Held(b"", b"", up, down, up and on, down and on)
    for up in (False, True)
    for down in (False, True)
    for on in (False, True)
}


def settled(up_eof: bool, down_eof: bool, passed_on: bool) -> Held:
    """A Held with no bytes: the FINs read, each passed on too if ``passed_on``."""
    return _SETTLED[(up_eof, down_eof, passed_on)]


class Pipe(Protocol):
    """Moves a connected pair's bytes both ways, from ``start`` until ``stop``."""

    raw: ClassVar[bool]  # writes to the sockets, not through the transports

    def start(self, held: Held) -> None:
        """Move ``held`` out first (and pass on its FINs), then relay."""

    def stop(self, keep: bool) -> Held:
        """Stop for good: no owner callback after this. Returns what it holds (``keep``;
        else it is dropped: the connection is being reset). The transports stay open, their
        reading paused."""

    def holding(self) -> bool:
        """Whether bytes wait to go out (a peer is not reading)."""


class PipeOwner(Protocol):
    """What a pipe reports to: the Connection. The counters and the activity time are
    plain attributes, updated by the pipe on its hot path (a call per chunk would cost)."""

    bytes_up: int  # client -> backend, read so far
    bytes_down: int
    last_activity: float  # loop time of the last progress either way

    def moved(self, up: bool, count: int) -> None:
        """Progress the pipe counts in calls: ``count`` bytes read from the client (up) or
        the backend; 0 when only bytes went out (the destination is reading)."""

    def eof(self, up: bool) -> None:
        """The client's (up) or the backend's FIN has been passed on to the other peer
        (or is queued behind everything read before it)."""

    def failed(self, side: str) -> None:
        """``side`` ("client" or "backend") failed (a reset): the connection is reset."""

    def end(self, reason: str, *, reset: bool = False) -> None:
        """End the connection for ``reason`` (a toxic's doing): gracefully, what the pipe
        holds flushed first, or with a reset."""

    def bulk(self, up: bool) -> None:
        """A read from the client (up) or the backend filled a whole buffer: a raw pipe
        could move this for less."""

    def chatty(self) -> None:
        """Both ways moved only small reads of late: a transport pipe would do for less."""

    def client_made(self, transport: asyncio.Transport) -> None:
        """The client transport's ``connection_made`` (its protocol is a pipe's end)."""

    def client_lost(self, exc: Exception | None) -> None:
        """The client transport's ``connection_lost``."""

    def backend_lost(self, exc: Exception | None) -> None:
        """The backend transport's ``connection_lost`` (of the one in use)."""
