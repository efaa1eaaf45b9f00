"""TLS terminated by a route (docs/tls.md), on a real node, with real clients: Python's ssl,
openssl s_client and curl. The backend sees plain bytes; the certificate follows the SNI;
a replaced certificate serves new handshakes while an open connection keeps its session;
mTLS accepts a client the CA issued and refuses others; TLS 1.1 and a client that sends
nothing are refused and counted; the access line names the version, cipher and SNI; a
route's certificates must exist, and one in use cannot be removed."""

from __future__ import annotations

import http.server
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from proxyprotocol.result import ProxyResult, ProxyResultIPv4
from proxyprotocol.v2 import ProxyProtocolV2

from restcp.client.metrics import Metrics
from tests.certs import Authority, Pem
from tests.e2e.conftest import StartNode, serve_args, wait_until
from tests.e2e.peers import Backend, attach, dial, echo, held_and_reset, recv_exactly
from tests.helpers import Node, free_port_range, tcp_states

HOSTS = ("web.example.com", "api.example.com")


@pytest.fixture(scope="module")
def ca() -> Authority:
    return Authority()


@pytest.fixture
def node(start_node: StartNode, tmp_path: Path) -> Node:
    lo, hi = free_port_range()
    return start_node(*serve_args(tmp_path / "restcp.db", lo, hi))


@pytest.fixture
def backend() -> Iterator[Backend]:
    with Backend(echo) as server:
        yield server


def add_certificate(node: Node, name: str, pem: Pem) -> None:
    answer = node.call("POST", "/certificates", {"name": name, "cert": pem.cert, "key": pem.key})
    assert answer.status == 201, answer


def tls_route(node: Node, backend: Backend, **tls: Any) -> int:
    created = node.call("PUT", "/apps/web/routes", {"tls": tls})
    assert created.status == 201, created
    route = created.json()
    assert route["tls"]["certificates"] == tls["certificates"]
    added = node.call(
        "PUT", f"/apps/web/routes/{route['id']}/backends", {"ip": "127.0.0.1", "port": backend.port}
    )
    assert added.status == 201, added
    return int(route["port"])


def client_context(ca: Authority, tmp_path: Path, **kw: Any) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(ca.write(tmp_path)))
    for name, value in kw.items():
        setattr(context, name, value)
    return context


def handshake(port: int, context: ssl.SSLContext, name: str | None) -> ssl.SSLSocket:
    raw = socket.create_connection(("127.0.0.1", port), timeout=5)
    return context.wrap_socket(raw, server_hostname=name)


def refused(port: int, context: ssl.SSLContext, name: str) -> bool:
    """Whether the proxy refuses the handshake. With TLS 1.3 the server judges the client's
    certificate after the client thinks the handshake is done: its refusal (an alert, or
    the end of the connection) comes with the first read."""
    try:
        with handshake(port, context, name) as tls:
            tls.sendall(b"x")
            return tls.recv(1) == b""
    except (ssl.SSLError, ConnectionError):
        return True


def served_cn(tls: ssl.SSLSocket) -> str:
    peer = tls.getpeercert()
    return dict(x[0] for x in peer["subject"])["commonName"]


def failures(node: Node) -> dict[str, float]:
    metrics = Metrics.parse(node.call("GET", "/metrics").body.decode())
    return {
        s.labels["reason"]: s.value for s in metrics.samples("restcp_tls_handshake_failures_total")
    }


def test_terminates_and_picks_the_certificate_by_sni(
    node: Node, backend: Backend, ca: Authority, tmp_path: Path
) -> None:
    add_certificate(node, "web", ca.issue("web.example.com"))
    add_certificate(
        node, "api", ca.issue("api.example.com", ("api.example.com", "*.api.example.com"))
    )
    port = tls_route(node, backend, certificates=["web", "api"])
    context = client_context(ca, tmp_path)
    for name, cn in (
        ("web.example.com", "web.example.com"),
        ("api.example.com", "api.example.com"),
        ("x.api.example.com", "api.example.com"),
        ("WEB.example.com", "web.example.com"),
    ):
        with handshake(port, context, name) as tls:
            assert served_cn(tls) == cn
            assert tls.version() == "TLSv1.3"
            tls.sendall(b"hello " + name.encode())
            # The backend echoes what it got: plain bytes, relayed both ways.
            assert recv_exactly(tls, 6 + len(name)) == b"hello " + name.encode()
    # No SNI, or a name no certificate has: the first certificate.
    plain = client_context(ca, tmp_path, check_hostname=False)
    with handshake(port, plain, None) as tls:
        assert served_cn(tls) == "web.example.com"
    with handshake(port, plain, "other.example.org") as tls:
        assert served_cn(tls) == "web.example.com"
    line = node.wait_for_line("sni=x.api.example.com")
    assert "tls=TLSv1.3 cipher=TLS_" in line
    assert "bytes_up=23 bytes_down=23" in line
    # curl, as a user would, through the name the certificate carries.
    ca_file = ca.write(tmp_path, "curl-ca")
    with _http_backend() as http_port:
        patched = node.call("PATCH", "/apps/web/routes/1/backends/1", {"port": http_port})
        assert patched.status == 200, patched
        done = subprocess.run(
            ["curl", "-sS", "--max-time", "10", "--cacert", str(ca_file), "--resolve",
             f"api.example.com:{port}:127.0.0.1", f"https://api.example.com:{port}/hello"],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        assert done.stdout == "GET /hello"


class _Path(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = f"GET {self.path}".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _http_backend:
    def __enter__(self) -> int:
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Path)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        return int(self.server.server_address[1])

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


def test_a_replaced_certificate_serves_new_handshakes_and_spares_open_ones(
    node: Node, backend: Backend, ca: Authority, tmp_path: Path
) -> None:
    first = ca.issue("web.example.com")
    add_certificate(node, "web", first)
    port = tls_route(node, backend, certificates=["web"])
    context = client_context(ca, tmp_path)
    with handshake(port, context, "web.example.com") as old:
        before = old.getpeercert(binary_form=True)
        old.sendall(b"one")
        assert recv_exactly(old, 3) == b"one"
        renewed = ca.issue("web.example.com", ("web.example.com", "www.example.com"))
        put = node.call("PUT", "/certificates/web", {"cert": renewed.cert, "key": renewed.key})
        assert put.status == 200, put
        # The answer means it is served: the next handshake gets the new one at once.
        with handshake(port, context, "www.example.com") as new:
            after = new.getpeercert(binary_form=True)
            assert after != before
            new.sendall(b"two")
            assert recv_exactly(new, 3) == b"two"
        # The open connection goes on, on its session.
        old.sendall(b"three")
        assert recv_exactly(old, 5) == b"three"
        assert old.getpeercert(binary_form=True) == before


def test_mtls_accepts_the_cas_clients_and_refuses_others(
    node: Node, backend: Backend, ca: Authority, tmp_path: Path
) -> None:
    clients = Authority("client CA")
    add_certificate(node, "web", ca.issue("web.example.com"))
    port = tls_route(node, backend, certificates=["web"], client_ca=clients.pem)
    good = clients.issue("alice", client=True)
    cert, key = good.write(tmp_path, "alice")
    context = client_context(ca, tmp_path)
    context.load_cert_chain(cert, key)
    with handshake(port, context, "web.example.com") as tls:
        tls.sendall(b"mutual")
        assert recv_exactly(tls, 6) == b"mutual"
    # Issued by another CA, and none at all: refused.
    stranger = Authority("stranger").issue("mallory", client=True)
    cert, key = stranger.write(tmp_path, "mallory")
    wrong = client_context(ca, tmp_path)
    wrong.load_cert_chain(cert, key)
    for context in (wrong, client_context(ca, tmp_path)):
        assert refused(port, context, "web.example.com")
    counted = failures(node)
    assert counted.get("client_certificate_refused") == 1, counted
    assert counted.get("no_client_certificate") == 1, counted
    assert backend.accepted == 1


def test_old_versions_silence_and_plain_text_are_refused_and_counted(
    node: Node, backend: Backend, ca: Authority, tmp_path: Path
) -> None:
    add_certificate(node, "web", ca.issue("web.example.com"))
    port = tls_route(node, backend, certificates=["web"], handshake_timeout=0.5)
    # TLS 1.1, even where the client would allow it.
    old = subprocess.run(
        ["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-servername",
         "web.example.com", "-tls1_1", "-cipher", "DEFAULT:@SECLEVEL=0"],
        input="", capture_output=True, text=True, timeout=10, check=False,
    )  # fmt: skip
    assert old.returncode != 0
    # TLS 1.2 is the least a route takes by default: it works.
    ca_file = ca.write(tmp_path)
    ok = subprocess.run(
        ["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-servername",
         "web.example.com", "-tls1_2", "-CAfile", str(ca_file), "-verify_return_error",
         "-brief"],
        input="", capture_output=True, text=True, timeout=10, check=False,
    )  # fmt: skip
    assert ok.returncode == 0, ok.stderr
    assert "Protocol version: TLSv1.2" in ok.stderr
    assert "Verification: OK" in ok.stderr
    # A client that sends nothing is closed after the handshake timeout.
    with socket.create_connection(("127.0.0.1", port), timeout=5) as silent:
        assert silent.recv(1) == b""
    # Plain text on a TLS port.
    with socket.create_connection(("127.0.0.1", port), timeout=5) as plain:
        plain.sendall(b"GET / HTTP/1.0\r\n\r\n")
        plain.recv(100)
    counted = failures(node)
    assert counted.get("version") == 1, counted
    assert counted.get("timeout") == 1, counted
    assert counted.get("not_tls") == 1, counted
    # A route that asks for TLS 1.3: a 1.2 client is refused.
    patched = node.call(
        "PATCH", "/apps/web/routes/1", {"tls": {"certificates": ["web"], "min_version": "1.3"}}
    )
    assert patched.status == 200, patched
    context = client_context(ca, tmp_path, maximum_version=ssl.TLSVersion.TLSv1_2)
    with pytest.raises(ssl.SSLError):
        handshake(port, context, "web.example.com")
    assert failures(node).get("version") == 2


def test_alpn_is_offered(node: Node, backend: Backend, ca: Authority, tmp_path: Path) -> None:
    add_certificate(node, "web", ca.issue("web.example.com"))
    port = tls_route(node, backend, certificates=["web"], alpn=["h2", "http/1.1"])
    context = client_context(ca, tmp_path)
    context.set_alpn_protocols(["http/1.1"])
    with handshake(port, context, "web.example.com") as tls:
        assert tls.selected_alpn_protocol() == "http/1.1"


def test_certificates_a_route_names_must_exist_and_stay(
    node: Node, backend: Backend, ca: Authority
) -> None:
    missing = node.call("PUT", "/apps/web/routes", {"tls": {"certificates": ["nope"]}})
    assert missing.status == 422, missing
    assert "nope" in missing.json()["detail"]
    assert node.call("GET", "/apps").json() == []
    bad_ca = node.call(
        "PUT", "/apps/web/routes", {"tls": {"certificates": ["nope"], "client_ca": "junk"}}
    )
    assert bad_ca.status == 422, bad_ca
    assert bad_ca.json()["errors"][0]["field"] == "tls.client_ca"
    add_certificate(node, "web", ca.issue("web.example.com"))
    tls_route(node, backend, certificates=["web"])
    in_use = node.call("DELETE", "/certificates/web")
    assert in_use.status == 409, in_use
    assert "route 1 of app 'web'" in in_use.json()["detail"]
    refused = node.call("PATCH", "/apps/web/routes/1", {"tls": {"certificates": ["web", "x"]}})
    assert refused.status == 422, refused
    # TLS off: the route relays bytes as they come, and the certificate is free to go.
    off = node.call("PATCH", "/apps/web/routes/1", {"tls": None})
    assert off.status == 200, off
    assert off.json()["tls"] is None
    assert node.call("DELETE", "/certificates/web").status == 204


def test_a_route_does_not_both_terminate_and_share_its_port_by_sni(
    node: Node, backend: Backend, ca: Authority
) -> None:
    add_certificate(node, "web", ca.issue("web.example.com"))
    both = {"sni": ["web.example.com"], "tls": {"certificates": ["web"]}}
    created = node.call("PUT", "/apps/web/routes", both)
    assert created.status == 422, created
    assert "sni" in created.json()["detail"]
    assert node.call("GET", "/apps").json() == []
    tls_route(node, backend, certificates=["web"])
    before = node.call("GET", "/apps/web/routes/1").json()
    patched = node.call("PATCH", "/apps/web/routes/1", {"sni": ["web.example.com"]})
    assert patched.status == 422, patched
    assert node.call("GET", "/apps/web/routes/1").json() == before
    # Off first, then sni: the route shares its port as any other.
    assert node.call("PATCH", "/apps/web/routes/1", {"tls": None}).status == 200
    shared = node.call("PATCH", "/apps/web/routes/1", {"sni": ["web.example.com"]})
    assert shared.status == 200, shared
    assert shared.json()["sni"] == ["web.example.com"]


def test_workers_terminate_with_the_nodes_certificates(
    start_node: StartNode, backend: Backend, ca: Authority, tmp_path: Path
) -> None:
    lo, hi = free_port_range()
    node = start_node(*serve_args(tmp_path / "restcp.db", lo, hi, "--workers", "2"))
    add_certificate(node, "web", ca.issue("web.example.com"))
    port = tls_route(node, backend, certificates=["web"])
    context = client_context(ca, tmp_path)
    # Enough clients that the kernel gives some to each process of the port's group.
    for n in range(20):
        with handshake(port, context, "web.example.com") as tls:
            tls.sendall(b"%d" % n)
            assert recv_exactly(tls, len(b"%d" % n)) == b"%d" % n
    renewed = ca.issue("renewed.example.com", ("web.example.com",))
    put = node.call("PUT", "/certificates/web", {"cert": renewed.cert, "key": renewed.key})
    assert put.status == 200, put
    for _ in range(20):
        with handshake(port, context, "web.example.com") as tls:
            assert served_cn(tls) == "renewed.example.com"
    # Failures in every process are summed in the node's metrics.
    for _ in range(20):
        with socket.create_connection(("127.0.0.1", port), timeout=5) as plain:
            plain.sendall(b"GET / HTTP/1.0\r\n\r\n")
            plain.recv(100)
    deadline = time.monotonic() + 5  # workers send their counters every second
    while failures(node).get("not_tls") != 20 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert failures(node).get("not_tls") == 20, failures(node)


def refusals(node: Node, route: int) -> dict[str, float]:
    metrics = Metrics.parse(node.call("GET", "/metrics").body.decode())
    return {
        s.labels["reason"]: s.value
        for s in metrics.samples("restcp_refused_connections_total")
        if s.labels["route"] == str(route)
    }


def handshakes_failed(node: Node) -> float:
    """Failed handshakes of every route, for every reason."""
    metrics = Metrics.parse(node.call("GET", "/metrics").body.decode())
    return sum(s.value for s in metrics.samples("restcp_tls_handshake_failures_total"))


def test_clients_in_their_handshake_count_against_the_limits(
    start_node: StartNode, backend: Backend, ca: Authority, tmp_path: Path
) -> None:
    """Silent clients of a terminating route hold a place each, under the route's
    max_connections and the node's --max-connections: a flood of them is reset past the
    limit and counted, and a client that finishes its handshake takes its own place."""
    lo, hi = free_port_range()
    node = start_node(*serve_args(tmp_path / "r.db", lo, hi, "--max-connections", "6"))
    add_certificate(node, "web", ca.issue("web.example.com"))
    limited = node.call(
        "PUT", "/apps/web/routes", {"tls": {"certificates": ["web"], "handshake_timeout": 60}}
    ).json()
    node.call("PATCH", f"/apps/web/routes/{limited['id']}", {"max_connections": 3})
    node.call(
        "PUT",
        f"/apps/web/routes/{limited['id']}/backends",
        {"ip": "127.0.0.1", "port": backend.port},
    )
    context = client_context(ca, tmp_path)
    silent = [dial(limited["port"]) for _ in range(2)]
    assert held_and_reset(silent) == (2, 0)
    try:
        # Two silent clients and one that finishes: three places, the limit, all served.
        with handshake(limited["port"], context, "web.example.com") as tls:
            tls.sendall(b"third")
            assert recv_exactly(tls, 5) == b"third"
            # The route is full: the next clients are reset at accept.
            more = [dial(limited["port"]) for _ in range(8)]
            silent += more
            wait_until(lambda: refusals(node, limited["id"]) == {"route_limit": 8}, "8 refused")
            assert held_and_reset(more) == (0, 8)
        # The node's cap (6) on another route: 3 places left of it.
        other = node.call(
            "PUT", "/apps/web/routes", {"tls": {"certificates": ["web"], "handshake_timeout": 60}}
        ).json()
        flood = [dial(other["port"]) for _ in range(10)]
        silent += flood
        wait_until(lambda: refusals(node, other["id"]) == {"node_limit": 6}, "6 refused")
        assert held_and_reset(flood) == (4, 6)
    finally:
        for sock in silent:
            if sock is not None:
                sock.close()
    # Once they are gone, clients are served again.
    wait_until(lambda: handshakes_failed(node) == 6, "the silent clients' handshakes ended")
    with handshake(limited["port"], context, "web.example.com") as tls:
        tls.sendall(b"again")
        assert recv_exactly(tls, 5) == b"again"


class HeaderReader:
    """A backend that reads a PROXY v2 header with the proxy-protocol package (an
    implementation independent of restcp), keeps the header and what it says, then
    answers the client's first bytes with ``ok``."""

    def __init__(self) -> None:
        self.headers: list[bytes] = []
        self.results: list[ProxyResult] = []
        self._lock = threading.Lock()

    def __call__(self, conn: socket.socket) -> None:
        fixed = recv_exactly(conn, 16)
        header = fixed + recv_exactly(conn, int.from_bytes(fixed[14:16], "big"))
        result = ProxyProtocolV2().unpack(header)
        with self._lock:
            self.headers.append(header)
            self.results.append(result)
        assert recv_exactly(conn, 5) == b"hello"
        conn.sendall(b"ok")


def test_proxy_v2_tells_the_backend_the_client_certificate_and_the_sni(
    node: Node, ca: Authority, tmp_path: Path
) -> None:
    """A route that terminates TLS with PROXY protocol v2: the header carries the SNI
    (PP2_TYPE_AUTHORITY) and the TLS (PP2_TYPE_SSL: version, cipher, and with mTLS the
    client certificate's CN, its flags and its verification), as HAProxy sends them; a
    route without client certificates says there was none; a plain route sends none."""
    clients = Authority("client CA")
    add_certificate(node, "web", ca.issue("web.example.com"))
    reader = HeaderReader()
    with Backend(reader) as server:
        mutual = node.call(
            "PUT",
            "/apps/web/routes",
            {"tls": {"certificates": ["web"], "client_ca": clients.pem}, "proxy_protocol": "v2"},
        ).json()
        attach(node, "web", mutual["id"], server.port)
        cert, key = clients.issue("alice", client=True).write(tmp_path, "alice")
        context = client_context(ca, tmp_path)
        context.load_cert_chain(cert, key)
        with handshake(mutual["port"], context, "web.example.com") as tls:
            tls.sendall(b"hello")
            assert recv_exactly(tls, 2) == b"ok"
            version, cipher = tls.version(), tls.cipher()[0]
        (result,) = reader.results
        assert isinstance(result, ProxyResultIPv4)
        assert result.dest[1] == mutual["port"]
        assert result.tlv.authority == "web.example.com"
        ssl_tlv = result.tlv.ssl
        assert (ssl_tlv.has_ssl, ssl_tlv.has_cert_conn, ssl_tlv.has_cert_sess) == (True,) * 3
        assert ssl_tlv.verified
        assert (ssl_tlv.version, ssl_tlv.cipher, ssl_tlv.cn) == (version, cipher, "alice")

        # TLS without client certificates, and a client that sends no SNI.
        plain_tls = node.call(
            "PUT", "/apps/web/routes", {"tls": {"certificates": ["web"]}, "proxy_protocol": "v2"}
        ).json()
        attach(node, "web", plain_tls["id"], server.port)
        anonymous = client_context(ca, tmp_path, check_hostname=False)
        with handshake(plain_tls["port"], anonymous, None) as tls:
            tls.sendall(b"hello")
            assert recv_exactly(tls, 2) == b"ok"
        result = reader.results[1]
        assert result.tlv.authority is None
        ssl_tlv = result.tlv.ssl
        assert (ssl_tlv.has_ssl, ssl_tlv.has_cert_conn, ssl_tlv.has_cert_sess) == (
            True, False, False,
        )  # fmt: skip
        assert not ssl_tlv.verified
        assert ssl_tlv.cn is None
        assert ssl_tlv.version == "TLSv1.3"

        # A route without TLS: the addresses alone, no TLV.
        plain = node.call("PUT", "/apps/web/routes", {"proxy_protocol": "v2"}).json()
        attach(node, "web", plain["id"], server.port)
        with socket.create_connection(("127.0.0.1", plain["port"]), timeout=5) as sock:
            sock.sendall(b"hello")
            assert recv_exactly(sock, 2) == b"ok"
        assert len(reader.headers[2]) == 16 + 12
        assert not reader.results[2].tlv


@pytest.fixture
def haproxy(tmp_path: Path, backend: Backend) -> Iterator[tuple[int, Path]]:
    """HAProxy reading PROXY headers (``accept-proxy``) in front of the echo backend: its
    port, and its log, one line per connection with the authority TLV it read and the
    addresses of the header. It drops a connection whose header does not parse."""
    port, _ = free_port_range(1)
    log = tmp_path / "haproxy.log"
    config = tmp_path / "haproxy.cfg"
    config.write_text(f"""\
global
    log stdout format raw local0
defaults
    mode tcp
    log global
    timeout connect 5s
    timeout client 10s
    timeout server 10s
frontend fe
    bind 127.0.0.1:{port} accept-proxy
    log-format "pp authority=%[fc_pp_authority] client=%ci:%cp frontend=%fi:%fp"
    default_backend be
backend be
    server echo 127.0.0.1:{backend.port}
""")
    with log.open("wb") as out:
        proc = subprocess.Popen(["haproxy", "-db", "-f", str(config)], stdout=out, stderr=out)
    try:
        wait_until(lambda: "LISTEN" in tcp_states(proc.pid, port), "haproxy listening")
        yield port, log
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_haproxy_reads_the_proxy_v2_header_of_a_terminated_connection(
    node: Node, haproxy: tuple[int, Path], ca: Authority, tmp_path: Path
) -> None:
    """HAProxy, the protocol's reference, takes the header with its TLVs (it would drop
    the connection if one ran past the header) and reads the SNI from PP2_TYPE_AUTHORITY."""
    port, log = haproxy
    clients = Authority("client CA")
    add_certificate(node, "web", ca.issue("web.example.com"))
    route = node.call(
        "PUT",
        "/apps/web/routes",
        {"tls": {"certificates": ["web"], "client_ca": clients.pem}, "proxy_protocol": "v2"},
    ).json()
    attach(node, "web", route["id"], port)
    cert, key = clients.issue("alice", client=True).write(tmp_path, "alice")
    context = client_context(ca, tmp_path)
    context.load_cert_chain(cert, key)
    with handshake(route["port"], context, "web.example.com") as tls:
        client_port = tls.getsockname()[1]
        tls.sendall(b"through haproxy")
        assert recv_exactly(tls, 15) == b"through haproxy"
    line = f"pp authority=web.example.com client=127.0.0.1:{client_port}"
    wait_until(lambda: line in log.read_text(), "haproxy logged the connection")
    (logged,) = [entry for entry in log.read_text().splitlines() if entry.startswith("pp ")]
    assert logged == f"{line} frontend=127.0.0.1:{route['port']}"
