"""What a web page could make a browser do to a restcp on the same machine: DNS rebinding (its
own name, now pointing at 127.0.0.1, in the Host header) and cross-site requests (its Origin).
Both are refused, with or without tokens, and no answer carries CORS headers."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import StartNode, serve_args, snapshot
from tests.e2e.test_auth import ADMIN, bearer
from tests.helpers import Node, Response, free_port_range

MUTATIONS: list[tuple[str, str, Any]] = [
    ("PUT", "/apps/a/routes", None),
    ("POST", "/apps/a/routes", {}),
    ("PATCH", "/apps/a/routes/1", {"balance": "round_robin"}),
    ("PUT", "/apps/a/routes/1/backends", {"ip": "127.0.0.1", "port": 9}),
    ("POST", "/apps/a/routes/1/backends/1", {"ip": "127.0.0.1", "port": 10}),
    ("PATCH", "/apps/a/routes/1/backends/1", {"weight": 5}),
    ("DELETE", "/apps/a/routes/1/backends/1", None),
    ("DELETE", "/apps/a/routes/1", None),
    ("POST", "/apps/a/tokens", None),
]


def populated(node: Node) -> Node:
    assert node.call("PUT", "/apps/a/routes").status == 201
    added = node.call("PUT", "/apps/a/routes/1/backends", {"ip": "127.0.0.1", "port": 9})
    assert added.status == 201
    return node


def refused(response: Response) -> None:
    assert response.status == 403, response
    assert response.headers["Content-Type"].startswith("application/problem+json")
    assert response.json()["status"] == 403


def no_cors(response: Response) -> None:
    assert not [h for h in response.headers if h.lower().startswith("access-control-")], response


def own_origin(node: Node) -> str:
    return node.api  # http://127.0.0.1:PORT


FOREIGN_ORIGINS = [
    "http://evil.example",
    "https://evil.example",
    "null",
    "http://localhost:1",  # another web server on this machine
    "http://127.0.0.1:1",
    "http://127.0.0.1:{port}.evil.example",
    "http://127.0.0.1:{port}@evil.example",
    "http://evil.example#@127.0.0.1:{port}",
    "http://127.0.0.1:{port}/path",
    "file://",
    "ftp://127.0.0.1:{port}",
    "http://[::1]:{port}",  # the right port of another address than the Host's
    "",
]


@pytest.mark.parametrize("origin", FOREIGN_ORIGINS)
def test_a_mutation_from_another_origin_is_refused_and_changes_nothing(
    node: Node, origin: str
) -> None:
    populated(node)
    before = snapshot(node)
    for method, path, body in MUTATIONS:
        response = node.call(
            method, path, body, headers={"Origin": origin.format(port=node.api_port)}
        )
        refused(response)
        no_cors(response)
        assert "cross-origin" in response.json()["detail"]
    assert snapshot(node) == before


def test_the_api_s_own_origin_may_change_it(node: Node) -> None:
    populated(node)
    port = node.api_port
    for host, origin in (
        (f"127.0.0.1:{port}", f"http://127.0.0.1:{port}"),
        (f"localhost:{port}", f"http://localhost:{port}"),
        (f"LOCALHOST:{port}", f"http://localhost:{port}"),
        (f"[::1]:{port}", f"http://[::1]:{port}"),
        (f"[0:0::1]:{port}", f"http://[::1]:{port}"),
        ("localhost", "http://localhost"),  # behind a proxy on port 80
    ):
        response = node.call(
            "PATCH",
            "/apps/a/routes/1",
            {"idle_timeout": 7},
            headers={"Host": host, "Origin": origin},
        )
        assert response.status == 200, (host, origin, response)
        no_cors(response)
    # Without an Origin (curl, scripts) is fine too, and same-origin fetches say so.
    assert node.call("PATCH", "/apps/a/routes/1", {}).status == 200
    headers = {"Origin": own_origin(node), "Sec-Fetch-Site": "same-origin"}
    assert node.call("PATCH", "/apps/a/routes/1", {}, headers=headers).status == 200


@pytest.mark.parametrize("site", ["cross-site", "same-site", "Cross-Site"])
def test_a_fetch_the_browser_calls_cross_site_is_refused(node: Node, site: str) -> None:
    populated(node)
    before = snapshot(node)
    for method, path, body in MUTATIONS:
        refused(node.call(method, path, body, headers={"Sec-Fetch-Site": site}))
    assert snapshot(node) == before


REBOUND_HOSTS = [
    "evil.example",
    "evil.example:{port}",
    "localhost.evil.example:{port}",
    "127.0.0.1.nip.io:{port}",
    "localhost:{port}.evil.example",
    "10.1.2.3:{port}",  # not this API's address, and not loopback
    "0.0.0.0:{port}",
    "[::]:{port}",
    "[::1",
    "127.0.0.1:99999",
    "",
]


@pytest.mark.parametrize("host", REBOUND_HOSTS)
def test_a_request_for_a_foreign_host_name_is_refused(node: Node, host: str) -> None:
    populated(node)
    before = snapshot(node)
    headers = {"Host": host.format(port=node.api_port)}
    for method, path, body in [*MUTATIONS, ("GET", "/apps", None), ("GET", "/apps/a/routes", None)]:
        response = node.call(method, path, body, headers=headers)
        refused(response)
        no_cors(response)
    assert snapshot(node) == before
    # Nothing there is secret: a probe or a load balancer may use any name.
    assert node.call("GET", "/healthz", headers=headers).status == 200
    assert node.call("GET", "/openapi.json", headers=headers).status == 200


def test_loopback_names_and_addresses_are_this_api(node: Node) -> None:
    for host in (
        "localhost",
        "localhost.",
        "127.0.0.1",
        "127.0.0.2",
        "[::1]",
        "[::ffff:127.0.0.1]",
    ):
        response = node.call("GET", "/apps", headers={"Host": f"{host}:{node.api_port}"})
        assert response.status == 200, (host, response)


def test_two_host_headers_are_refused(node: Node) -> None:
    before = snapshot(node)
    for hosts in (("127.0.0.1", "evil.example"), ("evil.example", "127.0.0.1")):
        request = (
            f"PUT /apps/a/routes HTTP/1.1\r\nHost: {hosts[0]}\r\nHost: {hosts[1]}\r\n"
            "Content-Length: 0\r\nConnection: close\r\n\r\n"
        ).encode()
        with socket.create_connection(("127.0.0.1", node.api_port), timeout=10) as sock:
            sock.sendall(request)
            reply = b""
            while chunk := sock.recv(65536):
                reply += chunk
        # aiohttp's parser refuses it before restcp sees it (400); restcp would say 403.
        assert reply.split(b" ")[1] in (b"400", b"403"), reply
    assert snapshot(node) == before


def test_no_answer_carries_cors_headers(node: Node) -> None:
    populated(node)
    evil = {"Origin": "http://evil.example"}
    preflight = {
        **evil,
        "Access-Control-Request-Method": "PUT",
        "Access-Control-Request-Headers": "authorization, content-type",
    }
    for method, path, headers in (
        ("OPTIONS", "/apps/a/routes", preflight),
        ("OPTIONS", "/apps", preflight),
        ("GET", "/apps", evil),
        ("GET", "/apps/a/routes", evil),
        ("GET", "/healthz", evil),
        ("GET", "/openapi.json", evil),
        ("GET", "/nowhere", evil),
    ):
        response = node.call(method, path, headers=headers)
        assert response.status != 204, response  # no preflight is ever approved
        no_cors(response)


def test_allowed_host_names_can_be_added(start_node: StartNode, tmp_path: Path) -> None:
    lo, hi = free_port_range()
    args = serve_args(tmp_path / "restcp.db", lo, hi, "--api-allowed-host", "restcp.internal")
    node = start_node(*args, env={"RESTCP_API_ALLOWED_HOST": "ignored.example"})
    port = node.api_port
    allowed = {"Host": f"restcp.internal:{port}", "Origin": f"http://restcp.internal:{port}"}
    assert node.call("PUT", "/apps/a/routes", headers=allowed).status == 201
    # The flag wins over the variable; a name not given stays foreign.
    for name in ("ignored.example", "evil.restcp.internal", "restcp.internal.evil.example"):
        refused(node.call("PUT", "/apps/a/routes", headers={"Host": name}))
    # An allowed name is not an allowed origin for requests to another name.
    refused(
        node.call(
            "PUT",
            "/apps/a/routes",
            headers={"Host": f"127.0.0.1:{port}", "Origin": f"http://restcp.internal:{port}"},
        )
    )


def test_the_checks_hold_with_tokens_too(start_node: StartNode, tmp_path: Path) -> None:
    """A token in a script of the attacker's page is not how this goes wrong, but a browser
    that holds one (a developer's tool) must still not be steered by another site."""
    lo, hi = free_port_range()
    node = start_node(*serve_args(tmp_path / "restcp.db", lo, hi, "--api-token", ADMIN))
    for headers in ({"Host": "evil.example"}, {"Origin": "http://evil.example"}):
        refused(node.call("PUT", "/apps/a/routes", headers={**bearer(ADMIN), **headers}))
    assert node.call("GET", "/apps", headers=bearer(ADMIN)).json() == []
