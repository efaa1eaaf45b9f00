"""--max-routes-per-app, --max-backends-per-route and --max-toxics-per-route: past the limit
a create is a 409 that changes nothing, concurrent creates cannot all slip under it, and a
freed place is usable."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.conftest import StartNode, serve_args, snapshot
from tests.e2e.peers import assert_refused, connect
from tests.e2e.test_cli import run
from tests.helpers import Node, Response, free_port_range
from tests.redis_server import RedisServer


def start(
    start_node: StartNode,
    tmp_path: Path,
    routes: int,
    backends: int,
    store: str | None = None,
    toxics: int = 32,
) -> Node:
    lo, hi = free_port_range(30)
    args = serve_args(tmp_path / "restcp.db", lo, hi)
    if store is not None:
        args[args.index("--store") + 1] = store
        # A snapshot of this test's own: one in the working directory would carry another
        # test's cluster epoch.
        args += ["--snapshot", str(tmp_path / "snapshot.db")]
    return start_node(
        *args,
        "--max-routes-per-app", str(routes),
        "--max-backends-per-route", str(backends),
        "--max-toxics-per-route", str(toxics),
    )  # fmt: skip


@pytest.fixture(params=["sqlite", "redis"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str | None]:
    """The store of a race: SQLite calls never yield to the event loop, so only a store
    that does (Redis) lets concurrent requests interleave between counting and creating."""
    if request.param == "sqlite":
        yield None
        return
    with RedisServer(tmp_path / "redis") as server:
        yield server.url()


def at_once(calls: list[tuple[Node, str, str, object]]) -> list[Response]:
    """Every call from its own thread, released together."""
    barrier = threading.Barrier(len(calls))
    results: list[Response | None] = [None] * len(calls)

    def one(i: int) -> None:
        node, method, path, body = calls[i]
        barrier.wait(timeout=30)
        results[i] = node.call(method, path, body)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(calls))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert all(r is not None for r in results)
    return [r for r in results if r is not None]


def test_routes_past_the_limit_are_refused_and_change_nothing(
    start_node: StartNode, tmp_path: Path
) -> None:
    node = start(start_node, tmp_path, routes=3, backends=100)
    lo, _ = free_port_range(1)
    ports = [node.call("PUT", "/apps/a/routes").json()["port"] for _ in range(3)]
    before = snapshot(node)
    for method, body in (("PUT", None), ("POST", {}), ("PUT", {"port": lo})):
        response = node.call(method, "/apps/a/routes", body)
        assert response.status == 409, response
        assert response.headers["Content-Type"].startswith("application/problem+json")
        detail = response.json()["detail"]
        assert "--max-routes-per-app" in detail
        assert "3" in detail
    assert snapshot(node) == before
    # Nothing was bound for the refused ones: the port asked for is free, and the next
    # route of the range is the one after the last success.
    assert_refused(lo)
    # Another app has its own allowance.
    assert node.call("PUT", "/apps/b/routes").status == 201
    # A deleted route frees its place; ids go on (never reused).
    assert node.call("DELETE", "/apps/a/routes/2").status == 204
    again = node.call("PUT", "/apps/a/routes")
    assert again.status == 201
    assert again.json()["id"] == 4
    assert again.json()["port"] not in ports
    connect(again.json()["port"]).close()


def test_concurrent_route_creates_cannot_overshoot(
    start_node: StartNode, tmp_path: Path, store_url: str | None
) -> None:
    node = start(start_node, tmp_path, routes=4, backends=100, store=store_url)
    responses = at_once([(node, "PUT", "/apps/a/routes", None) for _ in range(12)])
    assert sorted(r.status for r in responses) == [201] * 4 + [409] * 8
    assert len(node.call("GET", "/apps/a/routes").json()) == 4


def test_backends_past_the_limit_are_refused_and_change_nothing(
    start_node: StartNode, tmp_path: Path
) -> None:
    node = start(start_node, tmp_path, routes=10, backends=2)
    node.call("PUT", "/apps/a/routes")
    node.call("PUT", "/apps/a/routes")
    for port in (9, 10):
        assert node.call("PUT", "/apps/a/routes/1/backends", {"ip": "127.0.0.1", "port": port})
    before = snapshot(node)
    for method in ("PUT", "POST"):
        response = node.call(method, "/apps/a/routes/1/backends", {"ip": "127.0.0.1", "port": 11})
        assert response.status == 409, response
        assert "--max-backends-per-route" in response.json()["detail"]
    assert snapshot(node) == before
    # Replacing and changing backends at the limit is no new backend.
    assert node.call("POST", "/apps/a/routes/1/backends/1", {"ip": "::1", "port": 12}).status == 200
    assert node.call("PATCH", "/apps/a/routes/1/backends/2", {"weight": 4}).status == 200
    # The limit is per route; a freed place can be taken again, under a new id.
    assert node.call("PUT", "/apps/a/routes/2/backends", {"ip": "::1", "port": 9}).status == 201
    assert node.call("DELETE", "/apps/a/routes/1/backends/2").status == 204
    added = node.call("PUT", "/apps/a/routes/1/backends", {"ip": "127.0.0.1", "port": 13})
    assert (added.status, added.json()) == (201, {"id": 3})


def test_concurrent_backend_adds_cannot_overshoot(
    start_node: StartNode, tmp_path: Path, store_url: str | None
) -> None:
    node = start(start_node, tmp_path, routes=10, backends=5, store=store_url)
    node.call("PUT", "/apps/a/routes")
    # Fifteen addresses: one address is one backend, and the quota is what this is about.
    bodies = [{"ip": "127.0.0.1", "port": 9 + i} for i in range(15)]
    responses = at_once([(node, "PUT", "/apps/a/routes/1/backends", b) for b in bodies])
    assert sorted(r.status for r in responses) == [201] * 5 + [409] * 10
    assert len(node.call("GET", "/apps/a/routes/1/backends").json()) == 5


def test_toxics_past_the_limit_are_refused_and_change_nothing(
    start_node: StartNode, tmp_path: Path
) -> None:
    node = start(start_node, tmp_path, routes=10, backends=10, toxics=2)
    node.call("PUT", "/apps/a/routes")
    node.call("PUT", "/apps/a/routes")
    toxics = "/apps/a/routes/1/toxics"
    for name in ("x", "y"):
        assert node.call("PUT", toxics, {"type": "latency", "name": name}).status == 201
    before = snapshot(node)
    for method in ("PUT", "POST"):
        response = node.call(method, toxics, {"type": "timeout"})
        assert response.status == 409, response
        assert "--max-toxics-per-route (2)" in response.json()["detail"]
    assert snapshot(node) == before
    # Changing one at the limit is no new toxic; the limit is per route; a freed place can
    # be taken again.
    assert node.call("PATCH", f"{toxics}/x", {"attributes": {"latency": 5}}).status == 200
    assert node.call("PUT", "/apps/a/routes/2/toxics", {"type": "timeout"}).status == 201
    assert node.call("DELETE", f"{toxics}/y").status == 204
    assert node.call("PUT", toxics, {"type": "timeout"}).status == 201


def test_concurrent_toxic_adds_cannot_overshoot(
    start_node: StartNode, tmp_path: Path, store_url: str | None
) -> None:
    node = start(start_node, tmp_path, routes=10, backends=10, store=store_url, toxics=5)
    node.call("PUT", "/apps/a/routes")
    bodies = [{"type": "latency", "name": f"t{i}"} for i in range(15)]
    responses = at_once([(node, "PUT", "/apps/a/routes/1/toxics", b) for b in bodies])
    assert sorted(r.status for r in responses) == [201] * 5 + [409] * 10
    assert len(node.call("GET", "/apps/a/routes/1/toxics").json()) == 5


def test_the_defaults_are_1000_routes_100_backends_and_32_toxics(tmp_path: Path) -> None:
    done = run(["serve", "--help"], tmp_path)
    text = " ".join(done.stdout.split())
    assert "(RESTCP_MAX_ROUTES_PER_APP; 1000)" in text
    assert "(RESTCP_MAX_BACKENDS_PER_ROUTE; 100)" in text
    assert "(RESTCP_MAX_TOXICS_PER_ROUTE; 32)" in text


def test_quotas_from_the_environment(start_node: StartNode, tmp_path: Path) -> None:
    lo, hi = free_port_range()
    env = {
        "RESTCP_MAX_ROUTES_PER_APP": "1",
        "RESTCP_MAX_BACKENDS_PER_ROUTE": "1",
        "RESTCP_MAX_TOXICS_PER_ROUTE": "1",
    }
    node = start_node(*serve_args(tmp_path / "restcp.db", lo, hi), env=env)
    assert node.call("PUT", "/apps/a/routes").status == 201
    assert node.call("PUT", "/apps/a/routes").status == 409
    body = {"ip": "127.0.0.1", "port": 9}
    assert node.call("PUT", "/apps/a/routes/1/backends", body).status == 201
    assert node.call("PUT", "/apps/a/routes/1/backends", body).status == 409
    assert node.call("PUT", "/apps/a/routes/1/toxics", {"type": "timeout"}).status == 201
    assert node.call("PUT", "/apps/a/routes/1/toxics", {"type": "latency"}).status == 409


@pytest.mark.parametrize(
    ("args", "env"),
    [
        (["--max-routes-per-app", "0"], {}),
        (["--max-routes-per-app", "-1"], {}),
        (["--max-routes-per-app", "many"], {}),
        (["--max-backends-per-route", "1.5"], {}),
        (["--max-backends-per-route", "٣"], {}),
        (["--max-toxics-per-route", "0"], {}),
        ([], {"RESTCP_MAX_TOXICS_PER_ROUTE": "x"}),
        ([], {"RESTCP_MAX_ROUTES_PER_APP": "0"}),
        ([], {"RESTCP_MAX_BACKENDS_PER_ROUTE": ""}),
    ],
)
def test_bad_quotas_are_refused_clearly(
    tmp_path: Path, args: list[str], env: dict[str, str]
) -> None:
    done = run(["serve", *args], tmp_path, env)
    assert done.returncode != 0
    assert "--max-" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr
