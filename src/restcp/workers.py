"""``restcp serve --workers N``: N-1 worker processes beside the main one, serving the same
routes on the same ports, each on a socket of its own joined with SO_REUSEPORT.

How it works::

    main process: API, store, cluster role, health probes, and its own listeners
       │   one socketpair per worker, length-prefixed pickles, in order:
       │   hello (settings) ─► routes (every route served) ─► route (one; None: stopped)
       │   ─► probe results ─► the API's address
       │                                        ◄─ acks of routes/route, counters
       ▼
    worker k: a ProxyManager of its own; binds each route's port with SO_REUSEPORT next to
              the main process's socket; Linux spreads new connections over the sockets

- The main process decides, the workers follow. A worker never reads the store: it serves
  exactly the routes the main process serves, as the main process serves them. So a port
  the main process could not bind (someone else holds it: 409), or a frontend IP whose
  lease it lost, is never served by a worker either, and every store (``memory://``
  included) works unchanged; the store sees one client per node, not N.
- Level-triggered. A worker keeps the desired routes it was told and applies them with the
  node's own code (``core.reconcile.diff`` then ``ProxyManager.apply``), after each message
  and again every ``--resync-interval``, so a port it could not bind is retried. The channel
  is a stream, so nothing is lost while a worker lives; a restarted one starts from a
  snapshot. The main process sends a snapshot again only when its resync changed something.
- Acks. Each routes/route message carries a sequence number the worker acknowledges once
  applied. The node waits for every serving worker's ack (up to ACK_TIMEOUT) before the API
  answers, so a client connecting right after a 201 finds every listening socket of the port
  with the new backends. A worker still starting has no socket on the port (a socket that is
  not listening gets no connections from Linux), so it is not waited for.
- Health. Only the main process probes; every probe result is forwarded and fed to each
  worker's runtime, so all processes see the same transitions (logged once, by the main
  process). Passive health (real clients' failed connects) stays per process.
- Counters. Workers send the counters that changed every STATS_INTERVAL; the main process
  adds them into /metrics and into ``active_connections``, keeping an exited worker's totals
  so that counters never go down.
- Lifecycle. The main process restarts a worker that exits (backoff RESTART_MIN doubling to
  RESTART_MAX); on SIGTERM it signals every worker, and each drains its own connections up
  to ``--drain-timeout`` and exits 0. A worker dies with its parent (PR_SET_PDEATHSIG,
  SIGKILL: a ``kill -9`` of the main process is one of the whole node) and stops draining
  when its channel closes.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import dataclasses
import functools
import logging
import os
import pickle
import signal
import socket
import struct
import sys
from collections.abc import Callable, Coroutine, Mapping
from typing import Any

from restcp import logs
from restcp.core.policy import DEFAULT_DENY, AddressPolicy, parse_networks
from restcp.core.reconcile import diff
from restcp.errors import Unavailable
from restcp.model import Route, RouteKey, is_host_name
from restcp.proxy.listener import bind
from restcp.proxy.manager import ProxyManager
from restcp.proxy.runtime import RouteRuntime
from restcp.settings import Settings
from restcp.tasks import cancel_and_wait

log = logging.getLogger("restcp.workers")

# How long an API change waits for the workers' acks before answering anyway (and logging).
ACK_TIMEOUT = 2.0
# How long the node's start waits for its workers to serve every route.
READY_TIMEOUT = 60.0
STATS_INTERVAL = 1.0
RESTART_MIN = 0.1
RESTART_MAX = 5.0
# A worker that ran this long before exiting is restarted after RESTART_MIN again.
STABLE_AFTER = 10.0
# Beyond --drain-timeout: how long a stopping worker may take before it is killed.
STOP_GRACE = 5.0
# Seconds the worker waits for each of its tasks to end once cancelled.
STOP_TIMEOUT = 5.0
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)

_HEADER = struct.Struct("!I")
# One backend's counters in one process: connections, active, bytes in, bytes out, failures.
Counts = tuple[int, int, int, int, int]
# One route's: refusals by reason, and its backends' counters by id.
RouteCounts = tuple[dict[str, int], dict[int, Counts]]


def _frame(message: tuple[Any, ...]) -> bytes:
    # pickle: both ends are this program, on a socketpair nobody else holds.
    data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    return _HEADER.pack(len(data)) + data


async def _receive(reader: asyncio.StreamReader) -> tuple[Any, ...] | None:
    """The next message, or None once the other end is gone."""
    try:
        header = await reader.readexactly(_HEADER.size)
        data = await reader.readexactly(_HEADER.unpack(header)[0])
    except (asyncio.IncompleteReadError, ConnectionError):
        return None
    message: tuple[Any, ...] = pickle.loads(data)
    return message


# -- the main process's side -------------------------------------------------------------


@dataclasses.dataclass(eq=False)
class _Worker:
    index: int
    proc: asyncio.subprocess.Process | None = None
    writer: asyncio.StreamWriter | None = None
    sent: int = 0  # sequence number of the last routes/route message sent
    acked: int = 0
    first: int = 0  # sequence number of its snapshot: acked, the worker serves
    changed: asyncio.Event = dataclasses.field(default_factory=asyncio.Event)
    counts: dict[RouteKey, RouteCounts] = dataclasses.field(default_factory=dict)
    task: asyncio.Task[None] | None = None

    @property
    def serving(self) -> bool:
        return self.writer is not None and self.acked >= self.first > 0

    def wake(self) -> None:
        self.changed.set()
        self.changed = asyncio.Event()

    def send(self, message: tuple[Any, ...]) -> None:
        if self.writer is not None and not self.writer.is_closing():
            self.writer.write(_frame(message))


class WorkerPool:
    """The main process's workers: started, fed, restarted, counted and stopped here."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._loop_name = "auto"
        self._workers = [_Worker(index) for index in range(1, settings.workers)]
        # What the workers are told to serve: the routes the main process serves.
        self._routes: dict[RouteKey, Route] = {}
        self._api: tuple[str, int] | None = None
        self._stopping = asyncio.Event()
        # Counters of workers that exited, so that the sums never go down.
        self._retired: dict[RouteKey, RouteCounts] = {}

    async def start(self, routes: Mapping[RouteKey, Route]) -> None:
        """Start every worker; return once each serves ``routes``. Unavailable if one exits
        before it does (the node does not start)."""
        self._routes = dict(routes)
        loop = asyncio.get_running_loop()
        # Workers run the main process's event loop.
        self._loop_name = "uvloop" if type(loop).__module__.startswith("uvloop") else "asyncio"
        ready: list[asyncio.Future[None]] = []
        for worker in self._workers:
            future: asyncio.Future[None] = loop.create_future()
            ready.append(future)
            worker.task = asyncio.create_task(self._supervise(worker, future))
        try:
            async with asyncio.timeout(READY_TIMEOUT):
                await asyncio.gather(*ready)
        except TimeoutError:
            raise Unavailable(f"workers did not start within {READY_TIMEOUT:g}s") from None

    # -- what the node tells the workers -----------------------------------------------

    def route(self, key: RouteKey, route: Route | None) -> None:
        """The main process serves ``route`` under ``key`` now (None: it stopped)."""
        if route is None:
            if self._routes.pop(key, None) is None:
                return
            self._retired.pop(key, None)
        elif self._routes.get(key) == route:
            return
        else:
            self._routes[key] = route
        for worker in self._workers:
            if worker.writer is not None:
                worker.sent += 1
                worker.send(("route", worker.sent, key, route))

    def routes(self, routes: Mapping[RouteKey, Route]) -> None:
        """Every route the main process serves now (after a resync): a snapshot for the
        workers if anything changed."""
        if routes == self._routes:
            return
        self._routes = dict(routes)
        for key in [k for k in self._retired if k not in self._routes]:
            del self._retired[key]
        for worker in self._workers:
            if worker.writer is not None:
                worker.sent += 1
                worker.send(("routes", worker.sent, self._routes))

    def check_result(
        self, key: RouteKey, backend_id: int, ok: bool, reason: str, latency: float
    ) -> None:
        message = ("check", key, backend_id, ok, reason, latency)
        for worker in self._workers:
            worker.send(message)

    def api_address(self, address: tuple[str, int]) -> None:
        self._api = address
        for worker in self._workers:
            worker.send(("api", address))

    async def settle(self) -> None:
        """Wait until every serving worker has applied what it was sent, up to ACK_TIMEOUT."""
        waiting = [(w, w.sent) for w in self._workers if w.serving and w.acked < w.sent]
        if not waiting:
            return
        try:
            async with asyncio.timeout(ACK_TIMEOUT):
                for worker, seq in waiting:
                    while worker.writer is not None and worker.acked < seq:
                        await worker.changed.wait()
        except TimeoutError:
            late = [w.index for w, seq in waiting if w.writer is not None and w.acked < seq]
            log.warning(
                "workers %s did not apply a change within %gs; answering anyway",
                ", ".join(map(str, late)),
                ACK_TIMEOUT,
            )

    # -- what the node reads --------------------------------------------------------------

    def counts(self, key: RouteKey) -> RouteCounts:
        """The workers' counters of one route, summed (those of exited workers included)."""
        refused: dict[str, int] = {}
        backends: dict[int, Counts] = {}
        sources = [w.counts.get(key) for w in self._workers]
        for counted in (*sources, self._retired.get(key)):
            if counted is None:
                continue
            for reason, n in counted[0].items():
                refused[reason] = refused.get(reason, 0) + n
            for backend_id, c in counted[1].items():
                had = backends.get(backend_id, (0, 0, 0, 0, 0))
                backends[backend_id] = (
                    had[0] + c[0],
                    had[1] + c[1],
                    had[2] + c[2],
                    had[3] + c[3],
                    had[4] + c[4],
                )
        return refused, backends

    def status(self) -> list[dict[str, Any]]:
        return [
            {
                "worker": w.index,
                "pid": None if w.proc is None else w.proc.pid,
                "serving": w.serving,
            }
            for w in self._workers
        ]

    # -- lifecycle ----------------------------------------------------------------------

    async def _supervise(self, worker: _Worker, ready: asyncio.Future[None]) -> None:
        loop = asyncio.get_running_loop()
        backoff = RESTART_MIN
        while not self._stopping.is_set():
            started = loop.time()
            try:
                status = await self._run(worker, ready)
            except Exception as err:
                log.exception("bug: worker %d could not be run", worker.index)
                status = repr(err)
            if self._stopping.is_set():
                log.info("worker %d stopped (%s)", worker.index, status)
                return
            if not ready.done():
                ready.set_exception(
                    Unavailable(f"worker {worker.index} exited ({status}) before serving")
                )
                return
            self._retire(worker)
            if loop.time() - started > STABLE_AFTER:
                backoff = RESTART_MIN
            log.error(
                "worker %d exited (%s): starting it again in %gs", worker.index, status, backoff
            )
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(backoff):
                    await self._stopping.wait()
            backoff = min(2 * backoff, RESTART_MAX)

    async def _run(self, worker: _Worker, ready: asyncio.Future[None]) -> str:
        """Start the worker, feed it, read its acks and counters until it exits; its exit."""
        parent, child = socket.socketpair()
        try:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "restcp", "_worker",
                str(worker.index), str(child.fileno()), str(os.getpid()), self._loop_name,
                pass_fds=(child.fileno(),),
                stdin=asyncio.subprocess.DEVNULL,
            )  # fmt: skip
        except BaseException:
            parent.close()
            raise
        finally:
            child.close()
        worker.proc = proc
        if self._stopping.is_set():
            proc.send_signal(signal.SIGTERM)
        try:
            reader, writer = await asyncio.open_unix_connection(sock=parent)
        except BaseException:
            parent.close()
            proc.kill()
            await proc.wait()
            raise
        worker.writer, worker.counts = writer, {}
        worker.sent = worker.acked = 0
        # Tokens stay in the main process: a worker has no API.
        settings = dataclasses.replace(self._settings, api_token=None, metrics_token=None)
        worker.send(("hello", settings, self._api))
        worker.sent = worker.first = 1
        worker.send(("routes", 1, self._routes))
        log.info("worker %d started pid=%d", worker.index, proc.pid)
        announced = False
        try:
            while (message := await _receive(reader)) is not None:
                if message[0] == "ack":
                    worker.acked = message[1]
                    worker.wake()
                    if not announced and worker.serving:
                        announced = True
                        log.info("worker %d serving pid=%d", worker.index, proc.pid)
                        if not ready.done():
                            ready.set_result(None)
                elif message[0] == "counts":
                    worker.counts.update(message[1])
                    for key in message[2]:
                        worker.counts.pop(key, None)
        finally:
            worker.writer = None
            worker.wake()
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
        code = await proc.wait()
        return f"status {code}" if code >= 0 else f"signal {signal.Signals(-code).name}"

    def _retire(self, worker: _Worker) -> None:
        for key, (refused, backends) in worker.counts.items():
            if key not in self._routes:
                continue
            had_refused, had = self._retired.get(key, ({}, {}))
            for reason, n in refused.items():
                had_refused[reason] = had_refused.get(reason, 0) + n
            for backend_id, c in backends.items():
                h = had.get(backend_id, (0, 0, 0, 0, 0))
                # Its open connections died with it: nothing active is kept.
                had[backend_id] = (h[0] + c[0], 0, h[2] + c[2], h[3] + c[3], h[4] + c[4])
            self._retired[key] = (had_refused, had)
        worker.counts = {}

    def begin_stop(self) -> None:
        """SIGTERM every worker: each stops accepting at once and drains its connections."""
        if self._stopping.is_set():
            return  # signalled once: a second SIGTERM is no news to a draining worker
        self._stopping.set()
        for worker in self._workers:
            if worker.proc is not None and worker.proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    worker.proc.send_signal(signal.SIGTERM)

    async def wait_stopped(self, drain_timeout: float) -> None:
        """Wait for every worker to exit; kill what is left after the drain and a grace."""
        self.begin_stop()
        tasks = [w.task for w in self._workers if w.task is not None]
        if not tasks:
            return
        _done, pending = await asyncio.wait(tasks, timeout=drain_timeout + STOP_GRACE)
        if pending:
            for worker in self._workers:
                if worker.proc is not None and worker.proc.returncode is None:
                    log.error("worker %d did not stop: killing it", worker.index)
                    with contextlib.suppress(ProcessLookupError):
                        worker.proc.kill()
            await asyncio.wait(pending)
        for task in tasks:
            if not task.cancelled() and task.exception() is not None:
                log.error("worker supervision failed", exc_info=task.exception())


# -- the worker process ------------------------------------------------------------------


class Worker:
    """One worker's data plane: the routes it was told, applied to its own listeners."""

    def __init__(self, settings: Settings, api: tuple[str, int] | None) -> None:
        self.settings = settings
        self.api = api
        self.policy = AddressPolicy(
            allow=parse_networks(settings.backend_allow),
            deny=parse_networks((*DEFAULT_DENY, *settings.backend_deny)),
        )
        self.proxy = ProxyManager(
            max_connections=settings.max_connections,
            max_connections_per_app=settings.max_connections_per_app,
            backend_refusal=self.backend_refusal,
            binder=functools.partial(bind, join=True),
        )
        self.desired: dict[RouteKey, Route] = {}
        self._applying = asyncio.Lock()
        self._counted: dict[RouteKey, RouteCounts] = {}
        # Health transitions of forwarded probes are the main process's to log.
        self._health_log = logging.getLogger("restcp.health")

    def backend_refusal(self, ip: str, port: int) -> str | None:
        # As Node.backend_refusal: the node's own addresses are its listeners and its API.
        if is_host_name(ip):
            return None
        own = [(ip, port) for ip in self.proxy.frontends_on(port)]
        if self.api is not None:
            own.append(self.api)
        return self.policy.refusal(ip, port, own)

    async def apply(self, only: RouteKey | None = None) -> None:
        async with self._applying:
            if only is None:
                await self.proxy.apply(diff(self.desired, self.proxy.running()))
                return
            wanted = self.desired.get(only)
            current = self.proxy.running().get(only)
            await self.proxy.apply(
                diff(
                    {} if wanted is None else {only: wanted},
                    {} if current is None else {only: current},
                )
            )

    async def handle(
        self, message: tuple[Any, ...], answer: Callable[[tuple[Any, ...]], None]
    ) -> None:
        kind = message[0]
        if kind == "routes":
            self.desired = dict(message[2])
            await self.apply()
            answer(("ack", message[1]))
        elif kind == "route":
            _, seq, key, route = message
            if route is None:
                self.desired.pop(key, None)
            else:
                self.desired[key] = route
            await self.apply(key)
            answer(("ack", seq))
        elif kind == "check":
            _, key, backend_id, ok, reason, latency = message
            runtime = self.proxy.runtime(key)
            if runtime is not None:
                self._health_log.disabled = True
                try:
                    runtime.check_result(backend_id, ok, reason, latency)
                finally:
                    self._health_log.disabled = False
        elif kind == "api":
            self.api = message[1]
            self.proxy.recheck_backends(message[1][1])

    def counts(self) -> tuple[dict[RouteKey, RouteCounts], list[RouteKey]]:
        """The counters that changed since the last call, and the routes no longer served."""
        changed: dict[RouteKey, RouteCounts] = {}
        running = self.proxy.running()
        for key in running:
            runtime = self.proxy.runtime(key)
            if runtime is None:
                continue
            counted = _route_counts(runtime)
            if self._counted.get(key) != counted:
                changed[key] = self._counted[key] = counted
        gone = [key for key in self._counted if key not in running]
        for key in gone:
            del self._counted[key]
        return changed, gone


def _route_counts(runtime: RouteRuntime) -> RouteCounts:
    live: dict[int, list[int]] = {}
    for backend_id, up, down in runtime.live_bytes():
        sums = live.setdefault(backend_id, [0, 0])
        sums[0] += up
        sums[1] += down
    backends: dict[int, Counts] = {}
    for m in runtime.members.values():
        up, down = live.get(m.id, (0, 0))
        backends[m.id] = (
            m.connections,
            m.active,
            m.bytes_up + up,
            m.bytes_down + down,
            m.connect_failures,
        )
    return dict(runtime.refused), backends


def _die_with_parent(parent: int) -> None:
    """Be killed when the main process dies, however it dies (Linux's PR_SET_PDEATHSIG); the
    channel's EOF covers other systems, and a parent already gone before the call."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, int(signal.SIGKILL), 0, 0, 0)
    if os.getppid() != parent:
        raise SystemExit(0)


def _read_exactly(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise SystemExit(0)  # the main process went away before saying hello
        data += chunk
    return data


def main(
    index: int,
    channel_fd: int,
    parent: int,
    run: Callable[[Coroutine[Any, Any, None]], None],
) -> int:
    """``restcp _worker``: started by the main process only (internal, undocumented)."""
    _die_with_parent(parent)
    # Blocked until _serve handles them, and again once it has returned: the loop is closed
    # then, and a late SIGTERM (the main process signals every worker it stops) would kill
    # a worker that has already drained and is exiting 0.
    signal.pthread_sigmask(signal.SIG_BLOCK, (*STOP_SIGNALS, signal.SIGHUP))
    channel = socket.socket(fileno=channel_fd)
    size = _HEADER.unpack(_read_exactly(channel, _HEADER.size))[0]
    hello = pickle.loads(_read_exactly(channel, size))
    settings: Settings = hello[1]
    logs.configure(settings.log_level, settings.log_format, worker=index)
    run(_serve(channel, settings, hello[2]))
    return 0


async def _serve(channel: socket.socket, settings: Settings, api: tuple[str, int] | None) -> None:
    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()
    for sig in STOP_SIGNALS:
        loop.add_signal_handler(sig, stopping.set)
    # A SIGHUP sent to the whole process group is the main process's to act on.
    loop.add_signal_handler(signal.SIGHUP, lambda: None)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, (*STOP_SIGNALS, signal.SIGHUP))
    worker = Worker(settings, api)
    reader, writer = await asyncio.open_unix_connection(sock=channel)

    def answer(message: tuple[Any, ...]) -> None:
        if not writer.is_closing():
            writer.write(_frame(message))

    async def follow() -> None:
        while (message := await _receive(reader)) is not None:
            await worker.handle(message, answer)
        log.warning("the main process is gone: stopping")

    async def report() -> None:
        while True:
            await asyncio.sleep(STATS_INTERVAL)
            changed, gone = worker.counts()
            if changed or gone:
                answer(("counts", changed, gone))

    async def resync() -> None:
        while True:
            await asyncio.sleep(settings.resync_interval or STATS_INTERVAL)
            await worker.apply()

    tasks = [asyncio.create_task(c) for c in (follow(), report(), resync())]
    stop = asyncio.create_task(stopping.wait())
    try:
        await asyncio.wait([tasks[0], stop], return_when=asyncio.FIRST_COMPLETED)
    finally:
        await cancel_and_wait([*tasks, stop], STOP_TIMEOUT, log)
        await worker.proxy.shutdown(settings.drain_timeout)
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
        # Before the loop closes and drops its handlers (see main): no signal kills it now.
        signal.pthread_sigmask(signal.SIG_BLOCK, (*STOP_SIGNALS, signal.SIGHUP))
        log.info("stopped")
