"""A route's toxics through the HTTP API of a real node: created with their defaults, listed
in the order added, merged by PATCH, removed; every refusal a problem that names the field
and changes nothing; a route's enabled and seed; all of it kept across a restart."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import StartNode, assert_clean_log, create_route, serve_args, snapshot
from tests.helpers import Node, free_port_range

TOXICS = "/apps/web/routes/1/toxics"


def start(start_node: StartNode, tmp_path: Path, *extra: str) -> Node:
    lo, hi = free_port_range()
    return start_node(*serve_args(tmp_path / "restcp.db", lo, hi, *extra))


def add(node: Node, body: dict[str, Any], method: str = "PUT") -> dict[str, Any]:
    response = node.call(method, TOXICS, body)
    assert response.status == 201, response
    toxic: dict[str, Any] = response.json()
    assert response.headers["Location"] == f"{TOXICS}/{toxic['name']}"
    return toxic


def test_toxics_from_creation_to_removal(start_node: StartNode, tmp_path: Path) -> None:
    node = start(start_node, tmp_path)
    assert create_route(node, "web")["toxics"] == []
    slow = add(node, {"type": "latency", "attributes": {"latency": 200}})
    assert slow == {
        "name": "latency_downstream",
        "type": "latency",
        "stream": "downstream",
        "toxicity": 1.0,
        "attributes": {"jitter": 0, "latency": 200},
        "clients": [],
    }
    cut = add(
        node,
        {
            "name": "cut",
            "type": "reset_peer",
            "stream": "upstream",
            "toxicity": 0.5,
            "clients": ["10.1.2.3", "2001:db8::/32"],
        },
        method="POST",
    )
    assert (cut["attributes"], cut["clients"]) == ({"timeout": 0}, ["10.1.2.3/32", "2001:db8::/32"])
    thin = add(node, {"type": "bandwidth", "attributes": {"rate": 64}})
    # Listed, and shown with the route, in the order they were added.
    listed = node.call("GET", TOXICS)
    assert (listed.status, listed.json()) == (200, [slow, cut, thin])
    assert node.call("GET", "/apps/web/routes/1").json()["toxics"] == [slow, cut, thin]
    assert node.call("GET", "/apps/web/routes").json()[0]["toxics"] == [slow, cut, thin]
    assert node.call("GET", f"{TOXICS}/cut").json() == cut

    # PATCH merges attributes, replaces toxicity and clients, keeps the place.
    patched = node.call("PATCH", f"{TOXICS}/latency_downstream", {"attributes": {"jitter": 50}})
    assert patched.status == 200, patched
    slow = {**slow, "attributes": {"jitter": 50, "latency": 200}}
    assert patched.json() == slow
    changed = node.call(
        "PATCH", f"{TOXICS}/cut", {"toxicity": 1, "clients": [], "type": "reset_peer"}
    )
    cut = {**cut, "toxicity": 1.0, "clients": []}
    assert changed.json() == cut
    assert node.call("GET", TOXICS).json() == [slow, cut, thin]

    deleted = node.call("DELETE", f"{TOXICS}/cut")
    assert (deleted.status, deleted.body) == (204, b"")
    assert node.call("GET", TOXICS).json() == [slow, thin]
    assert node.call("GET", f"{TOXICS}/cut").status == 404
    # A name freed is free again; the toxic goes last.
    again = add(node, {"type": "reset_peer", "name": "cut"})
    assert [t["name"] for t in node.call("GET", TOXICS).json()] == [
        "latency_downstream", "bandwidth_downstream", "cut"
    ]  # fmt: skip
    assert again["stream"] == "downstream"
    # The route's other changes leave them be; deleting the route takes them.
    assert node.call("PATCH", "/apps/web/routes/1", {"balance": "round_robin"}).json()["toxics"]
    assert node.call("DELETE", "/apps/web/routes/1").status == 204
    assert node.call("GET", TOXICS).status == 404
    assert node.stop() == 0
    assert_clean_log(node)


REFUSED: list[tuple[str, str, Any, int, str | None]] = [
    ("PUT", TOXICS, {}, 422, "type"),
    ("PUT", TOXICS, {"type": "lag"}, 422, "type"),
    ("PUT", TOXICS, {"type": "latency", "stream": "sideways"}, 422, "stream"),
    ("PUT", TOXICS, {"type": "latency", "attributes": {"rate": 5}}, 422, "attributes.rate"),
    ("PUT", TOXICS, {"type": "latency", "attributes": {"latency": -1}}, 422, "attributes.latency"),
    ("POST", TOXICS, {"type": "bandwidth"}, 422, "attributes.rate"),
    ("POST", TOXICS, {"type": "bandwidth", "attributes": {"rate": 0}}, 422, "attributes.rate"),
    ("PUT", TOXICS, {"type": "latency", "attributes": {"latency": 1.5}}, 422, "attributes.latency"),
    ("PUT", TOXICS, {"type": "latency", "toxicity": 2}, 422, "toxicity"),
    ("PUT", TOXICS, {"type": "latency", "clients": ["10.0.0.0/8", "x"]}, 422, "clients.1"),
    ("PUT", TOXICS, {"type": "latency", "name": ".."}, 422, "name"),
    ("PUT", TOXICS, {"type": "latency", "name": "a b"}, 422, "name"),
    ("PUT", TOXICS, {"type": "latency", "color": "red"}, 422, "color"),
    (
        "PUT",
        TOXICS,
        {"type": "slicer", "attributes": {"average_size": 4, "size_variation": 4}},
        422,
        "attributes.size_variation",
    ),
    # Names taken: the default one of a second toxic of a type and stream, and one given.
    ("PUT", TOXICS, {"type": "timeout"}, 409, None),
    ("POST", TOXICS, {"type": "latency", "name": "slow"}, 409, None),
    ("PUT", TOXICS, [], 400, None),
    ("PUT", "/apps/web/routes/9/toxics", {"type": "latency"}, 404, None),
    ("PUT", "/apps/nope/routes/1/toxics", {"type": "latency"}, 404, None),
    ("GET", "/apps/web/routes/9/toxics", None, 404, None),
    ("GET", f"{TOXICS}/nope", None, 404, None),
    ("GET", f"{TOXICS}/%2E%2E", None, 404, None),
    ("PATCH", f"{TOXICS}/nope", {"toxicity": 0}, 404, None),
    ("DELETE", f"{TOXICS}/nope", None, 404, None),
    ("PATCH", f"{TOXICS}/slow", {"type": "timeout"}, 422, "type"),
    ("PATCH", f"{TOXICS}/slow", {"stream": "upstream"}, 422, "stream"),
    ("PATCH", f"{TOXICS}/slow", {"name": "other"}, 422, "name"),
    ("PATCH", f"{TOXICS}/slow", {"attributes": {"rate": 1}}, 422, "attributes.rate"),
    ("PATCH", f"{TOXICS}/slow", {"attributes": {"latency": 3_600_001}}, 422, "attributes.latency"),
    ("PATCH", f"{TOXICS}/slow", {"toxicity": None}, 422, "toxicity"),
    ("PATCH", f"{TOXICS}/slow", {"clients": ["nope"]}, 422, "clients.0"),
]


def test_every_refusal_is_a_problem_that_changes_nothing(
    start_node: StartNode, tmp_path: Path
) -> None:
    node = start(start_node, tmp_path)
    create_route(node, "web")
    add(node, {"type": "latency", "name": "slow"})
    add(node, {"type": "timeout"})
    before = snapshot(node)
    for method, path, body, status, field in REFUSED:
        response = node.call(method, path, body)
        assert response.status == status, (method, path, body, response)
        assert response.headers["Content-Type"].startswith("application/problem+json")
        problem = response.json()
        assert problem["status"] == status
        if field is not None:
            assert [e["field"] for e in problem["errors"]] == [field], (body, problem)
            assert problem["detail"].startswith(f"invalid request body: {field}: "), problem
    assert snapshot(node) == before
    assert node.stop() == 0
    assert_clean_log(node)


def test_a_route_is_enabled_or_not_and_has_a_seed(start_node: StartNode, tmp_path: Path) -> None:
    node = start(start_node, tmp_path)
    route = create_route(node, "web", seed=7)
    assert (route["enabled"], route["seed"]) == (True, 7)
    changed = node.call("PATCH", "/apps/web/routes/1", {"enabled": False, "seed": None})
    assert (changed.json()["enabled"], changed.json()["seed"]) == (False, None)
    assert node.call("GET", "/apps/web/routes/1").json()["enabled"] is False
    for body, field in (
        ({"enabled": "no"}, "enabled"),
        ({"enabled": 0}, "enabled"),
        ({"seed": -1}, "seed"),
        ({"seed": 2**63}, "seed"),
        ({"seed": 1.5}, "seed"),
    ):
        response = node.call("PATCH", "/apps/web/routes/1", body)
        assert response.status == 422, (body, response)
        assert [e["field"] for e in response.json()["errors"]] == [field]
    again = node.call("PATCH", "/apps/web/routes/1", {"enabled": True, "seed": 2**63 - 1})
    assert (again.json()["enabled"], again.json()["seed"]) == (True, 2**63 - 1)


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["kill-9", "sigterm"])
def test_toxics_enabled_and_seed_survive_a_restart(
    start_node: StartNode, tmp_path: Path, sig: int
) -> None:
    lo, hi = free_port_range()
    args = serve_args(tmp_path / "restcp.db", lo, hi)
    first = start_node(*args)
    create_route(first, "web")
    create_route(first, "web", enabled=False, seed=99)
    for body in (
        {"type": "slicer", "attributes": {"average_size": 10, "delay": 5}},
        {"type": "limit_data", "stream": "upstream", "attributes": {"bytes": 2**53}},
        {"type": "latency", "name": "slow", "toxicity": 0.25, "clients": ["::1"]},
    ):
        add(first, body)
    first.call("PATCH", f"{TOXICS}/slow", {"attributes": {"latency": 9}})
    first.call("DELETE", f"{TOXICS}/slicer_downstream")
    assert first.call("PUT", "/apps/web/routes/2/toxics", {"type": "timeout"}).status == 201
    before = snapshot(first)
    assert first.stop(sig) == (0 if sig == signal.SIGTERM else -signal.SIGKILL)

    second = start_node(*args)
    assert snapshot(second) == before
    toxics = second.call("GET", TOXICS).json()
    assert [t["name"] for t in toxics] == ["limit_data_upstream", "slow"]
    assert toxics[1]["attributes"] == {"jitter": 0, "latency": 9}
    route = second.call("GET", "/apps/web/routes/2").json()
    assert (route["enabled"], route["seed"], len(route["toxics"])) == (False, 99, 1)
    # Still in their order after the restart: a new one goes last.
    add(second, {"type": "reset_peer"})
    assert [t["name"] for t in second.call("GET", TOXICS).json()][-1] == "reset_peer_downstream"
