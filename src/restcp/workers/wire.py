"""What the node's process and its workers tell each other, over one socketpair per worker.

Every message is a dataclass below; ``frame`` and ``receive`` are the one codec. A frame is
a 4-byte length and a pickle: both ends are this program, on a socketpair nobody else
holds. A reader names the message types it accepts, and anything else is a ``WireError``
(a bug: both ends are the same version), never a tuple picked apart by position.

::

    node ─► worker   Hello ─► Serve (every route, seq) ─► ServeRoute (one route, seq)
                     ─► ProbeResult ─► ApiListening
    worker ─► node   Applied (seq) ─► Counted (every STATS_INTERVAL)
"""

from __future__ import annotations

import asyncio
import pickle
import socket
import struct
from dataclasses import dataclass, field
from typing import TypeVar

from restcp.dataplane import RouteCounts
from restcp.model import Route, RouteKey
from restcp.settings import Settings

_HEADER = struct.Struct("!I")


class WireError(Exception):
    """A frame that is not one of the messages its reader accepts."""


# -- node -> worker ------------------------------------------------------------------------


@dataclass(frozen=True)
class Hello:
    """The first message: the worker's settings (tokens left out) and the API's address."""

    settings: Settings
    api: tuple[str, int] | None


@dataclass(frozen=True)
class Serve:
    """Serve exactly these routes (a snapshot); acknowledge ``seq`` once applied."""

    seq: int
    routes: dict[RouteKey, Route]


@dataclass(frozen=True)
class ServeRoute:
    """Serve ``route`` under ``key`` as the node's process does now (None: stop it)."""

    seq: int
    key: RouteKey
    route: Route | None


@dataclass(frozen=True)
class ProbeResult:
    """An active health check's result: only the node's process probes."""

    key: RouteKey
    backend_id: int
    ok: bool
    reason: str
    latency: float


@dataclass(frozen=True)
class ApiListening:
    """The node's API listens here: one of the node's own addresses."""

    address: tuple[str, int]


ToWorker = Serve | ServeRoute | ProbeResult | ApiListening
TO_WORKER: tuple[type[ToWorker], ...] = (Serve, ServeRoute, ProbeResult, ApiListening)


# -- worker -> node ------------------------------------------------------------------------


@dataclass(frozen=True)
class Applied:
    """Every Serve and ServeRoute up to ``seq`` is applied."""

    seq: int


@dataclass(frozen=True)
class Counted:
    """The worker's counters of the routes whose counters changed, the routes it no longer
    serves, and the closes of its shared addresses if they changed."""

    changed: dict[RouteKey, RouteCounts] = field(default_factory=dict)
    gone: tuple[RouteKey, ...] = ()
    # Every address it shares by SNI, its clients closed before a route was chosen, by
    # reason; None: unchanged since the last Counted.
    sni_closes: dict[tuple[str, int], dict[str, int]] | None = None


FromWorker = Applied | Counted
FROM_WORKER: tuple[type[FromWorker], ...] = (Applied, Counted)

Message = TypeVar("Message")


def frame(message: Hello | ToWorker | FromWorker) -> bytes:
    data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    return _HEADER.pack(len(data)) + data


def decode(data: bytes, kinds: tuple[type[Message], ...]) -> Message:
    message = pickle.loads(data)
    if not isinstance(message, kinds):
        raise WireError(f"unexpected message {type(message).__name__}")
    return message


async def receive(reader: asyncio.StreamReader, kinds: tuple[type[Message], ...]) -> Message | None:
    """The next message, or None once the other end is gone."""
    try:
        header = await reader.readexactly(_HEADER.size)
        data = await reader.readexactly(_HEADER.unpack(header)[0])
    except (asyncio.IncompleteReadError, ConnectionError):
        return None
    return decode(data, kinds)


def receive_hello(channel: socket.socket) -> Hello | None:
    """The Hello a worker reads before it has an event loop; None if the node is gone."""
    header = _read_exactly(channel, _HEADER.size)
    data = None if header is None else _read_exactly(channel, _HEADER.unpack(header)[0])
    return None if data is None else decode(data, (Hello,))


def _read_exactly(sock: socket.socket, size: int) -> bytes | None:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            return None
        data += chunk
    return data
