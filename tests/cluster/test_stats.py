"""Counters through any node: two real nodes on a real Redis, a route served by one, its
counters, rates and history read through the other, naming the serving node; a node stopped
takes its counters with it."""

from __future__ import annotations

import socket
from typing import Any

from tests.cluster.conftest import StartNode, attach, create, poll, ready
from tests.e2e.peers import Backend, echo

A, C = "127.0.0.2", "127.0.0.3"


def round_trip(ip: str, port: int, payload: bytes) -> None:
    with socket.create_connection((ip, port), timeout=5) as sock:
        sock.sendall(payload)
        got = b""
        while len(got) < len(payload):
            chunk = sock.recv(65536)
            assert chunk, "closed early"
            got += chunk


def test_a_routes_counters_show_through_a_node_that_does_not_serve_it(
    start_node: StartNode,
) -> None:
    a, c = ready(start_node(A, ready=False), start_node(C, ready=False))
    c_id = c.call("GET", "/healthz").json()["cluster"]["node"]
    a_id = a.call("GET", "/healthz").json()["cluster"]["node"]
    with Backend(echo) as peer:
        route = create(a, "web", frontend_ip=C)
        attach(a, "web", route["id"], peer.port)
        mine = create(a, "web", frontend_ip=A)
        for _ in range(3):
            round_trip(C, route["port"], b"x" * 100)

        shown: dict[str, Any] = {}

        def listed() -> bool:
            stats = a.call("GET", "/stats")
            assert stats.status == 200, stats
            shown.clear()
            shown.update({f"{r['app']}/{r['id']}": r for r in stats.json()["routes"]})
            served = shown.get(f"web/{route['id']}")
            return served is not None and served["connections_total"] == 3

        poll(listed, "C's route, counted, through A", 10)
        there = shown[f"web/{route['id']}"]
        assert there["node"] == c_id
        assert there["bytes_in"] == there["bytes_out"] == 300
        assert there["backends"][0]["connections_total"] == 3
        assert shown[f"web/{mine['id']}"]["node"] == a_id
        # A's own sums are its own: the route it serves, none of C's connections.
        node = a.call("GET", "/stats").json()["node"]
        assert node["routes"] == 1
        # An app's view, and the route's history, through A.
        app_stats = a.call("GET", "/apps/web/stats").json()["routes"]
        assert {(r["id"], r["node"]) for r in app_stats} == {
            (route["id"], c_id),
            (mine["id"], a_id),
        }

        def in_history() -> bool:
            path = f"/apps/web/routes/{route['id']}/stats/history"
            return sum(a.call("GET", path).json()["connections"]) > 0

        poll(in_history, "C's route's traffic in A's history", 10)

    # Stopped cleanly, C takes its counters with it: A lists its own route only.
    assert c.stop() == 0

    def gone() -> bool:
        return [r["node"] for r in a.call("GET", "/stats").json()["routes"]] == [a_id]

    poll(gone, "C's counters gone from A", 10)
