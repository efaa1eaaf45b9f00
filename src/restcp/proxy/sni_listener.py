"""A port shared by routes with server names: each client's route is chosen by SNI.

    accept ──► Hello: read the ClientHello (never answered) ──► the route its name picks
                 (core/client_hello.py, under a         (core/sni.py: exact, longest
                  timeout and a size limit)               wildcard, default) ──► Connection

A route with ``sni`` (docs/tls.md) shares its port with the other routes of that address
that have server names: one SniListener holds the socket and a table of names to the
routes' runtimes. A new client is read from, by this module, until its first bytes say
what it asks for; nothing is written to it. The route then takes the client as if its own
listener had accepted it: a Connection (its admission, balancing, health, toxics, timeouts,
counters and access line as for any client) whose client end already holds the bytes read,
which go to the backend first, unchanged. A client with no route (no default, an unknown
name), and one that says nothing whole before the timeout, is closed, and counted by
reason (``closes``: restcp_sni_closed_total). A client being read from holds a place under
the node's cap (``Traffic.hold``) until it is routed or closed; past the cap it is reset
at accept.

The read timeout is the longest ``connect_timeout`` of the port's routes; the size limit
``client_hello.DEFAULT_LIMIT``. Routes without server names never come here: their
Listener (listener.py) is unchanged and pays nothing for this one.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import socket
from collections import Counter

from restcp.core.client_hello import DEFAULT_LIMIT, peek
from restcp.core.sni import SniTable
from restcp.model import RouteKey
from restcp.proxy.connection import Connection
from restcp.proxy.listener import Acceptor
from restcp.proxy.runtime import RouteRuntime
from restcp.proxy.stepping import drive
from restcp.proxy.traffic import Traffic
from restcp.sockets import arm_reset

log = logging.getLogger("restcp.proxy")

# Why a client of a shared port is closed before a route is chosen: the label values of
# restcp_sni_closed_total (docs/tls.md). A client closed because its port stopped is not
# counted: the port and its counters go with it.
CLOSE_REASONS = (
    "timeout",  # no whole ClientHello before the read timeout
    "too_big",  # over client_hello.DEFAULT_LIMIT, and no default route
    "not_tls",  # its first byte is not a TLS handshake, and no default route
    "malformed",  # a ClientHello that does not parse, and no default route
    "no_name",  # a ClientHello without a server name, and no default route
    "unknown_name",  # a name no route takes, and no default route
    "client_closed",  # the client closed before its ClientHello was whole
    "client_reset",  # ... or reset
    "node_limit",  # --max-connections reached: refused at accept
)


class SniListener(Acceptor):
    """Accepts the clients of one shared address and hands each to the route its
    ClientHello names (see the module)."""

    def __init__(self, address: tuple[str, int], sock: socket.socket, traffic: Traffic) -> None:
        super().__init__(sock)
        self.address = address
        self.runtimes: dict[RouteKey, RouteRuntime] = {}  # the enabled routes it serves
        self.table: SniTable[RouteRuntime] = SniTable()
        self.timeout = 0.0
        self._hellos: set[Hello] = set()  # clients whose ClientHello is being read
        # The node's connections and caps: a client being read from holds a place.
        self.traffic = traffic
        # Clients closed before a route was chosen, by reason (CLOSE_REASONS): the port's
        # restcp_sni_closed_total.
        self.closes: Counter[str] = Counter()

    # -- its routes ----------------------------------------------------------------------

    def add(self, runtime: RouteRuntime) -> None:
        self.runtimes[runtime.route.key] = runtime
        self.rebuild()

    def remove(self, key: RouteKey) -> None:
        if self.runtimes.pop(key, None) is not None:
            self.rebuild()

    def rebuild(self) -> None:
        """Read the routes' names and timeouts again (a route was added, changed, removed).
        In key order, so that a name stored twice (around the API) always goes to the
        same route."""
        runtimes = [self.runtimes[key] for key in sorted(self.runtimes)]
        self.table = SniTable((r, r.route.settings.sni or ()) for r in runtimes)
        self.timeout = max((r.connect_timeout for r in runtimes), default=0.0)

    # -- accepting -----------------------------------------------------------------------

    def describe(self) -> str:
        return f"address={self.address[0]}:{self.address[1]}"

    def accepted(
        self, conn: socket.socket, addr: tuple[str, int], loop: asyncio.AbstractEventLoop
    ) -> None:
        # The route, and so the app, is not known yet: a place under the node's cap only.
        if self.traffic.hold(None) is not None:
            # Its ClientHello would hold a socket past the node's cap: refused at once.
            self.closes["node_limit"] += 1
            arm_reset(conn)
            conn.close()
            return
        conn.setblocking(False)
        hello = Hello(self, loop, conn, addr)
        self._hellos.add(hello)
        hello.start()

    def _stop_accepting(self) -> None:
        # The clients still being read from are closed too; those handed to routes go on.
        super()._stop_accepting()
        for hello in list(self._hellos):
            hello.close("stopped")

    # -- a client's route ----------------------------------------------------------------

    def route(self, hello: Hello, runtime: RouteRuntime) -> None:
        """``hello``'s client goes to ``runtime``'s route, with the bytes read from it."""
        self._hellos.discard(hello)
        # Its place is given back to be judged again, as the route's (admit()).
        self.traffic.unhold(None)
        loop = self._loop
        assert loop is not None
        conn = hello.sock
        if self._set_nodelay:
            with contextlib.suppress(OSError):
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        connection = Connection(runtime, loop, hello.addr)
        # Held by the client end as bytes that came before the backend: they go first.
        connection.transports.held = bytes(hello.data)
        connection.bytes_up = len(hello.data)
        protocol = connection.transports
        drive(loop.connect_accepted_socket(functools.partial(_same, protocol), conn))

    def closed(self, hello: Hello, reason: str) -> None:
        self._hellos.discard(hello)
        self.traffic.unhold(None)
        if reason in CLOSE_REASONS:
            self.closes[reason] += 1


class Hello:
    """One client whose ClientHello is being read: its socket, what it sent, its
    deadline. It ends routed (``SniListener.route``) or closed."""

    __slots__ = ("addr", "data", "listener", "loop", "sock", "timer")

    def __init__(
        self,
        listener: SniListener,
        loop: asyncio.AbstractEventLoop,
        sock: socket.socket,
        addr: tuple[str, int],
    ) -> None:
        self.listener = listener
        self.loop = loop
        self.sock = sock
        self.addr = addr
        self.data = bytearray()
        self.timer: asyncio.TimerHandle | None = None

    def start(self) -> None:
        # The ClientHello has often come by the time its connection is accepted: read at
        # once, and watch the socket (a reader and a timer) only if it has not.
        if self._read(first=True):
            self.loop.add_reader(self.sock.fileno(), self._read)
            self.timer = self.loop.call_later(self.listener.timeout, self._timed_out)

    def _read(self, first: bool = False) -> bool:
        """Read what came; whether more is needed (else the client is routed or closed)."""
        try:
            chunk = self.sock.recv(max(1, DEFAULT_LIMIT - len(self.data)))
        except (BlockingIOError, InterruptedError):
            return True
        except OSError:
            self.close("client_reset", watched=not first)
            return False
        if not chunk:
            self.close("client_closed", watched=not first)
            return False
        self.data += chunk
        seen = peek(self.data)
        if seen.outcome == "more":
            return True
        runtime = self.listener.table.lookup(seen.name)
        if runtime is None:
            # No default route: why it found none is the reason it is closed.
            if seen.outcome == "hello":
                reason = "no_name" if seen.name is None else "unknown_name"
            else:
                reason = seen.outcome  # not_tls, malformed, too_big
            self.close(reason, seen.name, watched=not first)
            return False
        if not first:
            self._quiet()
        self.listener.route(self, runtime)
        return False

    def _timed_out(self) -> None:
        self.timer = None
        self.close("timeout")

    def _quiet(self) -> None:
        """No more reading nor deadline: the socket is the Connection's from now on."""
        with contextlib.suppress(OSError, ValueError):
            self.loop.remove_reader(self.sock.fileno())
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def close(self, reason: str, name: str | None = None, *, watched: bool = True) -> None:
        if watched:
            self._quiet()
        self.listener.closed(self, reason)
        if log.isEnabledFor(logging.DEBUG):
            log.debug(
                "sni closed address=%s:%d client=%s:%d reason=%s name=%s",
                *self.listener.address, *self.addr, reason, name or "-",
            )  # fmt: skip
        self.sock.close()


def _same(protocol: asyncio.Protocol) -> asyncio.Protocol:
    return protocol
