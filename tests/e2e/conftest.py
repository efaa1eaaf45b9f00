from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import Node, NodeStarter, free_port_range

StartNode = Callable[..., Node]


def serve_args(store: Path, lo: int, hi: int, *extra: str) -> list[str]:
    return [
        "--api", "127.0.0.1:0",
        "--store", f"sqlite:///{store}",
        "--port-range", f"{lo}-{hi}",
        "--log-level", "debug",
        *extra,
    ]  # fmt: skip


@pytest.fixture
def start_node() -> Iterator[StartNode]:
    """Start ``restcp serve ARGS`` and wait for its ready line; every node it started is
    stopped at teardown, so a failing test leaves no process behind."""
    nodes = NodeStarter()
    yield nodes
    nodes.stop_all()


@pytest.fixture
def engine_node(start_node: StartNode, tmp_path: Path) -> Node:
    """A ready `restcp serve --engine native` (otherwise as the ``node`` fixture)."""
    lo, hi = free_port_range()
    return start_node(*serve_args(tmp_path / "restcp.db", lo, hi, "--engine", "native"))


@pytest.fixture
def asyncio_node(start_node: StartNode, tmp_path: Path) -> Node:
    """A ready `restcp serve --engine asyncio`: the asyncio case of a test run on both data
    planes stays on asyncio whatever the default (RESTCP_ENGINE included)."""
    lo, hi = free_port_range()
    return start_node(*serve_args(tmp_path / "restcp.db", lo, hi, "--engine", "asyncio"))


# What a node observes of a backend rather than what is stored: it starts afresh on restart.
STATUS_FIELDS = (
    "health",
    "health_changed_at",
    "health_reason",
    "active_connections",
    "replaced",
    "last_check",
)


def snapshot(node: Node) -> dict[str, Any]:
    """Everything the API lists and stores: apps, and every app's routes with their
    backends (without the observed status fields)."""
    apps = node.call("GET", "/apps")
    assert apps.status == 200, apps
    state: dict[str, Any] = {"apps": apps.json()}
    for app in apps.json():
        routes = node.call("GET", f"/apps/{app['app']}/routes")
        assert routes.status == 200, routes
        listed = routes.json()
        for route in listed:
            for backend in route["backends"]:
                for field in STATUS_FIELDS:
                    del backend[field]
        state[app["app"]] = listed
    return state


def assert_clean_log(node: Node) -> None:
    log = "\n".join(node.lines)
    assert "Traceback" not in log, log
    assert "bug:" not in log, log


def port_range(node: Node) -> tuple[int, int]:
    """The ``--port-range`` a node was started with."""
    lo, hi = node.args[node.args.index("--port-range") + 1].split("-")
    return int(lo), int(hi)


def free_port_outside(lo: int, hi: int) -> int:
    """A free port that is not in ``lo..hi`` (for a route that asks for its port)."""
    while True:
        port = free_port_range(1)[0]
        if not lo <= port <= hi:
            return port


def wait_until(check: Callable[[], bool], what: str, deadline: float = 10.0) -> None:
    """Poll ``check`` (a readiness probe such as /healthz) until it holds, for a bounded time."""
    end = time.monotonic() + deadline
    while not check():
        if time.monotonic() > end:
            raise AssertionError(f"{what}: not within {deadline}s")
        time.sleep(0.02)


def create_route(node: Node, app: str, **body: Any) -> dict[str, Any]:
    response = node.call("PUT", f"/apps/{app}/routes", body or None)
    assert response.status == 201, response
    route: dict[str, Any] = response.json()
    return route


def add_backend(node: Node, app: str, route: int, port: int, ip: str = "127.0.0.1") -> int:
    response = node.call("PUT", f"/apps/{app}/routes/{route}/backends", {"ip": ip, "port": port})
    assert response.status == 201, response
    backend_id: int = response.json()["id"]
    return backend_id


def seed_fields(backend: dict[str, Any]) -> dict[str, Any]:
    """A backend as the seed shows it, plus its id: the fields every response must carry
    with these values (restcp adds more after them)."""
    return {key: backend[key] for key in ("ip", "port", "id")}
