"""/metrics checked to the unit: known traffic in, exact counters out.

Each test drives a real node with traffic whose every byte, connection and refusal is known,
and reads the exposition back with prometheus_client's own parser (what a Prometheus server
would see), so a counter that is off by one, counts a byte twice or forgets an open
connection's bytes fails here. Also the helpers the other test_ops_* files share.
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from restcp.metrics import BackendSample, Metrics, RouteSample, generate_latest
from tests.e2e.conftest import StartNode, create_route, serve_args, wait_until
from tests.e2e.peers import (
    Backend,
    attach,
    closed_by_peer,
    connect,
    echo,
    recv_all,
    recv_exactly,
    refusing_port,
)
from tests.helpers import Node, free_port_range

# -- shared by the test_ops_* files ------------------------------------------------------


class Scrape:
    """One GET /metrics, parsed."""

    def __init__(self, node: Node) -> None:
        response = node.call("GET", "/metrics")
        assert response.status == 200, response
        assert response.headers["Content-Type"].startswith("text/plain"), response.headers
        self.text = response.body.decode()
        self.families = list(text_string_to_metric_families(self.text))
        self.samples: list[Sample] = [s for f in self.families for s in f.samples]

    def value(self, name: str, **labels: str | int) -> float | None:
        """The sample named ``name`` with exactly these labels; None when there is none."""
        wanted = {key: str(value) for key, value in labels.items()}
        found = [s.value for s in self.samples if s.name == name and s.labels == wanted]
        assert len(found) <= 1, (name, wanted, found)
        return found[0] if found else None

    def series(self, name: str) -> list[Sample]:
        return [s for s in self.samples if s.name == name]

    def health(self, app: str, route: int, backend: int) -> dict[str, float]:
        """The restcp_backend_health states of one backend, by state."""
        return {
            s.labels["state"]: s.value
            for s in self.series("restcp_backend_health")
            if s.labels.get("app") == app
            and s.labels.get("route") == str(route)
            and s.labels.get("backend") == str(backend)
        }


def settle(problems: Callable[[], list[Any]], what: str, deadline: float = 10.0) -> None:
    """Poll until ``problems()`` is empty, for a bounded time; fail showing the last ones."""
    end = time.monotonic() + deadline
    while found := problems():
        if time.monotonic() > end:
            raise AssertionError(f"{what}: still {found} after {deadline}s")
        time.sleep(0.02)


def metric(node: Node, name: str, **labels: str | int) -> float | None:
    return Scrape(node).value(name, **labels)


def health_one_hot(node: Node, app: str, route: int, backend: int, state: str) -> bool:
    """Whether the backend's health gauge is 1 for ``state`` and 0 for the two others."""
    states = Scrape(node).health(app, route, backend)
    return states == {s: float(s == state) for s in ("up", "down", "unknown")}


def start_json_node(start_node: StartNode, *args: str) -> Node:
    """A node with --log-format json: its ready line is JSON, so Node.wait_ready (which
    looks for " ready api=") does not see it."""
    node = start_node(*args, "--log-format", "json", ready=False)
    line = json.loads(node.wait_for_line('"message": "ready api='))
    node.api = line["message"].split("ready api=")[1].split()[0].rstrip("/")
    node.api_port = int(node.api.rsplit(":", 1)[1])
    return node


def doubler(conn: socket.socket) -> None:
    """Answer every chunk with itself twice: out is exactly twice in, so the two byte
    counters cannot be mixed up without a test seeing it."""
    while data := conn.recv(65536):
        conn.sendall(data + data)


class Counting:
    """A handler that counts the connections it saw, then echoes."""

    def __init__(self) -> None:
        self.count = 0
        self._lock = threading.Lock()

    def __call__(self, conn: socket.socket) -> None:
        with self._lock:
            self.count += 1
        echo(conn)


class Acceptor:
    """Accepts on ``host:port`` (0: any), counts each connection and closes it: what a
    TCP-connect health probe needs, and a way to see whether anything came at all."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self.sock = socket.create_server((host, port), family=_family(host))
        self.port: int = self.sock.getsockname()[1]
        self._count = 0
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    @property
    def count(self) -> int:
        with self._lock:
            return self._count

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:  # close() shut the socket down
                return
            with self._lock:
                self._count += 1
            conn.close()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()
        self._thread.join(timeout=5)

    def __enter__(self) -> Acceptor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def turned_away(port: int, data: bytes = b"") -> bool:
    """Whether the proxy ends this client without relaying a byte back. The end may be a
    FIN or a reset, and a reset may surface at any step: connect, send or receive."""
    try:
        with connect(port) as sock:
            if data:
                sock.sendall(data)
            return closed_by_peer(sock)
    except (ConnectionResetError, BrokenPipeError):
        return True


def exchange(port: int, payload: bytes) -> tuple[int, bytes]:
    """Send ``payload`` through ``port``, half-close, read to EOF: (client port, reply)."""
    with connect(port) as sock:
        client_port = sock.getsockname()[1]
        sock.sendall(payload)
        sock.shutdown(socket.SHUT_WR)
        return client_port, recv_all(sock)


# -- the tests ---------------------------------------------------------------------------

SIZES = (1, 10, 1000, 65536, 300_000)
HELD_SIZE = 777


@pytest.mark.parametrize("engine", ["asyncio", "native"])
def test_counters_match_known_traffic_exactly(
    start_node: StartNode, tmp_path: Path, engine: str
) -> None:
    """On both data planes (on the engine the third failed connect takes the backend out
    of its next pick, as on asyncio, without waiting for the records to reach Python)."""
    lo, hi = free_port_range()
    node = start_node(*serve_args(tmp_path / "m.db", lo, hi, "--engine", engine))
    live = create_route(node, "m")["port"]  # route 1
    dead = create_route(node, "m", passive_fall=3, passive_cooldown=60)["port"]  # route 2
    limited = create_route(node, "m", max_connections=2)["port"]  # route 3
    empty = create_route(node, "m")["port"]  # route 4: no backend at all
    client_ports: list[int] = []
    held: list[socket.socket] = []
    with Backend(doubler) as doubling, Backend(echo) as echoing, refusing_port() as nowhere:
        try:
            attach(node, "m", 1, doubling.port)
            attach(node, "m", 2, nowhere)
            attach(node, "m", 3, echoing.port)

            for size in SIZES:
                client_port, reply = exchange(
                    live, bytes(range(256)) * (size // 256) + b"x" * (size % 256)
                )
                client_ports.append(client_port)
                assert len(reply) == 2 * size
            # One connection stays open: its bytes must show while it is open.
            sock = connect(live)
            held.append(sock)
            client_ports.append(sock.getsockname()[1])
            sock.sendall(b"h" * HELD_SIZE)
            assert recv_exactly(sock, 2 * HELD_SIZE) == b"h" * 2 * HELD_SIZE

            # Three connects fail (passive_fall 3 then marks the backend down); the fourth
            # client finds no usable backend and is closed without a connect attempt.
            for _ in range(4):
                assert turned_away(dead, b"?")

            for _ in range(2):
                sock = connect(limited)
                held.append(sock)
                client_ports.append(sock.getsockname()[1])
                sock.sendall(b"hi")
                assert recv_exactly(sock, 2) == b"hi"
            for _ in range(3):
                assert turned_away(limited)
            for _ in range(2):
                assert turned_away(empty)

            total_in = sum(SIZES) + HELD_SIZE
            b1, up, down = {"backend": 1}, {"direction": "in"}, {"direction": "out"}
            # (metric without "restcp_", route, labels besides app and route, value)
            expected: list[tuple[str, int, dict[str, str | int], float]] = [
                ("connections_total", 1, b1, len(SIZES) + 1),
                ("connections_active", 1, b1, 1),
                ("bytes_total", 1, b1 | up, total_in),
                ("bytes_total", 1, b1 | down, 2 * total_in),
                ("connect_failures_total", 1, b1, 0),
                ("connections_total", 2, b1, 0),
                ("connections_active", 2, b1, 0),
                ("connect_failures_total", 2, b1, 3),
                ("refused_connections_total", 2, {"reason": "no_backend"}, 4),
                ("connections_total", 3, b1, 2),
                ("connections_active", 3, b1, 2),
                ("bytes_total", 3, b1 | up, 4),  # "hi" from each of two clients
                ("bytes_total", 3, b1 | down, 4),
                ("refused_connections_total", 3, {"reason": "route_limit"}, 3),
                ("refused_connections_total", 4, {"reason": "no_backend"}, 2),
                # The most open at once: clients turned away at the limit never count.
                ("connections_max", 3, b1, 2),
                ("route_connections_max", 3, {}, 2),
                # Admitted one at a time, then closed for want of a backend.
                ("route_connections_max", 4, {}, 1),
            ]

            def mismatches() -> list[tuple[str, int, dict[str, str | int], float, float | None]]:
                scrape = Scrape(node)
                rows = []
                for name, route, labels, value in expected:
                    seen = scrape.value(f"restcp_{name}", app="m", route=route, **labels)
                    if seen != value:
                        rows.append((name, route, labels, value, seen))
                return rows

            # A relay reports once both of its sockets are gone, a moment after the client
            # saw its end: poll for that, bounded.
            settle(mismatches, "(metric, route, labels, expected, seen)")
            scrape = Scrape(node)
            assert health_one_hot(node, "m", 2, 1, "down")
            assert health_one_hot(node, "m", 1, 1, "unknown")  # no checks, no failures
            # Only the reasons that happened are series; no app or node limit was hit.
            reasons = {
                (s.labels["route"], s.labels["reason"])
                for s in scrape.series("restcp_refused_connections_total")
            }
            assert reasons == {("2", "no_backend"), ("3", "route_limit"), ("4", "no_backend")}
            # Route 4 has no backend, so no backend series.
            route4 = [s for s in scrape.samples if s.labels.get("route") == "4"]
            assert {s.name for s in route4} == {
                "restcp_refused_connections_total",
                "restcp_route_connections_max",
            }
        finally:
            for sock in held:
                sock.close()

        # Closed, the held connection's bytes move from "live" to "finished": counted once.
        wait_until(
            lambda: (
                metric(node, "restcp_connections_active", app="m", route=1, backend=1) == 0
                and metric(node, "restcp_connections_active", app="m", route=3, backend=1) == 0
            ),
            "connections_active back to 0",
        )
        scrape = Scrape(node)
        key = {"app": "m", "route": 1, "backend": 1}
        assert scrape.value("restcp_bytes_total", direction="in", **key) == total_in
        assert scrape.value("restcp_bytes_total", direction="out", **key) == 2 * total_in
        assert scrape.value("restcp_connections_total", **key) == len(SIZES) + 1
        assert_no_client_in_labels(scrape, client_ports)


def assert_no_client_in_labels(scrape: Scrape, client_ports: Iterable[int]) -> None:
    ports = {str(p) for p in client_ports}
    allowed = {"app", "route", "backend", "direction", "state", "reason", "le"}
    for sample in scrape.samples:
        if sample.name.startswith("restcp_"):
            assert set(sample.labels) <= allowed, sample
        for value in sample.labels.values():
            assert "127.0.0.1" not in value, sample
            assert value not in ports, sample
    # Not in a label, not anywhere: the exposition names no address at all.
    assert "127.0.0.1" not in scrape.text


SLOW_REPLY = 0.05


def slow_ok(conn: socket.socket) -> None:
    """Answer each probe line after SLOW_REPLY seconds: a latency the histogram must place
    between its 0.025 and 1 s buckets, whatever the clock resolution."""
    while conn.recv(64):
        time.sleep(SLOW_REPLY)
        conn.sendall(b"OK\n")


def test_health_gauge_and_check_latency(node: Node) -> None:
    check = {"interval": 0.1, "timeout": 2, "rise": 1, "fall": 1, "send": "PING\n", "expect": "OK"}
    port = create_route(node, "h", health_check=check)["port"]
    key = {"app": "h", "route": 1, "backend": 1}
    count = "restcp_health_check_duration_seconds_count"
    backend = Backend(slow_ok)
    try:
        attach(node, "h", 1, backend.port)
        wait_until(lambda: health_one_hot(node, "h", 1, 1, "up"), "backend up")
        first = metric(node, count, **key)
        assert first is not None
        assert first >= 1
        wait_until(lambda: (metric(node, count, **key) or 0) >= first + 2, "two more checks")
        scrape = Scrape(node)
        n = scrape.value(count, **key)
        assert n is not None

        def bucket(le: str) -> float | None:
            return scrape.value("restcp_health_check_duration_seconds_bucket", le=le, **key)

        assert bucket("0.025") == 0
        assert bucket("1.0") == n
        assert bucket("+Inf") == n
        total = scrape.value("restcp_health_check_duration_seconds_sum", **key)
        assert total is not None
        assert SLOW_REPLY * n <= total < n
        # Probes are not clients: they appear in no connection counter.
        assert scrape.value("restcp_connections_total", **key) == 0
    finally:
        backend.close()
    wait_until(lambda: health_one_hot(node, "h", 1, 1, "down"), "backend down once it is gone")
    assert turned_away(port)

    # A deleted route leaves no series behind: label sets do not grow with route churn.
    assert node.call("DELETE", "/apps/h/routes/1").status == 204
    scrape = Scrape(node)
    assert not [s for s in scrape.samples if s.labels.get("app") == "h"]


def test_process_metrics_are_exposed(node: Node) -> None:
    scrape = Scrape(node)
    for name in (
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
        "process_open_fds",
        "process_max_fds",
        "process_start_time_seconds",
    ):
        value = scrape.value(name)
        assert value is not None, name
        assert value >= 0, name
    assert any(s.name == "python_info" for s in scrape.samples)
    # GC: the docs promise it next to CPU, memory and descriptors.
    assert scrape.series("python_gc_collections_total"), [f.name for f in scrape.families]


def test_each_node_counts_only_its_own_traffic(start_node: StartNode, tmp_path: Path) -> None:
    nodes = []
    for name in ("a", "b"):
        lo, hi = free_port_range()
        nodes.append(start_node(*serve_args(tmp_path / f"{name}.db", lo, hi)))
    a, b = nodes
    with Backend(echo) as backend:
        ports = []
        for node in nodes:  # the same app, route and backend ids on both
            ports.append(create_route(node, "same")["port"])
            attach(node, "same", 1, backend.port)
        for _ in range(3):
            assert exchange(ports[0], b"abc")[1] == b"abc"
        assert exchange(ports[1], b"z")[1] == b"z"
        key = {"app": "same", "route": 1, "backend": 1}
        wait_until(
            lambda: (
                metric(a, "restcp_bytes_total", direction="in", **key) == 9
                and metric(b, "restcp_bytes_total", direction="in", **key) == 1
            ),
            "bytes of each node",
        )
        assert metric(a, "restcp_connections_total", **key) == 3
        assert metric(b, "restcp_connections_total", **key) == 1


class _Source:
    def __init__(self, connections: int) -> None:
        self.connections = connections

    def samples(self) -> Iterator[RouteSample]:
        backend = BackendSample("x", 1, 1, self.connections, 0, 0, 0, 0, "up")
        yield RouteSample("x", 1, {}, (backend,))


def test_two_registries_in_one_process_are_independent() -> None:
    # A module-level registry would refuse the second histogram ("Duplicated timeseries")
    # or mix the two nodes' series; two nodes in one process (tests, embedding) need neither.
    first, second = Metrics(_Source(5)), Metrics(_Source(7))
    first.observe_check("x", 1, 1, 0.01)
    one, two = generate_latest(first.registry).decode(), generate_latest(second.registry).decode()
    assert 'restcp_connections_total{app="x",backend="1",route="1"} 5.0' in one
    assert 'restcp_connections_total{app="x",backend="1",route="1"} 7.0' in two
    assert 'restcp_health_check_duration_seconds_count{app="x",backend="1",route="1"} 1.0' in one
    assert "restcp_health_check_duration_seconds_count{" not in two
    first.forget_route("x", 1)
    assert (
        "restcp_health_check_duration_seconds_count{"
        not in generate_latest(first.registry).decode()
    )
