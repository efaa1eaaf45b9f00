"""A route's name through the HTTP API of a real node: given at creation or by PATCH, unique
within its app (409, and nothing changes), checked as a path segment (422), free again once
its route is gone or renamed, and kept across a restart."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.e2e.conftest import StartNode, assert_clean_log, create_route, serve_args, snapshot
from tests.helpers import Node, free_port_range


def start(start_node: StartNode, store: Path) -> Node:
    lo, hi = free_port_range()
    return start_node(*serve_args(store, lo, hi))


def test_a_name_is_unique_within_its_app(start_node: StartNode, tmp_path: Path) -> None:
    node = start(start_node, tmp_path / "restcp.db")
    assert create_route(node, "web")["name"] is None
    assert create_route(node, "web", name="redis")["name"] == "redis"
    # Another app may have a route of that name.
    assert create_route(node, "other", name="redis")["name"] == "redis"
    before = snapshot(node)

    taken = node.call("PUT", "/apps/web/routes", {"name": "redis"})
    assert taken.status == 409, taken
    assert "named 'redis' already" in taken.json()["detail"]
    renamed = node.call("PATCH", "/apps/web/routes/1", {"name": "redis"})
    assert renamed.status == 409, renamed
    assert snapshot(node) == before

    # Renaming frees the old name; deleting a route frees its name.
    moved = node.call("PATCH", "/apps/web/routes/2", {"name": "cache"})
    assert (moved.status, moved.json()["name"]) == (200, "cache")
    assert node.call("PATCH", "/apps/web/routes/1", {"name": "redis"}).json()["name"] == "redis"
    assert node.call("DELETE", "/apps/web/routes/2").status == 204
    assert create_route(node, "web", name="cache")["name"] == "cache"
    # A PATCH that names the route as it is, or removes its name, is no conflict.
    assert node.call("PATCH", "/apps/web/routes/1", {"name": "redis"}).status == 200
    assert node.call("PATCH", "/apps/web/routes/1", {"name": None}).json()["name"] is None
    assert_clean_log(node)


@pytest.mark.parametrize("name", ["", ".", "..", "a/b", "é", "x" * 65, 7])
def test_a_bad_name_is_refused(start_node: StartNode, tmp_path: Path, name: object) -> None:
    node = start(start_node, tmp_path / "restcp.db")
    refused = node.call("PUT", "/apps/web/routes", {"name": name})
    assert refused.status == 422, refused
    assert [e["field"] for e in refused.json()["errors"]] == ["name"]
    assert node.call("GET", "/apps").json() == []


def test_a_name_survives_a_restart(start_node: StartNode, tmp_path: Path) -> None:
    store = tmp_path / "restcp.db"
    node = start(start_node, store)
    create_route(node, "web", name="redis")
    node.stop()
    again = start(start_node, store)
    assert again.call("GET", "/apps/web/routes/1").json()["name"] == "redis"
    taken = again.call("PUT", "/apps/web/routes", {"name": "redis"})
    assert taken.status == 409, taken
