"""The live state of one route that its connections read: members, health, limits, counters.

A *member* is a backend's address as the data plane serves it (proxy/members.py). The
candidates a picker chooses from are recomputed when something changes (an update, a
health transition), never per client:

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
from typing import Protocol

from restcp.core import health as hm
from restcp.core import proxy_protocol
from restcp.core.balancer import Picker, make_picker
from restcp.model import Backend, BackendStatus, ReplacedAddress, Route, Toxic
from restcp.proxy.members import Member
from restcp.proxy.origination import Origination
from restcp.proxy.stages import Tally
from restcp.proxy.tls import Termination
from restcp.proxy.traffic import Tracked, Traffic
from restcp.sockets import out_of_resources

log = logging.getLogger("restcp.health")

# (ip, port) -> why the node's address policy refuses it as a backend, or None.
BackendRefusal = Callable[[str, int], str | None]


class Counted(Tracked, Protocol):
    """A connection as its route counts it (proxy.connection.Connection)."""

    member: Member | None  # the address it is connected to, once it is
    backend: Backend | None  # that backend as it was when picked
    bytes_up: int
    bytes_down: int
    refused: str | None  # why it was closed without reaching a backend
    client_addr: tuple[str, int] | None

    def frontend(self) -> tuple[str, int] | None:
        """The address the client connected to."""

    def tls_info(self) -> proxy_protocol.TlsInfo | None:
        """What its TLS handshake said, if the proxy terminated its TLS."""

    def toxics_changed(self) -> None:
        """The route's toxics changed: meet the ones aimed at it now."""

    def end(self, reason: str, *, reset: bool = False) -> None:
        """Close both peers (gracefully: what is held is flushed first)."""


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


class RouteRuntime:
    """One route as this node serves it: its settings, members and picker, the admission of
    its clients, and the accounting of their connections (started, connected, failed,
    finished). The asyncio Listener and its Connections call it; so would any other engine
    serving the route: the decisions are all here, none in the sockets."""

    def __init__(
        self, route: Route, traffic: Traffic, refusal: BackendRefusal = lambda ip, port: None
    ) -> None:
        self._refusal = refusal
        self.app = route.app
        self.route_id = route.id
        self.route = route
        self.connections: set[Counted] = set()
        self.traffic = traffic
        self.members: dict[int, Member] = {}
        # Members replaced while connections to them were open or on their way, by (id,
        # address), until the last has ended (proxy/members.py).
        self.retired: dict[tuple[int, str, int], Member] = {}
        self.candidates: tuple[Member, ...] = ()
        self.refused: Counter[str] = Counter()
        self.picker: Picker = make_picker(route.settings.balance)
        # The connection started() counted last, until admit() has judged it.
        self._admitting: Counted | None = None
        # Whether any member has a max_connections: pick() skips its scan when none does.
        self._limited = False
        # Told the route's key after each health transition (the node writes it to the
        # cluster's store, later: it must only take note).
        self.on_health: Callable[[tuple[str, int]], None] | None = None
        # Told after the candidates were recomputed (an update, a health transition): the
        # native engine's table of the route follows (proxy/native.py).
        self.on_candidates: Callable[[], None] | None = None
        # Told (backend id, reason) when a backend's open connections are reset (disabled,
        # past its drain timeout): the native engine resets its own.
        self.on_close_backend: Callable[[int, str], None] | None = None
        # Told a backend's id when its count of connect failures in a row went back to 0
        # other than by a connect (a check passed, a cool-down ended, it came back up): the
        # native engine, which counts them too, starts again (``_step``).
        self.on_passive_reset: Callable[[int], None] | None = None
        # The (backend id, bytes up, bytes down) of its connections open on the native
        # engine, which counts them in C (``live_bytes``); set once the engine served it.
        self.on_live: Callable[[], Iterable[tuple[int, int, int]]] | None = None
        # Clients accepted so far: a connection's number, of which its toxics' draws are.
        self.accepted = 0
        # The most clients admitted and open at once (HAProxy's "smax"), since it started.
        self.connections_max = 0
        self.toxics: tuple[Toxic, ...] = ()
        self.tallies: dict[str, Tally] = {}  # each toxic's counters, by name
        # TLS termination (proxy/tls.py): None for a route that relays the bytes as they
        # come; the listener reads it at each accept.
        self.tls: Termination | None = None
        self.tls_failures: Counter[str] = Counter()  # failed handshakes, by reason
        # Clients in their TLS handshake: not Connections yet, counted against the limits
        # all the same (``hold``), so a flood of clients that never finish cannot pass them.
        self.handshaking = 0
        # TLS towards the backends (proxy/origination.py): None for plain connects; the
        # Connector reads it at each attempt, the route's probes at each probe.
        self.origination: Origination | None = None
        self.backend_tls_failures: Counter[str] = Counter()  # by reason, as tls_failures
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
        # Read by each new connection: a change applies to new connections. A terminated
        # connection's plain bytes are in no socket, nor are those of one that speaks TLS
        # to its backend: never spliced.
        plain = settings.tls is None and settings.backend_tls is None
        self.splice = settings.splice if plain else False
        changed = first or route.certificates != old_route.certificates
        if changed or settings.tls != old_route.settings.tls:
            # New handshakes use it; open connections keep their SSL objects.
            tls = settings.tls
            self.tls = (
                None
                if tls is None
                else Termination(tls, [c for c in route.certificates if c.name in tls.certificates])
            )
        if changed or settings.backend_tls != old_route.settings.backend_tls:
            backend_tls = settings.backend_tls
            self.origination = (
                None if backend_tls is None else Origination(backend_tls, route.certificates)
            )
        self.max_connect_attempts = settings.max_connect_attempts
        # The route's own seed, or the node's: what every draw of its toxics starts from.
        self.seed = settings.seed if settings.seed is not None else self.traffic.seed
        if first or route.toxics != old_route.toxics:
            self._toxics(route.toxics, first=first)
        check = settings.health_check
        initial = check.initial if check is not None else "unknown"
        old = self.members
        members: dict[int, Member] = {}
        now = time.time()
        for backend in route.backends:
            member = old.get(backend.id)
            moved = False
            if member is None or member.address != (backend.ip, backend.port):
                # A new address is a new server: its health starts over, and it counts the
                # connections to it alone (an address it had before and still has
                # connections to takes them back). A drain deadline the backend is under
                # still holds.
                fresh = self.retired.pop((backend.id, backend.ip, backend.port), None)
                if fresh is None:
                    fresh = Member(backend, hm.initial(initial, now))
                else:
                    fresh.retired = False
                    fresh.health = hm.initial(initial, now)
                    fresh.backend = backend
                if member is not None:
                    fresh.drain_started = member.drain_started
                    self._retire(member)
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
                self._retire(member)
        self.members = members
        self._limited = any(m.backend.max_connections is not None for m in members.values())
        self.recheck()

    def _toxics(self, toxics: tuple[Toxic, ...], *, first: bool) -> None:
        """Serve these toxics, to every connection at once (a toxic's counters stay while
        its name, type and stream do)."""
        tallies: dict[str, Tally] = {}
        for toxic in toxics:
            tally = self.tallies.get(toxic.name)
            if tally is None or (tally.type, tally.stream) != (toxic.type, toxic.stream):
                tally = Tally(toxic.type, toxic.stream)
            tallies[toxic.name] = tally
        self.tallies = tallies
        self.toxics = toxics
        if not first:
            for connection in list(self.connections):
                connection.toxics_changed()

    def _retire(self, member: Member) -> None:
        """``member`` is no longer its backend's: keep counting its leftovers, if any."""
        member.cancel_timer()
        if not member.idle:
            member.retired = True
            self.retired[(member.id, *member.address)] = member

    def released(self, member: Member) -> None:
        """A connection that counted against ``member`` since its connect ended."""
        member.active = max(0, member.active - 1)
        if member.retired:
            self._forget_if_done(member)

    def member_at(self, backend_id: int, address: tuple[str, int] | None) -> Member | None:
        """The member a connection to ``address`` counts against: the one kept for it if
        its backend was given another address (or deleted) meanwhile, else the backend's."""
        if address is not None:
            retired = self.retired.get((backend_id, *address))
            if retired is not None:
                return retired
        return self.members.get(backend_id)

    def _forget_if_done(self, member: Member) -> None:
        if member.retired and member.idle:
            member.retired = False
            self.retired.pop((member.id, *member.address), None)

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
            self._close_connections_of(member.id, "backend_disabled")
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
                self._close_connections_of(backend_id, "drain_timeout")

    def _close_connections_of(self, backend_id: int, reason: str) -> None:
        """Reset the connections of a backend, those to addresses it had before included."""
        for connection in list(self.connections):
            if connection.backend is not None and connection.backend.id == backend_id:
                connection.abort(reason)
        if self.on_close_backend is not None:
            self.on_close_backend(backend_id, reason)

    def _recompute(self) -> None:
        self.candidates = tuple(
            m
            for m in self.members.values()
            if m.backend.state == "enabled"
            and m.health.usable
            and m.weight > 0
            and m.refusal is None
        )
        if self.on_candidates is not None:
            self.on_candidates()

    def close(self) -> None:
        """The route stopped: no timer of it may fire any more."""
        for member in self.members.values():
            member.cancel_timer()

    # -- admission and picking -----------------------------------------------------------

    def admit(self) -> str | None:
        """Why the client started() just counted must be refused now (None: welcome).

        The limits count the *other* connections: the newcomer is taken out of the sets
        while it is judged, and stays out when refused, so that neither it nor the refused
        clients of a burst, reset but not yet gone, take a place a later client could
        have."""
        connection, self._admitting = self._admitting, None
        if connection is not None:
            self.connections.discard(connection)
        limit = self.route.settings.max_connections
        if limit is not None and len(self.connections) + self.handshaking >= limit:
            return "route_limit"
        if connection is None:
            refusal = self.traffic.hold(self.app)
            if refusal is None:
                self.traffic.unhold(self.app)
            return refusal
        # The node's and the app's caps: places shared with the native engine, if any.
        refusal = self.traffic.admit(connection, self.app)
        if refusal is None:
            self.connections.add(connection)
            if len(self.connections) > self.connections_max:
                self.connections_max = len(self.connections)
        return refusal

    def adopt(self, connection: Counted) -> None:
        """The connection started() just counted was relaying on the native engine until
        the route moved here (proxy/handoff.py): admitted there already, it holds its place
        under the node's caps, which it gives back when it ends, as any other does."""
        self._admitting = None
        self.traffic.adopt(connection, self.app)
        if len(self.connections) > self.connections_max:
            self.connections_max = len(self.connections)

    def hold(self) -> str | None:
        """A client of a route that terminates TLS, accepted, takes a place under the limits
        for its handshake (``release`` gives it back, before its Connection is admitted),
        or is refused: why (counted as ``admit`` counts it)."""
        limit = self.route.settings.max_connections
        refusal: str | None = None
        if limit is not None and len(self.connections) + self.handshaking >= limit:
            refusal = "route_limit"
        else:
            refusal = self.traffic.hold(self.app)
        if refusal is not None:
            self.refused[refusal] += 1
            return refusal
        self.handshaking += 1
        return None

    def release(self) -> None:
        """A handshake held by ``hold`` is over (done, failed or abandoned)."""
        self.handshaking -= 1
        self.traffic.unhold(self.app)

    def pick(self, tried: Collection[int], key: bytes) -> Member | None:
        """The member for a client's next connect. Each pick is counted in its
        ``connecting`` until the connector reports its end: connected, connect_failed or
        connect_abandoned."""
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
        return member

    async def resolve(self, host: str, port: int) -> str:
        return await resolve_allowed(host, port, self._refusal)

    def connect_abandoned(self, member: Member) -> None:
        """The connect was given up (the client left, the node shuts down): it says nothing
        of the backend."""
        member.connecting = max(0, member.connecting - 1)
        self._forget_if_done(member)

    def proxy_header(self, backend: Backend, connection: Counted) -> bytes | None:
        """The PROXY header to send ``backend`` first, or None. The connection is asked its
        frontend address (a getsockname conversion) and its TLS (a v2 header's TLVs) only
        when a header is sent."""
        version = backend.proxy_protocol or self.route.settings.proxy_protocol
        if version is None or version == "none" or self.origination is not None:
            # Over TLS the header would be inside the session (the API refuses the route's
            # own; a backend's is not sent): docs/tls.md.
            return None
        tls = connection.tls_info() if version == "v2" else None
        return proxy_protocol.header(version, connection.client_addr, connection.frontend(), tls)

    # -- what connections report --------------------------------------------------------

    def started(self, connection: Counted) -> int:
        """A client came: its number (the n-th of the route)."""
        self.connections.add(connection)
        self._admitting = connection
        self.accepted += 1
        return self.accepted

    def connected(self, connection: Counted) -> None:
        """``connection`` reached its ``member``: it counts against that address until it
        ends, and as a connection of the backend's id."""
        member = connection.member
        if member is None:
            return
        member.connecting = max(0, member.connecting - 1)
        member.active += 1
        if member.active > member.active_max:
            member.active_max = member.active
        current = self.members.get(member.backend.id)
        if current is not None:
            current.connections += 1
        if current is member:
            member.health = hm.connect_succeeded(member.health)

    def connect_failed(self, member: Member, err: OSError) -> None:
        member.connecting = max(0, member.connecting - 1)
        self._forget_if_done(member)
        # A failure of an address the backend no longer has says nothing of it; a change of
        # weight or state while the connect ran does not make it any less a failure.
        if self.members.get(member.backend.id) is not member:
            return
        member.connect_failures += 1
        if out_of_resources(err):
            # This node ran out of descriptors or buffers: the backend was never asked, and
            # marking it down would turn a moment of overload into a passive_cooldown outage.
            return
        reason = str(err) or "timeout"
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
        reset = step.health.passive_failures == 0 and (
            member.health.passive_failures > 0 or (step.changed and old == "down")
        )
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
        if reset and self.on_passive_reset is not None:
            # After the table (``_recompute``): a backend back up is in it to be found.
            self.on_passive_reset(member.id)

    def finished(self, connection: Counted) -> None:
        self.connections.discard(connection)
        self.traffic.discard(connection)
        if connection.refused is not None:
            self.refused[connection.refused] += 1
        member = connection.member
        if member is None:
            return
        self.released(member)
        current = self.members.get(member.backend.id)
        if current is not None:
            current.bytes_up += connection.bytes_up
            current.bytes_down += connection.bytes_down

    # -- what the API and metrics read ---------------------------------------------------

    def backend_status(self) -> dict[int, BackendStatus]:
        replaced: dict[int, list[ReplacedAddress]] = {}
        for member in self.retired.values():
            if member.active:
                ip, port = member.address
                replaced.setdefault(member.id, []).append(
                    ReplacedAddress(ip=ip, port=port, active_connections=member.active)
                )
        return {
            m.id: BackendStatus(
                health=m.health.state,
                health_changed_at=m.health.changed_at,
                health_reason=m.health.reason,
                active_connections=m.active,
                replaced=tuple(replaced.get(m.id, ())),
                checked_at=m.health.checked_at,
                check_ok=m.health.check_ok,
                check_reason=m.health.check_reason,
            )
            for m in self.members.values()
        }

    def live_bytes(self) -> Iterable[tuple[int, int, int]]:
        """(backend id, bytes up, bytes down) of connections still open, on either data
        plane (the engine's also brings ``connections_max`` up to date)."""
        for connection in self.connections:
            if connection.backend is not None:
                yield connection.backend.id, connection.bytes_up, connection.bytes_down
        if self.on_live is not None:
            yield from self.on_live()
