"""Part 3: a lease per frontend IP keeps two live nodes from serving one IP; a node started
to replace a dead one takes over, on the same ports, once the dead one's lease runs out;
GET /nodes lists the live nodes from Redis."""

from __future__ import annotations

import dataclasses
import signal
import socket
import time
from collections.abc import Callable
from pathlib import Path

import redis

from restcp.cluster.identity import NodeId
from tests.cluster.conftest import (
    PREFIX,
    StartNode,
    attach,
    create,
    fetch,
    poll,
    ready,
    wait_lines,
)
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


def test_a_node_killed_and_restarted_under_its_name_answers_creates_for_its_ip_at_once(
    start_node: StartNode, banner: Callable[[bytes], Backend], tmp_path: Path
) -> None:
    # The default --lease-ttl (10 s): a restarted node that waited its predecessor's lease
    # out would not be ready for seconds.
    snapshot = tmp_path / "c.db"
    old, a = ready(
        start_node(C, name="c", snapshot=snapshot, ready=False), start_node(A, ready=False)
    )
    route = create(a, "web", frontend_ip=C)
    attach(a, "web", route["id"], banner(b"one").port)
    poll(lambda: fetch(C, route["port"]) == b"one", "C relays")
    old_id = old.call("GET", "/healthz").json()["cluster"]["node"]

    old.stop(signal.SIGKILL)
    killed = time.monotonic()
    new = start_node(C, name="c", snapshot=snapshot)
    is_ready = time.monotonic()
    created = create(a, "web", frontend_ip=C)
    assert time.monotonic() - is_ready < 1.0
    assert create(new, "web", frontend_ip=C)["port"] != created["port"]
    # A new process starts in about a second; the lease had up to 10 s left.
    assert is_ready - killed < 5.0
    assert fetch(C, route["port"]) == b"one"
    assert fetch(C, created["port"]) == b""  # listening; no backend yet
    wait_lines(new, f"lease of frontend IP {C} taken from node {old_id}", 1)
    new_id = new.call("GET", "/healthz").json()["cluster"]["node"]
    assert new_id != old_id
    assert new_id.startswith("c@")
    assert old_id.startswith("c@")
    # Proved gone, the predecessor leaves GET /nodes at once.
    assert {n["id"] for n in a.call("GET", "/nodes").json()} == {
        new_id,
        a.call("GET", "/healthz").json()["cluster"]["node"],
    }


def test_a_second_live_process_of_one_name_on_one_host_refuses_to_start(
    start_node: StartNode,
) -> None:
    first = start_node(C, name="c")
    twin = start_node(A, name="c", ready=False)
    assert twin.proc.wait(timeout=20) == 1
    twin.stop()
    log = "\n".join(twin.lines)
    pid = first.proc.pid
    assert f"cannot start: node name 'c' is taken: process {pid} on this host runs" in log, log
    assert "--node-name" in log
    assert first.call("GET", "/healthz").status == 200
    assert [n["id"] for n in first.call("GET", "/nodes").json()] == [
        first.call("GET", "/healthz").json()["cluster"]["node"]
    ]


def test_only_a_lease_of_this_name_whose_process_is_gone_from_this_host_is_taken_early(
    start_node: StartNode, raw_redis: redis.Redis
) -> None:
    # Leases as a process of this host (the test's, alive), a dead one (the same pid with
    # another start time: that process is gone), one on another host, one of another name.
    alive = NodeId.this_process("c")
    dead = dataclasses.replace(alive, start=alive.start + 1)
    elsewhere = dataclasses.replace(dead, host=f"{int(alive.host, 16) ^ 1:08x}")
    other_name = dataclasses.replace(dead, name="d")
    ips = {"127.0.0.3": dead, "127.0.0.4": alive, "127.0.0.5": elsewhere, "127.0.0.6": other_name}
    for ip, holder in ips.items():
        raw_redis.set(f"{PREFIX}lease:{ip}", str(holder), px=60_000)
    extra = [arg for ip in list(ips)[1:] for arg in ("--frontend-ip", ip)]
    node = start_node("127.0.0.3", *extra, name="c")
    wait_lines(node, f"lease of frontend IP 127.0.0.3 taken from node {dead}", 1)
    wait_lines(node, "is served by node", 3)
    health = node.call("GET", "/healthz").json()
    assert health["status"] == "standby"
    leases = health["cluster"]["frontend_ips"]
    assert leases["127.0.0.3"]["lease"] == "held"
    for ip in list(ips)[1:]:
        assert leases[ip] == {"lease": "waiting", "holder": str(ips[ip])}


def test_a_port_of_the_ip_still_bound_holds_the_takeover_back_until_it_is_free(
    start_node: StartNode, tmp_path: Path
) -> None:
    snapshot = tmp_path / "c.db"
    old = start_node(C, name="c", snapshot=snapshot)
    port = create(old, "web")["port"]
    old.stop(signal.SIGKILL)
    # Someone else (a worker of the dead node that outlived it, say) still has the port.
    with socket.create_server((C, port)):
        # Started (it logs ready), but standing by for its IP.
        new = start_node(C, name="c", snapshot=snapshot)
        wait_lines(new, f"port {port} cannot be bound yet", 2)
        assert new.call("GET", "/healthz").json()["status"] == "standby"
    took = poll(lambda: new.call("GET", "/healthz").status == 200, "the node serves its IP")
    assert took < 1.0
    assert fetch(C, port) == b""
