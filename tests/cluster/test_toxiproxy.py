"""toxiproxy's API (``--toxiproxy-api``) on a node of a cluster, for a proxy another node
serves (docs/toxiproxy.md, "Several nodes"). Its clients take any 2xx as done, so a write
the serving node has not applied within ``--provision-timeout`` (paused here) is not a 202,
as on restcp's API, but a 503 that says the change is stored and will be applied there
without another request; once that node runs again it applies it, and a write then
answers once it is applied, as ever."""

from __future__ import annotations

import signal
import socket
import time
from collections.abc import Iterator

import pytest

from tests.cluster.conftest import StartNode, poll, ready
from tests.e2e.peers import Backend, echo
from tests.helpers import Node, Response, http

A, C = "127.0.0.2", "127.0.0.3"


@pytest.fixture
def backend() -> Iterator[Backend]:
    with Backend(echo) as server:
        yield server


@pytest.fixture
def second() -> Iterator[Backend]:
    with Backend(echo) as server:
        yield server


def toxiproxy_base(node: Node) -> str:
    line = node.wait_for_line(" toxiproxy api=")
    return line.split(" toxiproxy api=")[1].split()[0].rstrip("/")


def echo_time(port: int, message: bytes = b"ping") -> float | None:
    """Seconds a new connection to C's ``port`` takes to echo ``message``; None if the
    port refuses or the connection ends first."""
    try:
        with socket.create_connection((C, port), timeout=5) as conn:
            began = time.monotonic()
            conn.sendall(message)
            got = b""
            while len(got) < len(message):
                chunk = conn.recv(65536)
                if not chunk:
                    return None
                got += chunk
            return time.monotonic() - began
    except OSError:
        return None


def not_applied(answer: Response, route: int) -> None:
    """toxiproxy's error shape, a 503 that says the change is stored, not yet applied."""
    assert answer.status == 503, answer
    assert answer.json() == {
        "error": (
            f"stored, not applied yet: route {route} of app 'toxiproxy' is changed; the node "
            f"that serves {C} has not applied it yet (it will without another request)"
        ),
        "status": 503,
    }


def test_a_write_the_serving_node_has_not_applied_is_503_stored_then_applied(
    start_node: StartNode, backend: Backend, second: Backend
) -> None:
    a, c = ready(
        start_node(A, "--provision-timeout", "0.5", "--toxiproxy-api", "127.0.0.1:0", ready=False),
        start_node(C, ready=False),
    )
    base = toxiproxy_base(a)
    created = http(
        "POST",
        f"{base}/proxies",
        {"name": "db", "listen": f"{C}:0", "upstream": f"127.0.0.1:{backend.port}"},
    )
    assert created.status == 201, created
    port = int(created.json()["listen"].rsplit(":", 1)[1])
    (route,) = a.call("GET", "/apps/toxiproxy/routes").json()
    assert (echo_time(port) or 1) < 0.25

    c.proc.send_signal(signal.SIGSTOP)
    try:
        latency = {"name": "slow", "type": "latency", "attributes": {"latency": 300}}
        not_applied(http("POST", f"{base}/proxies/db/toxics", latency), route["id"])
        # Stored: both APIs show it, and asking again finds it there.
        (shown,) = http("GET", f"{base}/proxies/db/toxics").json()
        assert (shown["name"], shown["attributes"]) == ("slow", {"latency": 300, "jitter": 0})
        assert [
            t["name"] for t in a.call("GET", f"/apps/toxiproxy/routes/{route['id']}/toxics").json()
        ] == ["slow"]
        again = http("POST", f"{base}/proxies/db/toxics", latency)
        assert again.json() == {"error": "toxic already exists", "status": 409}, again
    finally:
        c.proc.send_signal(signal.SIGCONT)
    # C applies it once it runs, without another request.
    poll(lambda: (echo_time(port) or 0) >= 0.3, "C applies the latency")

    # Running again: a write answers once applied.
    removed = http("DELETE", f"{base}/proxies/db/toxics/slow")
    assert removed.status == 204, removed
    assert (echo_time(port) or 1) < 0.25

    # A proxy's own change too (several writes: each stored), then its toxic's.
    c.proc.send_signal(signal.SIGSTOP)
    try:
        other = f"127.0.0.1:{second.port}"
        change = {"enabled": False, "upstream": other}
        not_applied(http("POST", f"{base}/proxies/db", change), route["id"])
        shown = http("GET", f"{base}/proxies/db").json()
        assert (shown["enabled"], shown["upstream"]) == (False, other)
        cut = {"name": "cut", "type": "limit_data", "attributes": {"bytes": 1}}
        not_applied(http("POST", f"{base}/proxies/db/toxics", cut), route["id"])
        not_applied(
            http("POST", f"{base}/proxies/db/toxics/cut", {"attributes": {"bytes": 2}}),
            route["id"],
        )
        assert http("GET", f"{base}/proxies/db/toxics/cut").json()["attributes"] == {"bytes": 2}
        not_applied(http("POST", f"{base}/reset"), route["id"])
        assert http("GET", f"{base}/proxies/db").json()["enabled"] is True
        assert http("GET", f"{base}/proxies/db/toxics").json() == []
    finally:
        c.proc.send_signal(signal.SIGCONT)

    # The last state stored is what C ends up serving: enabled, no toxic, the new upstream.
    def served_by_second() -> bool:
        accepted = second.accepted
        return echo_time(port, b"0123456789") is not None and second.accepted > accepted

    poll(served_by_second, "C serves the reset proxy, relaying to its new upstream")
    assert "Traceback" not in "\n".join(a.lines + c.lines)
