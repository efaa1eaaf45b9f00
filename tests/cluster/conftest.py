"""Several real ``restcp serve`` processes on one real redis-server.

Each node serves its own loopback alias (127.0.0.2, 127.0.0.3, ...: Linux routes all of
127/8 to lo, no setup needed), so "the node that serves this IP" is a real distinction: only
that node can bind the IP's ports and relay through them. Nothing here sleeps to wait for
state: nodes are ready when they log it, and state changes are polled with a deadline.
"""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from tests.e2e.peers import Backend, sender
from tests.helpers import Node, NodeStarter, free_port_range
from tests.redis_server import PinnedRedisServer, RedisServer

PREFIX = "c1:"
StartNode = Callable[..., Node]


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[PinnedRedisServer]:
    """A server per test: a test may kill it, and no state leaks between tests."""
    with PinnedRedisServer(tmp_path / "redis") as server:
        yield server


@pytest.fixture
def raw_redis(redis_server: RedisServer) -> Iterator[redis.Redis]:
    with redis.Redis(redis_server.host, redis_server.port, decode_responses=True) as client:
        yield client


@pytest.fixture
def start_node(redis_server: RedisServer, tmp_path: Path) -> Iterator[StartNode]:
    """``start_node(ip, *extra)``: a node serving ``ip`` on the test's Redis, ready; every
    node started is stopped (or reaped, if the test killed it) at teardown. Each node has
    a snapshot file of its own in the test's directory, unless ``snapshot`` names one (a
    node restarted in a test passes the path of the one it replaces), and a node name of
    its own (they all run on one host), unless ``name`` gives one (a node restarted as
    itself passes the name it had)."""
    nodes = NodeStarter()

    def start(
        ip: str,
        *extra: str,
        ready: bool = True,
        ports: int = 20,
        snapshot: Path | None = None,
        name: str | None = None,
        **kw: Any,
    ) -> Node:
        lo, hi = free_port_range(ports)
        snapshot = snapshot or tmp_path / f"snapshot-{len(nodes.started)}.db"
        return nodes(
            "--api", "127.0.0.1:0",
            "--store", redis_server.url(prefix=PREFIX),
            "--frontend-ip", ip,
            "--node-name", name or f"node{len(nodes.started)}",
            "--port-range", f"{lo}-{hi}",
            "--snapshot", str(snapshot),
            # Long unless a test says otherwise: a change seen at once came by pub/sub.
            "--resync-interval", "30",
            "--log-level", "debug",
            *extra,
            ready=ready,
            **kw,
        )  # fmt: skip

    yield start
    nodes.stop_all()


@pytest.fixture
def banner() -> Iterator[Callable[[bytes], Backend]]:
    """``banner(b"one")``: a backend on 127.0.0.1 that sends its name to every client and
    closes, so a client can tell which backend a route used."""
    backends: list[Backend] = []

    def make(name: bytes) -> Backend:
        backend = Backend(sender(name))
        backends.append(backend)
        return backend

    yield make
    for backend in backends:
        backend.close()


def ready(*nodes: Node) -> tuple[Node, ...]:
    """Wait for nodes started with ``ready=False``: they start up in parallel meanwhile."""
    for node in nodes:
        node.wait_ready()
    return nodes


def fetch(ip: str, port: int, timeout: float = 2.0) -> bytes | None:
    """What a client connecting to ``ip:port`` receives before EOF; None if refused."""
    try:
        sock = socket.create_connection((ip, port), timeout=timeout)
    except OSError:
        return None
    with sock:
        chunks = bytearray()
        with contextlib.suppress(OSError):
            while data := sock.recv(65536):
                chunks += data
        return bytes(chunks)


def poll(check: Callable[[], bool], what: str, deadline: float = 10.0) -> float:
    """Poll ``check`` until it holds; the seconds it took. Fails after ``deadline``."""
    start = time.monotonic()
    while not check():
        if time.monotonic() - start > deadline:
            raise AssertionError(f"{what}: not within {deadline}s")
        time.sleep(0.005)
    return time.monotonic() - start


def count_lines(node: Node, needle: str) -> int:
    return sum(needle in line for line in list(node.lines))


def wait_lines(node: Node, needle: str, count: int, deadline: float = 10.0) -> None:
    """Until ``node`` has logged ``count`` lines containing ``needle``."""
    poll(lambda: count_lines(node, needle) >= count, f"{count} x {needle!r}", deadline)


def create(node: Node, app: str, expect: int = 201, **body: Any) -> dict[str, Any]:
    response = node.call("PUT", f"/apps/{app}/routes", body or None)
    assert response.status == expect, response
    route: dict[str, Any] = response.json()
    return route


def attach(node: Node, app: str, route: int, port: int) -> int:
    body = {"ip": "127.0.0.1", "port": port}
    response = node.call("PUT", f"/apps/{app}/routes/{route}/backends", body)
    assert response.status == 201, response
    backend_id: int = response.json()["id"]
    return backend_id


def replace(node: Node, app: str, route: int, backend: int, port: int) -> None:
    body = {"ip": "127.0.0.1", "port": port}
    response = node.call("PUT", f"/apps/{app}/routes/{route}/backends/{backend}", body)
    assert response.status == 200, response
