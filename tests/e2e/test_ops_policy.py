"""The backend address policy and the per-app connection cap, attacked through a real node.

The policy is what keeps a route from being an open relay into the cloud metadata service,
a fenced-off network or restcp itself; these tests try each way in: every write method with
every spelling, the node's own ports, a listener that appears later on a backend's address,
a stored backend that a restarted node must now refuse, and the health checks, which open
connections of their own.
"""

from __future__ import annotations

import socket
import time
from pathlib import Path
from typing import Any

from tests.e2e.conftest import (
    StartNode,
    create_route,
    free_port_outside,
    port_range,
    serve_args,
    snapshot,
    wait_until,
)
from tests.e2e.peers import Backend, attach, connect, echo, recv_all, recv_exactly
from tests.e2e.test_ops_metrics import Acceptor, Scrape, exchange, metric, turned_away
from tests.helpers import Node, free_port_range

METADATA = [
    "169.254.169.254",
    "::ffff:169.254.169.254",
    "::ffff:a9fe:a9fe",
    "::a9fe:a9fe",
    "fd00:ec2::254",
    "FD00:EC2:0::0254",
    "0:0:0:0:0:ffff:a9fe:a9fe",
    "64:ff9b::a9fe:a9fe",
]


def assert_forbidden(response: Any, why: str) -> None:
    assert response.status == 403, response
    assert response.headers["Content-Type"].startswith("application/problem+json"), response
    body = response.json()
    assert body["status"] == 403, body
    assert why in body["detail"], body


def writes(app: str, ip: str, port: int) -> list[tuple[str, str, dict[str, Any]]]:
    """Every request that can put ``ip:port`` into backend 1 of route 1, or a new one."""
    body = {"ip": ip, "port": port}
    return [
        ("PUT", f"/apps/{app}/routes/1/backends", body),
        ("POST", f"/apps/{app}/routes/1/backends", body),
        ("POST", f"/apps/{app}/routes/1/backends/1", body),
        ("PUT", f"/apps/{app}/routes/1/backends/1", body),
        ("PATCH", f"/apps/{app}/routes/1/backends/1", body),
    ]


def test_metadata_backends_are_refused_by_every_write(node: Node) -> None:
    port = create_route(node, "meta")["port"]
    with Backend(echo) as good:
        attach(node, "meta", 1, good.port)
        before = snapshot(node)
        for ip in METADATA:
            for method, path, body in writes("meta", ip, 80):
                assert_forbidden(node.call(method, path, body), "denied network")
            # The address alone is enough: the backend's port stays what it was.
            response = node.call("PATCH", "/apps/meta/routes/1/backends/1", {"ip": ip})
            assert_forbidden(response, "denied network")
        # Loose numeric forms are not guessed at: neither IP literals nor host names (names
        # are resolved and judged address by address: test_ops_hostnames.py).
        for ip in (
            "0xa9fea9fe",
            "2852039166",
            2852039166,
            "169.254.169.254 ",
            "\uff11\uff16\uff19.254.169.254",  # fullwidth digits
            "[::1]",
        ):
            response = node.call("PUT", "/apps/meta/routes/1/backends", {"ip": ip, "port": 80})
            assert response.status == 422, (ip, response)
        response = node.call(
            "PUT", "/apps/meta/routes/1/backends", {"ip": "fe80::1%eth0", "port": 80}
        )
        assert_forbidden(response, "denied network fe80::/10")
        assert snapshot(node) == before
        # The data plane still relays to the one backend it had.
        assert exchange(port, b"still here")[1] == b"still here"


def test_backend_deny_flag(start_node: StartNode, tmp_path: Path) -> None:
    lo, hi = free_port_range()
    node = start_node(*serve_args(tmp_path / "d.db", lo, hi, "--backend-deny", "127.0.0.0/8"))
    create_route(node, "deny")
    before = snapshot(node)
    for ip in ("127.0.0.1", "127.9.9.9", "::ffff:127.0.0.1", "::ffff:7f00:1"):
        response = node.call("PUT", "/apps/deny/routes/1/backends", {"ip": ip, "port": 9})
        assert_forbidden(response, "in the denied network 127.0.0.0/8")
    assert snapshot(node) == before
    # The flag adds to the defaults, it does not replace them.
    response = node.call(
        "PUT", "/apps/deny/routes/1/backends", {"ip": "169.254.169.254", "port": 80}
    )
    assert_forbidden(response, "169.254.0.0/16")
    # Only the network given: IPv6 loopback is another one.
    assert node.call("PUT", "/apps/deny/routes/1/backends", {"ip": "::1", "port": 9}).status == 201


def test_backends_on_the_nodes_own_ports_are_refused(node: Node) -> None:
    first = create_route(node, "self")["port"]
    second = create_route(node, "self")["port"]
    with Backend(echo) as good:
        attach(node, "self", 1, good.port)
        before = snapshot(node)
        for ip, port in [
            ("127.0.0.1", node.api_port),
            ("::ffff:127.0.0.1", node.api_port),
            ("127.0.0.1", first),  # the route's own port: a client would loop for ever
            ("127.0.0.1", second),
        ]:
            for method, path, body in writes("self", ip, port):
                assert_forbidden(node.call(method, path, body), "own API or listener")
        # A PATCH that changes only the port reaches the same address.
        response = node.call("PATCH", "/apps/self/routes/1/backends/1", {"port": first})
        assert_forbidden(response, "own API or listener")
        assert snapshot(node) == before
        # The same ports on another loopback address are someone else's.
        assert (
            node.call("PATCH", "/apps/self/routes/1/backends/1", {"ip": "127.0.0.2"}).status == 200
        )


def test_a_route_opened_on_a_backends_address_takes_that_backend_out(node: Node) -> None:
    lo, hi = port_range(node)
    taken = free_port_outside(lo, hi)
    outer = create_route(node, "outer")["port"]
    attach(node, "outer", 1, taken)  # nothing listens there yet: allowed
    with Backend(echo) as inner_backend:
        # restcp itself now listens on the backend's address, relaying to an echo server: a
        # client of "outer" that were relayed there would hear its bytes back.
        assert create_route(node, "inner", port=taken)["port"] == taken
        attach(node, "inner", 1, inner_backend.port)
        node.wait_for_line("backend refused by policy app=outer route=1 backend=1", timeout=5)
        assert turned_away(outer, b"loop?")
        wait_until(
            lambda: (
                metric(
                    node,
                    "restcp_refused_connections_total",
                    app="outer",
                    route=1,
                    reason="no_backend",
                )
                == 1
            ),
            "the client refused for want of a usable backend",
        )
        assert metric(node, "restcp_connections_total", app="inner", route=1, backend=1) == 0
        assert metric(node, "restcp_connect_failures_total", app="outer", route=1, backend=1) == 0
        assert inner_backend.accepted == 0
        # Stored as it was: the policy refuses it now, it may serve again later.
        backend = node.call("GET", "/apps/outer/routes/1/backends/1").json()
        assert (backend["ip"], backend["port"]) == ("127.0.0.1", taken)


def test_deleting_that_route_frees_the_backend_again(node: Node) -> None:
    lo, hi = port_range(node)
    taken = free_port_outside(lo, hi)
    outer = create_route(node, "outer")["port"]
    attach(node, "outer", 1, taken)
    create_route(node, "inner", port=taken)
    node.wait_for_line("backend refused by policy app=outer route=1", timeout=5)
    assert node.call("DELETE", "/apps/inner/routes/1").status == 204
    assert relayed_to_a_new_server(outer, taken)


def relayed_to_a_new_server(outer: int, taken: int) -> bool:
    """Whether a client of port ``outer`` reaches a server that someone else (this test) now
    runs on ``taken``, where restcp listened before."""
    server = socket.create_server(("127.0.0.1", taken))
    server.settimeout(5)
    try:
        with connect(outer) as sock:
            sock.sendall(b"back?")
            peer, _ = server.accept()
            with peer:
                return peer.recv(5) == b"back?"
    finally:
        server.close()


def test_health_checks_stop_probing_a_backend_that_became_refused(node: Node) -> None:
    lo, hi = port_range(node)
    taken = free_port_outside(lo, hi)
    check = {"interval": 0.1, "timeout": 1, "rise": 1, "fall": 1}
    create_route(node, "probe", health_check=check)
    with Acceptor() as witness:
        attach(node, "probe", 1, witness.port)  # probed all along: the clock of this test
        attach(node, "probe", 1, taken)  # backend 2
        wait_until(lambda: witness.count >= 2, "checks running")
        create_route(node, "inner", port=taken)  # no backend: whatever arrives is refused
        start = witness.count
        wait_until(lambda: witness.count >= start + 10, "ten more check rounds", deadline=15)
        # Had backend 2 still been probed, each round would have reached the inner route. One
        # probe may have connected while that route's socket was bound but not yet serving.
        key = {"app": "inner", "route": 1, "reason": "no_backend"}
        refused = metric(node, "restcp_refused_connections_total", **key)
        assert (refused or 0) <= 1, refused

        # The route gone, the address is someone else's again: the probes come back.
        assert node.call("DELETE", "/apps/inner/routes/1").status == 204
        with Acceptor(port=taken) as successor:
            wait_until(lambda: successor.count >= 2, "backend 2 probed again")


def test_a_restarted_node_applies_a_new_deny_to_stored_backends(
    start_node: StartNode, tmp_path: Path
) -> None:
    lo, hi = free_port_range()
    store = tmp_path / "r.db"
    first = start_node(*serve_args(store, lo, hi))
    check = {"interval": 0.1, "timeout": 1, "rise": 1, "fall": 1}
    port = create_route(first, "stored", health_check=check)["port"]
    with Backend(echo) as v4, Acceptor("::1") as v6:
        attach(first, "stored", 1, v4.port)
        first.call("PUT", "/apps/stored/routes/1/backends", {"ip": "::1", "port": v6.port})
        wait_until(lambda: v4.accepted >= 1, "backend 1 probed before the restart")
        assert first.stop() == 0
        probes_before = v4.accepted
        node = start_node(*serve_args(store, lo, hi, "--backend-deny", "127.0.0.0/8"))
        node.wait_for_line("backend refused by policy app=stored route=1 backend=1", timeout=5)
        # Backend 2 (IPv6 loopback) keeps being checked and relayed to; backend 1 neither.
        start = v6.count
        wait_until(lambda: v6.count >= start + 5, "backend 2 probed five more times")
        assert v4.accepted == probes_before
        assert turned_away(port, b"x")  # relayed to the acceptor, which closes at once
        assert v4.accepted == probes_before
        assert metric(node, "restcp_connections_total", app="stored", route=1, backend=1) == 0


def test_a_stored_backend_on_the_new_api_port_is_refused(
    start_node: StartNode, tmp_path: Path
) -> None:
    lo, hi = free_port_range()
    store = tmp_path / "api.db"
    api_port = free_port_outside(lo, hi)
    first = start_node(*serve_args(store, lo, hi))
    port = create_route(first, "ssrf")["port"]
    attach(first, "ssrf", 1, api_port)  # nothing there yet: allowed
    assert first.stop() == 0
    args = serve_args(store, lo, hi)
    args[args.index("--api") + 1] = f"127.0.0.1:{api_port}"
    node = start_node(*args)
    assert node.api_port == api_port
    try:
        with connect(port) as sock:
            sock.sendall(b"GET /apps HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
            reply = recv_all(sock)
    except ConnectionResetError:
        # Turned away before its request was read: the kernel resets, nothing was relayed.
        reply = b""
    # Relayed, this is the admin API's answer, listing every app.
    assert b"HTTP/1.0 200" not in reply, reply
    assert metric(node, "restcp_connections_total", app="ssrf", route=1, backend=1) == 0


# -- the per-app connection cap ----------------------------------------------------------


def test_max_connections_per_app(start_node: StartNode, tmp_path: Path) -> None:
    lo, hi = free_port_range()
    caps = ("--max-connections-per-app", "3", "--max-connections", "7")
    node = start_node(*serve_args(tmp_path / "q.db", lo, hi, *caps))
    held: dict[str, list[socket.socket]] = {}

    def hold(app: str, port: int) -> None:
        sock = connect(port)
        held.setdefault(app, []).append(sock)
        sock.sendall(b"hi")
        assert recv_exactly(sock, 2) == b"hi"

    def refused_at_once(port: int) -> None:
        started = time.monotonic()
        assert turned_away(port, b"hi")
        assert time.monotonic() - started < 1.0

    def refusals() -> dict[tuple[str, str, str], float]:
        return {
            (s.labels["app"], s.labels["route"], s.labels["reason"]): s.value
            for s in Scrape(node).series("restcp_refused_connections_total")
        }

    with Backend(echo) as backend:
        q1, q2 = (create_route(node, "q")["port"] for _ in range(2))
        other = create_route(node, "other")["port"]
        third = create_route(node, "third")["port"]
        for app, route in (("q", 1), ("q", 2), ("other", 1), ("third", 1)):
            attach(node, app, route, backend.port)
        try:
            # Three across the two routes of one app: the fourth is refused, on either route.
            hold("q", q1)
            hold("q", q1)
            hold("q", q2)
            refused_at_once(q1)
            refused_at_once(q2)
            # The cap is each app's: another app holds three as well.
            for _ in range(3):
                hold("other", other)
            refused_at_once(other)
            # Seven open: the node's own cap refuses an app that is far below its cap.
            hold("third", third)
            refused_at_once(third)
            expected = {
                ("q", "1", "app_limit"): 1,
                ("q", "2", "app_limit"): 1,
                ("other", "1", "app_limit"): 1,
                ("third", "1", "node_limit"): 1,
            }
            wait_until(lambda: refusals() == expected, f"refusals {expected}")
            assert backend.accepted == 7  # the refused clients never reached it

            # Freed slots are taken by the next clients of the app, on either route.
            held.pop("third")[0].close()
            held["q"].pop(0).close()
            wait_until(
                lambda: metric(node, "restcp_connections_active", app="q", route=1, backend=1) == 1,
                "the slot freed",
            )
            hold("q", q2)
            refused_at_once(q1)
            expected[("q", "1", "app_limit")] = 2
            wait_until(lambda: refusals() == expected, f"refusals {expected}")
            assert backend.accepted == 8
        finally:
            for socks in held.values():
                for sock in socks:
                    sock.close()
