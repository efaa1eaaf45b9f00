"""Part 2: a route created through any node for an IP another node serves is bound by that
node, which answers the port (or an error) before the API answers."""

from __future__ import annotations

import signal
import socket
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import redis

from tests.cluster.conftest import StartNode, attach, create, fetch, poll, ready
from tests.e2e.peers import Backend

A, B, C = "127.0.0.2", "127.0.0.4", "127.0.0.3"


def test_a_route_created_through_another_node_is_bound_by_the_owner_before_the_answer(
    start_node: StartNode, banner: Callable[[bytes], Backend]
) -> None:
    a, c = ready(start_node(A, ready=False), start_node(C, ready=False))
    route = create(a, "web", frontend_ip=C)
    assert route["url"] == f"tcp://{C}:{route['port']}/"
    assert (route["id"], route["frontend_ip"]) == (1, C)
    # Bound by C before A answered: a client connects right away (and, without backends,
    # is closed).
    assert fetch(C, route["port"]) == b""
    assert c.call("GET", "/healthz").json()["routes"] == 1
    assert a.call("GET", "/healthz").json()["routes"] == 0
    stored = c.call("GET", "/apps/web/routes/1")
    assert stored.status == 200
    assert stored.json()["port"] == route["port"]

    one = banner(b"one")
    attach(a, "web", 1, one.port)
    poll(lambda: fetch(C, route["port"]) == b"one", "C relays to the backend added via A")

    # Without a frontend_ip a route stays on the node asked, as on a single node.
    local = create(a, "web")
    assert (local["id"], local["frontend_ip"]) == (2, A)


def test_a_taken_port_is_409_and_an_ip_nobody_serves_503_and_nothing_is_stored(
    start_node: StartNode, raw_redis: redis.Redis
) -> None:
    a, _ = ready(start_node(A, ready=False), start_node(C, ready=False))
    with socket.socket() as holder:
        holder.bind((C, 0))
        holder.listen()
        taken = holder.getsockname()[1]
        refused = a.call("PUT", "/apps/web/routes", {"frontend_ip": C, "port": taken})
    assert refused.status == 409, refused
    assert "cannot be bound" in refused.json()["detail"]

    nobody = a.call("PUT", "/apps/web/routes", {"frontend_ip": "127.0.0.9"})
    assert nobody.status == 503, nobody
    assert "no live node serves frontend_ip 127.0.0.9" in nobody.json()["detail"]

    assert a.call("GET", "/apps").json() == []
    assert raw_redis.keys("c1:route:*") == []
    assert raw_redis.keys("c1:ip:*") == []
    # The refused request took a route id, which stays unused; the unserved one took none.
    assert raw_redis.get("c1:app:web:route_counter") == "1"


def test_an_owner_too_slow_to_answer_gets_202_and_the_route_appears_later(
    start_node: StartNode,
) -> None:
    a, c = ready(
        start_node(A, "--provision-timeout", "0.3", ready=False), start_node(C, ready=False)
    )
    # Stopped, C is subscribed still (Redis counts it as a receiver) but answers nothing.
    c.proc.send_signal(signal.SIGSTOP)
    try:
        pending = a.call("PUT", "/apps/web/routes", {"frontend_ip": C})
    finally:
        c.proc.send_signal(signal.SIGCONT)
    assert pending.status == 202, pending
    assert pending.json() == {"id": 1, "app": "web", "frontend_ip": C, "status": "provisioning"}
    location = pending.headers["Location"]
    assert location == "/apps/web/routes/1"
    poll(lambda: a.call("GET", location).status == 200, "the route is stored")
    port = a.call("GET", location).json()["port"]
    assert fetch(C, port) == b""


def test_two_api_nodes_creating_fifty_routes_each_for_one_owner_get_distinct_ids_and_ports(
    start_node: StartNode,
) -> None:
    c, a, b = ready(
        start_node(C, ports=120, ready=False),
        start_node(A, ready=False),
        start_node(B, ready=False),
    )

    def make(node_index: int) -> Any:
        node = (a, b)[node_index % 2]
        return node.call("PUT", "/apps/web/routes", {"frontend_ip": C}, timeout=30)

    with ThreadPoolExecutor(max_workers=100) as pool:
        replies = list(pool.map(make, range(100)))
    assert [r.status for r in replies] == [201] * 100, [r for r in replies if r.status != 201]
    routes = [r.json() for r in replies]
    assert sorted(r["id"] for r in routes) == list(range(1, 101))
    ports = {r["port"] for r in routes}
    assert len(ports) == 100
    assert c.call("GET", "/healthz").json()["routes"] == 100
    stored = {(r["id"], r["port"]) for r in c.call("GET", "/apps/web/routes").json()}
    assert stored == {(r["id"], r["port"]) for r in routes}
    assert all(fetch(C, port) == b"" for port in ports)
