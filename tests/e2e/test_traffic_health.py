"""Health through a real node: active checks (connect, send/expect), passive health on real
traffic, and what a route does when every backend is down."""

from __future__ import annotations

import socket
import time
from collections import Counter

from tests.e2e.conftest import create_route, wait_until
from tests.e2e.peers import (
    PROBE,
    Backend,
    Client,
    Handler,
    Tagged,
    attach,
    backend_of,
    elapsed_since,
    health_is,
    health_lines,
    log_count,
    logged_clients,
    patch_route,
    refusing_port,
    served_by,
)
from tests.helpers import Node

INTERVAL = 0.2
RISE = 2
FALL = 3


def test_killed_backend_goes_down_in_time_takes_no_clients_and_comes_back(node: Node) -> None:
    check = {"interval": INTERVAL, "timeout": 0.5, "rise": RISE, "fall": FALL}
    port = create_route(node, "hc", balance="round_robin", health_check=check)["port"]
    a = Backend(Tagged("a"))
    with Backend(Tagged("b")) as b:
        try:
            attach(node, "hc", 1, a.port)
            attach(node, "hc", 1, b.port)
            for backend in (1, 2):
                wait_until(health_is(node, "hc", 1, backend, "up"), "first checks pass")
            assert Counter(served_by(port) for _ in range(4)) == {"a": 2, "b": 2}

            killed_at = time.time()
            started = time.monotonic()
            a.close()
            wait_until(health_is(node, "hc", 1, 1, "down"), "killed backend marked down")
            seen_after = elapsed_since(started)
            down = backend_of(node, "hc", 1, 1)
            marked_after = down["health_changed_at"] - killed_at
            print(f"down: marked {marked_after:.3f}s, seen {seen_after:.3f}s after the kill")
            # Worst case: the kill lands just after a probe, then `fall` probes must fail.
            assert marked_after <= FALL * INTERVAL + INTERVAL, down
            assert down["health_reason"] == "check failed: Connection refused", down

            # While it is down the proxy does not even try it: no connect failure is logged,
            # which would be the sign of a client sent there and failed over.
            failures = "connect failed app=hc route=1 backend=1 "
            end = time.monotonic() + 1.0
            clients = 4
            while time.monotonic() < end:
                assert served_by(port) == "b"
                clients += 1
                time.sleep(0.01)
            logged_clients(node, "hc", clients)
            assert log_count(node, failures) == 0
            print(f"{clients - 4} clients while down, all to b")
        finally:
            a.close()

        restarted_at = time.time()
        with Backend(Tagged("a"), port=a.port):
            wait_until(health_is(node, "hc", 1, 1, "up"), "restarted backend back up")
            up = backend_of(node, "hc", 1, 1)
            up_after = up["health_changed_at"] - restarted_at
            print(f"up: {up_after:.3f}s after the restart")
            assert up_after <= RISE * INTERVAL + INTERVAL, up
            assert up["health_reason"] == f"{RISE} check(s) passed", up
            assert Counter(served_by(port) for _ in range(10)) == {"a": 5, "b": 5}

            # Several intervals in a steady state: a transition is logged once, not per probe.
            time.sleep(3 * INTERVAL)
            assert health_lines(node, "hc", 1) == ["unknown -> up", "up -> down", "down -> up"]
            assert health_lines(node, "hc", 2) == ["unknown -> up"]


def pong_in_two_pieces(conn: socket.socket) -> None:
    """Redis answering PING, split so the prefix only matches across two reads."""
    while data := conn.recv(4096):
        for _ in range(data.count(b"PING\r\n")):
            conn.sendall(b"+PO")
            time.sleep(0.02)
            conn.sendall(b"NG\r\n")


def redis_error(conn: socket.socket) -> None:
    """A Redis that refuses PING and, like Redis, keeps the connection open."""
    while data := conn.recv(4096):
        for _ in range(data.count(b"PING\r\n")):
            conn.sendall(b"-ERR unknown command 'PING'\r\n")


def http_status(status: bytes, body: bytes = b"ok") -> Handler:
    def handle(conn: socket.socket) -> None:
        request = b""
        while b"\r\n\r\n" not in request:
            data = conn.recv(4096)
            if not data:
                return
            request += data
        conn.sendall(b"HTTP/1.1 " + status + b"\r\nContent-Length: %d\r\n\r\n" % len(body) + body)

    return handle


def test_send_expect_checks(node: Node) -> None:
    # A long timeout: a check that waited for it instead of judging the reply would not
    # mark anything down within the wait below.
    redis = {"interval": INTERVAL, "timeout": 3, "rise": 1, "fall": 1}
    redis |= {"send": "PING\r\n", "expect": "+PONG"}
    web = {"interval": INTERVAL, "timeout": 3, "rise": 1, "fall": 1}
    web |= {"send": "GET /health HTTP/1.0\r\n\r\n", "expect": r"re:^HTTP/1\.[01] 200"}
    redis_port = create_route(node, "redis", health_check=redis)["port"]
    create_route(node, "web", health_check=web)
    with (
        Backend(pong_in_two_pieces) as good,
        Backend(redis_error) as bad,
        Backend(http_status(b"200 OK")) as ok,
        Backend(http_status(b"503 Service Unavailable")) as unavailable,
        # "HTTP/1.0 200" in the body, not at the start: the pattern is anchored.
        Backend(http_status(b"500 Oops", b"\r\nHTTP/1.0 200 OK")) as tricky,
    ):
        attach(node, "redis", 1, good.port)
        attach(node, "redis", 1, bad.port)
        for server in (ok, unavailable, tricky):
            attach(node, "web", 1, server.port)
        started = time.monotonic()
        wait_until(health_is(node, "redis", 1, 1, "up"), "+PONG passes", deadline=2)
        wait_until(health_is(node, "redis", 1, 2, "down"), "-ERR fails", deadline=2)
        wait_until(health_is(node, "web", 1, 1, "up"), "200 passes", deadline=2)
        wait_until(health_is(node, "web", 1, 2, "down"), "503 fails", deadline=2)
        wait_until(health_is(node, "web", 1, 3, "down"), "500 fails", deadline=2)
        print(f"all five judged within {elapsed_since(started):.3f}s")

        bad_reason = backend_of(node, "redis", 1, 2)["health_reason"]
        assert "-ERR unknown command 'PING'" in bad_reason, bad_reason
        assert "timeout" not in bad_reason, bad_reason
        assert "503 Service Unavailable" in backend_of(node, "web", 1, 2)["health_reason"]
        assert "500 Oops" in backend_of(node, "web", 1, 3)["health_reason"]

        # The -ERR backend takes no client: every PING through the route meets +PONG.
        for _ in range(6):
            with Client(redis_port) as client:
                client.sock.sendall(b"PING\r\n")
                reply = b""
                while not reply.endswith(b"\r\n"):
                    data = client.sock.recv(64)
                    assert data, reply
                    reply += data
                assert reply == b"+PONG\r\n"
        time.sleep(3 * INTERVAL)  # a few more probes, each of which might log again
        for (app, backend), lines in (
            (("redis", 1), ["unknown -> up"]),
            (("redis", 2), ["unknown -> down"]),
            (("web", 1), ["unknown -> up"]),
            (("web", 2), ["unknown -> down"]),
            (("web", 3), ["unknown -> down"]),
        ):
            assert health_lines(node, app, backend) == lines, (app, backend)


def test_passive_health_without_checks(node: Node) -> None:
    cooldown = 1.0
    rr = create_route(node, "rr", balance="round_robin", passive_cooldown=cooldown)["port"]
    rnd = create_route(node, "rnd", balance="random", passive_cooldown=60)["port"]
    rr_failures = "connect failed app=rr route=1 backend=1 "
    rnd_failures = "connect failed app=rnd route=1 backend=1 "
    with refusing_port() as dead, Backend(Tagged("live")) as live:
        for app in ("rr", "rnd"):
            attach(node, app, 1, dead)
            attach(node, app, 1, live.port)

        # Round robin meets the dead backend first every time, then fails over.
        for failures in range(1, 4):
            assert served_by(rr) == "live"
            logged_clients(node, "rr", failures)
            assert log_count(node, rr_failures) == failures
            expected = "down" if failures == 3 else "unknown"
            # At once: the third failure marks it down before that client is served.
            assert backend_of(node, "rr", 1, 1)["health"] == expected
        down = backend_of(node, "rr", 1, 1)
        assert down["health_reason"].startswith("3 connect failures in a row: "), down
        for _ in range(5):
            assert served_by(rr) == "live"
        logged_clients(node, "rr", 8)
        assert log_count(node, rr_failures) == 3

        wait_until(health_is(node, "rr", 1, 1, "unknown"), "cool-down over", deadline=5)
        back = backend_of(node, "rr", 1, 1)
        waited = back["health_changed_at"] - down["health_changed_at"]
        print(f"round_robin: down for {waited:.3f}s (cool-down {cooldown}s)")
        # The loop's timers run on its own clock: a hair early on the wall clock is on time.
        assert cooldown - 0.05 <= waited < cooldown + 1.0, back
        assert back["health_reason"] == "cool-down over"
        assert served_by(rr) == "live"
        assert served_by(rr) == "live"
        logged_clients(node, "rr", 10)
        assert log_count(node, rr_failures) >= 4  # tried again

        # Random: the dead backend's own failures count, whatever happens in between.
        clients = 0
        while backend_of(node, "rnd", 1, 1)["health"] != "down":
            assert served_by(rnd) == "live"
            clients += 1
            assert clients < 100, "never marked down"
        logged_clients(node, "rnd", clients)
        assert log_count(node, rnd_failures) == 3
        for _ in range(20):
            assert served_by(rnd) == "live"
        logged_clients(node, "rnd", clients + 20)
        assert log_count(node, rnd_failures) == 3
        print(f"random: down after {clients} clients")
        assert health_lines(node, "rr", 1) == ["unknown -> down", "down -> unknown"]


def test_when_all_down(node: Node) -> None:
    # The live backend answers the probe with OK, the check wants YES: it is marked down
    # while it would serve clients perfectly well.
    check = {"interval": INTERVAL, "timeout": 1, "rise": 1, "fall": 1}
    check |= {"send": PROBE, "expect": "YES"}
    # Round robin: with the default random balance, 6 clients all went to the live backend
    # first 1 time in 64, and the check below that try_all tried the dead one too failed.
    route = {"balance": "round_robin", "connect_timeout": 5, "passive_cooldown": 0.5}
    port = create_route(node, "ff", health_check=check, **route)["port"]
    x = Tagged("x")
    with refusing_port() as dead, Backend(x) as alive:
        attach(node, "ff", 1, dead)
        attach(node, "ff", 1, alive.port)
        for backend in (1, 2):
            wait_until(health_is(node, "ff", 1, backend, "down"), "both down")
        assert "unexpected reply b'OK\\n'" in backend_of(node, "ff", 1, 2)["health_reason"]

        for _ in range(3):
            started = time.monotonic()
            with Client(port) as client:
                client.sock.sendall(b"hello\n")
                assert client.closed()
            took = elapsed_since(started)
            assert took < 0.5, took
        print(f"fail_fast: closed in {took:.3f}s")
        assert x.lines == []

        patch_route(node, "ff", 1, when_all_down="try_all")
        for _ in range(6):
            assert served_by(port) == "x"
        assert len(x.lines) == 6
        # Still down: try_all did not pretend otherwise.
        assert backend_of(node, "ff", 1, 2)["health"] == "down"

        # try_all met the dead one too: connect failures on top of its failed checks.
        logged_clients(node, "ff", 9)
        assert log_count(node, "connect failed app=ff route=1 backend=1 ") > 0

        # Checks off, live: their verdict goes with them, and fail_fast serves again.
        patch_route(node, "ff", 1, when_all_down="fail_fast", health_check=None)
        assert backend_of(node, "ff", 1, 2)["health"] == "unknown"
        assert served_by(port) == "x"
        # The dead one is not left down for good: with nothing to probe it any more, it
        # gets the passive cool-down, then another chance.
        wait_until(health_is(node, "ff", 1, 1, "unknown"), "dead one tried again", deadline=5)
