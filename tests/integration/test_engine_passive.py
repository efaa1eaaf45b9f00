"""Passive health on the native engine: the connect failure that reaches ``passive_fall``
takes its backend out of the engine's next pick at once, as RouteRuntime.connect_failed
takes it out of asyncio's candidates, without waiting for Python to read the records.

The engine's own tests drive a bare Engine on its thread and never drain its records, so
nothing Python does can stand in for what the engine decides; the last test goes through
the whole node side (records read, health checks, the reset they send back)."""

from __future__ import annotations

import select
import socket
from typing import Any

import pytest

from restcp.engine import sockaddr
from restcp.model import HealthCheck
from tests.integration.harness import WAIT, Server, proxy, refusing_backend, run, until
from tests.integration.test_engine import bare_engine, named, running, served_by

HOST = "127.0.0.1"


def row(backend_id: int, sock: socket.socket) -> tuple[int, int, bytes, int, int, int]:
    family, packed = sockaddr(HOST, sock.getsockname()[1])
    return (backend_id, family, packed, 1, -1, 0)


def sent_to(engine: Any, slot: int, port: int, live: socket.socket | None = None) -> str:
    """Where the engine sent a new client of route ``slot`` (accepting on ``port``): "live"
    (``live``, listening, accepted it), "failed" (closed after a failed connect; "failed
    2": two) or "none" (closed without a connect: no backend left to try). The connect
    failures are read from the route's counters, which no record drain touches."""
    failures = engine.counters(slot)[4]
    with socket.create_connection((HOST, port), timeout=WAIT) as client:
        watched = [client] if live is None else [client, live]
        ready, _, _ = select.select(watched, [], [], WAIT)
        if live is not None and live in ready:
            accepted, _ = live.accept()
            accepted.close()
            return "live"
        assert client in ready, "the engine neither connected nor closed the client"
        assert client.recv(1) == b""
    failed = engine.counters(slot)[4] - failures
    return "none" if failed == 0 else "failed" if failed == 1 else f"failed {failed}"


@pytest.mark.parametrize("fall", [0, 2])
def test_the_failure_reaching_passive_fall_takes_the_backend_out_at_once(fall: int) -> None:
    """round_robin over a refusing backend and a live one, one attempt per client, and
    Python never reads a record: with passive_fall 2 the second failure is the refusing
    backend's last pick; with 0 (passive health off) it keeps its turn."""
    dead = socket.socket()
    dead.bind((HOST, 0))  # bound, not listening: connects are refused
    with dead, socket.create_server((HOST, 0)) as live, bare_engine() as (engine, listening):
        slot = engine.add_route(
            listening.fileno(), [row(1, dead), row(2, live)], "round_robin",
            WAIT, 0.0, 0.0, 1, -1, None, 0, fall,
        )  # fmt: skip
        port = listening.getsockname()[1]
        with running(engine):
            seen = [sent_to(engine, slot, port, live) for _ in range(6)]
            if fall == 0:
                assert seen == ["failed", "live"] * 3
                return
            assert seen == ["failed", "live", "failed", "live", "live", "live"]
            # Python's count went back to 0 (a check passed) before it read the two
            # failures: it counts them after, so the engine keeps them and the backend out.
            engine.passive_reset(slot, 1)
            assert [sent_to(engine, slot, port, live) for _ in range(2)] == ["live", "live"]
            # Read, then reset: the backend has its turns again.
            assert [r[6] for r in engine.drain()].count("connect_error") == 2
            engine.passive_reset(slot, 1)
            assert [sent_to(engine, slot, port, live) for _ in range(2)] == ["failed", "live"]
            engine.passive_reset(slot, 99)  # no such backend: nothing happens


def test_a_connect_ends_the_run_of_failures_and_a_relisted_address_starts_over() -> None:
    """One backend, passive_fall 2: a failure, then a connect, then two failures: only
    those two in a row take it out. Taken out of the table and put back, it is tried again
    (Python's member for it may be a new one, with a count of its own)."""
    with socket.socket() as backend, bare_engine() as (engine, listening):
        backend.bind((HOST, 0))
        table = [row(1, backend)]
        settings = ("round_robin", WAIT, 0.0, 0.0, 1, -1)
        slot = engine.add_route(listening.fileno(), table, *settings, None, 0, 2)
        port = listening.getsockname()[1]
        with running(engine):
            assert sent_to(engine, slot, port) == "failed"
            backend.listen()
            assert sent_to(engine, slot, port, backend) == "live"
            backend.shutdown(socket.SHUT_RDWR)  # refusing again
            three = [sent_to(engine, slot, port) for _ in range(3)]
            assert three == ["failed", "failed", "none"]
            engine.update_route(slot, [], *settings, 0, 2)
            engine.update_route(slot, table, *settings, 0, 2)
            assert [sent_to(engine, slot, port) for _ in range(3)] == three


@pytest.mark.parametrize("try_all", [False, True])
def test_every_backend_out_is_none_out_when_all_down_tries_all(try_all: bool) -> None:
    """Two refusing backends, passive_fall 1: the first client's two attempts take both out.
    With when_all_down "fail_fast" the next client is turned away without a connect; with
    "try_all" it tries both again, as asyncio's pick does once no candidate is left."""
    one, two = refusing_backend(1)[1], refusing_backend(2)[1]
    with one, two, bare_engine() as (engine, listening):
        slot = engine.add_route(
            listening.fileno(), [row(1, one), row(2, two)], "round_robin",
            WAIT, 0.0, 0.0, 2, -1, None, 0, 1, try_all,
        )  # fmt: skip
        port = listening.getsockname()[1]
        with running(engine):
            assert sent_to(engine, slot, port) == "failed 2"
            assert sent_to(engine, slot, port) == ("failed 2" if try_all else "none")
        ends = [r[6] for r in engine.drain()]
    assert ends.count("no_backend") == 2, ends  # asyncio's end for both


def test_a_passing_check_gives_the_backend_its_count_back(loop: str) -> None:
    """Through the node: two failures, a check passes (Python's count goes back to 0 and
    the engine's with it), two more failures: the backend is still in (2 < passive_fall 3),
    so the next client tries it a fifth time, and that third failure in a row marks it down."""
    dead, holder = refusing_backend(1)
    check = HealthCheck(interval=3600, rise=1, fall=1)

    async def main() -> None:
        async with (
            Server(named(b"2")) as live,
            proxy(
                dead, live.backend(2), balance="round_robin", passive_fall=3,
                health_check=check, engine="native",
            ) as px,
        ):  # fmt: skip
            runtime = px.manager.runtime(px.route.key)
            assert runtime is not None
            member = runtime.members[1]
            for _ in range(2):
                assert await served_by(px) == b"2"
            await until(lambda: member.health.passive_failures == 2)
            runtime.check_result(1, True, "", 0.0)
            assert member.health.passive_failures == 0
            for _ in range(2):
                assert await served_by(px) == b"2"
            await until(lambda: member.health.passive_failures == 2)
            assert member.health.state == "up"
            assert await served_by(px) == b"2"
            await until(lambda: member.health.state == "down")
            assert member.connect_failures == 5

    with holder:
        run(loop, main())
