"""Part 3: a lease per frontend IP keeps two live nodes from serving one IP; a node started
to replace a dead one takes over, on the same ports, once the dead one's lease runs out;
GET /nodes lists the live nodes from Redis."""

from __future__ import annotations

import signal
import time
from collections.abc import Callable

from tests.cluster.conftest import StartNode, attach, create, fetch, poll, ready, wait_lines
from tests.e2e.peers import Backend

A, C = "127.0.0.2", "127.0.0.3"
TTL = "1"


def test_a_second_node_for_an_ip_stands_by_until_the_first_hands_it_over(
    start_node: StartNode, banner: Callable[[bytes], Backend]
) -> None:
    first = start_node(C, "--lease-ttl", TTL)
    route = create(first, "web")
    attach(first, "web", route["id"], banner(b"one").port)
    second = start_node(C, "--lease-ttl", TTL)
    wait_lines(second, "frontend IP 127.0.0.3 is served by node", 1)

    health = second.call("GET", "/healthz")
    assert health.status == 503, health
    body = health.json()
    first_id = first.call("GET", "/healthz").json()["cluster"]["node"]
    assert body["status"] == "standby"
    assert body["routes"] == 0
    assert body["cluster"]["frontend_ips"][C] == {"lease": "waiting", "holder": first_id}
    assert fetch(C, route["port"]) == b"one"

    nodes = {n["id"]: n for n in second.call("GET", "/nodes").json()}
    second_id = body["cluster"]["node"]
    assert set(nodes) == {first_id, second_id}
    assert [lease["ip"] for lease in nodes[first_id]["leases"]] == [C]
    assert nodes[first_id]["leases"][0]["routes"] == 1
    assert nodes[first_id]["routes_serving"] == 1
    assert nodes[second_id]["leases"] == []
    assert nodes[second_id]["frontend_ips"] == [C]

    # A clean stop releases the lease at once: no waiting for it to run out.
    assert first.stop() == 0
    poll(lambda: second.call("GET", "/healthz").status == 200, "second serves")
    assert fetch(C, route["port"]) == b"one"
    assert [n["id"] for n in second.call("GET", "/nodes").json()] == [second_id]


def test_a_killed_node_is_replaced_once_its_lease_runs_out_with_its_routes_on_their_ports(
    start_node: StartNode, banner: Callable[[bytes], Backend]
) -> None:
    old, a = ready(
        start_node(C, "--lease-ttl", TTL, ready=False),
        start_node(A, "--lease-ttl", TTL, ready=False),
    )
    backend = banner(b"one")
    routes = [create(a, "web", frontend_ip=C) for _ in range(3)]
    for route in routes:
        attach(a, "web", route["id"], backend.port)
    for route in routes:
        poll(lambda: fetch(C, route["port"]) == b"one", "old relays")  # noqa: B023
    old_id = old.call("GET", "/healthz").json()["cluster"]["node"]

    new = start_node(C, "--lease-ttl", TTL)
    wait_lines(new, "frontend IP 127.0.0.3 is served by node", 1)
    old.stop(signal.SIGKILL)
    killed = time.monotonic()
    # The listeners died with the process; the lease did not, and nobody may take the IP
    # until it runs out (at most TTL after the last renewal, renewed every TTL / 3).
    assert fetch(C, routes[0]["port"]) is None
    for route in routes:
        poll(lambda: fetch(C, route["port"]) == b"one", "new relays")  # noqa: B023
    took = time.monotonic() - killed
    assert 1.0 / 3 < took < 1.0 + 2.0, took
    wait_lines(new, "lease of frontend IP 127.0.0.3 acquired", 1)
    assert new.call("GET", "/healthz").json()["status"] == "ok"

    # The dead node leaves GET /nodes once its entry expires (3 TTLs without a heartbeat).
    def listed() -> set[str]:
        return {n["id"] for n in a.call("GET", "/nodes").json()}

    poll(lambda: old_id not in listed(), "the killed node is forgotten")
    assert len(listed()) == 2
