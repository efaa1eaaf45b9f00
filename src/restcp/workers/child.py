"""A worker process of ``restcp serve --workers N`` (``restcp _worker``, started by the node
only): a data plane built as the node's own (dataplane.py), serving what the node's process
serves, as the node tells it over its channel (wire.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import signal
import socket
from collections.abc import Callable, Coroutine
from typing import Any

from restcp import logs
from restcp.dataplane import DataPlane, RouteCounts
from restcp.model import Route, RouteKey
from restcp.settings import Settings
from restcp.tasks import cancel_and_wait
from restcp.workers.wire import (
    TO_WORKER,
    ApiListening,
    Applied,
    Counted,
    FromWorker,
    ProbeResult,
    Serve,
    ServeRoute,
    ToWorker,
    frame,
    receive,
    receive_hello,
)

log = logging.getLogger("restcp.workers")

STATS_INTERVAL = 1.0
# Seconds the worker waits for each of its tasks to end once cancelled.
STOP_TIMEOUT = 5.0
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Worker:
    """One worker's data plane: the routes it was told, applied to its own listeners."""

    def __init__(self, settings: Settings, api: tuple[str, int] | None) -> None:
        # Joins each port the node's process bound (SO_REUSEPORT).
        self.plane = DataPlane(settings, join=True)
        self.plane.api_address = api
        self.desired: dict[RouteKey, Route] = {}
        self._applying = asyncio.Lock()
        self._counted: dict[RouteKey, RouteCounts] = {}
        self._sni_closes: dict[tuple[str, int], dict[str, int]] = {}
        # Health transitions of forwarded probes are the node's process's to log.
        self._health_log = logging.getLogger("restcp.health")

    async def apply(self, only: RouteKey | None = None) -> None:
        async with self._applying:
            await self.plane.apply(self.desired, None if only is None else (only,))

    async def handle(self, message: ToWorker) -> FromWorker | None:
        """Act on one message from the node; the answer to send back, if any."""
        match message:
            case Serve(seq, routes):
                self.desired = dict(routes)
                await self.apply()
                return Applied(seq)
            case ServeRoute(seq, key, route):
                if route is None:
                    self.desired.pop(key, None)
                else:
                    self.desired[key] = route
                await self.apply(key)
                return Applied(seq)
            case ProbeResult(key, backend_id, ok, reason, latency):
                runtime = self.plane.runtime(key)
                if runtime is not None:
                    self._health_log.disabled = True
                    try:
                        runtime.check_result(backend_id, ok, reason, latency)
                    finally:
                        self._health_log.disabled = False
            case ApiListening(address):
                self.plane.api_listening(address)
        return None

    def counts(self) -> Counted | None:
        """The counters that changed since the last call, and the routes no longer served;
        None if nothing changed."""
        changed: dict[RouteKey, RouteCounts] = {}
        running = self.plane.running()
        for key in running:
            counted = self.plane.counts(key)
            if counted is not None and self._counted.get(key) != counted:
                changed[key] = self._counted[key] = counted
        gone = tuple(key for key in self._counted if key not in running)
        for key in gone:
            del self._counted[key]
        closes: dict[tuple[str, int], dict[str, int]] | None = self.plane.sni_closes()
        if closes == self._sni_closes:
            closes = None
        else:
            self._sni_closes = closes or {}
        if changed or gone or closes is not None:
            return Counted(changed, gone, closes)
        return None


def _die_with_parent(parent: int) -> None:
    """Be killed when the node's process dies, however it dies (Linux's PR_SET_PDEATHSIG);
    the channel's EOF covers other systems, and a parent already gone before the call."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, int(signal.SIGKILL), 0, 0, 0)
    if os.getppid() != parent:
        raise SystemExit(0)


def main(
    index: int,
    channel_fd: int,
    parent: int,
    run: Callable[[Coroutine[Any, Any, None]], None],
) -> int:
    """``restcp _worker``: started by the node's process only (internal, undocumented)."""
    _die_with_parent(parent)
    # Blocked until _serve handles them, and again once it has returned: the loop is closed
    # then, and a late SIGTERM (the node signals every worker it stops) would kill a worker
    # that has already drained and is exiting 0.
    signal.pthread_sigmask(signal.SIG_BLOCK, (*STOP_SIGNALS, signal.SIGHUP))
    channel = socket.socket(fileno=channel_fd)
    hello = receive_hello(channel)
    if hello is None:
        raise SystemExit(0)  # the node's process went away before saying hello
    logs.configure(hello.settings.log_level, hello.settings.log_format, worker=index)
    run(_serve(channel, hello.settings, hello.api))
    return 0


async def _serve(channel: socket.socket, settings: Settings, api: tuple[str, int] | None) -> None:
    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()
    for sig in STOP_SIGNALS:
        loop.add_signal_handler(sig, stopping.set)
    # A SIGHUP sent to the whole process group is the node's process's to act on.
    loop.add_signal_handler(signal.SIGHUP, lambda: None)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, (*STOP_SIGNALS, signal.SIGHUP))
    worker = Worker(settings, api)
    reader, writer = await asyncio.open_unix_connection(sock=channel)

    def answer(message: FromWorker) -> None:
        if not writer.is_closing():
            writer.write(frame(message))

    async def follow() -> None:
        while (message := await receive(reader, TO_WORKER)) is not None:
            reply = await worker.handle(message)
            if reply is not None:
                answer(reply)
        log.warning("the main process is gone: stopping")

    async def report() -> None:
        while True:
            await asyncio.sleep(STATS_INTERVAL)
            counted = worker.counts()
            if counted is not None:
                answer(counted)

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
        await worker.plane.shutdown(settings.drain_timeout)
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
        # Before the loop closes and drops its handlers (see main): no signal kills it now.
        signal.pthread_sigmask(signal.SIG_BLOCK, (*STOP_SIGNALS, signal.SIGHUP))
        log.info("stopped")
