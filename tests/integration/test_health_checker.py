"""health/checker.py against real servers on 127.0.0.1, port 0, one event loop per test.

Waits are on events the servers and the sink set, each bounded by WAIT; the one thing
nothing signals (the process's fd count) is polled, also bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import socket
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

import pytest

from restcp.health.checker import RouteChecks, probe
from restcp.model import Backend, HealthCheck

T = TypeVar("T")
HOST = "127.0.0.1"
WAIT = 5.0

PING = HealthCheck(interval=0.05, timeout=1.0, send="PING\r\n", expect="+PONG")


def run(main: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(main)


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


class Signal:
    """An event for "something changed": waiters re-check their condition on each set()."""

    def __init__(self) -> None:
        self._event = asyncio.Event()

    def set(self) -> None:
        self._event.set()

    async def until(self, condition: Callable[[], bool], within: float = WAIT) -> None:
        async with asyncio.timeout(within):
            while not condition():
                self._event.clear()
                await self._event.wait()


Answer = Callable[[bytes], bytes | None]


@dataclass
class Peer:
    """A backend on 127.0.0.1:0. ``answer`` gets what a connection sent since its last reply
    and returns the reply, or None to wait for more; without one the peer never answers.
    The connection stays open until the client closes it, as Redis or HTTP keep-alive do."""

    answer: Answer | None = None
    close_after_reply: bool = False
    port: int = 0
    accepted: int = 0
    requests: list[bytes] = field(default_factory=list)
    changed: Signal = field(default_factory=Signal)
    tasks: set[asyncio.Task[None]] = field(default_factory=set)
    _server: asyncio.Server | None = None

    async def __aenter__(self) -> Peer:
        self._server = await asyncio.start_server(self._serve, HOST, 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *_exc: object) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)

    def backend(self, backend_id: int) -> Backend:
        return Backend(backend_id, HOST, self.port)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.tasks.add(task)
        self.accepted += 1
        self.changed.set()
        request = b""
        try:
            while chunk := await reader.read(4096):
                request += chunk
                reply = self.answer(request) if self.answer else None
                if reply is not None:
                    self.requests.append(request)
                    request = b""
                    writer.write(reply)
                    if self.close_after_reply:
                        break
        except ConnectionError:
            pass  # the probe resets its connection: that is how it says goodbye
        finally:
            writer.transport.abort()
            self.tasks.discard(task)
            self.changed.set()


def redis(reply: bytes = b"+PONG\r\n") -> Answer:
    return lambda request: reply if request.endswith(b"\r\n") else None


def http(status_line: bytes) -> Answer:
    reply = status_line + b"\r\nContent-Length: 0\r\n\r\n"
    return lambda request: reply if request.endswith(b"\r\n\r\n") else None


class HangingBackend:
    """Accepts and never answers, and measures how many probe connections are open at once.

    Plain non-blocking sockets, so the count is the kernel's: when a connection arrives,
    every earlier one is drained, and one that shows EOF or a reset is no longer open.
    """

    def __init__(self) -> None:
        self._listener = socket.create_server((HOST, 0))
        self._listener.setblocking(False)
        self.port: int = self._listener.getsockname()[1]
        self.accepted = 0
        self.most_open = 0
        self.changed = Signal()
        self._open: list[socket.socket] = []
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> HangingBackend:
        self._task = asyncio.get_running_loop().create_task(self._accept())
        return self

    async def __aexit__(self, *_exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        for sock in (*self._open, self._listener):
            sock.close()

    def backend(self, backend_id: int) -> Backend:
        return Backend(backend_id, HOST, self.port)

    async def _accept(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            conn, _ = await loop.sock_accept(self._listener)
            conn.setblocking(False)
            still = []
            for sock in self._open:
                if _is_open(sock):
                    still.append(sock)
                else:
                    sock.close()
            self._open = [*still, conn]
            self.accepted += 1
            self.most_open = max(self.most_open, len(self._open))
            self.changed.set()


def _is_open(sock: socket.socket) -> bool:
    while True:
        try:
            chunk = sock.recv(1 << 16)
        except BlockingIOError:
            return True
        except OSError:
            return False
        if not chunk:
            return False


@contextlib.contextmanager
def refusing_port() -> Iterator[int]:
    """A port bound (so nothing else takes it during the test) but not listening."""
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        yield sock.getsockname()[1]


@contextlib.contextmanager
def silent_port() -> Iterator[int]:
    """A port whose accept queue is full: the kernel drops further SYNs, a connect hangs."""
    listener = socket.socket()
    fillers: list[socket.socket] = []
    try:
        listener.bind((HOST, 0))
        listener.listen(0)
        for _ in range(2):
            filler = socket.socket()
            fillers.append(filler)
            filler.setblocking(False)
            filler.connect_ex(listener.getsockname())
        yield listener.getsockname()[1]
    finally:
        for sock in (*fillers, listener):
            sock.close()


@dataclass
class Result:
    backend_id: int
    ok: bool
    reason: str
    latency: float
    at: float


class Recorder:
    """A HealthSink that keeps every result."""

    def __init__(self) -> None:
        self.results: list[Result] = []
        self.changed = Signal()

    def check_result(self, backend_id: int, ok: bool, reason: str, latency: float) -> None:
        at = asyncio.get_running_loop().time()
        self.results.append(Result(backend_id, ok, reason, latency, at))
        self.changed.set()

    def of(self, backend_id: int) -> list[Result]:
        return [r for r in self.results if r.backend_id == backend_id]

    async def until_count(self, backend_id: int, n: int) -> None:
        await self.changed.until(lambda: len(self.of(backend_id)) >= n)


async def timed_probe(port: int, check: HealthCheck) -> tuple[str | None, float]:
    loop = asyncio.get_running_loop()
    started = loop.time()
    reason = await probe(HOST, port, check)
    return reason, loop.time() - started


# probe() ---------------------------------------------------------------------------------


def test_connect_only_probe_passes_on_a_listening_port() -> None:
    async def main() -> None:
        async with Peer() as peer:
            assert await probe(HOST, peer.port, HealthCheck(timeout=1.0)) is None
            # It really went to this server, and did not leave the connection open.
            await peer.changed.until(lambda: peer.accepted == 1 and not peer.tasks)

    run(main())


def test_connect_only_probe_fails_on_a_closed_port() -> None:
    async def main() -> None:
        with refusing_port() as port:
            reason, took = await timed_probe(port, HealthCheck(timeout=2.0))
        assert reason is not None
        assert "refused" in reason.lower(), reason
        assert took < 1.0

    run(main())


def test_probe_fails_at_the_timeout_when_connect_hangs() -> None:
    async def main() -> None:
        with silent_port() as port:
            reason, took = await timed_probe(port, HealthCheck(timeout=0.2))
        assert reason == "timeout after 0.2s"
        assert 0.2 <= took < 0.45

    run(main())


def test_send_expect_prefix_passes_on_a_fake_redis() -> None:
    async def main() -> None:
        async with Peer(redis()) as peer:
            assert await probe(HOST, peer.port, PING) is None
            assert peer.requests == [b"PING\r\n"]

    run(main())


def test_send_expect_regex_passes_on_an_http_status_line() -> None:
    check = HealthCheck(
        timeout=1.0,
        send="GET /health HTTP/1.1\r\nHost: backend\r\n\r\n",
        expect=r"re:^HTTP/1\.[01] 2\d\d ",
    )

    async def main() -> None:
        async with Peer(http(b"HTTP/1.1 204 No Content")) as peer:
            assert await probe(HOST, peer.port, check) is None
            assert peer.requests == [b"GET /health HTTP/1.1\r\nHost: backend\r\n\r\n"]

    run(main())


def test_wrong_reply_fails_at_once_with_the_reply_quoted() -> None:
    async def main() -> None:
        # Redis keeps the connection open after an error reply: the probe must not wait for
        # the timeout to find out the reply was wrong.
        async with Peer(redis(b"-LOADING Redis is loading the dataset in memory\r\n")) as peer:
            reason, took = await timed_probe(peer.port, replace(PING, timeout=3.0))
        assert reason is not None
        assert "b'-LOADING Redis is loading" in reason, reason
        assert took < 1.5

    run(main())


def test_wrong_reply_then_close_fails_with_the_reply_quoted() -> None:
    async def main() -> None:
        async with Peer(redis(b"-ERR unknown command\r\n"), close_after_reply=True) as peer:
            reason = await probe(HOST, peer.port, PING)
        assert reason == "unexpected reply b'-ERR unknown command\\r\\n'"

    run(main())


def test_regex_that_never_matches_fails_at_the_timeout_with_the_reply_quoted() -> None:
    check = HealthCheck(timeout=0.3, send="GET / HTTP/1.1\r\n\r\n", expect=r"re:^HTTP/1\.1 2")

    async def main() -> None:
        async with Peer(http(b"HTTP/1.1 503 Service Unavailable")) as peer:
            reason, took = await timed_probe(peer.port, check)
        assert reason is not None
        assert reason.startswith("timeout after 0.3s"), reason
        assert "503 Service Unavailable" in reason, reason
        assert 0.3 <= took < 0.55

    run(main())


def test_silent_backend_fails_at_the_timeout() -> None:
    async def main() -> None:
        async with Peer() as peer:
            reason, took = await timed_probe(peer.port, replace(PING, timeout=0.25))
            assert reason == "timeout after 0.25s"
            assert 0.25 <= took < 0.5
            # The probe hung up: the server sees the connection end.
            await peer.changed.until(lambda: peer.accepted == 1 and not peer.tasks)

    run(main())


# RouteChecks -----------------------------------------------------------------------------


def test_route_checks_report_every_backend_to_the_sink() -> None:
    async def main() -> None:
        sink = Recorder()
        checks = RouteChecks(sink)
        with refusing_port() as closed:
            async with Peer(redis()) as good, Peer(redis(b"-ERR\r\n")) as wrong:
                checks.update(PING, [good.backend(1), wrong.backend(2), Backend(3, HOST, closed)])
                for backend_id in (1, 2, 3):
                    await sink.until_count(backend_id, 3)
                await checks.close()
        assert all(r.ok and r.reason == "" for r in sink.of(1))
        assert all(not r.ok and "b'-ERR" in r.reason for r in sink.of(2))
        assert all(not r.ok and "refused" in r.reason.lower() for r in sink.of(3))
        assert all(0 <= r.latency < PING.timeout for r in sink.results)
        # A probe starts once per interval, not as fast as the backend answers. Its report
        # comes a latency later, and latencies vary (a loaded machine): the starts are what
        # the interval spaces out, to the millisecond the event loop's clock resolves.
        starts = [r.at - r.latency for r in sink.of(1)]
        gaps = [b - a for a, b in itertools.pairwise(starts)]
        assert all(gap >= PING.interval - 0.002 for gap in gaps), gaps

    run(main())


def test_update_starts_stops_and_restarts_probes() -> None:
    async def main() -> None:
        sink = Recorder()
        checks = RouteChecks(sink)
        with refusing_port() as closed:
            async with Peer(redis()) as a, Peer(redis()) as b:
                checks.update(PING, [a.backend(1)])
                await sink.until_count(1, 2)
                assert not sink.of(2)

                # Added: probed from now on; the others go on.
                checks.update(PING, [a.backend(1), b.backend(2)])
                await sink.until_count(2, 2)
                assert all(r.ok for r in sink.results)

                # Removed: no result for 1 once update() returns, while 2 goes on.
                checks.update(PING, [b.backend(2)])
                ones = len(sink.of(1))
                await sink.until_count(2, len(sink.of(2)) + 3)
                assert len(sink.of(1)) == ones

                # Replaced under the same id: probed at the new address only.
                checks.update(PING, [Backend(2, HOST, closed)])
                mark = len(sink.of(2))
                await sink.until_count(2, mark + 3)
                assert not any(r.ok for r in sink.of(2)[mark:])

                # The same backends again: nothing restarts (a restart probes at once).
                same = len(sink.of(2))
                for _ in range(5):
                    checks.update(PING, [Backend(2, HOST, closed)])
                await sink.until_count(2, same + 3)
                times = [r.at for r in sink.of(2)[same - 1 :]]
                assert all(b - a >= 0.045 for a, b in itertools.pairwise(times))

                # A new check restarts every probe with it.
                checks.update(replace(PING, timeout=0.5), [a.backend(1)])
                mark1, mark2 = len(sink.of(1)), len(sink.of(2))
                await sink.until_count(1, mark1 + 3)
                assert len(sink.of(2)) == mark2
                assert all(r.ok for r in sink.of(1)[mark1:])

                # None: no probes at all. Another route's checks serve as the clock.
                checks.update(None, [a.backend(1)])
                stopped = len(sink.results)
                clock = Recorder()
                other = RouteChecks(clock)
                other.update(PING, [b.backend(9)])
                await clock.until_count(9, 4)
                assert len(sink.results) == stopped
                await other.close()
                await checks.close()

    run(main())


def test_probes_of_a_hanging_backend_never_overlap() -> None:
    # The timeout is longer than the interval, so each probe starts as the last one ends.
    check = HealthCheck(interval=0.05, timeout=0.1, send="PING\r\n", expect="+PONG")

    async def main() -> None:
        sink = Recorder()
        checks = RouteChecks(sink)
        async with HangingBackend() as one, HangingBackend() as two:
            checks.update(check, [one.backend(1), two.backend(2)])
            await one.changed.until(lambda: one.accepted >= 5)
            await two.changed.until(lambda: two.accepted >= 5)
            await checks.close()
            assert one.most_open == 1
            assert two.most_open == 1
        for backend_id in (1, 2):
            results = sink.of(backend_id)
            assert len(results) >= 4
            assert all(r.reason == "timeout after 0.1s" for r in results)
            assert all(0.1 <= r.latency < 0.35 for r in results)

    run(main())


def test_close_cancels_every_probe_and_leaks_nothing() -> None:
    check = HealthCheck(interval=0.05, timeout=2.0, send="PING\r\n", expect="+PONG")

    async def main() -> None:
        baseline = open_fds()
        sink = Recorder()
        checks = RouteChecks(sink)
        with refusing_port() as closed:
            async with Peer(redis()) as good, Peer() as hanging:
                checks.update(
                    check, [good.backend(1), hanging.backend(2), Backend(3, HOST, closed)]
                )
                # A replaced backend leaves a cancelled task behind: close() must await it.
                checks.update(check, [good.backend(1), hanging.backend(2), good.backend(3)])
                await sink.until_count(1, 3)
                await sink.until_count(3, 3)
                # Close while a probe of the hanging backend is still waiting for its reply.
                assert not sink.of(2)
                await hanging.changed.until(lambda: len(hanging.tasks) == 1)
                await checks.close()
                own = asyncio.all_tasks() - {asyncio.current_task()} - good.tasks - hanging.tasks
                assert not own, own
                await checks.close()  # twice is harmless
                # The probe's connection is gone: the server sees it end.
                await hanging.changed.until(lambda: not hanging.tasks)
        assert asyncio.all_tasks() == {asyncio.current_task()}
        async with asyncio.timeout(WAIT):
            while open_fds() != baseline:  # noqa: ASYNC110 - nothing signals a closed fd
                await asyncio.sleep(0.01)

    run(main())


def test_a_check_that_cannot_run_is_reported_and_retried() -> None:
    # Not encodable as latin-1: the probe raises before it sends anything.
    check = HealthCheck(interval=0.05, timeout=0.5, send="PING \u2603\r\n", expect="+PONG")

    async def main() -> None:
        sink = Recorder()
        checks = RouteChecks(sink)
        async with Peer(redis()) as peer:
            checks.update(check, [peer.backend(1)])
            await sink.until_count(1, 3)
            await checks.close()
        assert all(not r.ok and "probe error" in r.reason for r in sink.of(1))

    run(main())


@pytest.mark.parametrize("expect", ["+PONG", "re:PONG"])
def test_reply_split_across_reads_still_matches(expect: str) -> None:
    async def main() -> None:
        sent = asyncio.Event()
        go_on = asyncio.Event()

        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                await reader.readline()
                writer.write(b"+PO")
                await writer.drain()
                sent.set()
                await go_on.wait()
                writer.write(b"NG\r\n")
                await writer.drain()
                await reader.read()
            except ConnectionError:
                pass  # the probe resets its connection
            finally:
                writer.transport.abort()

        server = await asyncio.start_server(serve, HOST, 0)
        port = server.sockets[0].getsockname()[1]
        check = HealthCheck(timeout=2.0, send="PING\r\n", expect=expect)
        result = asyncio.get_running_loop().create_task(probe(HOST, port, check))
        await asyncio.wait_for(sent.wait(), WAIT)
        # Loop turns, not time: enough for the probe to read the first half on loopback.
        for _ in range(20):
            await asyncio.sleep(0)
        # Half a reply that may still become the expected one is not a failure yet.
        assert not result.done()
        go_on.set()
        assert await asyncio.wait_for(result, WAIT) is None
        server.close()
        await server.wait_closed()

    run(main())
