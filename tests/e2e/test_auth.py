"""Tokens, tried the ways a caller might get around them: no token, wrong tokens, tokens in
the wrong place, an app token on another app (existing or not), on admin endpoints, after
revocation; and what the node keeps and logs of them."""

from __future__ import annotations

import re
import socket
import sqlite3
from contextlib import closing
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from restcp.api.endpoints import ENDPOINTS, Endpoint
from tests.e2e.conftest import STATUS_FIELDS, StartNode, assert_clean_log, serve_args
from tests.e2e.peers import held_port
from tests.helpers import Node, Response, free_port_range

# Every character a Bearer token may have.
ADMIN = "admin-Tok3n_with.all-the~chars+/=="
BODIES: dict[str, Any] = {
    "create_route": {},
    "patch_route": {"balance": "round_robin"},
    "add_backend": {"ip": "127.0.0.1", "port": 9},
    "replace_backend": {"ip": "127.0.0.1", "port": 10},
    "patch_backend": {"weight": 2},
    "create_toxic": {"type": "latency", "name": "t1"},
    "patch_toxic": {"attributes": {"latency": 5}},
    "create_token": None,
}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def as_admin(node: Node, method: str, path: str, body: Any = None) -> Response:
    return node.call(method, path, body, headers=bearer(ADMIN))


def start(start_node: StartNode, tmp_path: Path, *extra: str) -> Node:
    lo, hi = free_port_range()
    return start_node(*serve_args(tmp_path / "restcp.db", lo, hi, "--api-token", ADMIN, *extra))


def new_token(node: Node, app: str) -> tuple[int, str]:
    created = as_admin(node, "POST", f"/apps/{app}/tokens")
    assert created.status == 201, created
    body = created.json()
    return body["id"], body["token"]


def populate(node: Node, *apps: str) -> None:
    """Route 1 with backend 1 in each app."""
    for app in apps:
        assert as_admin(node, "PUT", f"/apps/{app}/routes").status == 201
        added = as_admin(node, "PUT", f"/apps/{app}/routes/1/backends", BODIES["add_backend"])
        assert added.status == 201, added


def path_of(endpoint: Endpoint, app: str, ids: int = 1) -> str:
    return (
        endpoint.path.replace("{app}", app)
        .replace("{route}", str(ids))
        .replace("{backend}", str(ids))
        .replace("{token}", str(ids))
        .replace("{toxic}", f"t{ids}")
        .replace("{certificate}", f"c{ids}")
        .replace("{asset}", "app.js")
    )


def state(node: Node, *apps: str) -> Any:
    """What the store holds, as the admin sees it: every app with its routes and backends
    (without what the node observes of them), and the token ids of ``apps``."""
    listed = as_admin(node, "GET", "/apps")
    assert listed.status == 200, listed
    routes = {}
    for app in listed.json():
        response = as_admin(node, "GET", f"/apps/{app['app']}/routes")
        assert response.status == 200, response
        routes[app["app"]] = [
            {**r, "backends": [strip_status(b) for b in r["backends"]]} for r in response.json()
        ]
    tokens = {app: as_admin(node, "GET", f"/apps/{app}/tokens").json() for app in apps}
    return listed.json(), routes, tokens


def strip_status(backend: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in backend.items() if k not in STATUS_FIELDS}


PROTECTED = [e for e in ENDPOINTS if e.access != "public"]


def test_without_a_token_every_protected_endpoint_is_401(
    start_node: StartNode, tmp_path: Path
) -> None:
    node = start(start_node, tmp_path)
    populate(node, "a")
    new_token(node, "a")
    before = state(node, "a")
    paths = [(e.method, path_of(e, "a"), BODIES.get(e.handler)) for e in PROTECTED]
    # Paths and methods the API does not have answer 401 too: without a token nobody learns
    # which exist.
    paths += [("GET", "/nope", None), ("PATCH", "/apps", None), ("GET", "/apps/a", None)]
    for method, path, body in paths:
        response = node.call(method, path, body)
        assert response.status == 401, (method, path, response)
        assert response.headers["WWW-Authenticate"] == 'Bearer realm="restcp"'
        assert response.headers["Content-Type"].startswith("application/problem+json")
        assert response.json()["status"] == 401
    assert state(node, "a") == before
    # The public ones need none.
    assert node.call("GET", "/healthz").status == 200
    assert node.call("GET", "/openapi.json").status == 200
    # Nor does learning that a public path has no other method: the document says so.
    for path in ("/healthz", "/openapi.json"):
        for method in ("DELETE", "TRACE"):
            response = node.call(method, path)
            assert response.status == 405, (method, path, response)
            assert response.headers["Allow"] == "GET,HEAD"


WRONG_CREDENTIALS: list[tuple[str, dict[str, str], str]] = [
    ("wrong token", bearer("x" * 43), ""),
    ("admin token with one more char", bearer(ADMIN + "x"), ""),
    ("admin token less one char", bearer(ADMIN[:-1]), ""),
    ("admin token in other case", bearer(ADMIN.swapcase()), ""),
    ("admin token as Basic", {"Authorization": f"Basic {ADMIN}"}, ""),
    ("admin token without a scheme", {"Authorization": ADMIN}, ""),
    ("Bearer with no token", {"Authorization": "Bearer"}, ""),
    ("Bearer with a space only", {"Authorization": "Bearer "}, ""),
    ("admin token and junk", {"Authorization": f"Bearer {ADMIN} junk"}, ""),
    ("admin token in X-Api-Token", {"X-Api-Token": ADMIN}, ""),
    ("admin token in X-Auth-Token", {"X-Auth-Token": ADMIN}, ""),
    ("admin token in a cookie", {"Cookie": f"token={ADMIN}"}, ""),
    ("admin token in Proxy-Authorization", {"Proxy-Authorization": f"Bearer {ADMIN}"}, ""),
    ("admin token in access_token", {}, f"?access_token={quote(ADMIN, safe='')}"),
    ("admin token in token", {}, f"?token={quote(ADMIN, safe='')}"),
    ("a SQL injection", bearer("' OR '1'='1"), ""),
    ("a LIKE wildcard", bearer("%"), ""),
    ("a non-ASCII token", bearer("tökén" * 5), ""),
    ("a very long token", bearer("A" * 4000), ""),
]


@pytest.mark.parametrize(
    ("headers", "query"),
    [pytest.param(h, q, id=name) for name, h, q in WRONG_CREDENTIALS],
)
def test_wrong_or_misplaced_credentials_are_401(
    start_node: StartNode, tmp_path: Path, headers: dict[str, str], query: str
) -> None:
    node = start(start_node, tmp_path)
    populate(node, "a")
    before = state(node, "a")
    for method, path, body in (
        ("GET", "/apps", None),
        ("GET", "/apps/a/routes", None),
        ("PUT", "/apps/a/routes", {}),
        ("DELETE", "/apps/a/routes/1", None),
        ("POST", "/apps/a/tokens", None),
    ):
        response = node.call(method, path + query, body, headers=headers)
        assert response.status == 401, (method, path, response)
        assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert state(node, "a") == before


def test_two_authorization_headers_are_refused(start_node: StartNode, tmp_path: Path) -> None:
    """The valid one first or last: a proxy and the API might each read a different one."""
    node = start(start_node, tmp_path)
    for first, second in ((ADMIN, "x" * 43), ("x" * 43, ADMIN), (ADMIN, ADMIN)):
        request = (
            f"GET /apps HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {first}\r\n"
            f"Authorization: Bearer {second}\r\nConnection: close\r\n\r\n"
        ).encode()
        with socket.create_connection(("127.0.0.1", node.api_port), timeout=10) as sock:
            sock.sendall(request)
            reply = b""
            while chunk := sock.recv(65536):
                reply += chunk
        assert reply.startswith(b"HTTP/1.1 401 "), reply


def test_the_admin_token_is_accepted_however_the_scheme_is_spelled(
    start_node: StartNode, tmp_path: Path
) -> None:
    node = start(start_node, tmp_path)
    for value in (f"Bearer {ADMIN}", f"bearer {ADMIN}", f"BEARER {ADMIN}", f"Bearer  {ADMIN} "):
        assert node.call("GET", "/apps", headers={"Authorization": value}).status == 200, value


def test_an_app_token_has_its_own_app_and_nothing_else(
    start_node: StartNode, tmp_path: Path
) -> None:
    node = start(start_node, tmp_path)
    populate(node, "a", "b")
    _, token = new_token(node, "a")
    mine = bearer(token)

    # Its own app: everything an app does, start to end.
    lifecycle = [
        ("GET", "/apps/a/routes", None, 200),
        ("PUT", "/apps/a/routes", {}, 201),
        ("POST", "/apps/a/routes", {}, 201),
        ("GET", "/apps/a/routes/2", None, 200),
        ("PATCH", "/apps/a/routes/2", {"idle_timeout": 5}, 200),
        ("PUT", "/apps/a/routes/2/backends", {"ip": "127.0.0.1", "port": 9}, 201),
        ("POST", "/apps/a/routes/2/backends", {"ip": "127.0.0.1", "port": 10}, 201),
        ("GET", "/apps/a/routes/2/backends", None, 200),
        ("GET", "/apps/a/routes/2/backends/1", None, 200),
        ("POST", "/apps/a/routes/2/backends/1", {"ip": "::1", "port": 9}, 200),
        ("PUT", "/apps/a/routes/2/backends/1", {"ip": "::1", "port": 9}, 200),
        ("PATCH", "/apps/a/routes/2/backends/1", {"weight": 3}, 200),
        ("DELETE", "/apps/a/routes/2/backends/1", None, 204),
        ("PUT", "/apps/a/routes/2/toxics", {"type": "latency"}, 201),
        ("POST", "/apps/a/routes/2/toxics", {"type": "timeout", "name": "t"}, 201),
        ("GET", "/apps/a/routes/2/toxics", None, 200),
        ("GET", "/apps/a/routes/2/toxics/t", None, 200),
        ("PATCH", "/apps/a/routes/2/toxics/t", {"toxicity": 0.5}, 200),
        ("DELETE", "/apps/a/routes/2/toxics/t", None, 204),
        ("DELETE", "/apps/a/routes/2", None, 204),
        ("DELETE", "/apps/a/routes/3", None, 204),
    ]
    for method, path, body, status in lifecycle:
        response = node.call(method, path, body, headers=mine)
        assert response.status == status, (method, path, response)

    # Admin endpoints: 403, its own app's tokens included, and nothing changes.
    before = state(node, "a", "b")
    for method, path in (
        ("GET", "/apps"),
        ("GET", "/metrics"),
        ("GET", "/apps/a/tokens"),
        ("POST", "/apps/a/tokens"),
        ("DELETE", "/apps/a/tokens/1"),
        ("GET", "/apps/b/tokens"),
        ("POST", "/apps/b/tokens"),
    ):
        response = node.call(method, path, headers=mine)
        assert response.status == 403, (method, path, response)
        assert "admin token" in response.json()["detail"]
    assert state(node, "a", "b") == before


def test_another_app_looks_the_same_to_an_app_token_whether_it_exists_or_not(
    start_node: StartNode, tmp_path: Path
) -> None:
    node = start(start_node, tmp_path)
    populate(node, "a", "b")
    _, token = new_token(node, "a")
    new_token(node, "b")
    before = state(node, "a", "b", "zz")
    app_endpoints = [e for e in ENDPOINTS if e.access == "app"]
    # Also names that only look like "a": no prefix, case or encoding trick reaches "a"'s
    # neighbours, and "b" reached through a path trick is still "b".
    for other in ("b", "zz", "A", "a.", "a-b", "ab"):
        for endpoint in app_endpoints:
            body = BODIES.get(endpoint.handler)
            seen = node.call(endpoint.method, path_of(endpoint, other), body, headers=bearer(token))
            ghost = node.call(
                endpoint.method, path_of(endpoint, "never"), body, headers=bearer(token)
            )
            assert seen.status == 404, (endpoint, other, seen)
            assert seen.json() == {**ghost.json(), "detail": f"app {other!r} not found"}
            assert ghost.json()["detail"] == "app 'never' not found"
    for sneaky in ("/apps/a/../b/routes", "/apps/a/%2E%2E/b/routes", "/apps/b%2Froutes/routes"):
        response = node.call("GET", sneaky, headers=bearer(token))
        assert response.status in (400, 404), (sneaky, response)
        assert b'"backends"' not in response.body
    assert state(node, "a", "b", "zz") == before


def test_revoking_a_token_takes_effect_at_once(start_node: StartNode, tmp_path: Path) -> None:
    node = start(start_node, tmp_path)
    populate(node, "a")
    first_id, first = new_token(node, "a")
    second_id, second = new_token(node, "a")
    assert (first_id, second_id) == (1, 2)
    assert first != second
    assert re.fullmatch(r"[A-Za-z0-9_-]{43}", first)
    for token in (first, second):
        assert node.call("GET", "/apps/a/routes", headers=bearer(token)).status == 200

    assert as_admin(node, "DELETE", f"/apps/a/tokens/{first_id}").status == 204
    assert node.call("GET", "/apps/a/routes", headers=bearer(first)).status == 401
    assert node.call("GET", "/apps/a/routes", headers=bearer(second)).status == 200
    # Revoked is gone: a second revocation is 404, and the id is not handed out again.
    assert as_admin(node, "DELETE", f"/apps/a/tokens/{first_id}").status == 404
    assert new_token(node, "a")[0] == 3
    # Another app's token id is not this app's.
    assert as_admin(node, "DELETE", f"/apps/b/tokens/{second_id}").status == 404
    assert node.call("GET", "/apps/a/routes", headers=bearer(second)).status == 200


def test_tokens_are_listed_by_id_and_never_shown_again(
    start_node: StartNode, tmp_path: Path
) -> None:
    node = start(start_node, tmp_path)
    issued = [new_token(node, "a") for _ in range(3)]
    listed = as_admin(node, "GET", "/apps/a/tokens")
    assert listed.status == 200
    assert [t["id"] for t in listed.json()] == [1, 2, 3]
    assert all(set(t) == {"id", "created_at"} for t in listed.json())
    assert all(
        re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", t["created_at"]) for t in listed.json()
    )
    for _, token in issued:
        assert token.encode() not in listed.body
    # A token answer may not be cached on the way.
    created = as_admin(node, "POST", "/apps/a/tokens")
    assert created.headers["Cache-Control"] == "no-store"
    assert created.headers["Location"] == "/apps/a/tokens/4"
    assert as_admin(node, "GET", "/apps/nobody/tokens").json() == []
    # A body, if any, must be an empty object.
    assert as_admin(node, "POST", "/apps/a/tokens", {}).status == 201
    refused = as_admin(node, "POST", "/apps/a/tokens", {"app": "b"})
    assert refused.status == 422, refused
    assert as_admin(node, "POST", "/apps/bad%20app/tokens").status == 400
    assert [t["id"] for t in as_admin(node, "GET", "/apps/a/tokens").json()] == [1, 2, 3, 4, 5]


def test_neither_the_store_nor_the_log_holds_a_token(start_node: StartNode, tmp_path: Path) -> None:
    node = start(start_node, tmp_path)
    tokens = [new_token(node, "a")[1] for _ in range(3)]
    node.call("GET", "/apps", headers=bearer(tokens[0] + "x"))
    node.call("GET", "/apps", headers=bearer(tokens[1]))
    assert node.stop() == 0
    assert_clean_log(node)
    log = "\n".join(node.lines)
    raw = b"".join(p.read_bytes() for p in tmp_path.glob("restcp.db*"))
    for secret in (ADMIN, *tokens):
        assert secret not in log
        assert secret.encode() not in raw
    # What the store does hold is the hash, so a stolen database is no token.
    with closing(sqlite3.connect(tmp_path / "restcp.db")) as db:
        hashes = [h for (h,) in db.execute("SELECT hash FROM tokens ORDER BY id")]
    assert [len(h) for h in hashes] == [64, 64, 64]


def test_healthz_is_open_and_tells_apps_only_to_the_admin(
    start_node: StartNode, tmp_path: Path
) -> None:
    lo, hi = free_port_range()
    args = serve_args(tmp_path / "restcp.db", lo, hi, "--api-token", ADMIN)
    node = start_node(*args)
    with held_port() as port:
        pass
    created = as_admin(node, "PUT", "/apps/secret-app-name/routes", {"port": port})
    assert created.status == 201, created
    _, token = new_token(node, "secret-app-name")
    node.stop()
    # Restarted while another process holds the route's port: the route is unbound.
    with held_port(port):
        node = start_node(*args)
        anonymous = node.call("GET", "/healthz")
        assert anonymous.status == 503
        assert anonymous.json() == {"status": "starting", "routes": 0}
        assert b"secret-app-name" not in anonymous.body
        # An app token is not the admin: the same as anonymous.
        assert node.call("GET", "/healthz", headers=bearer(token)).json() == anonymous.json()
        # A wrong token on an open endpoint is no error, just no one.
        assert node.call("GET", "/healthz", headers=bearer("x" * 40)).json() == anonymous.json()
        admin = as_admin(node, "GET", "/healthz")
        assert admin.status == 503
        assert [u["app"] for u in admin.json()["unbound"]] == ["secret-app-name"]


def test_without_an_admin_token_auth_is_off_and_tokens_can_be_prepared(
    node: Node,
) -> None:
    created = node.call("POST", "/apps/a/tokens")
    assert created.status == 201
    assert node.call("GET", "/apps/a/tokens").json()[0]["id"] == 1
    # Nothing asks for a token; one sent is not held against the caller.
    assert node.call("GET", "/apps").status == 200
    assert node.call("GET", "/apps", headers=bearer("x" * 40)).status == 200
    assert node.call("PUT", "/apps/b/routes").status == 201
    assert node.call("DELETE", "/apps/a/tokens/1").status == 204
    assert node.call("GET", "/healthz").json()["unbound"] == []
