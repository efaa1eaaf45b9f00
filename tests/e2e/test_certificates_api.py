"""Certificates over the API (docs/tls.md), on a real node: added, listed, shown, replaced
and removed; never a key in an answer; every invalid certificate a 422 naming its field that
changes nothing; the admin token only; and the same through the client and the CLI."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from restcp.client import Client, Conflict, Invalid
from restcp.client import NotFound as ClientNotFound
from tests.certs import Authority, Pem, encrypted, other_key
from tests.e2e.cli import restcp
from tests.e2e.conftest import StartNode, serve_args
from tests.helpers import Node, free_port_range

ADMIN = "admin-token-for-certificates"
AUTH = {"Authorization": f"Bearer {ADMIN}"}


@pytest.fixture(scope="module")
def ca() -> Authority:
    return Authority()


@pytest.fixture
def node(start_node: StartNode, tmp_path: Path) -> Node:
    lo, hi = free_port_range()
    return start_node(*serve_args(tmp_path / "restcp.db", lo, hi, "--api-token", ADMIN))


def call(node: Node, method: str, path: str, body: Any = None) -> Any:
    return node.call(method, path, body, headers=AUTH)


def body(name: str, pem: Pem) -> dict[str, str]:
    return {"name": name, "cert": pem.cert, "key": pem.key}


def test_add_list_show_replace_remove(node: Node, ca: Authority) -> None:
    web = ca.issue("web.example.com", ("web.example.com", "*.web.example.com", "127.0.0.1"))
    created = call(node, "POST", "/certificates", body("web", web))
    assert created.status == 201, created
    assert created.headers["Location"] == "/certificates/web"
    shown = created.json()
    assert shown["names"] == ["web.example.com", "*.web.example.com", "127.0.0.1"]
    assert shown["subject"] == "CN=web.example.com"
    assert shown["issuer"] == "CN=restcp test CA"
    assert shown["chain"] == 1
    assert shown["cert"] == web.cert
    assert "key" not in shown
    listed = call(node, "GET", "/certificates")
    assert listed.status == 200
    assert listed.json() == [shown]
    assert call(node, "GET", "/certificates/web").json() == shown
    # Nothing any answer carries is the key.
    for answer in (created, listed):
        assert b"PRIVATE KEY" not in answer.body
    # POST again: the name is taken (409), and the one stored stays.
    other = ca.issue("other.example.com")
    taken = call(node, "POST", "/certificates", body("web", other))
    assert taken.status == 409, taken
    assert call(node, "GET", "/certificates/web").json() == shown
    # PUT replaces (200), or adds (201).
    replaced = call(node, "PUT", "/certificates/web", {"cert": other.cert, "key": other.key})
    assert replaced.status == 200, replaced
    assert replaced.json()["names"] == ["other.example.com"]
    added = call(node, "PUT", "/certificates/api", {"cert": web.cert, "key": web.key})
    assert added.status == 201, added
    assert [c["name"] for c in call(node, "GET", "/certificates").json()] == ["api", "web"]
    assert call(node, "DELETE", "/certificates/web").status == 204
    assert call(node, "GET", "/certificates/web").status == 404
    assert call(node, "DELETE", "/certificates/web").status == 404
    assert [c["name"] for c in call(node, "GET", "/certificates").json()] == ["api"]


def test_invalid_certificates_are_refused_and_change_nothing(node: Node, ca: Authority) -> None:
    good = ca.issue("web.example.com")
    assert call(node, "POST", "/certificates", body("web", good)).status == 201
    before = call(node, "GET", "/certificates").json()
    other = Authority("another CA")
    intermediate_chain = good.cert + other.pem  # the CA named is not the leaf's issuer
    broken = good.cert.replace("MII", "MIX", 1)
    cases: list[tuple[dict[str, Any], str, str]] = [
        ({"cert": good.cert, "key": other_key()}, "key", "does not match"),
        ({"cert": "not a PEM", "key": good.key}, "cert", "no PEM certificate"),
        ({"cert": broken, "key": good.key}, "cert", "does not parse"),
        ({"cert": good.cert, "key": "nothing"}, "key", "no PEM private key"),
        ({"cert": good.cert, "key": good.key.replace("MI", "XX")}, "key", "does not parse"),
        ({"cert": good.cert, "key": encrypted(good.key)}, "key", "encrypted"),
        ({"cert": intermediate_chain, "key": good.key}, "cert", "did not issue"),
        ({"cert": (old := ca.issue("old", days=-0.5)).cert, "key": old.key}, "cert", "expired"),
        ({"cert": good.cert}, "key", "Field required"),
        ({"cert": good.cert, "key": good.key, "extra": 1}, "extra", "not permitted"),
        ({"cert": 5, "key": good.key}, "cert", "string"),
    ]
    for fields, field, reason in cases:
        for method, path, sent in (
            ("PUT", "/certificates/web", fields),
            ("POST", "/certificates", {"name": "new", **fields}),
        ):
            answer = call(node, method, path, sent)
            assert answer.status == 422, (fields, answer)
            assert answer.headers["Content-Type"].startswith("application/problem+json")
            problem = answer.json()
            assert [e["field"] for e in problem["errors"]] == [field], problem
            assert reason in problem["detail"], problem
    for name in ("..", "a/b", "x" * 65):
        assert call(node, "POST", "/certificates", body(name, good)).status == 422
    for segment in ("a%20b", "%2E%2E", "x" * 65):
        put = call(node, "PUT", f"/certificates/{segment}", {"cert": good.cert, "key": good.key})
        assert put.status == 400, (segment, put)
    assert call(node, "GET", "/certificates").json() == before


def test_admin_only(start_node: StartNode, tmp_path: Path, ca: Authority) -> None:
    lo, hi = free_port_range()
    node = start_node(*serve_args(tmp_path / "restcp.db", lo, hi, "--api-token", ADMIN))
    token = call(node, "POST", "/apps/web/tokens").json()["token"]
    app = {"Authorization": f"Bearer {token}"}
    good = ca.issue("web.example.com")
    for method, path, sent in (
        ("GET", "/certificates", None),
        ("POST", "/certificates", body("web", good)),
        ("GET", "/certificates/web", None),
        ("PUT", "/certificates/web", {"cert": good.cert, "key": good.key}),
        ("DELETE", "/certificates/web", None),
    ):
        assert node.call(method, path, sent).status == 401
        assert node.call(method, path, sent, headers=app).status == 403
    assert call(node, "GET", "/certificates").json() == []


def test_client_and_cli(node: Node, ca: Authority, tmp_path: Path) -> None:
    web = ca.issue("web.example.com")
    with Client(node.api, token=ADMIN) as client:
        made = client.certificates.add("web", web.cert, web.key)
        assert made.names == ["web.example.com"]
        with pytest.raises(Conflict):
            client.certificates.add("web", web.cert, web.key)
        with pytest.raises(Invalid):
            client.certificates.add("bad", web.cert, other_key())
        assert [c.name for c in client.certificates.list()] == ["web"]
        assert client.certificates.get("web") == made
        client.certificates.remove("web")
        with pytest.raises(ClientNotFound):
            client.certificates.get("web")
    cert_file, key_file = web.write(tmp_path, "web")
    env = {"RESTCP_TOKEN": ADMIN}
    added = restcp(node, "certificates", "add", "api", "--cert", str(cert_file), "--key",
                   str(key_file), "-o", "json", env=env)  # fmt: skip
    assert added.json()["names"] == ["web.example.com"]
    listed = restcp(node, "certificates", "list", env=env)
    assert listed.code == 0, listed.err
    assert "api" in listed.out
    assert "web.example.com" in listed.out
    shown = restcp(node, "certificates", "show", "api", "-o", "json", env=env)
    assert shown.json()["name"] == "api"
    assert "key" not in shown.json()
    other = ca.issue("other.example.com")
    other_cert, other_key_file = other.write(tmp_path, "other")
    replaced = restcp(node, "certificates", "replace", "api", "--cert", str(other_cert),
                      "--key", str(other_key_file), "-o", "json", env=env)  # fmt: skip
    assert replaced.json()["names"] == ["other.example.com"]
    mismatched = restcp(node, "certificates", "add", "bad", "--cert", str(cert_file), "--key",
                        str(other_key_file), env=env)  # fmt: skip
    assert mismatched.code == 1
    assert "does not match" in mismatched.err
    removed = restcp(node, "certificates", "remove", "api", env=env)
    assert removed.code == 0, removed.err
    assert "certificate api removed" in removed.out
    assert restcp(node, "certificates", "show", "api", env=env).code == 1
