"""One process's data plane, built the same way in the node's process and in each worker.

A ``DataPlane`` is the listeners of the routes a process serves (``proxy.ProxyManager``)
under the backend address policy. The policy needs the process's own addresses (its
listeners and the node's API: a route must never relay into restcp itself), so the plane
keeps the API's address once it is known. The node's process and a worker differ only in
how a port is bound: the node's binds it first, exclusively, and lets workers join it with
SO_REUSEPORT (``share``); a worker joins (``join``).

It is also where a process's counters are read (``counts``): the node adds its workers'
counts to its own, and a worker sends its own to the node, as the same ``RouteCounts``.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import socket
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import TypeVar

from restcp import engine as native_engine
from restcp.core.policy import DEFAULT_DENY, AddressPolicy, parse_networks
from restcp.core.reconcile import diff
from restcp.model import BackendStatus, Route, RouteKey, Stream, ToxicType, is_host_name
from restcp.proxy.listener import bind
from restcp.proxy.manager import ProxyManager
from restcp.proxy.native import NativeEngine
from restcp.proxy.runtime import RouteRuntime
from restcp.settings import Settings


@dataclass(frozen=True, slots=True)
class BackendCounts:
    """One backend's counters in one process (or summed over several)."""

    connections: int = 0
    active: int = 0
    bytes_in: int = 0  # client -> backend
    bytes_out: int = 0  # backend -> client
    connect_failures: int = 0
    # The most connections open at once. Summed over processes, it is the sum of each one's
    # most (an upper bound of the node's: their peaks need not have been at the same time).
    active_max: int = 0

    def __add__(self, other: BackendCounts) -> BackendCounts:
        return BackendCounts(
            self.connections + other.connections,
            self.active + other.active,
            self.bytes_in + other.bytes_in,
            self.bytes_out + other.bytes_out,
            self.connect_failures + other.connect_failures,
            self.active_max + other.active_max,
        )

    def ended(self) -> BackendCounts:
        """As counted once its process is gone: totals kept, no connection open."""
        return dataclasses.replace(self, active=0)


@dataclass(frozen=True, slots=True)
class ToxicCounts:
    """One toxic's counters in one process (or summed over several): connections that met
    it, bytes its stages hold now, bytes they dropped."""

    type: ToxicType
    stream: Stream
    connections: int = 0
    held: int = 0
    dropped: int = 0

    def __add__(self, other: ToxicCounts) -> ToxicCounts:
        return ToxicCounts(
            self.type,
            self.stream,
            self.connections + other.connections,
            self.held + other.held,
            self.dropped + other.dropped,
        )

    def ended(self) -> ToxicCounts:
        return dataclasses.replace(self, held=0)


@dataclass(slots=True)
class RouteCounts:
    """One route's counters: clients refused, by reason, its backends', by id, its
    toxics', by name, and its failed TLS handshakes, by reason."""

    refused: dict[str, int] = field(default_factory=dict)
    backends: dict[int, BackendCounts] = field(default_factory=dict)
    toxics: dict[str, ToxicCounts] = field(default_factory=dict)
    tls_failures: dict[str, int] = field(default_factory=dict)
    # Failed TLS handshakes with its backends, by reason (proxy/origination.py).
    backend_tls_failures: dict[str, int] = field(default_factory=dict)
    # The most clients open at once (summed over processes like BackendCounts.active_max).
    connections_max: int = 0

    def __add__(self, other: RouteCounts) -> RouteCounts:
        return RouteCounts(
            _add(self.refused, other.refused),
            _sum(self.backends, other.backends),
            _sum(self.toxics, other.toxics),
            _add(self.tls_failures, other.tls_failures),
            _add(self.backend_tls_failures, other.backend_tls_failures),
            self.connections_max + other.connections_max,
        )

    def backend(self, backend_id: int) -> BackendCounts:
        return self.backends.get(backend_id) or BackendCounts()

    def ended(self) -> RouteCounts:
        return RouteCounts(
            dict(self.refused),
            {b: c.ended() for b, c in self.backends.items()},
            {t: c.ended() for t, c in self.toxics.items()},
            dict(self.tls_failures),
            dict(self.backend_tls_failures),
            self.connections_max,
        )


_K = TypeVar("_K")
_C = TypeVar("_C", BackendCounts, ToxicCounts)


def _add(ours: Mapping[str, int], theirs: Mapping[str, int]) -> dict[str, int]:
    total = dict(ours)
    for reason, n in theirs.items():
        total[reason] = total.get(reason, 0) + n
    return total


def _sum(ours: Mapping[_K, _C], theirs: Mapping[_K, _C]) -> dict[_K, _C]:
    total = dict(ours)
    for key, counts in theirs.items():
        had = total.get(key)
        total[key] = counts if had is None else had + counts
    return total


log = logging.getLogger("restcp.proxy")


def _engine(name: str) -> NativeEngine | None:
    """The native engine for ``--engine native``; None for asyncio, or (with a warning) when
    this build of restcp has no compiled engine."""
    if name != "native":
        return None
    module, why = native_engine.load()
    if module is None:
        log.warning("--engine native: %s; serving every route on asyncio", why)
        return None
    return NativeEngine(module)


class DataPlane:
    """A process's listeners under the backend address policy; see the module's docstring."""

    def __init__(self, settings: Settings, *, share: bool = False, join: bool = False) -> None:
        self.policy = AddressPolicy(
            allow=parse_networks(settings.backend_allow),
            deny=parse_networks((*DEFAULT_DENY, *settings.backend_deny)),
        )
        self._bind = functools.partial(bind, share=share, join=join)
        self.proxy = ProxyManager(
            max_connections=settings.max_connections,
            max_connections_per_app=settings.max_connections_per_app,
            backend_refusal=self.refusal,
            binder=self._bind,
            seed=settings.seed,
            engine=_engine(settings.engine),
        )
        self.api_address: tuple[str, int] | None = None

    def bind(self, ip: str, port: int) -> socket.socket:
        """A listening socket for a new route, bound as this process binds them."""
        return self._bind(ip, port)

    def refusal(self, ip: str, port: int) -> str | None:
        """Why the policy refuses ``ip:port`` as a backend, or None. The process's own
        addresses change as routes come and go, so this is asked at every connect and
        probe, not once."""
        if is_host_name(ip):
            return None  # judged address by address at every connect and probe
        own = [(ip, port) for ip in self.proxy.frontends_on(port)]
        if self.api_address is not None:
            own.append(self.api_address)
        return self.policy.refusal(ip, port, own)

    def api_listening(self, address: tuple[str, int]) -> None:
        """The node's API listens on ``address`` from now on: backends pointing at it,
        stored before it existed, are refused from now on."""
        self.api_address = address
        self.proxy.recheck_backends(address[1])

    def running(self) -> Mapping[RouteKey, Route]:
        return self.proxy.running()

    def runtime(self, key: RouteKey) -> RouteRuntime | None:
        return self.proxy.runtime(key)

    def backends_on(self, port: int) -> set[RouteKey]:
        """The served routes with a backend on ``port``: the policy may judge them anew."""
        return self.proxy.backends_on(port)

    def backend_status(self, key: RouteKey) -> Mapping[int, BackendStatus]:
        return self.proxy.backend_status(key)

    async def serve(self, route: Route, sock: socket.socket | None) -> None:
        """Serve a new route on the socket bound for it (None: it joins the routes that
        share its address by SNI)."""
        await self.proxy.serve(route, sock)

    def routes_at(self, ip: str, port: int) -> list[Route]:
        return self.proxy.routes_at(ip, port)

    def shares(self, route: Route) -> bool:
        return self.proxy.shares(route)

    async def apply(
        self, desired: Mapping[RouteKey, Route], only: Collection[RouteKey] | None = None
    ) -> None:
        """Serve exactly ``desired``: of every route, or (``only``) of those routes alone."""
        running: Mapping[RouteKey, Route] = self.proxy.running()
        if only is not None:
            running = {key: running[key] for key in only if key in running}
            desired = {key: desired[key] for key in only if key in desired}
        await self.proxy.apply(diff(desired, running))

    def counts(self, key: RouteKey) -> RouteCounts | None:
        """The counters of a route served here, open connections' bytes included."""
        runtime = self.proxy.runtime(key)
        if runtime is None:
            return None
        live: dict[int, tuple[int, int]] = {}
        for backend_id, up, down in runtime.live_bytes():
            had_up, had_down = live.get(backend_id, (0, 0))
            live[backend_id] = (had_up + up, had_down + down)
        backends = {}
        for m in runtime.members.values():
            up, down = live.get(m.id, (0, 0))
            backends[m.id] = BackendCounts(
                m.connections,
                m.active,
                m.bytes_up + up,
                m.bytes_down + down,
                m.connect_failures,
                m.active_max,
            )
        toxics = {
            name: ToxicCounts(t.type, t.stream, t.connections, t.held, t.dropped)
            for name, t in runtime.tallies.items()
        }
        return RouteCounts(
            dict(runtime.refused),
            backends,
            toxics,
            dict(runtime.tls_failures),
            dict(runtime.backend_tls_failures),
            runtime.connections_max,
        )

    def sni_closes(self) -> dict[tuple[str, int], dict[str, int]]:
        """Per address shared by SNI, its clients closed before a route was chosen, by
        reason (proxy/sni_listener.py)."""
        return self.proxy.sni_closes()

    async def shutdown(self, drain_timeout: float) -> None:
        """Stop accepting, let connections finish up to ``drain_timeout``, then reset them."""
        await self.proxy.shutdown(drain_timeout)
