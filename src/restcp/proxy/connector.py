"""Reaching a backend for one client: pick -> resolve -> connect -> failover.

    Connection ──next()──► route.pick ──► (resolve a host name) ──► loop.create_connection
        ▲                                                                   │
        └── reached(member, backend, end) / unreachable() / broke() ◄───────┘ failed: next pick

The connect is the loop's ``create_connection`` coroutine, run by the Connector itself (a
proxy.stepping.Stepper: no Task per client). Its deadline is the Connection's (one of its
timers): ``timed_out`` gives the attempt up and fails over, ``abandon`` gives it up for good
(the connection is ending). Each pick is paired with exactly one of the route's
``connected`` (the Connection reports it on ``reached``), ``connect_failed`` or
``connect_abandoned``, which keeps the route's counts of connects in flight exact.

Each attempt has its own protocol, a proxy.transport_pipe.BackendEnd, so that a transport
that comes up for an attempt given up (asyncio may run its ``connection_made`` after the
coroutine was cancelled) is told apart and reset. Such transports are the Connector's until
their ``connection_lost``: it is ``busy`` while one is open or a connect runs, and tells its
owner ``settled`` once it is neither. The transport of the attempt that connected is handed
to the owner and is the owner's from then on.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from typing import Protocol

from restcp.model import Backend, is_host_name
from restcp.proxy.members import Member
from restcp.proxy.origination import Origination, backend_failure_reason
from restcp.proxy.runtime import RouteRuntime
from restcp.proxy.stepping import Stepper
from restcp.proxy.transport_pipe import BackendEnd, TransportPipe
from restcp.sockets import reset_transport

log = logging.getLogger("restcp.proxy")


class ConnectorOwner(Protocol):
    """What a Connector reports to (proxy.connection.Connection)."""

    @property
    def end_reason(self) -> str | None:
        """Set once the owner is ending: it wants no backend any more."""

    def attempting(self) -> None:
        """A connect attempt starts: its deadline runs from now."""

    def reached(self, member: Member, backend: Backend, end: BackendEnd) -> None:
        """Connected to ``backend`` (``member``'s address) through ``end``, whose transport
        is the owner's from now on (``end.gone``: it was lost already)."""

    def unreachable(self) -> None:
        """No backend is left to try: the client is to be let go."""

    def broke(self) -> None:
        """The connect failed in a way that forbids trying another backend (bytes may have
        reached a backend, or an unexpected error): the client is to be reset."""

    def settled(self) -> None:
        """Nothing of the Connector is left running or open."""


class Connector(Stepper):
    """Reaches a backend for one client, failing over until one connects or none is left."""

    __slots__ = ("_attempt", "_backend", "_key", "_loop", "_loose", "_member", "_owner", "_pipe",
                 "_route", "_why", "tried")  # fmt: skip

    def __init__(
        self,
        owner: ConnectorOwner,
        route: RouteRuntime,
        loop: asyncio.AbstractEventLoop,
        pipe: TransportPipe,
        key: bytes,
    ) -> None:
        super().__init__()
        self._owner = owner
        self._route = route
        self._loop = loop
        self._pipe = pipe  # gives each attempt its protocol
        self._key = key  # what source_hash hashes: the client's address
        self.tried: tuple[int, ...] = ()  # backends tried for this client, in order
        # The attempt in progress: its protocol, its member and that member's backend as
        # picked (the address being connected to, whatever an update does meanwhile).
        self._attempt: BackendEnd | None = None
        self._member: Member | None = None
        self._backend: Backend | None = None
        self._why: str | None = None  # why the attempt is being given up: timeout, end
        # Attempt transports made and neither lost nor handed over (late ones, being reset).
        self._loose = 0

    @property
    def busy(self) -> bool:
        return self.running or self._loose > 0

    def next(self) -> None:
        """Start connecting to the backend the route picks next, or tell the owner that
        none is left."""
        member = self._route.pick(self.tried, self._key)
        if member is None:
            self._owner.unreachable()
            self._check_settled()
            return
        self.tried += (member.id,)
        backend = member.backend
        # Read once: an update meanwhile does not change what this attempt speaks.
        origination = self._route.origination
        end = self._attempt = self._pipe.attempt(self, origination is not None)
        self._member, self._backend = member, backend
        self._owner.attempting()
        if is_host_name(backend.ip):
            self.run(self._resolve_and_connect(end, backend, origination))
        elif origination is not None:
            self.run(self._connect_tls(end, backend, backend.ip, origination))
        else:
            self.run(self._loop.create_connection(end.itself, backend.ip, backend.port))

    async def _resolve_and_connect(
        self, end: BackendEnd, backend: Backend, origination: Origination | None
    ) -> None:
        ip = await self._route.resolve(backend.ip, backend.port)
        if origination is not None:
            await self._connect_tls(end, backend, ip, origination)
        else:
            await self._loop.create_connection(end.itself, ip, backend.port)

    async def _connect_tls(
        self, end: BackendEnd, backend: Backend, ip: str, origination: Origination
    ) -> None:
        """Connect, then handshake (proxy/origination.py): ``end`` is made once both are
        done. The Connection's connect deadline covers both; the loop's own handshake
        timeout is a backstop."""
        await self._loop.create_connection(
            end.itself,
            ip,
            backend.port,
            ssl=origination.context,
            server_hostname=origination.server_hostname(backend.ip),
            ssl_handshake_timeout=self._route.connect_timeout + 1,
        )

    def timed_out(self) -> None:
        """The connect deadline passed: give this attempt up and try the next backend."""
        self._give_up("timeout")

    def abandon(self) -> None:
        """The owner is ending: give the connect up for good."""
        self._give_up("end")

    def _give_up(self, why: str) -> None:
        if why == "end" or self._why is None:
            self._why = why
        self.cancel()

    # -- what the attempts' protocols report ---------------------------------------------

    def made(self, end: BackendEnd) -> None:
        self._loose += 1
        if end is not self._attempt or self._owner.end_reason is not None:
            # asyncio may run connection_made after create_connection was abandoned; or the
            # client went away while we were connecting. Counted until its connection_lost.
            assert end.transport is not None
            reset_transport(end.transport)

    def lost(self, end: BackendEnd, exc: Exception | None) -> None:
        self._loose -= 1
        self._check_settled()

    def _drop(self, end: BackendEnd) -> None:
        """Reset ``end``'s transport and count it lost now: the loop may not call its
        connection_lost (see ``finished``)."""
        if not end.gone and end.transport is not None:
            reset_transport(end.transport)
            end.gone = True
            self._loose -= 1

    def _check_settled(self) -> None:
        if not self.busy:
            self._owner.settled()

    # -- the connect coroutine's end -----------------------------------------------------

    def finished(self, err: BaseException | None) -> None:
        end, self._attempt = self._attempt, None
        member, backend = self._member, self._backend
        self._member = self._backend = None
        why, self._why = self._why, None
        if end is None or member is None or backend is None:
            return
        owner, route = self._owner, self._route
        if err is None and end.transport is None:
            # uvloop returns a transport closed before connection_made could run.
            err = ConnectionAbortedError("closed while connecting")
        if err is None and why != "end":
            # Connected; a timeout that fired in the same moment loses to the connection.
            end.connector = None  # its loss is the owner's from now on
            if not end.gone:
                self._loose -= 1
            owner.reached(member, backend, end)
            self._check_settled()
            return
        if end.transport is not None:
            # connection_made ran, then the attempt failed or was given up (asyncio runs
            # connection_made a turn before create_connection returns). The loop may close
            # that transport without calling connection_lost, so it is counted lost here.
            # Bytes may have reached it: no failover, the client is reset.
            route.connect_abandoned(member)
            self._drop(end)
            owner.broke()
            self._check_settled()
            return
        if why == "timeout" and isinstance(err, asyncio.CancelledError):
            err = TimeoutError()
        if why == "end" or not isinstance(err, OSError):  # TimeoutError is an OSError
            route.connect_abandoned(member)
            if why != "end":
                log.error("connect failed unexpectedly", exc_info=err)
                owner.broke()
            self._check_settled()
            return
        if isinstance(err, ssl.SSLError):
            # The TCP connect worked; the backend's TLS did not (its certificate refused,
            # not TLS at all): a failed connect of that backend all the same.
            reason = backend_failure_reason(err)
            route.backend_tls_failures[reason] += 1
            log.warning(
                "connect failed app=%s route=%s backend=%s addr=%s:%s error=TLS handshake "
                "with the backend failed (%s): %s",
                route.app, route.route_id, backend.id, backend.ip, backend.port, reason, err,
            )  # fmt: skip
        else:
            log.warning(
                "connect failed app=%s route=%s backend=%s addr=%s:%s error=%s",
                route.app, route.route_id, backend.id, backend.ip, backend.port,
                str(err) or "timeout",
            )  # fmt: skip
        route.connect_failed(member, err)
        if owner.end_reason is None:
            self.next()
        else:
            self._check_settled()
