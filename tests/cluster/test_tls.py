"""Issue #14 in a cluster: certificates are stored in Redis and a route that terminates TLS
is served with them by the node holding its frontend IP, whichever node they were written
through. A replaced certificate is a change of each route that names it: the write answers
once the serving node applied it (the next handshake there gets it), 202 when that node is
too slow, 503 with nothing stored when none is alive."""

from __future__ import annotations

import signal
import socket
import ssl
from collections.abc import Callable
from pathlib import Path

from tests.certs import Authority, Pem
from tests.cluster.conftest import (
    PinnedRedisServer,
    StartNode,
    attach,
    create,
    poll,
    ready,
    wait_lines,
)
from tests.e2e.peers import Backend, recv_exactly
from tests.e2e.tls_peers import TlsServer, tls_echo
from tests.helpers import Node

A, C = "127.0.0.2", "127.0.0.3"


def put_certificate(node: Node, name: str, pem: Pem) -> int:
    return node.call("PUT", f"/certificates/{name}", {"cert": pem.cert, "key": pem.key}).status


def served(ip: str, port: int, context: ssl.SSLContext, name: str) -> tuple[str, bytes]:
    """The CN of the certificate ``ip:port`` serves for ``name``, and what it relays."""
    with (
        socket.create_connection((ip, port), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname=name) as tls,
    ):
        cn = dict(x[0] for x in tls.getpeercert()["subject"])["commonName"]
        chunks = b""
        while data := tls.recv(100):
            chunks += data
        return cn, chunks


def test_a_certificate_written_through_another_node_serves_the_route(
    start_node: StartNode, banner: Callable[[bytes], Backend], tmp_path: Path
) -> None:
    ca = Authority()
    context = ssl.create_default_context(cafile=str(ca.write(tmp_path)))
    a, c = ready(
        start_node(A, "--provision-timeout", "0.5", ready=False), start_node(C, ready=False)
    )
    # Stored through A; the route, served by C, is created through A too.
    assert put_certificate(a, "web", ca.issue("web.example.com")) == 201
    assert [x["name"] for x in c.call("GET", "/certificates").json()] == ["web"]
    route = create(a, "web", frontend_ip=C, tls={"certificates": ["web"]})
    attach(a, "web", route["id"], banner(b"plain").port)
    assert served(C, route["port"], context, "web.example.com") == ("web.example.com", b"plain")

    # Replaced through A: the answer means C serves it.
    renewed = ca.issue("renewed.example.com", ("web.example.com",))
    assert put_certificate(a, "web", renewed) == 200
    assert served(C, route["port"], context, "web.example.com") == (
        "renewed.example.com",
        b"plain",
    )

    # C too slow: 202, stored, and served once C runs again.
    third = ca.issue("third.example.com", ("web.example.com",))
    c.proc.send_signal(signal.SIGSTOP)
    try:
        slow = a.call("PUT", "/certificates/web", {"cert": third.cert, "key": third.key})
        assert slow.status == 202, slow
        assert slow.json()["status"] == "provisioning"
        assert "third.example.com" in slow.json()["subject"]
    finally:
        c.proc.send_signal(signal.SIGCONT)
    poll(
        lambda: served(C, route["port"], context, "web.example.com")[0] == "third.example.com",
        "C serves the third certificate",
    )

    # In use: neither node removes it.
    for node in (a, c):
        assert node.call("DELETE", "/certificates/web").status == 409

    # C gone: a replacement is 503 and stores nothing.
    before = a.call("GET", "/certificates/web").json()
    c.stop(signal.SIGKILL)
    fourth = ca.issue("fourth.example.com", ("web.example.com",))
    gone = a.call("PUT", "/certificates/web", {"cert": fourth.cert, "key": fourth.key})
    assert gone.status == 503, gone
    assert a.call("GET", "/certificates/web").json() == before
    assert "Traceback" not in "\n".join(a.lines)


def test_a_node_started_with_redis_down_terminates_tls_from_its_snapshot(
    start_node: StartNode,
    banner: Callable[[bytes], Backend],
    redis_server: PinnedRedisServer,
    tmp_path: Path,
) -> None:
    ca = Authority()
    context = ssl.create_default_context(cafile=str(ca.write(tmp_path)))
    snapshot = tmp_path / "c.db"
    c = start_node(C, "--lease-ttl", "1", snapshot=snapshot)
    assert put_certificate(c, "web", ca.issue("web.example.com")) == 201
    route = create(c, "web", tls={"certificates": ["web"]})
    attach(c, "web", route["id"], banner(b"plain").port)
    renewed = ca.issue("renewed.example.com", ("web.example.com",))
    assert put_certificate(c, "web", renewed) == 200
    assert c.stop() == 0
    redis_server.kill()

    c = start_node(C, "--lease-ttl", "1", snapshot=snapshot)
    assert c.call("GET", "/healthz").json()["cluster"]["redis"] == "unreachable"
    assert served(C, route["port"], context, "web.example.com") == (
        "renewed.example.com",
        b"plain",
    )
    redis_server.start()
    wait_lines(c, "Redis is back: resynced", 1)
    assert served(C, route["port"], context, "web.example.com")[0] == "renewed.example.com"


def test_tls_to_backends_through_another_node_and_from_the_snapshot(
    start_node: StartNode, redis_server: PinnedRedisServer, tmp_path: Path
) -> None:
    """``backend_tls`` written through A is applied by C, which serves the route: its
    backend (mTLS) gets C's handshake with the client certificate stored through A; C
    restarted with Redis down still re-encrypts from its snapshot, client certificate
    included."""
    ca = Authority()
    backend = TlsServer(ca.issue("db.internal"), tmp_path, tls_echo, client_ca=ca)
    try:
        snapshot = tmp_path / "c.db"
        a, c = ready(
            start_node(A, ready=False),
            start_node(C, "--lease-ttl", "1", ready=False, snapshot=snapshot),
        )
        assert put_certificate(a, "client", ca.issue("restcp-client", client=True)) == 201
        route = create(a, "db", frontend_ip=C)
        attach(a, "db", route["id"], backend.port)
        tls = {"ca": ca.pem, "server_name": "db.internal", "certificate": "client"}
        patched = a.call("PATCH", f"/apps/db/routes/{route['id']}", {"backend_tls": tls})
        assert patched.status == 200, patched
        assert c.call("GET", f"/apps/db/routes/{route['id']}").json()["backend_tls"] == {
            "verify": True,
            **tls,
        }
        assert _echo(C, route["port"], b"through C") == b"through C"
        assert backend.names == ["db.internal"]
        peer = backend.peers[-1]
        assert peer is not None
        assert dict(x[0] for x in peer["subject"])["commonName"] == "restcp-client"

        assert c.stop() == 0
        redis_server.kill()
        c = start_node(C, "--lease-ttl", "1", snapshot=snapshot)
        assert c.call("GET", "/healthz").json()["cluster"]["redis"] == "unreachable"
        assert _echo(C, route["port"], b"from the snapshot") == b"from the snapshot"
        assert backend.handshakes == 2
        assert "Traceback" not in "\n".join(c.lines)
    finally:
        backend.close()


def _echo(ip: str, port: int, message: bytes) -> bytes:
    with socket.create_connection((ip, port), timeout=5) as sock:
        sock.sendall(message)
        return recv_exactly(sock, len(message))
