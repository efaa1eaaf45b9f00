"""Routes served by the native relay engine (restcp.engine): the engine's thread, the
tables it reads, and its records read back on the loop.

    asyncio loop                              engine thread (no GIL)
    ────────────                              ──────────────────────
    EngineListener ── add/update table ──►    accept, connect + failover,
      (a route's candidates, timeouts)        relay, half-close, resets, timeouts
    NativeEngine._drain ◄── notify_fd ─────   a record per connect and per end (one for both
                                              if it ended before Python drained its connect)
      access lines, the route's counters
    NativeEngine._resolve ◄── "resolve" ───   a connect to a host-name backend waits
      loop.getaddrinfo ── Engine.resolved ──►   connect to the answer, or fail over

A route goes to the engine when it has nothing the engine does not do (``supported``);
otherwise it stays on the asyncio pipes. The ProxyManager moves a route's listening socket
between a Listener and an EngineListener when an update changes that: the socket is never
closed. A route leaving the engine takes its open connections along (``handoff``;
proxy/handoff.py adopts them); one coming to it leaves asyncio's where they are.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import socket
import threading
from types import ModuleType
from typing import TYPE_CHECKING

from restcp import logs
from restcp.engine import peer, sockaddr
from restcp.model import Route, SpliceMode, is_host_name
from restcp.proxy.runtime import RouteRuntime

if TYPE_CHECKING:
    from restcp.engine._relay import BackendRow, Connecting, Engine, Record, Relaying
    from restcp.proxy.members import Member

log = logging.getLogger("restcp.proxy")
access_log = logging.getLogger("restcp.access")

# The ends of a client refused before any backend was tried (the route counts them).
REFUSALS = ("no_backend", "route_limit", "node_limit", "app_limit")
# How often the engine tries a paused accept again (its sweep, _relay.pyx's SWEEP).
ACCEPT_RETRY = 0.05
# A route's splice setting as the engine takes it (_relay.pyx, "Splicing").
SPLICE: dict[SpliceMode, int] = {False: 0, True: 1, "auto": 2}


# A struct sockaddr's family in a table row for a host name (resolved at each connect).
HOST_NAME = 0
PROXY_VERSIONS = {None: 0, "none": 0, "v1": 1, "v2": 2}


def unsupported(route: Route, runtime: RouteRuntime) -> str | None:
    """Why ``route`` must stay on the asyncio pipes, or None: the engine can serve it."""
    settings = route.settings
    reasons = (
        (route.toxics, "toxics"),
        (settings.tls is not None, "TLS termination"),
        (settings.backend_tls is not None, "TLS to backends"),
        (settings.sni is not None, "server names"),
    )
    return next((why for cond, why in reasons if cond), None)


def table(runtime: RouteRuntime) -> list[BackendRow]:
    """The backends a new client may be sent to, as the engine reads them: the route's
    candidates (or, ``try_all`` with none, every enabled one), in the order RouteRuntime.pick
    hands them to its picker (least_conn takes its ties in that order)."""
    candidates = runtime.candidates
    if not candidates and runtime.route.settings.when_all_down == "try_all":
        candidates = tuple(
            m
            for m in runtime.members.values()
            if m.backend.state == "enabled" and m.weight > 0 and m.refusal is None
        )
    route_proxy = runtime.route.settings.proxy_protocol
    rows: list[BackendRow] = []
    for member in candidates:
        backend = member.backend
        # A host name is resolved at each connect (NativeEngine._resolve), as on asyncio.
        family, packed = (HOST_NAME, b"") if is_host_name(backend.ip) else sockaddr(*member.address)
        # The backend's own setting ("none" included) wins over the route's (proxy_header).
        proxy = PROXY_VERSIONS[backend.proxy_protocol or route_proxy]
        cap = -1 if backend.max_connections is None else backend.max_connections
        rows.append((member.id, family, packed, member.weight, cap, proxy))
    return rows


def passive_fall(runtime: RouteRuntime) -> int:
    """The connect failures in a row that take an address of the table out of the engine's
    picks at once, as RouteRuntime.connect_failed takes it out of the candidates: none for
    when_all_down's try_all table (Python's candidates are none: it tries every backend)."""
    return runtime.route.settings.passive_fall if runtime.candidates else 0


class NativeEngine:
    """One engine per ProxyManager: its thread, and its records read on the loop. It also
    keeps the node's places under its caps (traffic.Places) for both data planes: the
    engine's thread takes one per client it accepts, asyncio's connections through
    ``take``, and the caps hold for the sum."""

    def __init__(self, module: ModuleType) -> None:
        self.engine: Engine = module.Engine()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._slots: dict[int, RouteRuntime] = {}  # every route it served, by slot
        self._empty: asyncio.Event | None = None
        # What its open connections count, read at once for every route when counters are
        # read, and kept for the rest of that loop turn (see ``live_bytes``).
        self._live: dict[RouteRuntime, list[tuple[int, int, int]]] | None = None
        # Host names being resolved for the engine's connects (cancelled by ``close``).
        self._resolving: set[asyncio.Task[None]] = set()
        # Resolutions given up because their backend was deleted or readdressed first.
        self.resolves_dropped = 0

    # -- the node's places (traffic.Places) ----------------------------------------------

    def set_limits(self, limit: int | None, app_limit: int | None) -> None:
        self.engine.set_limit(
            -1 if limit is None else limit, -1 if app_limit is None else app_limit
        )

    def take(self, app: str | None) -> str | None:
        return self.engine.take(app)

    def give(self, app: str | None) -> None:
        self.engine.give(app)

    # -- routes ----------------------------------------------------------------------------

    def start(self) -> None:
        if self._thread is not None:
            return
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(self.engine.notify_fd, self._drain)
        self._thread = threading.Thread(target=self.engine.run, name="restcp-engine", daemon=True)
        self._thread.start()

    def add(self, runtime: RouteRuntime, sock: socket.socket) -> int:
        self.start()
        settings = runtime.route.settings
        slot = self.engine.add_route(
            sock.fileno(),
            table(runtime),
            settings.balance,
            settings.connect_timeout,
            settings.idle_timeout,
            settings.half_close_timeout,
            settings.max_connect_attempts,
            -1 if settings.max_connections is None else settings.max_connections,
            runtime.app,
            SPLICE[runtime.splice],
            passive_fall(runtime),
            settings.when_all_down == "try_all",
        )
        self._slots[slot] = runtime
        # Its connections stay on the engine until they end, even if the route moves to
        # asyncio: their bytes are read from here as long as the route is served.
        runtime.on_live = functools.partial(self.live_bytes, runtime)
        return slot

    def update(self, slot: int, runtime: RouteRuntime) -> None:
        settings = runtime.route.settings
        self.engine.update_route(
            slot,
            table(runtime),
            settings.balance,
            settings.connect_timeout,
            settings.idle_timeout,
            settings.half_close_timeout,
            settings.max_connect_attempts,
            -1 if settings.max_connections is None else settings.max_connections,
            SPLICE[runtime.splice],
            passive_fall(runtime),
            settings.when_all_down == "try_all",
        )

    def __len__(self) -> int:
        return self.engine.active

    def live_bytes(self, runtime: RouteRuntime) -> list[tuple[int, int, int]]:
        """(backend id, bytes up, bytes down) of the route's connections open on the engine.

        The records waiting for Python and the open connections are read under the
        engine's lock at the same instant: a connection is counted either by its record
        (once it ended) or as open, never twice nor not at all. One read serves every route
        until the loop turns (the counters of 10,000 routes are one scan, not 10,000)."""
        live = self._live
        if live is None:
            records, conns, peaks = self.engine.drain_live()
            self._records(records)
            live = self._live = {}
            for slot, backend_id, up, down in conns:
                live.setdefault(self._slots[slot], []).append((backend_id, up, down))
            # The most clients open at once: on the engine, summed over the slots a route
            # had (an upper bound, as over processes); then the larger of that and the
            # asyncio data plane's own (a route that moved has had both).
            most: dict[RouteRuntime, int] = {}
            for slot, peak in peaks:
                owner = self._slots.get(slot)
                if owner is not None:
                    most[owner] = most.get(owner, 0) + peak
            for owner, peak in most.items():
                owner.connections_max = max(owner.connections_max, peak)
            assert self._loop is not None
            self._loop.call_soon(self._forget_live)
        return live.get(runtime, [])

    def handoff(self, slot: int) -> tuple[list[Relaying], list[Connecting]]:
        """Let go of route ``slot``'s open connections for the asyncio data plane to adopt
        (proxy/handoff.py); the records read with them are taken in first."""
        records, relaying, connecting = self.engine.handoff(slot)
        self._live = None  # a snapshot that counted them open here is stale
        self._records(records)
        return relaying, connecting

    def _forget_live(self) -> None:
        self._live = None

    def _drain(self) -> None:
        """The ended connections' records: their access lines and their routes' counters."""
        # Their bytes go to the members now: a snapshot that counted them open is stale.
        self._live = None
        self._records(self.engine.drain())

    def _records(self, records: list[Record]) -> None:
        logging_on = access_log.isEnabledFor(logging.INFO)
        for record in records:
            slot, backend_id, raw_peer, up, down, duration, end, spliced, connected, moved = record
            runtime = self._slots[slot]
            member = None if backend_id is None else runtime.members.get(backend_id)
            # The member it counts against while open: the one kept for the address it
            # reached, if its backend was given another one (or deleted) since.
            counted = member
            if moved is not None and backend_id is not None:
                counted = runtime.member_at(backend_id, peer(moved))
            if end == "connected":
                # Counted from its connect, as the asyncio pipes count theirs: open against
                # that address, and a connection of the backend's.
                if counted is not None:
                    counted.active += 1
                    counted.active_max = max(counted.active_max, counted.active)
                if member is not None:
                    member.connections += 1
                continue
            if end == "connect_error":
                assert backend_id is not None
                self._connect_failed(runtime, backend_id, up)
                continue
            if end == "resolve":
                assert backend_id is not None
                self._resolve(runtime, backend_id, up, down)
                continue
            if end == "accept_paused":
                # As the asyncio Listener logs it (once per pause, not per retry).
                log.error(
                    "accept paused app=%s route=%s: %s; retrying every %gs",
                    runtime.app, runtime.route_id, os.strerror(up), ACCEPT_RETRY,
                )  # fmt: skip
                continue
            if end == "accept_resumed":
                log.warning("accept resumed app=%s route=%s", runtime.app, runtime.route_id)
                continue
            runtime.accepted += 1
            if backend_id is not None:
                if counted is not None:
                    if connected:
                        # Its connect and its end in one record: counted from its connect
                        # all the same (it was open, if only between two drains).
                        counted.active_max = max(counted.active_max, counted.active + 1)
                    else:
                        runtime.released(counted)
                if member is not None:
                    if connected:
                        member.connections += 1
                    member.bytes_up += up
                    member.bytes_down += down
            elif end in REFUSALS:
                runtime.refused[end] += 1
            if logging_on:
                self._log(runtime, backend_id, raw_peer, up, down, duration, end, spliced)
        if not self.engine.active and self._empty is not None:
            self._empty.set()
            self._empty = None

    def _resolve(self, runtime: RouteRuntime, backend_id: int, index: int, token: int) -> None:
        """A connect to a host-name backend waits in the engine: resolve the name off the
        engine's thread with the loop's getaddrinfo (the address policy judges each answer,
        as on asyncio), then answer with ``Engine.resolved``."""
        if self._thread is None:
            return  # closing: its connection was reset (``close``)
        member = runtime.members.get(backend_id)
        if member is None or not is_host_name(member.backend.ip):
            # Deleted (or given an IP) between the engine's pick and this record, a loop
            # turn: its name is gone with it. The engine tries its table's backend in that
            # place now, without counting the attempt; logged and counted here, so that the
            # client's detour is not silent.
            self._dropped(runtime, backend_id, index, token)
            return
        task = asyncio.get_running_loop().create_task(
            self._resolve_and_answer(runtime, member, index, token)
        )
        self._resolving.add(task)
        task.add_done_callback(self._resolving.discard)

    async def _resolve_and_answer(
        self, runtime: RouteRuntime, member: Member, index: int, token: int
    ) -> None:
        host, port = member.address
        try:
            ip = await runtime.resolve(host, port)
        except OSError as err:
            # Like a failed connect, once the engine takes the answer: a late one (the
            # attempt timed out, and was counted so) says nothing more.
            if self.engine.resolved(index, token, err=err.errno or 0):
                self._report_failure(runtime, member.id, err)
            return
        # A backend deleted meanwhile is connected to all the same, as asyncio's Connector
        # does with the backend it picked.
        family, packed = sockaddr(ip, port)
        self.engine.resolved(index, token, family, packed)

    def _dropped(self, runtime: RouteRuntime, backend_id: int, index: int, token: int) -> None:
        if self.engine.resolved(index, token, again=True):
            self.resolves_dropped += 1
            log.warning(
                "connect skipped app=%s route=%s backend=%s: deleted or readdressed before "
                "its name was resolved; trying another backend",
                runtime.app, runtime.route_id, backend_id,
            )  # fmt: skip

    @classmethod
    def _connect_failed(cls, runtime: RouteRuntime, backend_id: int, err: int) -> None:
        """One connect attempt failed (the engine went on to the next backend)."""
        cls._report_failure(
            runtime, backend_id, OSError(err, os.strerror(err)) if err else TimeoutError()
        )

    @staticmethod
    def _report_failure(runtime: RouteRuntime, backend_id: int, error: OSError) -> None:
        """Logged, and counted towards the backend's passive health as on the asyncio
        pipes."""
        member = runtime.members.get(backend_id)
        backend = runtime.route.backend(backend_id)
        log.warning(
            "connect failed app=%s route=%s backend=%s addr=%s:%s error=%s",
            runtime.app, runtime.route_id, backend_id,
            backend.ip if backend else "-", backend.port if backend else "-",
            str(error) or "timeout",
        )  # fmt: skip
        if member is not None:
            member.connecting += 1  # connect_failed counts one connect in flight out
            runtime.connect_failed(member, error)

    @staticmethod
    def _log(
        runtime: RouteRuntime,
        backend_id: int | None,
        raw_peer: bytes,
        up: int,
        down: int,
        duration: float,
        end: str,
        spliced: bool,
    ) -> None:
        ip, port = peer(raw_peer)
        backend = None if backend_id is None else runtime.route.backend(backend_id)
        fields = {
            "event": "connection",
            "app": runtime.app,
            "route": runtime.route_id,
            "client": f"{ip}:{port}",
            "backend": backend_id,
            "backend_addr": f"{backend.ip}:{backend.port}" if backend else None,
            "bytes_up": up,
            "bytes_down": down,
            "duration": round(duration, 6),
            "end": end,
            "spliced": spliced,
            "toxics": [],
            "engine": "native",
        }
        logs.access(
            "app=%s route=%s client=%s backend=%s bytes_up=%d bytes_down=%d duration=%.3f end=%s",
            (
                runtime.app,
                runtime.route_id,
                f"{ip}:{port}",
                f"{backend.id}/{backend.ip}:{backend.port}" if backend else "-",
                up,
                down,
                duration,
                end,
            ),
            fields,
        )

    async def wait_empty(self) -> None:
        while self.engine.active:
            if self._empty is None:
                self._empty = asyncio.Event()
            await self._empty.wait()

    def abort(self, slot: int = -1, backend_id: int = -1, reason: str = "aborted") -> None:
        """Reset the open connections of route ``slot`` (-1: all), or of one of its
        backends; ``reason`` is their access lines' end."""
        self.engine.abort(slot, backend_id, reason)
        self._drain()

    def close(self) -> None:
        """Stop the thread, reset whatever is still open, and give back the engine's
        descriptors (the places and counters stay readable)."""
        if self._thread is not None:
            self.engine.stop()
            self._thread.join()
            self._thread = None
            self.engine.abort(reason="shutdown")
            self._drain()
            for task in self._resolving:
                task.cancel()  # their connections were reset: an answer would find none
            assert self._loop is not None
            self._loop.remove_reader(self.engine.notify_fd)
        # The runtimes point back at it (on_live): without them it is freed at once.
        for runtime in self._slots.values():
            runtime.on_live = None
        self._slots.clear()
        self._live = None
        self.engine.close()


class EngineListener:
    """A route's listening socket, accepted on by the engine (the Listener's interface)."""

    def __init__(self, engine: NativeEngine, runtime: RouteRuntime, sock: socket.socket) -> None:
        self._engine = engine
        self.runtime = runtime
        self._sock = sock
        self._slot: int | None = None

    @property
    def route(self) -> Route:
        return self.runtime.route

    async def start(self) -> None:
        self._sock.setblocking(False)
        self._slot = self._engine.add(self.runtime, self._sock)
        self.runtime.on_candidates = self.refresh
        self.runtime.on_close_backend = self.close_backend
        self.runtime.on_passive_reset = self.passive_reset

    def refresh(self) -> None:
        """The route's candidates or settings changed: the engine's table follows. An
        update that gives the route what the engine does not do reaches here before the
        manager moves the route to asyncio (ProxyManager._move, in the same apply): the
        engine keeps its last table until then rather than read one it cannot serve."""
        if self._slot is not None and unsupported(self.runtime.route, self.runtime) is None:
            self._engine.update(self._slot, self.runtime)

    def passive_reset(self, backend_id: int) -> None:
        if self._slot is not None:
            self._engine.engine.passive_reset(self._slot, backend_id)

    def close_backend(self, backend_id: int, reason: str) -> None:
        """Reset the open connections to a backend (disabled, or past its drain timeout)."""
        if self._slot is not None:
            self._engine.abort(self._slot, backend_id, reason)

    def abort(self) -> None:
        """Reset the route's open connections (the route was disabled)."""
        if self._slot is not None:
            self._engine.abort(self._slot, reason="route_disabled")

    def release(self) -> socket.socket:
        """Stop accepting and hand the socket over (the route moves to a Listener)."""
        self._detach()
        return self._sock

    def hand_over(self) -> tuple[socket.socket, list[Relaying], list[Connecting]]:
        """Stop accepting and hand the socket over, and the route's open connections with
        it (the route moves to the asyncio data plane: proxy/handoff.py adopts them)."""
        slot = self._slot
        sock = self.release()
        if slot is None:
            return sock, [], []
        relaying, connecting = self._engine.handoff(slot)
        return sock, relaying, connecting

    def stop(self) -> None:
        self._detach()
        self._sock.close()

    def _detach(self) -> None:
        if self._slot is not None:
            self._engine.engine.retire(self._slot)
            self._slot = None
        if self.runtime.on_candidates == self.refresh:
            self.runtime.on_candidates = None
            self.runtime.on_close_backend = None
            self.runtime.on_passive_reset = None
