"""Bad input: each request gets a 4xx problem document and changes nothing; never a 5xx.

One node serves the whole matrix (a start costs more than all the requests together); each
case compares the full listing before and after, and the last test reads the node's log.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from tests.e2e.conftest import assert_clean_log, serve_args, snapshot
from tests.e2e.peers import held_port
from tests.helpers import Node, Response, free_port_range

BAD = (400, 422)  # malformed (400) or well-formed but invalid (422): either is right


@dataclass
class World:
    node: Node
    lo: int
    held: int  # a port another process (this test) listens on


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    lo, hi = free_port_range()
    node = Node(*serve_args(tmp_path_factory.mktemp("bad") / "restcp.db", lo, hi))
    try:
        node.wait_ready()
        with held_port() as held:
            assert node.call("PUT", "/apps/a/routes").json()["port"] == lo
            backend = {"ip": "127.0.0.1", "port": 9}
            assert node.call("PUT", "/apps/a/routes/1/backends", backend).status == 201
            assert node.call("PUT", "/apps/b/routes").json()["port"] == lo + 1
            yield World(node, lo, held)
    finally:
        node.stop()


class Ref:
    """A value known only once the world exists: ``Ref("held")`` is World.held."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return f"<{self.name}>"


def resolve(value: Any, world: World) -> Any:
    if isinstance(value, Ref):
        return getattr(world, value.name)
    if isinstance(value, dict):
        return {k: resolve(v, world) for k, v in value.items()}
    return value


OK_BACKEND = {"ip": "127.0.0.1", "port": 8080}
ROUTES = "/apps/a/routes"
NEW_APP = "/apps/fresh/routes"  # a failed create must not create the app either
BACKENDS = "/apps/a/routes/1/backends"
BACKEND = "/apps/a/routes/1/backends/1"

# Wrong values for each field of a backend body: types, ranges, and non-literals.
# 80.0 is a port (JSON Schema calls it an integer); 65536.0 is no more one than 65536.
BAD_PORTS: list[Any] = ["80", 80.5, 65536.0, True, None, 0, -1, 65536, 2**64, [80], {"p": 80}]
BAD_IPS: list[Any] = [
    "-localhost", "example.123", "1.2.3", "256.1.1.1", "127.0.0.1 ", " 127.0.0.1",
    "127.0.0.1:80", "0127.0.0.1", "::g", "", None, 2130706433, True, ["127.0.0.1"],
]  # fmt: skip

CASES: list[tuple[str, str, str, Any, tuple[int, ...] | int, dict[str, str] | None]] = [
    # -- not JSON, or not a JSON object ------------------------------------------------
    ("truncated", "PUT", BACKENDS, '{"ip": "127.0.0.1", "port": 80', 400, None),
    ("not-json", "PUT", NEW_APP, "{port: 80}", 400, None),
    ("form-body", "PUT", BACKENDS, "ip=127.0.0.1&port=80", 400,
     {"Content-Type": "application/x-www-form-urlencoded"}),
    ("array", "PUT", BACKENDS, "[]", 400, None),
    ("null", "PUT", NEW_APP, "null", 400, None),
    ("whitespace", "PUT", NEW_APP, " \t\r\n", 400, None),  # no body is {}; this is no JSON
    ("whitespace-token", "POST", "/apps/a/tokens", "\t", 400, None),
    ("string", "POST", BACKEND, '"127.0.0.1"', 400, None),
    ("nan", "PUT", BACKENDS, '{"ip": "127.0.0.1", "port": NaN}', 400, None),
    ("infinity", "PUT", NEW_APP, '{"port": Infinity}', 400, None),
    ("not-utf8", "PUT", BACKENDS, b"\xff\xfe\xfa{", 400, None),
    ("deep-nesting", "PUT", BACKENDS, "[" * 60000, 400, None),
    ("huge-int", "PUT", BACKENDS, '{"ip": "127.0.0.1", "port": ' + "9" * 5000 + "}", BAD, None),
    ("too-large", "PUT", BACKENDS, '{"ip": "' + "1" * 100_000 + '"}', 413, None),
    # -- wrong fields ------------------------------------------------------------------
    ("empty-backend", "PUT", BACKENDS, {}, BAD, None),
    ("ip-only", "PUT", BACKENDS, {"ip": "127.0.0.1"}, BAD, None),
    ("port-only", "POST", BACKENDS, {"port": 80}, BAD, None),
    ("unknown-field", "PUT", BACKENDS, {**OK_BACKEND, "id": 7}, BAD, None),
    ("dup-key-last-wins", "PUT", BACKENDS, '{"ip": "127.0.0.1", "port": 80, "port": "80"}',
     BAD, None),
    *[(f"port={p!r}", "PUT", BACKENDS, {"ip": "127.0.0.1", "port": p}, BAD, None)
      for p in BAD_PORTS],
    *[(f"replace-port={p!r}", "POST", BACKEND, {"ip": "127.0.0.1", "port": p}, BAD, None)
      for p in BAD_PORTS[:5]],
    *[(f"ip={ip!r}", "PUT", BACKENDS, {"ip": ip, "port": 80}, BAD, None) for ip in BAD_IPS],
    *[(f"replace-ip={ip!r}", "PUT", BACKEND, {"ip": ip, "port": 80}, BAD, None)
      for ip in BAD_IPS[:4]],
    *[(f"route-port={p!r}", "PUT", NEW_APP, {"port": p}, BAD, None)
      for p in BAD_PORTS if p is not None],
    ("route-unknown-field", "PUT", NEW_APP, {"prot": 80}, BAD, None),
    ("route-bad-balance", "PUT", NEW_APP, {"balance": "fastest"}, BAD, None),
    ("route-zero-connect-timeout", "PUT", NEW_APP, {"connect_timeout": 0}, BAD, None),
    ("route-negative-idle-timeout", "POST", NEW_APP, {"idle_timeout": -1}, BAD, None),
    ("route-frontend-ip-name", "PUT", NEW_APP, {"frontend_ip": "localhost"}, BAD, None),
    ("route-frontend-ip-int", "PUT", NEW_APP, {"frontend_ip": 2130706433}, BAD, None),
    ("route-frontend-ip-not-served", "PUT", NEW_APP, {"frontend_ip": "127.0.0.9"}, BAD, None),
    ("route-frontend-ip-v6-not-served", "PUT", NEW_APP, {"frontend_ip": "::1"}, BAD, None),
    ("patch-bad-balance", "PATCH", "/apps/a/routes/1", {"balance": 1}, BAD, None),
    # -- ports already taken -----------------------------------------------------------
    ("port-of-another-route", "PUT", NEW_APP, {"port": Ref("lo")}, 409, None),
    ("port-of-own-app-route", "POST", ROUTES, {"port": Ref("lo")}, 409, None),
    ("port-of-another-process", "PUT", NEW_APP, {"port": Ref("held")}, 409, None),
    # -- unknown app, route, backend, path ---------------------------------------------
    ("unknown-app-routes", "GET", "/apps/nope/routes", None, 404, None),
    ("unknown-app-route", "GET", "/apps/nope/routes/1", None, 404, None),
    ("unknown-app-add-backend", "PUT", "/apps/nope/routes/1/backends", OK_BACKEND, 404, None),
    ("unknown-route", "GET", "/apps/a/routes/2", None, 404, None),
    ("unknown-route-backends", "GET", "/apps/a/routes/2/backends", None, 404, None),
    ("unknown-route-add-backend", "PUT", "/apps/a/routes/2/backends", OK_BACKEND, 404, None),
    ("unknown-route-delete", "DELETE", "/apps/a/routes/99", None, 404, None),
    ("unknown-route-patch", "PATCH", "/apps/a/routes/99", {"balance": "random"}, 404, None),
    ("route-id-zero", "GET", "/apps/a/routes/0", None, 404, None),
    ("route-id-negative", "DELETE", "/apps/a/routes/-1", None, 404, None),
    ("route-id-float", "GET", "/apps/a/routes/1.0", None, 404, None),
    ("route-id-word", "GET", "/apps/a/routes/one/backends", None, 404, None),
    ("route-id-superscript", "GET", "/apps/a/routes/%C2%B2", None, 404, None),
    ("route-id-arabic-digit", "DELETE", "/apps/a/routes/%D9%A1", None, 404, None),
    ("route-id-huge", "GET", "/apps/a/routes/" + "9" * 5000, None, 404, None),
    ("route-id-2^63", "DELETE", f"/apps/a/routes/{2**63}", None, 404, None),
    ("unknown-backend", "GET", "/apps/a/routes/1/backends/2", None, 404, None),
    ("unknown-backend-replace", "POST", "/apps/a/routes/1/backends/2", OK_BACKEND, 404, None),
    ("unknown-backend-delete", "DELETE", "/apps/a/routes/1/backends/2", None, 404, None),
    ("backend-id-superscript", "DELETE", "/apps/a/routes/1/backends/%C2%B9", None, 404, None),
    ("unknown-path", "GET", "/nowhere", None, 404, None),
    ("dot-dot", "GET", "/apps/../routes", None, 400, None),  # sent as is: app ".."
    # -- bad app ids -------------------------------------------------------------------
    ("app-id-65-chars", "PUT", "/apps/" + "x" * 65 + "/routes", None, BAD, None),
    ("app-id-space", "PUT", "/apps/a%20b/routes", None, BAD, None),
    ("app-id-non-ascii", "PUT", "/apps/%C3%A9t%C3%A9/routes", None, BAD, None),
    ("app-id-slash", "GET", "/apps/a%2Fb/routes", None, (*BAD, 404), None),
    ("app-id-dollar", "PUT", "/apps/a$b/routes", None, BAD, None),
    # "." and ".." are dot segments: a URL's path resolution removes them (curl does).
    ("app-id-dot", "PUT", "/apps/%2E/routes", None, 400, None),
    ("app-id-dot-dot", "PUT", "/apps/%2E%2E/routes", None, 400, None),
    ("app-id-dot-dot-lower", "POST", "/apps/%2e%2e/routes", None, 400, None),
    ("app-id-dot-dot-list", "GET", "/apps/%2E%2E/routes", None, 400, None),
    ("app-id-dot-dot-token", "POST", "/apps/%2E%2E/tokens", None, 400, None),
    ("app-id-dot-tokens", "GET", "/apps/%2E/tokens", None, 400, None),
    # -- methods -------------------------------------------------------------------------
    ("delete-collection", "DELETE", ROUTES, None, 405, None),
    ("patch-apps", "PATCH", "/apps", {}, 405, None),
]  # fmt: skip


@pytest.mark.parametrize(
    ("method", "path", "body", "expected", "headers"),
    [pytest.param(*case[1:], id=case[0]) for case in CASES],
)
def test_bad_request_changes_nothing(
    world: World,
    method: str,
    path: str,
    body: Any,
    expected: tuple[int, ...] | int,
    headers: dict[str, str] | None,
) -> None:
    node = world.node
    before = snapshot(node)
    if isinstance(body, dict):
        body = json.dumps(resolve(body, world))
    response = node.call(method, path, body, headers=headers)
    assert_problem(response, expected)
    assert snapshot(node) == before


def assert_problem(response: Response, expected: tuple[int, ...] | int) -> None:
    statuses = expected if isinstance(expected, tuple) else (expected,)
    assert response.status in statuses, (response.status, response.body[:500])
    assert response.headers["Content-Type"].startswith("application/problem+json")
    problem = response.json()
    assert problem["status"] == response.status
    assert isinstance(problem["title"], str)
    assert problem["title"]
    assert isinstance(problem["detail"], str)
    assert problem["detail"]
    assert "Traceback" not in problem["detail"]


def test_one_address_is_one_backend_on_every_write(world: World) -> None:
    """Attaching (PUT, POST), replacing (POST, PUT) or changing (PATCH) a backend to an
    address another backend of the route has is a 409 that changes nothing."""
    node = world.node
    backends = "/apps/b/routes/1/backends"
    for port in (7, 8):
        assert node.call("PUT", backends, {"ip": "127.0.0.1", "port": port}).status == 201
    before = snapshot(node)
    taken = {"ip": "127.0.0.1", "port": 7}
    for method, path, body in [
        ("PUT", backends, taken),
        ("POST", backends, {**taken, "weight": 2}),
        ("POST", f"{backends}/2", taken),
        ("PUT", f"{backends}/2", taken),
        ("PATCH", f"{backends}/2", {"port": 7}),
        ("PATCH", f"{backends}/1", {"port": 8.0}),
    ]:
        response = node.call(method, path, body)
        assert_problem(response, 409)
        assert "already" in response.json()["detail"], response
        assert snapshot(node) == before, (method, path, body)
    # Its own address is no other backend's.
    assert node.call("POST", f"{backends}/1", {**taken, "weight": 3}).status == 200


def test_failures_consumed_no_id_and_no_port(world: World) -> None:
    """A refused create takes no route id and no port; the node logged no bug."""
    node = world.node
    created = node.call("PUT", "/apps/a/routes")
    assert created.status == 201
    assert (created.json()["id"], created.json()["port"]) == (2, world.lo + 2)
    added = node.call("PUT", "/apps/a/routes/1/backends", OK_BACKEND)
    assert added.json() == {"id": 2}
    assert node.call("GET", "/apps").json() == [
        {"app": "a", "routes": 2},
        {"app": "b", "routes": 1},
    ]
    assert node.stop() == 0
    assert_clean_log(node)
