"""Connection limits under a burst of concurrent clients: a route's max_connections, a
backend's (its overflow goes to the other backends), and the node's --max-connections."""

from __future__ import annotations

import contextlib
import errno
import selectors
import socket
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.e2e.conftest import StartNode, create_route, serve_args, wait_until
from tests.e2e.peers import (
    Backend,
    Client,
    Tagged,
    attach,
    backend_of,
    patch_route,
    served_by,
)
from tests.helpers import Node, free_port_range

AT_ONCE = 1.0


@dataclass
class Burst:
    """``n`` clients connected at the same moment, each sending one line. A client is
    *served* when a backend answers it (and is then held open), *closed* when the proxy
    ends it first."""

    served: list[socket.socket] = field(default_factory=list)
    by: Counter[str] = field(default_factory=Counter)
    closed: int = 0
    # Seconds from the start of the burst to the last refusal.
    last_closed_after: float = 0.0

    def release(self) -> None:
        for sock in self.served:
            sock.close()
        self.served.clear()


def burst(port: int, n: int, deadline: float = 10.0) -> Burst:
    result = Burst()
    sel = selectors.DefaultSelector()
    replies: dict[socket.socket, bytes] = {}
    started = time.monotonic()
    for _ in range(n):
        sock = socket.socket()
        sock.setblocking(False)
        err = sock.connect_ex(("127.0.0.1", port))
        assert err in (0, errno.EINPROGRESS), errno.errorcode[err]
        sel.register(sock, selectors.EVENT_WRITE)
    try:
        end = started + deadline
        while sel.get_map() and time.monotonic() < end:
            for key, events in sel.select(timeout=0.1):
                sock = key.fileobj
                assert isinstance(sock, socket.socket)
                if events & selectors.EVENT_WRITE:
                    try:
                        sock.send(b"hi\n")
                    except OSError:  # reset before it could even send
                        sel.unregister(sock)
                        sock.close()
                        result.closed += 1
                        result.last_closed_after = time.monotonic() - started
                        continue
                    replies[sock] = b""
                    sel.modify(sock, selectors.EVENT_READ)
                    continue
                try:
                    data = sock.recv(64)
                except ConnectionResetError:
                    data = b""
                if not data:
                    sel.unregister(sock)
                    sock.close()
                    result.closed += 1
                    result.last_closed_after = time.monotonic() - started
                    continue
                replies[sock] += data
                if replies[sock].endswith(b"\n"):
                    name, _, echoed = replies[sock].partition(b"|")
                    assert echoed == b"hi\n", replies[sock]
                    sel.unregister(sock)
                    result.served.append(sock)
                    result.by[name.decode()] += 1
        assert not sel.get_map(), f"{len(sel.get_map())} clients neither served nor closed"
    except BaseException:
        result.release()
        raise
    finally:
        for key in list(sel.get_map().values()):
            with contextlib.suppress(OSError):
                key.fileobj.close()  # type: ignore[union-attr]
        sel.close()
    return result


def refused_metric(node: Node, app: str, reason: str) -> float:
    text = node.call("GET", "/metrics").body.decode()
    for line in text.splitlines():
        if line.startswith("restcp_refused_connections_total{") and (
            f'app="{app}"' in line and f'reason="{reason}"' in line
        ):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_route_max_connections_under_a_burst(node: Node) -> None:
    limit = 50
    port = create_route(node, "lim", max_connections=limit)["port"]
    with Backend(Tagged("x")) as backend:
        attach(node, "lim", 1, backend.port)
        result = burst(port, 200)
        try:
            print(
                f"route limit {limit}: served {len(result.served)}, closed {result.closed}, "
                f"last refusal after {result.last_closed_after:.3f}s"
            )
            assert len(result.served) == limit
            assert result.closed == 200 - limit
            assert result.last_closed_after < AT_ONCE
            assert backend.accepted == limit
            assert backend_of(node, "lim", 1, 1)["active_connections"] == limit
            assert refused_metric(node, "lim", "route_limit") == 200 - limit
            # Lowered live below what is open: nobody is cut, nobody new gets in.
            patch_route(node, "lim", 1, max_connections=10)
            assert served_by(port) is None
            for sock in result.served:
                sock.setblocking(True)
                sock.settimeout(5)
                sock.sendall(b"again\n")
                assert sock.recv(64) == b"x|again\n"
            patch_route(node, "lim", 1, max_connections=None)
            assert served_by(port) == "x"
        finally:
            result.release()
        wait_until(lambda: backend_of(node, "lim", 1, 1)["active_connections"] == 0, "slots freed")
        assert served_by(port) == "x"


def test_backend_max_connections_spills_over(node: Node) -> None:
    port = create_route(node, "spill", balance="round_robin")["port"]
    with Backend(Tagged("a")) as a, Backend(Tagged("b")) as b:
        # Weight 3 would give a three clients in four: its limit must cut that to 5.
        attach(node, "spill", 1, a.port, weight=3, max_connections=5)
        attach(node, "spill", 1, b.port)

        held = [Client(port) for _ in range(20)]
        try:
            assert Counter(c.ask("hi") for c in held) == {"a": 5, "b": 15}
            assert backend_of(node, "spill", 1, 1)["active_connections"] == 5
            # One slot freed on a: the next client may take it again.
            held[0].close()
            wait_until(
                lambda: backend_of(node, "spill", 1, 1)["active_connections"] == 4, "slot freed"
            )
        finally:
            for c in held:
                c.close()
        wait_until(lambda: backend_of(node, "spill", 1, 2)["active_connections"] == 0, "all closed")

        # Concurrent clients: picks made while earlier connects are still in flight must
        # not overshoot the limit either.
        result = burst(port, 40)
        try:
            print(f"backend limit 5 in a burst of 40: {dict(result.by)}, closed {result.closed}")
            assert result.closed == 0
            assert result.by == {"a": 5, "b": 35}
        finally:
            result.release()


@pytest.mark.parametrize("engine", ["asyncio", "native"])
def test_node_and_app_caps(start_node: StartNode, tmp_path: Path, engine: str) -> None:
    lo, hi = free_port_range()
    node = start_node(
        *serve_args(tmp_path / "restcp.db", lo, hi, "--engine", engine),
        "--max-connections", "20", "--max-connections-per-app", "8",
    )  # fmt: skip
    ports = {app: create_route(node, app)["port"] for app in ("a", "b", "c", "d")}
    bursts: list[Burst] = []
    with Backend(Tagged("x")) as backend:
        try:
            for app in ports:
                attach(node, app, 1, backend.port)
            if engine == "native":  # every route, and so every cap, on the engine
                wait_until(
                    lambda: sum(
                        "listening app=" in line and "engine=native" in line for line in node.lines
                    ) == len(ports),
                    "the routes on the engine",
                )  # fmt: skip
            # Two apps fill their own caps (8 each); the third meets the node's (20 in all).
            for app, served in (("a", 8), ("b", 8), ("c", 4)):
                bursts.append(burst(ports[app], 30))
                got = bursts[-1]
                print(f"app {app}: served {len(got.served)}, closed {got.closed}")
                assert len(got.served) == served, app
                assert got.closed == 30 - served
                assert got.last_closed_after < AT_ONCE
            assert refused_metric(node, "a", "app_limit") == 22
            assert refused_metric(node, "c", "node_limit") == 26
            assert served_by(ports["d"]) is None  # the node is full for every app
            # One of a's connections released: its next client fits again.
            bursts[0].served.pop().close()
            wait_until(lambda: served_by(ports["a"]) == "x", "a has room again")
        finally:
            for got in bursts:
                got.release()
        wait_until(lambda: served_by(ports["d"]) == "x", "room again")
