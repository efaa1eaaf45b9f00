"""``restcp serve --workers 2``: two processes serve every route on one port (SO_REUSEPORT).

Each test runs a real node with one worker beside the main process, logging JSON. The
processes are told apart by the ``worker`` field of their connection events, by the
listening sockets each one holds (read from /proc), and by what /healthz says of the
worker.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import StartNode, assert_clean_log, serve_args, wait_until
from tests.e2e.peers import (
    TAGGED_CHECK,
    Backend,
    Client,
    Tagged,
    assert_refused,
    attach,
    echo,
    health_is,
    held_port,
    served_by,
)
from tests.e2e.test_ops_metrics import start_json_node
from tests.helpers import Node, free_port_range, tcp_states

pytestmark = pytest.mark.slow

# New clients per check: with two sockets on a port and Linux hashing each connection to
# one of them, the chance that N clients all miss one process is 2**-N.
CLIENTS = 40


def start_workers_node(start_node: StartNode, tmp_path: Path) -> Node:
    lo, hi = free_port_range(20)
    return start_json_node(start_node, *serve_args(tmp_path / "w.db", lo, hi, "--workers", "2"))


@pytest.fixture
def node(start_node: StartNode, tmp_path: Path) -> Node:
    return start_workers_node(start_node, tmp_path)


@pytest.fixture
def tagged() -> Iterator[tuple[Backend, Backend]]:
    with Backend(Tagged("a")) as a, Backend(Tagged("b")) as b:
        yield a, b


def worker_status(node: Node) -> dict[str, Any]:
    health = node.call("GET", "/healthz")
    assert health.status == 200, health
    workers = health.json()["workers"]
    assert len(workers) == 1, workers
    status: dict[str, Any] = workers[0]
    return status


def worker_pid(node: Node) -> int:
    status = worker_status(node)
    assert status["serving"], status
    pid: int = status["pid"]
    return pid


def listening_ports(pid: int) -> set[int]:
    """Ports of the TCP sockets ``pid`` holds in LISTEN (from /proc, like ``ss -ltnp``)."""
    inodes = set()
    with contextlib.suppress(FileNotFoundError):
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
                if target.startswith("socket:["):
                    inodes.add(target[8:-1])
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for row in Path(table).read_text().splitlines()[1:]:
            cols = row.split()
            if cols[3] == "0A" and cols[9] in inodes:
                ports.add(int(cols[1].rsplit(":", 1)[1], 16))
    return ports


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def create_route(node: Node, app: str = "w", **body: object) -> dict[str, object]:
    response = node.call("PUT", f"/apps/{app}/routes", body or None)
    assert response.status == 201, response
    route: dict[str, object] = response.json()
    return route


def records(node: Node) -> list[dict[str, Any]]:
    """Every log record so far (the node logs JSON: one object a line)."""
    return [json.loads(line) for line in list(node.lines)]


def served(node: Node, worker: int) -> int:
    """Connections process ``worker`` relayed, by its connection events."""
    return sum(
        1 for r in records(node) if r.get("event") == "connection" and r.get("worker") == worker
    )


def test_every_process_listens_and_serves(node: Node, tagged: tuple[Backend, Backend]) -> None:
    route = create_route(node)
    port = int(str(route["port"]))
    attach(node, "w", int(str(route["id"])), tagged[0].port)
    worker = worker_pid(node)
    assert worker != node.proc.pid
    assert port in listening_ports(node.proc.pid)
    assert port in listening_ports(worker)
    for _ in range(CLIENTS):
        assert served_by(port) == "a"
    # Connection events are written in batches, at most 50 ms late.
    wait_until(lambda: served(node, 0) + served(node, 1) == CLIENTS, "connection events")
    assert served(node, 0) > 0, "the main process served nobody"
    assert served(node, 1) > 0, "the worker served nobody"
    # /metrics sums both processes once the worker's counters arrived (every second).
    wait_until(
        lambda: (
            f'restcp_connections_total{{app="w",backend="1",route="1"}} {CLIENTS}.0'
            in node.call("GET", "/metrics").body.decode()
        ),
        "metrics summed over the processes",
    )
    assert_clean_log(node)


def test_a_client_right_after_the_201_is_relayed(
    node: Node, tagged: tuple[Backend, Backend]
) -> None:
    for _ in range(5):
        route = create_route(node)
        port, route_id = int(str(route["port"])), int(str(route["id"]))
        # Right after the route's 201: both processes listen (no backend yet: closed).
        for _ in range(5):
            assert served_by(port) is None
        attach(node, "w", route_id, tagged[0].port)
        # Right after the backend's 201: every process has it.
        for _ in range(CLIENTS // 2):
            assert served_by(port) == "a"
    assert_clean_log(node)


def test_the_api_answers_once_every_worker_applied_the_change(
    node: Node, tagged: tuple[Backend, Backend]
) -> None:
    route = create_route(node)
    port, route_id = int(str(route["port"])), int(str(route["id"]))
    worker = worker_pid(node)
    answers: list[int] = []
    os.kill(worker, signal.SIGSTOP)
    try:
        put = threading.Thread(
            target=lambda: answers.append(attach(node, "w", route_id, tagged[0].port))
        )
        put.start()
        # A stopped worker cannot acknowledge: the answer waits for it (up to 2 s).
        put.join(timeout=0.3)
        assert put.is_alive(), "the API answered before the worker applied the change"
        assert not answers
    finally:
        os.kill(worker, signal.SIGCONT)
    put.join(timeout=10)
    assert answers == [1]
    for _ in range(CLIENTS):
        assert served_by(port) == "a"
    assert not any("did not apply a change" in line for line in node.lines)


def test_backend_changes_reach_every_process(node: Node, tagged: tuple[Backend, Backend]) -> None:
    a, b = tagged
    route = create_route(node)
    port, route_id = int(str(route["port"])), int(str(route["id"]))
    backend = attach(node, "w", route_id, a.port)
    path = f"/apps/w/routes/{route_id}/backends/{backend}"
    assert {served_by(port) for _ in range(CLIENTS)} == {"a"}
    # Replace (POST), disable (PATCH), re-enable, delete: each is in force in both
    # processes by the time the API answers.
    replaced = node.call("POST", path, {"ip": "127.0.0.1", "port": b.port})
    assert replaced.status == 200, replaced
    assert {served_by(port) for _ in range(CLIENTS)} == {"b"}
    assert node.call("PATCH", path, {"state": "disabled"}).status == 200
    assert {served_by(port) for _ in range(CLIENTS)} == {None}
    assert node.call("PATCH", path, {"state": "enabled"}).status == 200
    assert {served_by(port) for _ in range(CLIENTS)} == {"b"}
    assert node.call("DELETE", path).status in (200, 204)
    assert {served_by(port) for _ in range(CLIENTS)} == {None}
    assert_clean_log(node)


def test_deleting_a_route_closes_its_port_in_every_process(
    node: Node, tagged: tuple[Backend, Backend]
) -> None:
    route = create_route(node)
    port, route_id = int(str(route["port"])), int(str(route["id"]))
    attach(node, "w", route_id, tagged[0].port)
    worker = worker_pid(node)
    assert port in listening_ports(worker)
    deleted = node.call("DELETE", f"/apps/w/routes/{route_id}")
    assert deleted.status in (200, 204), deleted
    assert port not in listening_ports(node.proc.pid)
    assert port not in listening_ports(worker)
    for _ in range(CLIENTS):
        assert_refused(port)
    assert_clean_log(node)


def test_a_killed_worker_is_restarted(node: Node, tagged: tuple[Backend, Backend]) -> None:
    route = create_route(node)
    port, route_id = int(str(route["port"])), int(str(route["id"]))
    attach(node, "w", route_id, tagged[0].port)
    old = worker_pid(node)
    os.kill(old, signal.SIGKILL)
    node.wait_for_line("worker 1 exited (signal SIGKILL): starting it again")
    wait_until(
        lambda: worker_status(node)["pid"] not in (old, None) and worker_status(node)["serving"],
        "the worker restarted",
    )
    new = worker_pid(node)
    assert not alive(old)
    assert port in listening_ports(new)
    before = served(node, 0) + served(node, 1), served(node, 1)
    for _ in range(CLIENTS):
        assert served_by(port) == "a"
    wait_until(
        lambda: served(node, 0) + served(node, 1) == before[0] + CLIENTS, "connection events"
    )
    assert served(node, 1) > before[1], "the restarted worker served nobody"


def test_sigterm_drains_every_process_and_leaves_none(
    start_node: StartNode, tmp_path: Path, tagged: tuple[Backend, Backend]
) -> None:
    node = start_workers_node(start_node, tmp_path)
    route = create_route(node)
    port, route_id = int(str(route["port"])), int(str(route["id"]))
    attach(node, "w", route_id, tagged[0].port)
    worker = worker_pid(node)
    clients = [Client(port) for _ in range(CLIENTS)]
    try:
        for client in clients:
            assert client.ask("before") == "a"
        # Both processes hold open connections (the relayed client sockets).
        assert "ESTABLISHED" in tcp_states(node.proc.pid, port)
        assert "ESTABLISHED" in tcp_states(worker, port)
        node.proc.send_signal(signal.SIGTERM)
        node.wait_for_line("draining")
        wait_until(lambda: port not in listening_ports(worker), "the worker stops accepting")
        assert_refused(port)
        # Open connections still work in both processes while they drain.
        for client in clients:
            assert client.ask("during") == "a"
    finally:
        for client in clients:
            client.close()
    assert node.proc.wait(timeout=30) == 0
    node.wait_for_line('"logger": "restcp.node", "message": "stopped"')
    stops = [r for r in records(node) if r["message"].startswith("worker 1 stopped")]
    assert [r["message"] for r in stops] == ["worker 1 stopped (status 0)"]
    assert not alive(worker)
    assert_clean_log(node)


def test_a_killed_main_process_takes_its_workers(start_node: StartNode, tmp_path: Path) -> None:
    node = start_workers_node(start_node, tmp_path)
    worker = worker_pid(node)
    node.kill()
    wait_until(lambda: not alive(worker), "the worker dies with the main process")


@pytest.mark.parametrize("reuseport", [False, True], ids=["plain", "so_reuseport"])
def test_a_port_held_by_another_socket_is_409(node: Node, reuseport: bool) -> None:
    # Held by this test's process (same user): with SO_REUSEPORT set on the holder too, a
    # node that set it before binding would join the holder's group instead of failing.
    with socket.socket() as holder:
        holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuseport:
            holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        response = node.call("PUT", "/apps/w/routes", {"port": port})
        assert response.status == 409, response
        assert node.call("GET", "/apps/w/routes").status == 404
    with held_port() as port:
        assert node.call("PUT", "/apps/w/routes", {"port": port}).status == 409
    assert_clean_log(node)


def test_workers_1_is_one_process_without_so_reuseport(
    start_node: StartNode, tmp_path: Path
) -> None:
    lo, hi = free_port_range(20)
    node = start_node(*serve_args(tmp_path / "w.db", lo, hi))
    route = create_route(node)
    port = int(str(route["port"]))
    assert "workers" not in node.call("GET", "/healthz").json()
    # Nobody can join the port: a SO_REUSEPORT bind of the same user fails.
    with socket.socket() as joiner:
        joiner.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        with pytest.raises(OSError, match="Address already in use"):
            joiner.bind(("127.0.0.1", port))
    assert not any(line.endswith(" worker=0") for line in node.lines)


def test_probe_results_reach_every_process(node: Node, tagged: tuple[Backend, Backend]) -> None:
    # Only the main process probes; a worker that did not hear the results would keep
    # sending clients to the backend that fails its checks (never probed: "unknown", usable).
    with Backend(echo) as failing:
        route = create_route(node)
        port, route_id = int(str(route["port"])), int(str(route["id"]))
        check = {**TAGGED_CHECK, "interval": 0.1, "rise": 1, "fall": 1}
        patched = node.call("PATCH", f"/apps/w/routes/{route_id}", {"health_check": check})
        assert patched.status == 200, patched
        attach(node, "w", route_id, tagged[0].port)
        bad = attach(node, "w", route_id, failing.port)
        wait_until(health_is(node, "w", route_id, bad, "down"), "the failing backend is down")
        wait_until(health_is(node, "w", route_id, 1, "up"), "the good backend is up")
        for _ in range(CLIENTS):
            assert served_by(port) == "a"
        # Transitions are logged by the main process only.
        transitions = [r for r in records(node) if r.get("event") == "health"]
        assert transitions
        assert {r["worker"] for r in transitions} == {0}
