"""restcp.Client and restcp.AsyncClient against a real `restcp serve`: every endpoint of a
single node (the cluster's are in tests/cluster/test_client.py), the fault helpers with
real traffic through them, and each problem as its exception. Each scenario runs with both
clients (tests/flavours.py), reading answers with unknown fields forbidden.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from restcp import errors as restcp_errors
from restcp.api.schemas import BackendOut, RouteOut
from restcp.client import (
    AsyncClient,
    Client,
    Conflict,
    Forbidden,
    Invalid,
    NotFound,
    Unauthorized,
    Unreachable,
)
from tests.e2e.conftest import StartNode, assert_clean_log, serve_args
from tests.e2e.peers import (
    Backend,
    Tagged,
    assert_refused,
    echo,
    held_port,
    refusing_port,
    round_trip,
    served_by,
)
from tests.e2e.peers import Client as LineClient
from tests.flavours import FLAVOURS, Flavour, run
from tests.helpers import Node, free_port_range

ADMIN = "client-admin-token-0123456789"


@pytest.fixture
def echo_backend() -> Iterator[Backend]:
    with Backend(echo) as backend:
        yield backend


@pytest.fixture
def other_backend() -> Iterator[Backend]:
    with Backend(echo) as backend:
        yield backend


@FLAVOURS
def test_routes_and_backends_through_every_endpoint(
    flavour: Flavour, node: Node, echo_backend: Backend, other_backend: Backend
) -> None:
    c = flavour

    async def scenario() -> None:
        async with c.open(node.api) as client:
            health = await c(client.healthz())
            assert (health.status, health.routes) == ("ok", 0)

            routes = client.routes("web")
            route = await c(routes.create(balance="round_robin", idle_timeout=30))
            assert (route.app, route.id, route.host) == ("web", 1, "127.0.0.1")
            assert route.url == f"tcp://127.0.0.1:{route.port}/"
            assert (route.info.balance, route.info.idle_timeout) == ("round_robin", 30)
            # The client's model is the API's own, field for field.
            raw = node.call("GET", "/apps/web/routes/1").json()
            assert route.info == RouteOut.model_validate(raw)

            one = await c(route.backends.add("127.0.0.1", echo_backend.port, weight=2))
            assert (one.id, one.info.port, one.info.weight) == (1, echo_backend.port, 2)
            assert round_trip(route.port, b"through the client") == b"through the client"
            with refusing_port() as dead:
                two = await c(route.backends.add("127.0.0.1", dead, state="disabled"))
            assert (two.id, two.info.state) == (2, "disabled")

            listed = await c(route.backends.list())
            assert [b.id for b in listed] == [1, 2]
            assert all(isinstance(b.info, BackendOut) for b in listed)
            got = await c(route.backends.get(2))
            assert got.info == listed[1].info

            # By another address than backend 1's: one address is one backend of a route.
            replaced = await c(route.backends[2].replace("127.0.0.1", other_backend.port))
            # Replaced whole: the fields not given are back to their defaults.
            assert (replaced.info.port, replaced.info.state) == (other_backend.port, "enabled")
            changed = await c(route.backends[1].update(weight=5, max_connections=10))
            assert (changed.info.weight, changed.info.max_connections, changed.info.port) == (
                5,
                10,
                echo_backend.port,
            )
            await c(route.backends[2].delete())
            with pytest.raises(NotFound):
                await c(route.backends.get(2))

            same = await c(route.update(idle_timeout=600, health_check={"interval": 1.5}))
            assert same is route
            assert route.info.idle_timeout == 600
            assert route.info.health_check is not None
            assert route.info.health_check.interval == 1.5
            assert route.info.balance == "round_robin"
            second = await c(routes.create())
            assert [r.id for r in await c(routes.list())] == [1, 2]
            assert (await c(routes.get(2))).port == second.port
            fresh = await c(routes[1].refresh())
            assert [b.id for b in fresh.info.backends] == [1]

            apps = await c(client.apps())
            assert [(a.app, a.routes) for a in apps] == [("web", 2)]
            nodes = await c(client.nodes())
            assert [(n.id, n.api) for n in nodes] == [("local", node.api + "/")]
            document = await c(client.openapi())
            assert "/apps/{app}/routes" in document["paths"]

            await _wait_for_connections(c, client, route.id, 1)

            await c(second.delete())
            await c(route.delete())
            with pytest.raises(NotFound):
                await c(route.refresh())
            assert_refused(route.port)
            assert [(a.app, a.routes) for a in await c(client.apps())] == [("web", 0)]

    run(scenario)
    assert_clean_log(node)


async def _wait_for_connections(c: Flavour, client: Any, route_id: int, count: int) -> None:
    """The relayed connection is counted once its relay has ended, just after the client
    saw the end: poll the metrics, a few times at most."""
    for _ in range(100):
        metrics = await c(client.metrics())
        total = metrics.value("restcp_connections_total", app="web", route=route_id)
        if total >= count:
            assert total == count
            assert metrics.value("restcp_bytes_total", app="web", direction="in") == len(
                b"through the client"
            )
            assert "restcp_connections" in metrics.families
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"restcp_connections_total of route {route_id} never reached {count}")


@FLAVOURS
def test_fault_helpers_undo_their_change_on_exit_even_after_an_error(
    flavour: Flavour, node: Node
) -> None:
    c = flavour

    async def scenario() -> None:
        async with c.open(node.api) as client:
            route = await c(client.routes("web").create())
            with Backend(Tagged("a")) as a:
                await c(route.backends.add("127.0.0.1", a.port, drain_timeout=7))
                backend = route.backends[1]
                with LineClient(route.port) as before:
                    assert before.ask("hi") == "a"
                    async with c.hold(backend.disabled()) as held:
                        assert held is backend
                        assert held.info.state == "disabled"
                        # Its open connection is cut, and nobody new gets through.
                        assert before.closed()
                        assert served_by(route.port) is None
                assert (await c(backend.refresh())).info.state == "enabled"
                assert served_by(route.port) == "a"

                async def fail_while_drained() -> None:
                    async with c.hold(backend.drained(drain_timeout=0.5)) as held:
                        assert (held.info.state, held.info.drain_timeout) == ("drain", 0.5)
                        assert served_by(route.port) is None
                        raise RuntimeError("inside")

                with pytest.raises(RuntimeError, match="inside"):
                    await fail_while_drained()
                restored = (await c(backend.refresh())).info
                assert (restored.state, restored.drain_timeout) == ("enabled", 7)
                assert served_by(route.port) == "a"

                # Undone whatever it was before: a disabled backend drained comes back
                # disabled.
                await c(backend.update(state="disabled", drain_timeout=None))
                async with c.hold(backend.drained()):
                    pass
                assert (await c(backend.refresh())).info.state == "disabled"

                # Nothing to undo once the route is gone: the block ends quietly.
                async with c.hold(backend.drained()):
                    await c(route.delete())
                with pytest.raises(NotFound):
                    await c(route.refresh())

    run(scenario)
    assert_clean_log(node)


@FLAVOURS
def test_every_problem_is_its_exception_and_changes_nothing(flavour: Flavour, node: Node) -> None:
    c = flavour

    async def scenario() -> None:
        async with c.open(node.api) as client:
            routes = client.routes("web")
            route = await c(routes.create())

            with pytest.raises(NotFound) as missing:
                await c(routes.get(99))
            assert missing.value.status == 404
            assert missing.value.detail == "route 99 of app 'web' not found"
            assert (
                str(missing.value) == "GET /apps/web/routes/99: 404 route 99 of app 'web' not found"
            )
            # One hierarchy with the server's own errors.
            assert isinstance(missing.value, restcp_errors.NotFound)

            with pytest.raises(Invalid) as invalid:
                await c(route.update(balance="nope", idle_timeout=-1))  # type: ignore[arg-type]
            assert invalid.value.status == 422
            assert sorted(e.field for e in invalid.value.errors) == ["balance", "idle_timeout"]
            with pytest.raises(Invalid) as bad_app:
                await c(client.routes("no/such app").list())
            assert bad_app.value.status == 400
            assert bad_app.value.errors == []
            assert "invalid app id 'no/such app'" in bad_app.value.detail

            with held_port() as taken, pytest.raises(Conflict) as conflict:
                await c(routes.create(port=taken))
            assert "in use" in conflict.value.detail or "cannot be bound" in conflict.value.detail

            with Backend(echo) as up:
                first = await c(route.backends.add("127.0.0.1", up.port))
                with pytest.raises(Conflict) as duplicate:
                    await c(route.backends.add("127.0.0.1", up.port, weight=3))
                assert duplicate.value.status == 409
                assert duplicate.value.detail == (
                    f"backend 1 of route 1 of app 'web' is 127.0.0.1:{up.port} already: "
                    "change its weight to give it more clients"
                )
                with refusing_port() as dead:
                    second = await c(route.backends.add("127.0.0.1", dead))
                    with pytest.raises(Conflict):
                        await c(second.replace("127.0.0.1", up.port))
                    with pytest.raises(Conflict):
                        await c(second.update(port=up.port))
                    listed = await c(route.backends.list())
                    assert [(b.id, b.info.port, b.info.weight) for b in listed] == [
                        (1, up.port, 1),
                        (2, dead, 1),
                    ]
                await c(second.delete())
                await c(first.delete())

            with pytest.raises(Conflict) as embedded:
                await c(client.reseed())
            assert "embedded" in embedded.value.detail
            with pytest.raises(Conflict):
                await c(client.adopt())

            # None of it changed anything.
            assert [r.id for r in await c(routes.list())] == [1]
            assert (await c(route.refresh())).info.balance == "random"

        with refusing_port() as port:
            async with c.open(f"127.0.0.1:{port}") as nowhere:
                with pytest.raises(Unreachable) as unreachable:
                    await c(nowhere.healthz())
        assert unreachable.value.request == "GET /healthz"
        assert f"cannot reach the API at http://127.0.0.1:{port}" in str(unreachable.value)

    run(scenario)
    assert_clean_log(node)


@pytest.fixture
def guarded(start_node: StartNode, tmp_path: Path) -> Node:
    """A node whose API asks for tokens."""
    lo, hi = free_port_range()
    return start_node(*serve_args(tmp_path / "restcp.db", lo, hi, "--api-token", ADMIN))


@FLAVOURS
def test_tokens_and_who_may_do_what(flavour: Flavour, guarded: Node) -> None:
    c = flavour

    async def scenario() -> None:
        async with c.open(guarded.api, ADMIN) as admin:
            await c(admin.routes("web").create())
            tokens = admin.tokens("web")
            created = await c(tokens.create())
            assert created.id == 1
            assert len(created.token) >= 32
            assert [t.id for t in await c(tokens.list())] == [1]

            async with c.open(guarded.api, created.token) as app:
                assert [r.id for r in await c(app.routes("web").list())] == [1]
                with pytest.raises(Forbidden) as forbidden:
                    await c(app.apps())
                assert forbidden.value.status == 403
                with pytest.raises(NotFound):
                    await c(app.routes("other").list())

                await c(tokens.delete(1))
                assert await c(tokens.list()) == []
                with pytest.raises(Unauthorized) as revoked:
                    await c(app.routes("web").list())
                assert revoked.value.status == 401
                with pytest.raises(NotFound):
                    await c(tokens.delete(1))

        async with c.open(guarded.api) as anonymous:
            with pytest.raises(Unauthorized):
                await c(anonymous.apps())
            # Readiness is public.
            assert (await c(anonymous.healthz())).status == "ok"

    run(scenario)
    assert_clean_log(guarded)


def test_url_and_token_come_from_the_environment(
    guarded: Node, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RESTCP_URL", guarded.api.removeprefix("http://"))
    monkeypatch.setenv("RESTCP_TOKEN", ADMIN)
    with Client(unknown_fields="forbid") as client:
        assert client.url == guarded.api
        assert client.apps() == []
    with Client(token="not-the-token-but-long-enough-0123") as client, pytest.raises(Unauthorized):
        client.apps()

    async def scenario() -> None:
        async with AsyncClient() as client:
            assert await client.apps() == []

    run(scenario)
    for bad in ("ftp://127.0.0.1:1", "http://"):
        with pytest.raises(ValueError, match="invalid API URL"):
            Client(bad)
    assert os.environ["RESTCP_URL"]


@FLAVOURS
def test_health_of_a_node_with_workers_is_read_whole(
    flavour: Flavour, start_node: StartNode, tmp_path: Path
) -> None:
    lo, hi = free_port_range()
    workers = start_node(*serve_args(tmp_path / "w.db", lo, hi, "--workers", "2"))
    c = flavour

    async def scenario() -> None:
        async with c.open(workers.api) as client:
            health = await c(client.healthz())
            assert health.status == "ok"
            assert health.workers is not None
            assert [w.worker for w in health.workers] == [1]
            assert health.workers[0].pid is not None

    run(scenario)


@FLAVOURS
def test_a_node_not_ready_answers_its_health_instead_of_raising(
    flavour: Flavour, node: Node, start_node: StartNode, tmp_path: Path
) -> None:
    c = flavour

    async def scenario() -> None:
        async with c.open(node.api) as client:
            route = await c(client.routes("web").create())
        node.stop()
        # Its port taken meanwhile, the restarted node cannot bind the stored route.
        with held_port(route.port):
            lo, hi = free_port_range()
            db = next(a for a in node.args if a.startswith("sqlite:///"))
            again = start_node("--api", "127.0.0.1:0", "--store", db, "--port-range", f"{lo}-{hi}")
            async with c.open(again.api) as client:
                health = await c(client.healthz())
        assert health.status == "starting"
        assert [(u.app, u.route) for u in health.unbound] == [("web", 1)]

    run(scenario)
