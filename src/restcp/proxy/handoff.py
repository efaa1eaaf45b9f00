"""A route's open connections handed from the native engine to the asyncio data plane.

When an update gives a route the engine serves something it does not do (toxics, TLS,
server names: native.unsupported), the ProxyManager moves the route's listening socket to
an asyncio listener, and its open connections come along, so that a toxic acts on them
at once as on asyncio's own (Connection.toxics_changed):

    Engine.handoff(slot) ──► records read first (each connection's "connected" among them)
        │                    relaying: both fds, the bytes held each way (buffer, and a
        │                              splice pipe's read out), how far each FIN got,
        │                              counts, ages: out of the epoll set, no record
        │                    connecting: the attempt dropped, the client fd alone
        ▼
    adopt ──► relaying:   backend transport (create_connection(sock=)), then the client's
          │               (connect_accepted_socket): an AdoptedConnection, which delivers
          │               what the engine held first, keeps a FIN passed on as passed on,
          │               and meets the route's toxics
          └─► connecting: a client as asyncio accepts one (admitted and connected anew)

Each connection is counted once from its connect to its end: the engine counted it
connected (its member's ``active`` and ``connections``) and counts it no more; the asyncio
side adds its bytes and its end, and writes its one access line. Its place under the node's
caps moves with it (the engine's count, which asyncio's ``give`` lowers at its end). A
connection still connecting leaves nothing behind: its place is given back and asyncio's
admission takes one again; its backend socket, given no byte yet, is closed.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import socket
from typing import TYPE_CHECKING

from restcp.engine import peer
from restcp.proxy.connection import AdoptedConnection, Handed, client_protocol
from restcp.proxy.pipes import Held
from restcp.proxy.runtime import RouteRuntime
from restcp.proxy.transport_pipe import TransportPipe
from restcp.sockets import arm_reset

if TYPE_CHECKING:
    from restcp.engine._relay import Connecting, Relaying

log = logging.getLogger("restcp.proxy")


async def adopt(
    runtime: RouteRuntime, relaying: list[Relaying], connecting: list[Connecting]
) -> None:
    """Serve on the asyncio data plane the connections the engine handed over."""
    loop = asyncio.get_running_loop()
    await asyncio.gather(
        *(_relaying(runtime, loop, item) for item in relaying),
        *(_connecting(runtime, loop, item) for item in connecting),
    )


async def _connecting(
    runtime: RouteRuntime, loop: asyncio.AbstractEventLoop, item: Connecting
) -> None:
    client_fd, raw_peer, _age = item
    conn = socket.socket(fileno=client_fd)
    protocol = client_protocol(runtime, loop, peer(raw_peer))
    try:
        await loop.connect_accepted_socket(functools.partial(_same, protocol), conn)
    except OSError as err:
        log.warning(
            "handoff failed app=%s route=%s: %s", runtime.app, runtime.route_id, err
        )  # fmt: skip
        arm_reset(conn)
        conn.close()


async def _relaying(runtime: RouteRuntime, loop: asyncio.AbstractEventLoop, item: Relaying) -> None:
    client_fd, backend_fd, up, down, up_fins, down_fins, bytes_up, bytes_down = item[:8]
    backend_id, raw_peer, age, idle_for, half_for, spliced, moved = item[8:]
    (up_eof, up_shut), (down_eof, down_shut) = up_fins, down_fins
    client = socket.socket(fileno=client_fd)
    backend_sock = socket.socket(fileno=backend_fd)
    # The member it counts against: the one kept for its address if that is its
    # backend's no longer (its access line names that address, as on asyncio).
    member = runtime.member_at(backend_id, None if moved is None else peer(moved))
    held = Held(up, down, up_eof, down_eof, up_shut, down_shut)
    handed = Handed(held, bytes_up, bytes_down, age, idle_for, half_for, spliced)
    backend = member.backend if member is not None else runtime.route.backend(backend_id)
    connection = AdoptedConnection(runtime, loop, peer(raw_peer), handed, member, backend)
    end = connection.backend_end
    try:
        await loop.create_connection(end.itself, sock=backend_sock)
        await loop.connect_accepted_socket(functools.partial(_same, connection.transports), client)
    except OSError as err:
        # Out of memory or descriptors for a transport: the connection is reset, and ends
        # here (its access line, its member's count, its place).
        log.warning(
            "handoff failed app=%s route=%s: %s; connection reset",
            runtime.app, runtime.route_id, err,
        )  # fmt: skip
        if end.transport is None:
            arm_reset(backend_sock)
            backend_sock.close()
        if connection.client_transport is None:
            arm_reset(client)
            client.close()
        connection.not_made()


def _same(protocol: TransportPipe) -> TransportPipe:
    return protocol
