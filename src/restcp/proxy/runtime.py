"""The live state of one route that every relay reads: members, health, limits, counters.

A *member* is a backend as the data plane sees it: the stored Backend plus its health
(core.health), its open connections and its counters. The candidates a picker chooses from
are recomputed when something changes (an update, a health transition), never per client:

    candidates = members that are enabled, not down, and of weight > 0

With no candidate left, ``when_all_down`` decides: ``fail_fast`` closes the client at once,
``try_all`` tries every enabled member of weight > 0 whatever its health. A member at its own
``max_connections`` (open connections plus connects in flight) is skipped for that client.
Admin states: ``drain`` takes no new clients
and, with a ``drain_timeout``, closes its open ones at that deadline; ``disabled`` takes no
clients, is not checked, and its open connections are closed at once.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
import time
from collections import Counter
from collections.abc import Callable, Collection, Iterable
from typing import TYPE_CHECKING

from restcp.core import health as hm
from restcp.core import proxy_protocol
from restcp.core.balancer import Picker, make_picker
from restcp.model import Backend, BackendStatus, Route

if TYPE_CHECKING:
    from restcp.proxy.listener import RelaySet
    from restcp.proxy.relay import Relay

log = logging.getLogger("restcp.health")

# (ip, port) -> why the node's address policy refuses it as a backend, or None.
BackendRefusal = Callable[[str, int], str | None]


# A connect that failed for want of a local resource, not because of the backend. The relay
# reports str(OSError), "[Errno N] ...".
_LOCAL_SHORTAGES = tuple(
    f"[Errno {code}]" for code in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)
)


def _is_local_shortage(reason: str) -> bool:
    return reason.startswith(_LOCAL_SHORTAGES)


async def resolve_allowed(host: str, port: int, refusal: BackendRefusal) -> str:
    """The address to connect to for a host-name backend: the first that ``host`` resolves to
    and the policy allows. Resolved for every connect and every probe, never cached, so that a
    name that has come to point somewhere denied (DNS rebinding) is refused at once; the
    addresses the policy refuses are skipped. OSError (socket.gaierror included) when there is
    none."""
    infos = await asyncio.get_running_loop().getaddrinfo(
        host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP
    )
    refusals: list[str] = []
    for _family, _type, _proto, _name, sockaddr in infos:
        ip = str(sockaddr[0])
        why = refusal(ip, port)
        if why is None:
            return ip
        refusals.append(why)
    raise OSError(errno.EACCES, f"{host} resolves to no allowed address: {'; '.join(refusals)}")


class Member:
    __slots__ = (
        "active",
        "backend",
        "bytes_in",
        "bytes_out",
        "connect_failures",
        "connecting",
        "connections",
        "cooldown",
        "drain_started",
        "health",
        "refusal",
        "timer",
    )

    def __init__(self, backend: Backend, health: hm.BackendHealth) -> None:
        self.backend = backend
        self.health = health
        self.active = 0
        # Clients picked for this member whose connect is still in flight: a burst picks
        # many before the first connects, and they count against max_connections.
        self.connecting = 0
        self.connections = 0
        self.bytes_in = 0  # client -> backend, of finished connections
        self.bytes_out = 0
        self.connect_failures = 0
        self.refusal: str | None = None  # set: the address policy forbids this backend
        # The drain deadline, and the cool-down after a passive "down": apart, so that
        # draining (or re-enabling) a member does not cancel its way back from "down".
        self.timer: asyncio.TimerHandle | None = None
        self.cooldown: asyncio.TimerHandle | None = None
        # Loop time the member entered drain: its drain_timeout counts from there, even
        # when the timeout is set (or changed) later.
        self.drain_started: float | None = None

    @property
    def id(self) -> int:
        return self.backend.id

    @property
    def weight(self) -> int:
        return self.backend.weight

    def cancel_timer(self) -> None:
        """Cancel both timers: the member is replaced or gone."""
        self.cancel_drain()
        self.cancel_cooldown()

    def cancel_drain(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def cancel_cooldown(self) -> None:
        if self.cooldown is not None:
            self.cooldown.cancel()
            self.cooldown = None


class RouteRuntime:
    def __init__(
        self, route: Route, relays: RelaySet, refusal: BackendRefusal = lambda ip, port: None
    ) -> None:
        self._refusal = refusal
        self.app = route.app
        self.route_id = route.id
        self.route = route
        self.relays: set[Relay] = set()
        self._all = relays
        self.splicer = relays.splicer  # for the relays of splice routes
        self.deadlines = relays.deadlines
        self.members: dict[int, Member] = {}
        self.candidates: tuple[Member, ...] = ()
        self.refused: Counter[str] = Counter()
        self.picker: Picker = make_picker(route.settings.balance)
        # The relay started() counted last, until admit() has judged it.
        self._admitting: Relay | None = None
        # Whether any member has a max_connections: pick() skips its scan when none does.
        self._limited = False
        # Told the route's key after each health transition (the node writes it to the
        # cluster's store, later: it must only take note).
        self.on_health: Callable[[tuple[str, int]], None] | None = None
        self._apply(route, first=True)

    # -- configuration -------------------------------------------------------------------

    def update(self, route: Route) -> None:
        if route.settings.balance != self.route.settings.balance:
            self.picker = make_picker(route.settings.balance)
        self._apply(route, first=False)

    def _apply(self, route: Route, *, first: bool) -> None:
        old_route = self.route
        self.route = route
        settings = route.settings
        self.connect_timeout = settings.connect_timeout
        self.idle_timeout = settings.idle_timeout
        self.half_close_timeout = settings.half_close_timeout
        # Read by each new relay: a change applies to new connections.
        self.splice = settings.splice
        self.max_connect_attempts = settings.max_connect_attempts
        check = settings.health_check
        initial = check.initial if check is not None else "unknown"
        old = self.members
        members: dict[int, Member] = {}
        now = time.time()
        for backend in route.backends:
            member = old.get(backend.id)
            moved = False
            if member is None or (member.backend.ip, member.backend.port) != (
                backend.ip,
                backend.port,
            ):
                # A new address is a new server: its health starts over; open connections
                # to the old address still count against the member, and so does a drain
                # deadline they are under.
                fresh = Member(backend, hm.initial(initial, now))
                if member is not None:
                    fresh.active = member.active
                    # Connects in flight end on the member of that id, whichever it is then.
                    fresh.connecting = member.connecting
                    fresh.drain_started = member.drain_started
                    member.cancel_timer()
                    moved = True
                member = fresh
            previous = member.backend
            member.backend = backend
            members[backend.id] = member
            if not first and previous.state != backend.state:
                self._state_changed(member, previous.state)
            elif backend.state == "drain" and (
                moved or previous.drain_timeout != backend.drain_timeout
            ):
                self._schedule_drain(member)
        if not first and old_route.settings.health_check != check and check is None:
            # Checks turned off: a down verdict they gave no longer holds. One that real
            # clients' connect failures back up gets the passive cool-down instead: with
            # nothing left to probe it, it would otherwise stay down for good.
            for member in members.values():
                if member.health.state != "down":
                    continue
                if member.health.passive_failures == 0:
                    member.health = hm.initial("unknown", now)
                elif member.cooldown is None:
                    self._start_cooldown(member)
        for backend_id, member in old.items():
            if backend_id not in members:
                member.cancel_timer()
        self.members = members
        self._limited = any(m.backend.max_connections is not None for m in members.values())
        self.recheck()

    def recheck(self) -> None:
        """Apply the address policy to every member again, then recompute the candidates."""
        for member in self.members.values():
            refusal = self._refusal(member.backend.ip, member.backend.port)
            if refusal != member.refusal and refusal is not None:
                log.error(
                    "backend refused by policy app=%s route=%s backend=%s: %s",
                    self.app, self.route_id, member.id, refusal,
                )  # fmt: skip
            member.refusal = refusal
        self._recompute()

    def _state_changed(self, member: Member, previous: str) -> None:
        member.cancel_drain()
        state = member.backend.state
        log.info(
            "admin state app=%s route=%s backend=%s %s -> %s",
            self.app, self.route_id, member.id, previous, state,
        )  # fmt: skip
        member.drain_started = None
        if state == "disabled":
            self._close_relays_of(member.id, "backend_disabled")
        elif state == "drain":
            member.drain_started = asyncio.get_running_loop().time()
            self._schedule_drain(member)

    def _schedule_drain(self, member: Member) -> None:
        member.cancel_drain()
        timeout = member.backend.drain_timeout
        if timeout is None or member.drain_started is None:
            return
        loop = asyncio.get_running_loop()
        # A deadline already past (set late, or shortened) fires on the next loop turn.
        delay = max(0.0, member.drain_started + timeout - loop.time())
        member.timer = loop.call_later(delay, self._drain_deadline, member.id)

    def _drain_deadline(self, backend_id: int) -> None:
        member = self.members.get(backend_id)
        if member is not None:
            member.timer = None
            if member.backend.state == "drain":
                self._close_relays_of(backend_id, "drain_timeout")

    def _close_relays_of(self, backend_id: int, reason: str) -> None:
        for relay in list(self.relays):
            if relay.backend is not None and relay.backend.id == backend_id:
                relay.abort(reason)

    def _recompute(self) -> None:
        self.candidates = tuple(
            m
            for m in self.members.values()
            if m.backend.state == "enabled"
            and m.health.usable
            and m.weight > 0
            and m.refusal is None
        )

    def close(self) -> None:
        """The route stopped: no timer of it may fire any more."""
        for member in self.members.values():
            member.cancel_timer()

    # -- admission and picking -----------------------------------------------------------

    def admit(self) -> str | None:
        """Why the client started() just counted must be refused now (None: welcome).

        The limits count the *other* relays: the newcomer is taken out of the sets while it
        is judged, and stays out when refused, so that neither it nor the refused clients
        of a burst, reset but not yet gone, take a place a later client could have."""
        relay, self._admitting = self._admitting, None
        if relay is not None:
            self.relays.discard(relay)
            self._all.discard(relay)
        limit = self.route.settings.max_connections
        refusal: str | None = None
        if limit is not None and len(self.relays) >= limit:
            refusal = "route_limit"
        elif self._all.full():
            refusal = "node_limit"
        elif self._all.app_full(self.app):
            refusal = "app_limit"
        if refusal is None and relay is not None:
            self.relays.add(relay)
            self._all.add(relay)
        return refusal

    def pick(self, tried: Collection[int], key: bytes) -> Backend | None:
        """The backend for a client's next connect. Each pick is counted in ``connecting``
        until the relay reports its end: connected, connect_failed or connect_abandoned."""
        if len(tried) >= self.max_connect_attempts:
            return None
        excluded: Collection[int] = tried
        if self._limited:
            at_limit = {
                m.id
                for m in self.members.values()
                if m.backend.max_connections is not None
                and m.active + m.connecting >= m.backend.max_connections
            }
            if at_limit:
                excluded = at_limit.union(tried)
        candidates: tuple[Member, ...] = self.candidates
        if not candidates and self.route.settings.when_all_down == "try_all":
            candidates = tuple(
                m
                for m in self.members.values()
                if m.backend.state == "enabled" and m.weight > 0 and m.refusal is None
            )
        member = self.picker.pick(candidates, excluded, key)
        if member is None:
            return None
        member.connecting += 1
        return member.backend

    async def resolve(self, host: str, port: int) -> str:
        return await resolve_allowed(host, port, self._refusal)

    def _attempt_over(self, backend: Backend) -> Member | None:
        """A connect picked for ``backend`` has ended; its member, if it still has one."""
        member = self.members.get(backend.id)
        if member is not None:
            member.connecting = max(0, member.connecting - 1)
        return member

    def connect_abandoned(self, backend: Backend) -> None:
        """The connect was given up (the client left, the node shuts down): it says nothing
        of the backend."""
        self._attempt_over(backend)

    def proxy_header(
        self,
        backend: Backend,
        client: tuple[str, int] | None,
        frontend: Callable[[], tuple[str, int] | None],
    ) -> bytes | None:
        """The PROXY header to send first, or None; ``frontend`` is asked only when one is
        sent (it costs the relay a getsockname conversion)."""
        version = backend.proxy_protocol or self.route.settings.proxy_protocol
        if version is None or version == "none":
            return None
        return proxy_protocol.header(version, client, frontend())

    # -- what relays report --------------------------------------------------------------

    def started(self, relay: Relay) -> None:
        self.relays.add(relay)
        self._all.add(relay)
        self._admitting = relay

    def connected(self, relay: Relay) -> None:
        backend = relay.backend
        member = self._attempt_over(backend) if backend is not None else None
        if member is not None:
            member.active += 1
            member.connections += 1
            member.health = hm.connect_succeeded(member.health)

    def connect_failed(self, backend: Backend, reason: str) -> None:
        member = self._attempt_over(backend)
        # A failure of an address the member no longer has says nothing of it; a change of
        # weight or state while the connect ran does not make it any less a failure.
        if member is None or (member.backend.ip, member.backend.port) != (
            backend.ip,
            backend.port,
        ):
            return
        member.connect_failures += 1
        if _is_local_shortage(reason):
            # This node ran out of descriptors or buffers: the backend was never asked, and
            # marking it down would turn a moment of overload into a passive_cooldown outage.
            return
        step = hm.connect_failed(
            member.health, time.time(), self.route.settings.passive_fall, reason
        )
        self._step(member, step)
        if step.changed and self.route.settings.health_check is None:
            # Nothing will probe it back up: give it another chance after the cool-down.
            self._start_cooldown(member)

    def _start_cooldown(self, member: Member) -> None:
        member.cancel_cooldown()
        member.cooldown = asyncio.get_running_loop().call_later(
            self.route.settings.passive_cooldown, self._cooldown_over, member.id
        )

    def _cooldown_over(self, backend_id: int) -> None:
        member = self.members.get(backend_id)
        if member is not None:
            member.cooldown = None
            self._step(member, hm.cooldown_over(member.health, time.time()))

    def check_result(self, backend_id: int, ok: bool, reason: str, latency: float) -> None:
        member = self.members.get(backend_id)
        check = self.route.settings.health_check
        if member is None or check is None:
            return
        now = time.time()
        if ok:
            step = hm.check_passed(member.health, now, check.rise)
        else:
            step = hm.check_failed(member.health, now, check.fall, reason)
        self._step(member, step)

    def _step(self, member: Member, step: hm.Step) -> None:
        old = member.health.state
        member.health = step.health
        if step.changed:
            log.log(
                logging.WARNING if step.health.state == "down" else logging.INFO,
                "health app=%s route=%s backend=%s addr=%s:%s %s -> %s reason=%s",
                self.app, self.route_id, member.id, member.backend.ip, member.backend.port,
                old, step.health.state, step.health.reason,
                extra={"fields": {
                    "event": "health", "app": self.app, "route": self.route_id,
                    "backend": member.id,
                    "backend_addr": f"{member.backend.ip}:{member.backend.port}",
                    "from": old, "to": step.health.state, "reason": step.health.reason,
                }},
            )  # fmt: skip
            self._recompute()
            if self.on_health is not None:
                self.on_health((self.app, self.route_id))

    def finished(self, relay: Relay) -> None:
        self.relays.discard(relay)
        self._all.discard(relay)
        if relay.refused is not None:
            self.refused[relay.refused] += 1
        backend = relay.backend
        member = self.members.get(backend.id) if backend is not None else None
        if member is not None:
            member.active = max(0, member.active - 1)
            member.bytes_in += relay.bytes_up
            member.bytes_out += relay.bytes_down

    # -- what the API and metrics read ---------------------------------------------------

    def backend_status(self) -> dict[int, BackendStatus]:
        return {
            m.id: BackendStatus(
                health=m.health.state,
                health_changed_at=m.health.changed_at,
                health_reason=m.health.reason,
                active_connections=m.active,
            )
            for m in self.members.values()
        }

    def live_bytes(self) -> Iterable[tuple[int, int, int]]:
        """(backend id, bytes in, bytes out) of connections still open."""
        for relay in self.relays:
            if relay.backend is not None:
                yield relay.backend.id, relay.bytes_up, relay.bytes_down
