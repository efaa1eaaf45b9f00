"""The node's side of ``--workers N``: the worker processes, started, fed, restarted,
counted and stopped here (the package's docstring tells how it all works).

``WorkerPool`` is the real thing; ``NoWorkers`` stands in for it when the node runs alone,
so that the node's code tells its workers every change without asking whether it has any.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import signal
import socket
import sys
from collections import Counter
from collections.abc import Mapping
from typing import Any, Protocol

from restcp.dataplane import RouteCounts
from restcp.errors import Unavailable
from restcp.model import Route, RouteKey
from restcp.settings import Settings
from restcp.workers.wire import (
    FROM_WORKER,
    ApiListening,
    Applied,
    Counted,
    Hello,
    ProbeResult,
    Serve,
    ServeRoute,
    ToWorker,
    frame,
    receive,
)

log = logging.getLogger("restcp.workers")

# How long a write waits for the workers' acks before answering anyway (and logging).
ACK_TIMEOUT = 2.0
# How long the node's start waits for its workers to serve every route.
READY_TIMEOUT = 60.0
RESTART_MIN = 0.1
RESTART_MAX = 5.0
# A worker that ran this long before exiting is restarted after RESTART_MIN again.
STABLE_AFTER = 10.0
# Beyond --drain-timeout: how long a stopping worker may take before it is killed.
STOP_GRACE = 5.0


class Workers(Protocol):
    """What the node tells and asks its workers (``WorkerPool``, or ``NoWorkers``)."""

    async def start(self, routes: Mapping[RouteKey, Route]) -> None: ...

    def route(self, key: RouteKey, route: Route | None) -> None:
        """The node's process serves ``route`` under ``key`` now (None: it stopped)."""

    def routes(self, routes: Mapping[RouteKey, Route]) -> None:
        """Every route the node's process serves now."""

    async def settle(self) -> None:
        """Return once every serving worker applied what it was told (or after a while)."""

    def check_result(
        self, key: RouteKey, backend_id: int, ok: bool, reason: str, latency: float
    ) -> None: ...

    def api_listening(self, address: tuple[str, int]) -> None: ...

    def counts(self, key: RouteKey) -> RouteCounts:
        """The workers' counters of one route, summed."""

    def sni_closes(self, address: tuple[str, int]) -> dict[str, int]:
        """The workers' closes of clients of a shared address before a route was chosen,
        by reason, summed."""

    def readiness(self) -> dict[str, Any]:
        """What /healthz shows of the workers (nothing when there are none)."""

    def begin_stop(self) -> None: ...

    async def wait_stopped(self, drain_timeout: float) -> None: ...


class NoWorkers:
    """The node runs alone (``--workers 1``): nobody to tell, nothing to count."""

    async def start(self, routes: Mapping[RouteKey, Route]) -> None:
        pass

    def route(self, key: RouteKey, route: Route | None) -> None:
        pass

    def routes(self, routes: Mapping[RouteKey, Route]) -> None:
        pass

    async def settle(self) -> None:
        pass

    def check_result(
        self, key: RouteKey, backend_id: int, ok: bool, reason: str, latency: float
    ) -> None:
        pass

    def api_listening(self, address: tuple[str, int]) -> None:
        pass

    def counts(self, key: RouteKey) -> RouteCounts:
        return RouteCounts()

    def sni_closes(self, address: tuple[str, int]) -> dict[str, int]:
        return {}

    def readiness(self) -> dict[str, Any]:
        return {}

    def begin_stop(self) -> None:
        pass

    async def wait_stopped(self, drain_timeout: float) -> None:
        pass


@dataclasses.dataclass(eq=False)
class _Worker:
    """One worker as the node sees it: its process, its channel, the sequence numbers sent
    and acknowledged, and its last counters."""

    index: int
    proc: asyncio.subprocess.Process | None = None
    writer: asyncio.StreamWriter | None = None
    sent: int = 0  # sequence number of the last Serve/ServeRoute sent
    acked: int = 0
    first: int = 0  # sequence number of its snapshot: acked, the worker serves
    changed: asyncio.Event = dataclasses.field(default_factory=asyncio.Event)
    counts: dict[RouteKey, RouteCounts] = dataclasses.field(default_factory=dict)
    sni_closes: dict[tuple[str, int], dict[str, int]] = dataclasses.field(default_factory=dict)
    task: asyncio.Task[None] | None = None

    @property
    def serving(self) -> bool:
        return self.writer is not None and self.acked >= self.first > 0

    def wake(self) -> None:
        self.changed.set()
        self.changed = asyncio.Event()

    def send(self, message: Hello | ToWorker) -> None:
        if self.writer is not None and not self.writer.is_closing():
            self.writer.write(frame(message))

    def send_routes(self, make: type[Serve] | type[ServeRoute], *args: Any) -> None:
        """A Serve or ServeRoute under this worker's next sequence number."""
        if self.writer is not None:
            self.sent += 1
            self.send(make(self.sent, *args))


class WorkerPool:
    """The node's workers: started, fed, restarted, counted and stopped here."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._loop_name = "auto"
        self._workers = [_Worker(index) for index in range(1, settings.workers)]
        # What the workers are told to serve: the routes the node's process serves.
        self._routes: dict[RouteKey, Route] = {}
        self._api: tuple[str, int] | None = None
        self._stopping = asyncio.Event()
        # Counters of workers that exited, so that the sums never go down.
        self._retired: dict[RouteKey, RouteCounts] = {}
        self._retired_closes: dict[tuple[str, int], Counter[str]] = {}

    async def start(self, routes: Mapping[RouteKey, Route]) -> None:
        """Start every worker; return once each serves ``routes``. Unavailable if one exits
        before it does (the node does not start)."""
        self._routes = dict(routes)
        loop = asyncio.get_running_loop()
        # Workers run the node's event loop.
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
        if route is None:
            if self._routes.pop(key, None) is None:
                return
            self._retired.pop(key, None)
            self._forget_closes()
        elif self._routes.get(key) == route:
            return
        else:
            self._routes[key] = route
        for worker in self._workers:
            worker.send_routes(ServeRoute, key, route)

    def routes(self, routes: Mapping[RouteKey, Route]) -> None:
        """A snapshot for the workers, if anything changed (after a resync)."""
        if routes == self._routes:
            return
        self._routes = dict(routes)
        for key in [k for k in self._retired if k not in self._routes]:
            del self._retired[key]
        self._forget_closes()
        for worker in self._workers:
            worker.send_routes(Serve, self._routes)

    def check_result(
        self, key: RouteKey, backend_id: int, ok: bool, reason: str, latency: float
    ) -> None:
        message = ProbeResult(key, backend_id, ok, reason, latency)
        for worker in self._workers:
            worker.send(message)

    def api_listening(self, address: tuple[str, int]) -> None:
        self._api = address
        for worker in self._workers:
            worker.send(ApiListening(address))

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
        total = self._retired.get(key) or RouteCounts()
        for worker in self._workers:
            counted = worker.counts.get(key)
            if counted is not None:
                total = total + counted
        return total

    def _forget_closes(self) -> None:
        """Exited workers' closes of addresses no longer shared by SNI are dropped."""
        if self._retired_closes:
            shared = self._shared()
            for address in [a for a in self._retired_closes if a not in shared]:
                del self._retired_closes[address]

    def _shared(self) -> set[tuple[str, int]]:
        return {(r.frontend_ip, r.port) for r in self._routes.values() if r.settings.sni}

    def sni_closes(self, address: tuple[str, int]) -> dict[str, int]:
        total = Counter(self._retired_closes.get(address, ()))
        for worker in self._workers:
            total.update(worker.sni_closes.get(address, {}))
        return dict(total)

    def readiness(self) -> dict[str, Any]:
        # A worker being restarted leaves the others serving: informative, not unready.
        return {
            "workers": [
                {
                    "worker": w.index,
                    "pid": None if w.proc is None else w.proc.pid,
                    "serving": w.serving,
                }
                for w in self._workers
            ]
        }

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
        # Tokens stay in the node's process: a worker has no API.
        settings = dataclasses.replace(self._settings, api_token=None, metrics_token=None)
        worker.send(Hello(settings, self._api))
        worker.send_routes(Serve, self._routes)
        worker.first = worker.sent
        log.info("worker %d started pid=%d", worker.index, proc.pid)
        announced = False
        try:
            while (message := await receive(reader, FROM_WORKER)) is not None:
                match message:
                    case Applied(seq):
                        worker.acked = seq
                        worker.wake()
                        if not announced and worker.serving:
                            announced = True
                            log.info("worker %d serving pid=%d", worker.index, proc.pid)
                            if not ready.done():
                                ready.set_result(None)
                    case Counted(changed, gone, closes):
                        worker.counts.update(changed)
                        for key in gone:
                            worker.counts.pop(key, None)
                        if closes is not None:
                            worker.sni_closes = closes
        finally:
            worker.writer = None
            worker.wake()
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
        code = await proc.wait()
        return f"status {code}" if code >= 0 else f"signal {signal.Signals(-code).name}"

    def _retire(self, worker: _Worker) -> None:
        for key, counted in worker.counts.items():
            if key not in self._routes:
                continue
            # Its open connections died with it: nothing active is kept.
            had = self._retired.get(key) or RouteCounts()
            self._retired[key] = had + counted.ended()
        worker.counts = {}
        shared = self._shared()
        for address, closes in worker.sni_closes.items():
            if address in shared:
                self._retired_closes.setdefault(address, Counter()).update(closes)
        worker.sni_closes = {}

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
