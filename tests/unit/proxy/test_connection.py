"""A Connection's connect, failover, pipe and ending logic without sockets (tests/unit/proxy/
fakes.py): protocol events and connect results in, what it did to its transports and its
route out."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from dataclasses import replace
from typing import Any, ClassVar

import pytest

from restcp.proxy.connection import State
from restcp.proxy.pipes import Held
from restcp.proxy.tls import Handshake
from tests.unit.proxy.fakes import Dialer, FakeTransport, accept, route_of, scene, turns


def run(main: Coroutine[Any, Any, None]) -> None:
    asyncio.run(main)


def test_failover_then_relay_then_close() -> None:
    """The first backend refuses: the second gets the PROXY header and the client's early
    bytes, in that order; bytes flow both ways; both FINs end it ``closed``, and the route
    counts a connect failure on the first and the connection on the second."""

    async def main() -> None:
        s = scene(2, proxy_protocol="v1")
        runtime, dialer, conn, client = s.runtime, s.dialer, s.conn, s.client
        assert conn.state is State.CONNECTING
        assert not client.reading, "not read until a backend is there"
        conn.client_end.data_received(b"early")
        assert [(d.host, d.port) for d in dialer.dials] == [("10.0.0.1", 7001)]

        dialer.dials[0].fail(ConnectionRefusedError(111, "Connection refused"))
        await turns()
        assert [(d.host, d.port) for d in dialer.dials][1] == ("10.0.0.2", 7002)
        backend = dialer.dials[1].succeed()
        await turns()
        assert conn.state is State.RELAYING
        assert bytes(backend.written) == b"PROXY TCP4 10.1.1.1 10.9.9.9 40000 8000\r\nearly"
        assert client.reading
        assert backend.reading

        conn.client_end.data_received(b"more")
        backend.protocol.data_received(b"answer")  # type: ignore[union-attr]
        assert backend.written.endswith(b"more")
        assert bytes(client.written) == b"answer"
        conn.client_end.eof_received()
        assert backend.eof_written
        assert not client.eof_written
        backend.protocol.eof_received()  # type: ignore[union-attr]
        assert client.eof_written
        assert conn.state is State.CLOSING
        assert client.closed
        assert backend.closed
        assert not client.aborted

        members = runtime.members
        assert (members[1].connect_failures, members[1].connecting) == (1, 0)
        assert (members[2].active, members[2].connecting) == (1, 0)
        conn.client_end.connection_lost(None)
        assert conn.state is State.CLOSING, "the backend transport is still open"
        backend.protocol.connection_lost(None)  # type: ignore[union-attr]
        assert conn.state is State.DONE
        assert members[2].active == 0
        assert (members[2].bytes_up, members[2].bytes_down) == (len(b"earlymore"), 6)
        assert conn.end_reason == "closed"

    run(main())


def test_connect_timeout_fails_over_and_marks_a_failure() -> None:
    async def main() -> None:
        s = scene(2, connect_timeout=2.0)
        runtime, dialer, conn, _client = s.runtime, s.dialer, s.conn, s.client
        dialer.now += 2.0
        conn.deadline_reached()
        await turns()
        assert dialer.dials[0].future.cancelled()
        assert len(dialer.dials) == 2, "failed over"
        assert runtime.members[1].connect_failures == 1
        assert runtime.members[1].connecting == 0
        dialer.dials[1].succeed()
        await turns()
        assert conn.state is State.RELAYING
        assert conn.backend is not None
        assert conn.backend.id == 2

    run(main())


def test_no_backend_left_lets_the_client_go() -> None:
    async def main() -> None:
        s = scene(2, max_connect_attempts=2)
        runtime, dialer, conn, client = s.runtime, s.dialer, s.conn, s.client
        for dial in list(dialer.dials):
            dial.fail(ConnectionRefusedError(111, "Connection refused"))
            await turns()
        assert len(dialer.dials) == 2
        dialer.dials[1].fail(ConnectionRefusedError(111, "Connection refused"))
        await turns()
        assert conn.state is State.CLOSING
        assert client.closed
        assert not client.aborted
        assert conn.refused == "no_backend"
        conn.client_end.connection_lost(None)
        assert conn.state is State.DONE
        assert runtime.refused["no_backend"] == 1

    run(main())


def test_a_client_that_leaves_mid_connect_abandons_it() -> None:
    """The connect is given up, not failed: the backend is not blamed, and the connection
    reports only once the connect has ended."""

    async def main() -> None:
        s = scene(1)
        runtime, dialer, conn, _client = s.runtime, s.dialer, s.conn, s.client
        conn.client_end.connection_lost(ConnectionResetError())
        assert conn.state is State.CLOSING, "the connect still runs"
        await turns()
        assert dialer.dials[0].future.cancelled()
        assert conn.state is State.DONE
        assert conn.end_reason == "client_reset"
        member = runtime.members[1]
        assert (member.connecting, member.connect_failures) == (0, 0)

    run(main())


def test_a_connect_that_comes_up_as_it_is_given_up_is_reset_with_the_client() -> None:
    """The connect deadline passes just as the backend accepts: asyncio runs the attempt's
    connection_made before the cancelled connect returns. Bytes may have reached that
    backend, so there is no failover: both are reset, and the route counts the attempt
    abandoned, not failed."""

    async def main() -> None:
        s = scene(2, connect_timeout=1.0)
        runtime, dialer, conn, client = s.runtime, s.dialer, s.conn, s.client
        first = dialer.dials[0]
        dialer.now += 1.0
        conn.deadline_reached()
        came_up = FakeTransport(("10.0.0.1", 7001))
        first.protocol.connection_made(came_up)
        await turns()
        assert len(dialer.dials) == 1, "no failover"
        assert came_up.was_reset
        assert client.was_reset
        assert conn.end_reason == "connect_failed"
        member = runtime.members[1]
        assert (member.connecting, member.connect_failures, member.active) == (0, 0, 0)
        conn.client_end.connection_lost(None)
        assert conn.state is State.DONE, "the dropped transport is counted gone at once"

    run(main())


def test_a_transport_made_as_the_client_left_is_reset() -> None:
    """The client leaves while its backend connects, and the connect comes up at that
    moment: that transport is reset, the attempt counted abandoned, and the connection
    reports once the connect has ended."""

    async def main() -> None:
        s = scene(1)
        runtime, dialer, conn, _client = s.runtime, s.dialer, s.conn, s.client
        conn.client_end.connection_lost(None)
        came_up = FakeTransport(("10.0.0.1", 7001))
        dialer.dials[0].protocol.connection_made(came_up)
        assert came_up.was_reset
        assert conn.state is State.CLOSING
        await turns()
        assert conn.state is State.DONE
        assert (runtime.members[1].connecting, runtime.members[1].connect_failures) == (0, 0)

    run(main())


def test_both_fins_before_the_connect_returns_end_it_after_passing_them_on() -> None:
    async def main() -> None:
        s = scene(1)
        dialer, conn, client = s.dialer, s.conn, s.client
        conn.client_end.data_received(b"request")
        conn.client_end.eof_received()
        backend = dialer.dials[0].succeed()
        end = backend.protocol
        assert end is not None
        end.data_received(b"banner")  # type: ignore[attr-defined]
        end.eof_received()  # type: ignore[attr-defined]
        assert conn.state is State.CONNECTING, "held until the connect returns"
        await turns()
        assert (bytes(backend.written), backend.eof_written) == (b"request", True)
        assert (bytes(client.written), client.eof_written) == (b"banner", True)
        assert conn.end_reason == "closed"

    run(main())


@pytest.mark.parametrize("who", ["client", "backend"])
def test_a_reset_resets_the_other_peer(who: str) -> None:
    async def main() -> None:
        s = scene(1)
        dialer, conn, client = s.dialer, s.conn, s.client
        backend = dialer.dials[0].succeed()
        await turns()
        lost, other = (client, backend) if who == "client" else (backend, client)
        assert lost.protocol is not None
        lost.protocol.connection_lost(ConnectionResetError())
        assert other.was_reset
        assert conn.end_reason == f"{who}_reset"

    run(main())


def test_a_refused_client_is_reset_and_counted() -> None:
    async def main() -> None:
        runtime = route_of(1, max_connections=1)
        dialer = Dialer()
        first, _ = accept(runtime, dialer)
        second, client = accept(runtime, dialer)
        assert first.state is State.CONNECTING
        assert second.state is State.CLOSING
        assert client.was_reset
        assert len(dialer.dials) == 1, "the refused client asked for no backend"
        second.client_end.connection_lost(None)
        assert runtime.refused["route_limit"] == 1

    run(main())


def test_the_state_table_refuses_a_transition_it_does_not_have() -> None:
    async def main() -> None:
        conn, _ = accept(route_of(1), Dialer())
        with pytest.raises(RuntimeError, match="CONNECTING to DONE"):
            conn._enter(State.DONE)

    run(main())


class RawPipe:
    """A pipe that writes to the sockets itself, recording what it was handed."""

    raw: ClassVar[bool] = True

    def __init__(self, keep: Held) -> None:
        self.started: Held | None = None
        self.keep = keep  # what it hands back when stopped

    def start(self, held: Held) -> None:
        self.started = held

    def stop(self, keep: bool) -> Held:
        return self.keep

    def holding(self) -> bool:
        return bool(self.keep.up or self.keep.down)


def test_a_switch_hands_over_and_back(caplog: pytest.LogCaptureFixture) -> None:
    """To a raw pipe: only with both write buffers empty, the transports quiet under it;
    back to the transports: what it held goes out first, then its FINs, and reading
    resumes where no FIN came."""

    async def main() -> None:
        s = scene(1)
        dialer, conn, client = s.dialer, s.conn, s.client
        backend = dialer.dials[0].succeed()
        await turns()
        handed = Held(up=b"to the backend", down=b"to the client", down_eof=True)
        raw = RawPipe(handed)
        backend.buffered = 10
        assert not conn.switch(lambda: raw, raw=True), "a buffer is not empty"
        assert conn.pipe is conn.transports
        backend.buffered = 0
        assert conn.switch(lambda: raw, raw=True)
        assert conn.pipe is raw
        assert raw.started == Held()
        assert not client.reading
        assert not backend.reading

        assert conn.switch(lambda: conn.transports, raw=False)
        assert bytes(backend.written) == b"to the backend"
        assert (bytes(client.written), client.eof_written) == (b"to the client", True)
        assert client.reading, "the client sent no FIN: it is read again"
        assert not backend.reading, "the backend's FIN came: it is read no more"
        assert conn.backend_eof
        assert not conn.client_eof

    caplog.set_level(logging.INFO)
    run(main())


def test_a_handshake_holds_a_place_until_its_connection_is_admitted() -> None:
    """A client in its TLS handshake counts against the route's, the app's and the node's
    limits (``hold``); its Connection, once made, is judged without its own hold
    (``Handshake.done`` gives it back first, once), and a failed handshake gives it back."""

    async def main() -> None:
        runtime = route_of(1, max_connections=2)
        runtime.traffic.set_limits(3, 10)
        dialer = Dialer()
        assert runtime.hold() is None
        assert runtime.hold() is None
        assert runtime.hold() == "route_limit"  # two handshakes fill the route
        assert (runtime.handshaking, runtime.traffic.waiting) == (2, 2)
        # One finishes: released before its Connection is judged, so it is admitted.
        done = Handshake(runtime.tls_failures, runtime.release)
        done.done()
        done.done()  # once only
        assert (runtime.handshaking, runtime.traffic.waiting) == (1, 1)
        first, _ = accept(runtime, dialer)
        assert first.state is State.CONNECTING
        # The other fails: its place is free again.
        failed = Handshake(runtime.tls_failures, runtime.release)
        failed.finished(ConnectionResetError())
        assert runtime.tls_failures["reset"] == 1
        assert (runtime.handshaking, runtime.traffic.waiting) == (0, 0)
        # The node's cap counts handshakes of any route, and clients read by SNI.
        runtime.traffic.hold(None)
        assert runtime.hold() is None
        assert runtime.hold() == "route_limit"
        unlimited = replace(runtime.route.settings, max_connections=None)
        runtime.update(replace(runtime.route, settings=unlimited))
        assert runtime.hold() == "node_limit"  # 1 connection + 1 handshake + 1 SNI client
        runtime.traffic.set_limits(None, 2)
        assert runtime.hold() == "app_limit"  # the connection and the handshake are the app's
        assert runtime.refused == {"route_limit": 2, "node_limit": 1, "app_limit": 1}

    run(main())
