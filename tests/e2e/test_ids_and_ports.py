"""The id and port policies, seen through the API: ids count from 1 and are never reused;
ports are handed out in order and a freed one only comes back when the range wraps."""

from __future__ import annotations

from pathlib import Path

from tests.e2e.conftest import (
    StartNode,
    add_backend,
    create_route,
    free_port_outside,
    port_range,
    seed_fields,
    serve_args,
)
from tests.e2e.peers import assert_refused, connect, held_port
from tests.helpers import Node, free_port_range


def test_ids_are_never_reused(node: Node) -> None:
    lo, _ = port_range(node)
    assert create_route(node, "web")["id"] == 1
    assert node.call("DELETE", "/apps/web/routes/1").status == 204
    assert_refused(lo)
    route = create_route(node, "web")
    assert (route["id"], route["port"]) == (2, lo + 1)  # the freed lo is not handed out again
    assert [r["id"] for r in node.call("GET", "/apps/web/routes").json()] == [2]
    # Another app counts from 1 on its own.
    assert create_route(node, "api")["id"] == 1

    assert [add_backend(node, "web", 2, port) for port in (81, 82)] == [1, 2]
    assert node.call("DELETE", "/apps/web/routes/2/backends/2").status == 204
    assert add_backend(node, "web", 2, 83) == 3
    for backend_id in (1, 3):
        assert node.call("DELETE", f"/apps/web/routes/2/backends/{backend_id}").status == 204
    assert add_backend(node, "web", 2, 84) == 4
    assert [seed_fields(b) for b in node.call("GET", "/apps/web/routes/2/backends").json()] == [
        {"ip": "127.0.0.1", "port": 84, "id": 4}
    ]


def test_collections_and_items(node: Node) -> None:
    lo, _ = port_range(node)
    # POST on a collection creates like PUT; PUT on an item replaces like POST.
    created = node.call("POST", "/apps/A-z_0.9/routes")
    assert (created.status, created.json()["id"]) == (201, 1)
    added = node.call("POST", "/apps/A-z_0.9/routes/1/backends", {"ip": "::1", "port": 80})
    assert (added.status, added.json()) == (201, {"id": 1})
    assert added.headers["Location"] == "/apps/A-z_0.9/routes/1/backends/1"
    replaced = node.call("PUT", "/apps/A-z_0.9/routes/1/backends/1", {"ip": "0:0::1", "port": 81})
    assert (replaced.status, seed_fields(replaced.json())) == (
        200,
        {"ip": "::1", "port": 81, "id": 1},
    )
    longest = "x" * 64
    assert node.call("PUT", f"/apps/{longest}/routes").status == 201

    route = node.call("GET", "/apps/A-z_0.9/routes/1")
    assert route.status == 200
    assert route.json() == node.call("GET", "/apps/A-z_0.9/routes").json()[0]
    assert route.json()["url"] == f"tcp://127.0.0.1:{lo}/"
    assert [seed_fields(b) for b in route.json()["backends"]] == [
        {"ip": "::1", "port": 81, "id": 1}
    ]
    backend = node.call("GET", "/apps/A-z_0.9/routes/1/backends/1")
    assert (backend.status, seed_fields(backend.json())) == (
        200,
        {"ip": "::1", "port": 81, "id": 1},
    )
    assert node.call("GET", "/apps").json() == [
        {"app": "A-z_0.9", "routes": 1},
        {"app": longest, "routes": 1},
    ]


def test_port_allocation_wraps_skips_and_runs_out(tmp_path: Path, start_node: StartNode) -> None:
    lo, hi = free_port_range(4)
    asked = free_port_outside(lo, hi)
    node = start_node(*serve_args(tmp_path / "restcp.db", lo, hi))
    with held_port(lo + 1):
        # Another process has lo + 1: it is skipped, not fought over.
        assert [create_route(node, "p")["port"] for _ in range(2)] == [lo, lo + 2]
    # A route that names its port leaves the order of the others alone.
    named = create_route(node, "p", port=asked)
    assert named["url"] == f"tcp://127.0.0.1:{asked}/"
    connect(asked).close()
    assert create_route(node, "p")["port"] == lo + 3
    assert node.call("DELETE", "/apps/p/routes/1").status == 204  # frees lo
    # hi was handed out: the order wraps to lo (freed), then lo + 1 (let go by the other
    # process), then the range is full.
    assert create_route(node, "p")["port"] == lo
    assert create_route(node, "p")["port"] == lo + 1
    before = node.call("GET", "/apps/p/routes").json()
    full = node.call("PUT", "/apps/p/routes")
    assert full.status == 409
    assert full.headers["Content-Type"].startswith("application/problem+json")
    assert f"{lo}-{hi}" in full.json()["detail"]
    assert node.call("GET", "/apps/p/routes").json() == before
    assert [r["id"] for r in before] == [2, 3, 4, 5, 6]
