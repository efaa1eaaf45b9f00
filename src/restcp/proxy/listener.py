"""One route's listening socket: the asyncio engine's way in for the route's clients.

A listener binds before it is stored (so a route's port is known to be ours before the API
answers) and serves until it is stopped; new backends and settings are swapped in in place
(the route's RouteRuntime, which the ProxyManager keeps): the socket is never rebound for an
update, so no client is refused while a route changes. Each accepted client becomes a
proxy.connection.Connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import functools
import logging
import socket

from restcp.model import Route
from restcp.proxy.connection import client_protocol, tls_client_protocol
from restcp.proxy.runtime import RouteRuntime
from restcp.proxy.stepping import drive
from restcp.proxy.tls import Handshake
from restcp.sockets import OUT_OF_RESOURCES, arm_reset

log = logging.getLogger("restcp.proxy")

BACKLOG = 1024
# Accepts per readiness event: enough to drain a burst, few enough to let connections run.
ACCEPT_BATCH = 64
ACCEPT_RETRY = 0.1


def bind(ip: str, port: int, *, share: bool = False, join: bool = False) -> socket.socket:
    """A listening-ready TCP socket on ip:port; OSError (EADDRINUSE...) if it cannot be had.

    ``share`` (the main process of ``--workers N``): bound exclusively, by the ordinary
    rules, so a port anyone else holds, with or without SO_REUSEPORT, is refused; then
    SO_REUSEPORT is set before listen(), which lets the workers join. ``join`` (a worker):
    SO_REUSEPORT before bind, so the bind succeeds next to the main process's socket.
    Linux spreads new connections over the listening sockets of the group; a socket only
    bound, not listening, gets none.
    """
    family = socket.AF_INET6 if ":" in ip else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        # SO_REUSEADDR lets a restarted node rebind a port whose old connections sit in
        # TIME_WAIT; it does not let two live listeners share a port on Linux.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        # Accepted sockets inherit it: the native engine sets nothing per client.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if join:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((ip, port))
        if share:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.listen(BACKLOG)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def is_address_taken(err: OSError) -> bool:
    return err.errno in (errno.EADDRINUSE, errno.EACCES, errno.EADDRNOTAVAIL)


class Acceptor:
    """A listening socket's accept loop, shared by a route's Listener and a shared port's
    SniListener (sni_listener.py), which say what becomes of each client (``accepted``).

    The loop is ours, not the event loop's server: out of file descriptors (EMFILE),
    uvloop's server stops accepting for good, while an Acceptor only pauses, retries every
    ACCEPT_RETRY seconds, and resumes once descriptors are free again.
    """

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._loop: asyncio.AbstractEventLoop | None = None
        # uvloop sets TCP_NODELAY on the sockets its transports take; asyncio does not on
        # an accepted one (its proto is 0), so there the listener sets it.
        self._set_nodelay = True
        self._reading = False
        self._retry: asyncio.TimerHandle | None = None
        self.paused_by: str | None = None

    def describe(self) -> str:
        """Who accepts, for the log lines of a pause and a resume."""
        raise NotImplementedError

    def accepted(
        self, conn: socket.socket, addr: tuple[str, int], loop: asyncio.AbstractEventLoop
    ) -> None:
        """Take a new client's socket (its owner from now on)."""
        raise NotImplementedError

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._set_nodelay = not type(self._loop).__module__.startswith("uvloop")
        self._resume()

    def _resume(self) -> None:
        self._retry = None
        if self._loop is not None and self._sock.fileno() >= 0 and not self._reading:
            self._loop.add_reader(self._sock.fileno(), self._accept)
            self._reading = True

    def _pause(self, err: OSError) -> None:
        assert self._loop is not None
        self._loop.remove_reader(self._sock.fileno())
        self._reading = False
        if self.paused_by is None:
            log.error(
                "accept paused %s: %s; retrying every %gs",
                self.describe(), err.strerror, ACCEPT_RETRY,
            )  # fmt: skip
        self.paused_by = err.strerror
        self._retry = self._loop.call_later(ACCEPT_RETRY, self._resume)

    def _accept(self) -> None:
        loop = self._loop
        assert loop is not None
        accepted = self.accepted
        for _ in range(ACCEPT_BATCH):
            try:
                conn, addr = self._sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as err:
                if err.errno in OUT_OF_RESOURCES:
                    self._pause(err)
                    return
                # ECONNABORTED and the like: that one client gave up; the next may not.
                continue
            if self.paused_by is not None:
                log.warning("accept resumed %s", self.describe())
                self.paused_by = None
            accepted(conn, (addr[0], addr[1]), loop)

    def release(self) -> socket.socket:
        """Stop accepting and hand the listening socket over (a route that gained or lost
        server names moves between a Listener and an SniListener): no client is refused
        meanwhile."""
        self._stop_accepting()
        return self._sock

    def stop(self) -> None:
        """Stop accepting now: the socket is closed before this returns, so the next connect
        is refused."""
        self._stop_accepting()
        self._sock.close()

    def _stop_accepting(self) -> None:
        if self._retry is not None:
            self._retry.cancel()
            self._retry = None
        if self._reading and self._loop is not None:
            self._loop.remove_reader(self._sock.fileno())
            self._reading = False


class Listener(Acceptor):
    """Accepts clients of one route and starts a Connection for each. Connections already
    running when it stops go on until their peers end them (the route's runtime is its
    owner's to close)."""

    def __init__(self, runtime: RouteRuntime, sock: socket.socket) -> None:
        super().__init__(sock)
        self.runtime = runtime

    @property
    def route(self) -> Route:
        return self.runtime.route

    def describe(self) -> str:
        return f"app={self.runtime.app} route={self.runtime.route_id}"

    def accepted(
        self, conn: socket.socket, addr: tuple[str, int], loop: asyncio.AbstractEventLoop
    ) -> None:
        # No setblocking(False): both loops make the socket non-blocking themselves.
        if self._set_nodelay:
            with contextlib.suppress(OSError):
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        # No task either (one per client was a good part of its cost): the coroutine
        # makes the transport at its first step and only waits for connection_made.
        tls = self.runtime.tls
        if tls is None:
            protocol = client_protocol(self.runtime, loop, addr)
            drive(loop.connect_accepted_socket(functools.partial(_same, protocol), conn))
            return
        # TLS terminated here (proxy/tls.py): connection_made comes after the handshake,
        # which takes a place under the limits meanwhile, or is refused at once.
        runtime = self.runtime
        if runtime.hold() is not None:
            arm_reset(conn)
            conn.close()
            return
        handshake = Handshake(runtime.tls_failures, runtime.release)
        protocol = tls_client_protocol(runtime, loop, addr, handshake)
        handshake.run(
            loop.connect_accepted_socket(
                functools.partial(_same, protocol),
                conn,
                ssl=tls.context,
                ssl_handshake_timeout=tls.handshake_timeout,
            )
        )


def _same(protocol: asyncio.Protocol) -> asyncio.Protocol:
    return protocol
