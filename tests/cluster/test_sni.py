"""SNI routing in a cluster: routes sharing a port share their frontend IP, so the node
holding the IP's lease serves them all; creates and changes through another node are
applied there, and their name clashes are refused wherever they are asked."""

from __future__ import annotations

import ssl
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cluster.conftest import StartNode, attach, create, ready
from tests.e2e.tls_peers import Certificate, TlsBackend, ask, make_certificate

A, C = "127.0.0.2", "127.0.0.3"


@pytest.fixture
def backends(tmp_path: Path) -> Iterator[dict[str, TlsBackend]]:
    certificate: Certificate = make_certificate(tmp_path)
    made = {tag: TlsBackend(tag, certificate) for tag in ("db1", "default", "wild")}
    yield made
    for backend in made.values():
        backend.close()


def test_routes_sharing_a_port_through_any_node(
    start_node: StartNode, backends: dict[str, TlsBackend]
) -> None:
    a, c = ready(start_node(A, ready=False), start_node(C, ready=False))
    # Created through A for C's IP: C binds the port, then the second route joins it there.
    db1 = create(a, "db", frontend_ip=C, sni=["db1.example.com"])
    port = db1["port"]
    fallback = create(a, "web", frontend_ip=C, port=port, sni=["*"])
    assert (fallback["frontend_ip"], fallback["port"]) == (C, port)
    attach(a, "db", db1["id"], backends["db1"].port)
    attach(a, "web", fallback["id"], backends["default"].port)
    assert ask(port, "db1.example.com", host=C) == b"db1|db1.example.com|hello\n"
    assert ask(port, "other.example.org", host=C).startswith(b"default|")
    assert c.call("GET", "/healthz").json()["routes"] == 2

    # A name taken on the port is 409 through either node, and nothing is stored.
    for node in (a, c):
        refused = node.call(
            "PUT", "/apps/x/routes", {"frontend_ip": C, "port": port, "sni": ["db1.example.com"]}
        )
        assert refused.status == 409, refused
        assert "db1.example.com" in refused.json()["detail"]
        refused = node.call("PUT", "/apps/x/routes", {"frontend_ip": C, "port": port})
        assert refused.status == 409, refused
    assert a.call("GET", "/apps/x/routes").status == 404
    patched = a.call("PATCH", f"/apps/web/routes/{fallback['id']}", {"sni": ["db1.example.com"]})
    assert patched.status == 409, patched

    # A change through A is applied on C before A answers: the next client sees it.
    patched = a.call("PATCH", f"/apps/web/routes/{fallback['id']}", {"sni": ["*.example.com"]})
    assert patched.status == 200, patched
    assert ask(port, "x.example.com", host=C).startswith(b"default|")
    with pytest.raises((ssl.SSLError, ConnectionResetError)):
        ask(port, "other.example.org", host=C)  # no default any more: closed
