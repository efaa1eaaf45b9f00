"""Concurrent API writes: all succeed, with distinct ids and ports, and never a "database is
locked" (the node's resync runs meanwhile, every 50 ms, to collide with the creates)."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import StartNode, add_backend, assert_clean_log, create_route, serve_args
from tests.e2e.peers import connect
from tests.helpers import Response, free_port_range

THREADS = 50
APPS = ("a", "b", "c")


# asyncio's create_server yields to the loop while a create starts serving its route: the
# window a resync once slipped into (uvloop's does not yield, so it never showed there).
@pytest.mark.parametrize("loop", ["auto", "asyncio"])
def test_fifty_concurrent_writers(tmp_path: Path, start_node: StartNode, loop: str) -> None:
    lo, hi = free_port_range(THREADS + 10)
    args = serve_args(tmp_path / "restcp.db", lo, hi, "--resync-interval", "0.05", "--loop", loop)
    node = start_node(*args)
    create_route(node, "shared")
    start = threading.Barrier(THREADS)

    def write(i: int) -> tuple[str, Response]:
        start.wait()
        if i % 2:
            return "route", node.call("PUT", f"/apps/{APPS[i % 3]}/routes")
        return "backend", node.call(
            "POST", "/apps/shared/routes/1/backends", {"ip": "127.0.0.1", "port": 1000 + i}
        )

    with ThreadPoolExecutor(THREADS) as pool:
        results = list(pool.map(write, range(THREADS)))

    for _, response in results:
        assert response.status == 201, response
    routes = [r.json() for kind, r in results if kind == "route"]
    backends = [r.json()["id"] for kind, r in results if kind == "backend"]
    assert sorted(backends) == list(range(1, THREADS // 2 + 1))
    for app in APPS:
        ids = sorted(r["id"] for r in routes if r["app"] == app)
        assert ids == list(range(1, len(ids) + 1)), (app, ids)
    ports = [r["port"] for r in routes]
    assert len(set(ports)) == len(ports)
    assert set(ports) == set(range(lo + 1, lo + 1 + len(ports)))
    for port in ports:
        connect(port).close()

    listing: dict[str, Any] = {
        app: node.call("GET", f"/apps/{app}/routes").json() for app in (*APPS, "shared")
    }
    assert sorted(r["port"] for app in APPS for r in listing[app]) == sorted(ports)
    assert sorted(b["port"] for b in listing["shared"][0]["backends"]) == [
        1000 + i for i in range(0, THREADS, 2)
    ]
    assert add_backend(node, "shared", 1, 9) == THREADS // 2 + 1
    assert node.stop() == 0
    log = "\n".join(node.lines)
    assert "database is locked" not in log
    assert "cannot bind" not in log, "a resync raced a create for the port it was binding"
    assert_clean_log(node)
