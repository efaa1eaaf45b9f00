"""TLS towards backends (docs/tls.md, ``backend_tls``), on a real node with real TLS backends:
Python ssl servers and ``openssl s_server``. Bytes relayed exactly over the re-encrypted leg;
a backend whose certificate is refused (wrong CA, wrong name) is a failed connect, failed
over and counted; ``verify: false`` takes a self-signed backend; the server name is sent as
SNI; health probes handshake; half-close across the TLS leg; toxics still apply and splice
is never used; TLS termination in front of it; bad input is a 422 that changes nothing."""

from __future__ import annotations

import os
import re
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from restcp.client.metrics import Metrics
from tests.certs import Authority
from tests.e2e.conftest import StartNode, assert_clean_log, serve_args, wait_until
from tests.e2e.peers import Backend, echo, recv_all, recv_exactly
from tests.e2e.tls_peers import Certificate as CertFiles
from tests.e2e.tls_peers import HttpsBackend, TlsServer, make_certificate, tls_echo
from tests.helpers import Node, free_port_range


@pytest.fixture(scope="module")
def ca() -> Authority:
    return Authority()


@pytest.fixture(params=["uvloop", "asyncio", "native"])
def node(start_node: StartNode, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Node]:
    """A node on each loop: their TLS transports are two implementations. ``native`` asks
    for the native engine, which must leave every ``backend_tls`` route on asyncio."""
    lo, hi = free_port_range()
    native = request.param == "native"
    options = ("--engine", "native") if native else ("--loop", request.param)
    node = start_node(*serve_args(tmp_path / "restcp.db", lo, hi, *options))
    yield node
    print("\n".join(node.lines))  # shown with a failure
    assert_clean_log(node)
    # Nothing asyncio had to complain of (an SSL transport kept open past close_notify).
    assert not [ln for ln in node.lines if " ERROR " in ln or "WARNING asyncio" in ln]


@pytest.fixture
def servers() -> Iterator[list[TlsServer]]:
    made: list[TlsServer] = []
    yield made
    for server in made:
        server.close()


def create(node: Node, **body: Any) -> dict[str, Any]:
    created = node.call("PUT", "/apps/web/routes", body)
    assert created.status == 201, created
    route: dict[str, Any] = created.json()
    return route


def attach(node: Node, route: int, port: int, ip: str = "127.0.0.1") -> int:
    added = node.call("PUT", f"/apps/web/routes/{route}/backends", {"ip": ip, "port": port})
    assert added.status == 201, added
    backend_id: int = added.json()["id"]
    return backend_id


def samples(node: Node, name: str) -> list[Any]:
    return list(Metrics.parse(node.call("GET", "/metrics").body.decode()).samples(name))


def exchange(port: int, payload: bytes) -> bytes:
    """Send ``payload`` through the proxy from one thread while reading the echo in
    another; the echo, whole."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sender = threading.Thread(target=sock.sendall, args=(payload,))
        sender.start()
        got = recv_exactly(sock, len(payload))
        sender.join(timeout=10)
        return got


def test_bytes_relayed_exactly_both_ways_over_tls_to_the_backend(
    node: Node, ca: Authority, tmp_path: Path, servers: list[TlsServer]
) -> None:
    server = TlsServer(ca.issue("127.0.0.1"), tmp_path, tls_echo)
    servers.append(server)
    # splice: true would hand the sockets to the kernel: the backend would get plain bytes.
    route = create(node, splice=True, backend_tls={"ca": ca.pem})
    assert route["backend_tls"] == {
        "verify": True,
        "ca": ca.pem,
        "server_name": None,
        "certificate": None,
    }
    attach(node, route["id"], server.port)
    payload = os.urandom(3 * 1024 * 1024 + 17)
    assert exchange(route["port"], payload) == payload
    # An IP literal backend: checked against the certificate's IP address, no SNI sent.
    assert server.names == [None]
    line = node.wait_for_line(f"bytes_up={len(payload)} bytes_down={len(payload)}")
    assert "end=closed" in line or "end=client_closed" in line
    got = node.call("GET", f"/apps/web/routes/{route['id']}").json()
    assert got["backend_tls"]["ca"] == ca.pem


def test_a_refused_certificate_fails_over_and_is_counted(
    node: Node, ca: Authority, tmp_path: Path, servers: list[TlsServer]
) -> None:
    stranger = Authority("another CA")
    wrong_ca = TlsServer(stranger.issue("127.0.0.1"), tmp_path, tls_echo)
    wrong_name = TlsServer(ca.issue("other.example.com"), tmp_path, tls_echo)
    good = TlsServer(ca.issue("127.0.0.1"), tmp_path, tls_echo)
    servers.extend((wrong_ca, wrong_name, good))
    route = create(
        node,
        balance="round_robin",
        passive_fall=0,  # the bad ones stay in rotation: every client meets them
        backend_tls={"ca": ca.pem},
    )
    for server in (wrong_ca, wrong_name, good):
        attach(node, route["id"], server.port)
    for n in range(6):
        message = f"client {n}".encode()
        assert exchange(route["port"], message) == message
    assert good.handshakes == 6
    failed = {
        s.labels["backend"]: s.value
        for s in samples(node, "restcp_connect_failures_total")
        if s.labels["route"] == str(route["id"])
    }
    assert failed["1"] >= 1, failed
    assert failed["2"] >= 1, failed
    assert failed["3"] == 0, failed
    reasons = {
        s.labels["reason"]: s.value
        for s in samples(node, "restcp_backend_tls_handshake_failures_total")
    }
    assert reasons == {"certificate_refused": failed["1"] + failed["2"]}
    line = node.wait_for_line("TLS handshake with the backend failed (certificate_refused)")
    assert "backend=1" in line or "backend=2" in line
    node.wait_for_line("IP address mismatch")


def test_verify_false_takes_a_self_signed_openssl_backend(
    node: Node, tmp_path: Path, servers: list[TlsServer]
) -> None:
    """``openssl s_server`` with a self-signed certificate made by ``openssl req``: refused
    by the system's CA store when verified, served with ``verify: false``."""
    files = make_certificate(tmp_path)
    with _s_server(files) as port:
        route = create(node, backend_tls={}, max_connect_attempts=1)
        attach(node, route["id"], port)
        with socket.create_connection(("127.0.0.1", route["port"]), timeout=10) as sock:
            assert recv_all(sock) == b""  # refused: the client is let go
        node.wait_for_line("self-signed certificate")
        patched = node.call(
            "PATCH", f"/apps/web/routes/{route['id']}", {"backend_tls": {"verify": False}}
        )
        assert patched.status == 200, patched
        with socket.create_connection(("127.0.0.1", route["port"]), timeout=10) as sock:
            sock.sendall(b"hello openssl\n")
            # s_server -rev answers each line reversed.
            assert recv_exactly(sock, 14) == b"lssnepo olleh\n"


class _s_server:
    def __init__(self, files: CertFiles) -> None:
        self._files = files
        self._proc: subprocess.Popen[str] | None = None

    def __enter__(self) -> int:
        self._proc = subprocess.Popen(
            ["openssl", "s_server", "-accept", "127.0.0.1:0", "-rev", "-naccept", "4",
             "-cert", str(self._files.cert), "-key", str(self._files.key)],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
        assert self._proc.stdout is not None
        # Its readiness line names the port it took.
        for line in self._proc.stdout:
            found = re.match(r"ACCEPT .*:(\d+)$", line.strip())
            if found:
                return int(found.group(1))
        raise AssertionError("openssl s_server did not start")

    def __exit__(self, *exc: object) -> None:
        assert self._proc is not None
        self._proc.terminate()
        self._proc.wait(timeout=10)
        assert self._proc.stdout is not None
        self._proc.stdout.close()


def test_server_name_is_sent_as_sni_and_checked(
    node: Node, ca: Authority, tmp_path: Path, servers: list[TlsServer]
) -> None:
    server = TlsServer(ca.issue("db.internal"), tmp_path, tls_echo)
    local = TlsServer(ca.issue("localhost"), tmp_path, tls_echo)
    servers.extend((server, local))
    named = create(node, backend_tls={"ca": ca.pem, "server_name": "DB.internal"})
    assert named["backend_tls"]["server_name"] == "db.internal"
    attach(node, named["id"], server.port)
    assert exchange(named["port"], b"ping") == b"ping"
    assert server.names == ["db.internal"]
    # Without server_name, a backend known by a host name is asked for that name.
    by_host = create(node, backend_tls={"ca": ca.pem})
    attach(node, by_host["id"], local.port, ip="localhost")
    assert exchange(by_host["port"], b"pong") == b"pong"
    assert local.names == ["localhost"]


def test_client_certificate_shown_to_a_backend_that_asks(
    node: Node, ca: Authority, tmp_path: Path, servers: list[TlsServer]
) -> None:
    server = TlsServer(ca.issue("127.0.0.1"), tmp_path, tls_echo, client_ca=ca)
    servers.append(server)
    pem = ca.issue("restcp-client", client=True)
    added = node.call("POST", "/certificates", {"name": "client", "cert": pem.cert, "key": pem.key})
    assert added.status == 201, added
    route = create(node, backend_tls={"ca": ca.pem, "certificate": "client"})
    attach(node, route["id"], server.port)
    assert exchange(route["port"], b"mtls") == b"mtls"
    peer = server.peers[0]
    assert peer is not None
    assert dict(x[0] for x in peer["subject"])["commonName"] == "restcp-client"
    # Replaced: the next connect shows the new one.
    renewed = ca.issue("restcp-client-renewed", client=True)
    put = node.call("PUT", "/certificates/client", {"cert": renewed.cert, "key": renewed.key})
    assert put.status == 200, put
    assert exchange(route["port"], b"again") == b"again"
    peer = server.peers[-1]
    assert peer is not None
    assert dict(x[0] for x in peer["subject"])["commonName"] == "restcp-client-renewed"
    # In use: not removable.
    assert node.call("DELETE", "/certificates/client").status == 409


def test_health_checks_handshake(
    node: Node, ca: Authority, tmp_path: Path, servers: list[TlsServer]
) -> None:
    """A plain TCP backend and one with a refused certificate are down, a good one up; an
    HTTP check goes inside the TLS session."""
    bad = TlsServer(Authority("another CA").issue("127.0.0.1"), tmp_path, tls_echo)
    good = TlsServer(ca.issue("127.0.0.1"), tmp_path, tls_echo)
    servers.extend((bad, good))
    check = {"interval": 0.1, "timeout": 1.0, "rise": 1, "fall": 1, "initial": "down"}
    route = create(node, health_check=check, backend_tls={"ca": ca.pem})
    with Backend(echo) as plain:
        for port in (plain.port, bad.port, good.port):
            attach(node, route["id"], port)

        def health() -> list[str]:
            got = node.call("GET", f"/apps/web/routes/{route['id']}").json()
            return [b["health"] for b in got["backends"]]

        wait_until(lambda: health() == ["down", "down", "up"], "TLS checks")
        backends = node.call("GET", f"/apps/web/routes/{route['id']}").json()["backends"]
        assert backends[0]["last_check"]["reason"].startswith("TLS handshake failed"), backends
        assert "certificate is refused" in backends[1]["last_check"]["reason"], backends
    # HTTPS: the request and the status line go inside the session.
    files = CertFiles(*ca.issue("127.0.0.1").write(tmp_path, "https"))
    https = HttpsBackend("tagged", files)
    try:
        http = create(
            node,
            health_check={**check, "send": "GET / HTTP/1.0\r\n\r\n", "expect": "HTTP/1.0 200"},
            backend_tls={"ca": ca.pem},
        )
        attach(node, http["id"], https.port)
        attach(node, http["id"], good.port)  # echoes the request: not a 200
        wait_until(
            lambda: (
                [
                    b["health"]
                    for b in node.call("GET", f"/apps/web/routes/{http['id']}").json()["backends"]
                ]
                == ["up", "down"]
            ),
            "HTTPS check",
        )
    finally:
        https.close()


def test_half_close_across_the_tls_leg(
    node: Node, ca: Authority, tmp_path: Path, servers: list[TlsServer]
) -> None:
    """A client's FIN reaches the backend as close_notify after every byte before it; a
    backend's close_notify reaches the client as a FIN after every byte before it. Each
    ends the connection (asyncio's TLS has no half-close): docs/tls.md."""
    received: list[bytes] = []

    def collect(tls: ssl.SSLSocket) -> None:
        data = b""
        while chunk := tls.recv(65536):  # b"": the peer's close_notify
            data += chunk
        received.append(data)
        tls.unwrap()

    payload = os.urandom(512 * 1024)

    def send_then_close(tls: ssl.SSLSocket) -> None:
        tls.sendall(payload)
        tls.unwrap()  # close_notify, and wait for the proxy's

    upload = TlsServer(ca.issue("127.0.0.1"), tmp_path, collect)
    download = TlsServer(ca.issue("127.0.0.1"), tmp_path, send_then_close)
    servers.extend((upload, download))
    up = create(node, backend_tls={"ca": ca.pem})
    attach(node, up["id"], upload.port)
    with socket.create_connection(("127.0.0.1", up["port"]), timeout=10) as sock:
        sock.sendall(payload)
        sock.shutdown(socket.SHUT_WR)
        assert recv_all(sock) == b""  # then the connection ends
    wait_until(lambda: bool(received), "the backend's read of close_notify")
    assert received == [payload]
    down = create(node, backend_tls={"ca": ca.pem})
    attach(node, down["id"], download.port)
    with socket.create_connection(("127.0.0.1", down["port"]), timeout=10) as sock:
        assert recv_all(sock) == payload


def test_a_toxic_applies_on_the_tls_leg(
    node: Node, ca: Authority, tmp_path: Path, servers: list[TlsServer]
) -> None:
    server = TlsServer(ca.issue("127.0.0.1"), tmp_path, tls_echo)
    servers.append(server)
    route = create(node, backend_tls={"ca": ca.pem})
    attach(node, route["id"], server.port)
    added = node.call(
        "POST",
        f"/apps/web/routes/{route['id']}/toxics",
        {"name": "slow", "type": "latency", "stream": "downstream", "attributes": {"latency": 300}},
    )
    assert added.status in (200, 201), added
    payload = os.urandom(256 * 1024)
    started = time.monotonic()
    assert exchange(route["port"], payload) == payload
    assert time.monotonic() - started >= 0.3
    node.wait_for_line("toxics=slow")


def test_terminated_then_re_encrypted(
    node: Node, ca: Authority, tmp_path: Path, servers: list[TlsServer]
) -> None:
    server = TlsServer(ca.issue("db.internal"), tmp_path, tls_echo)
    servers.append(server)
    front = ca.issue("web.example.com")
    added = node.call(
        "POST", "/certificates", {"name": "web", "cert": front.cert, "key": front.key}
    )
    assert added.status == 201, added
    route = create(
        node,
        tls={"certificates": ["web"]},
        backend_tls={"ca": ca.pem, "server_name": "db.internal"},
    )
    attach(node, route["id"], server.port)
    context = ssl.create_default_context(cadata=ca.pem)
    payload = os.urandom(200_000)
    with (
        socket.create_connection(("127.0.0.1", route["port"]), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname="web.example.com") as tls,
    ):
        # One thread, a chunk at a time: an SSLSocket is not for two threads at once.
        echoed = b""
        for at in range(0, len(payload), 16384):
            chunk = payload[at : at + 16384]
            tls.sendall(chunk)
            echoed += recv_exactly(tls, len(chunk))
        assert echoed == payload
    assert server.names == ["db.internal"]


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ({"backend_tls": {"verify": False, "ca": "x"}}, "verify false"),
        ({"backend_tls": {"ca": "not a pem"}}, "backend_tls.ca"),
        ({"backend_tls": {"certificate": "nowhere"}}, "backend_tls.certificate"),
        ({"backend_tls": {"server_name": "not a name!"}}, "server_name"),
        ({"backend_tls": {"verify": "yes"}}, "verify"),
        ({"backend_tls": {"sni": "x"}}, "sni"),
        ({"backend_tls": {}, "proxy_protocol": "v2"}, "PROXY protocol"),
        ({"backend_tls": {}, "sni": ["a.example.com"]}, "passes its clients' TLS"),
    ],
)
def test_bad_backend_tls_is_422_and_changes_nothing(
    node: Node, body: dict[str, Any], reason: str
) -> None:
    route = create(node)
    answer = node.call("PATCH", f"/apps/web/routes/{route['id']}", body)
    assert answer.status == 422, answer
    assert answer.headers["Content-Type"].startswith("application/problem+json")
    assert reason in answer.body.decode(), answer.body
    assert node.call("GET", f"/apps/web/routes/{route['id']}").json() == route
    created = node.call("PUT", "/apps/web/routes", body)
    assert created.status == 422, created
    assert len(node.call("GET", "/apps/web/routes").json()) == 1


def test_a_backend_proxy_protocol_and_backend_tls_exclude_each_other(node: Node) -> None:
    tls_route = create(node, backend_tls={})
    answer = node.call(
        "PUT",
        f"/apps/web/routes/{tls_route['id']}/backends",
        {"ip": "127.0.0.1", "port": 9, "proxy_protocol": "v2"},
    )
    assert answer.status == 422, answer
    assert "PROXY protocol" in answer.body.decode()
    backend = attach(node, tls_route["id"], 9)
    patch = node.call(
        "PATCH", f"/apps/web/routes/{tls_route['id']}/backends/{backend}", {"proxy_protocol": "v1"}
    )
    assert patch.status == 422, patch
    assert (
        node.call("GET", f"/apps/web/routes/{tls_route['id']}/backends/{backend}").json()[
            "proxy_protocol"
        ]
        is None
    )
    plain = create(node)
    sent = node.call(
        "PUT",
        f"/apps/web/routes/{plain['id']}/backends",
        {"ip": "127.0.0.1", "port": 9, "proxy_protocol": "v2"},
    )
    assert sent.status == 201, sent
    refused = node.call("PATCH", f"/apps/web/routes/{plain['id']}", {"backend_tls": {}})
    assert refused.status == 422, refused
    assert node.call("GET", f"/apps/web/routes/{plain['id']}").json()["backend_tls"] is None
