"""SNI routing through a real node (docs/tls.md): routes sharing one port, each client sent
by the server name of its ClientHello, the TLS between client and backend untouched
(the backends terminate it with a certificate openssl made for the test)."""

from __future__ import annotations

import socket
import ssl
import struct
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from restcp.client.metrics import Metrics
from tests.e2e.cli import restcp
from tests.e2e.conftest import StartNode, serve_args, snapshot, wait_until
from tests.e2e.peers import (
    Backend,
    attach,
    closed_by_peer,
    connect,
    dial,
    echo,
    held_and_reset,
    recv_all,
)
from tests.e2e.tls_peers import (
    Certificate,
    HttpsBackend,
    TlsBackend,
    ask,
    client_context,
    curl,
    make_certificate,
    s_client,
)
from tests.helpers import Node, free_port_range, tcp_states


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> Certificate:
    return make_certificate(tmp_path_factory.mktemp("tls"))


@pytest.fixture
def backends(certificate: Certificate) -> Iterator[dict[str, TlsBackend]]:
    made = {tag: TlsBackend(tag, certificate) for tag in ("db1", "staging", "idn", "default")}
    yield made
    for backend in made.values():
        backend.close()


@pytest.fixture(params=["uvloop", "asyncio"])
def node(request: pytest.FixtureRequest, start_node: StartNode, tmp_path: Path) -> Node:
    lo, hi = free_port_range()
    return start_node(*serve_args(tmp_path / "r.db", lo, hi, "--loop", request.param))


def sni_route(node: Node, app: str, port: int | None, names: list[str], **body: Any) -> int:
    fields: dict[str, Any] = {"sni": names, **body}
    if port is not None:
        fields["port"] = port
    response = node.call("PUT", f"/apps/{app}/routes", fields)
    assert response.status == 201, response
    assert response.json()["sni"] == [n.lower() for n in names]
    route_id: int = response.json()["id"]
    return route_id


def shared_port(node: Node, backends: dict[str, TlsBackend], default: bool = True) -> int:
    """Routes db1 (exact), staging (wildcard), idn (an IDNA name) and, if ``default``, the
    port's default, on one port; each with its own backend."""
    first = node.call("PUT", "/apps/tls/routes", {"sni": ["db1.example.com"]}).json()
    port: int = first["port"]
    attach(node, "tls", first["id"], backends["db1"].port)
    staging = sni_route(node, "tls", port, ["*.Staging.Example.com"])
    attach(node, "tls", staging, backends["staging"].port)
    idn = sni_route(node, "other-app", port, ["xn--bcher-kva.example"])
    attach(node, "other-app", idn, backends["idn"].port)
    if default:
        fallback = sni_route(node, "tls", port, ["*"])
        attach(node, "tls", fallback, backends["default"].port)
    return port


def test_each_name_reaches_its_route_and_the_tls_is_the_backends(
    node: Node, backends: dict[str, TlsBackend]
) -> None:
    port = shared_port(node, backends)
    assert ask(port, "db1.example.com") == b"db1|db1.example.com|hello\n"
    # Names are compared in lower case; the backend sees the name as the client sent it.
    assert ask(port, "DB1.Example.COM").startswith(b"db1|")
    assert ask(port, "a.staging.example.com") == b"staging|a.staging.example.com|hello\n"
    assert ask(port, "x.y.staging.example.com").startswith(b"staging|")
    # IDNA as sent: Python's ssl sends the A-label of a U-label.
    assert ask(port, "bücher.example") == b"idn|xn--bcher-kva.example|hello\n"
    assert ask(port, "db2.example.com") == b"default|db2.example.com|hello\n"
    assert ask(port, None) == b"default|None|hello\n"
    assert backends["db1"].names == ["db1.example.com", "DB1.Example.COM"]


def test_openssl_s_client_and_curl_through_a_shared_port(
    node: Node, backends: dict[str, TlsBackend], certificate: Certificate
) -> None:
    port = shared_port(node, backends)
    assert s_client(port, "db1.example.com") == "db1|db1.example.com|hello\n"
    assert s_client(port, "b.staging.example.com") == "staging|b.staging.example.com|hello\n"
    assert s_client(port, "unknown.example.com").startswith("default|")
    web = {tag: HttpsBackend(f"web-{tag}", certificate) for tag in ("a", "b")}
    try:
        a = sni_route(node, "web", port, ["a.example.com"])
        attach(node, "web", a, web["a"].port)
        b = sni_route(node, "web", port, ["*.b.example.com"])
        attach(node, "web", b, web["b"].port)
        assert curl(port, "a.example.com") == "web-a"
        assert curl(port, "www.b.example.com") == "web-b"
    finally:
        for server in web.values():
            server.close()


def test_a_client_hello_sent_byte_by_byte_is_routed(
    node: Node, backends: dict[str, TlsBackend]
) -> None:
    port = shared_port(node, backends, default=False)
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = client_context().wrap_bio(incoming, outgoing, server_hostname="z.staging.example.com")
    with connect(port) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with pytest.raises(ssl.SSLWantReadError):
            tls.do_handshake()
        hello = outgoing.read()
        for i in range(len(hello)):
            sock.sendall(hello[i : i + 1])
            if i % 50 == 0:
                # Now and then, a pause long enough for the proxy to read what came.
                time.sleep(0.005)
        # The rest of the handshake and one line, through the BIOs.
        while True:
            try:
                tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                sock.sendall(outgoing.read())
                data = sock.recv(65536)
                assert data, "closed during the handshake"
                incoming.write(data)
        sock.sendall(outgoing.read())
        tls.write(b"bytes\n")
        sock.sendall(outgoing.read())
        answer = b""
        while not answer.endswith(b"\n"):
            incoming.write(sock.recv(65536))
            try:
                answer += tls.read()
            except ssl.SSLWantReadError:
                continue
    assert answer == b"staging|z.staging.example.com|bytes\n"


def test_a_client_that_sends_nothing_is_closed_at_the_timeout(
    node: Node, backends: dict[str, TlsBackend]
) -> None:
    first = node.call(
        "PUT", "/apps/tls/routes", {"sni": ["db1.example.com"], "connect_timeout": 0.5}
    ).json()
    attach(node, "tls", first["id"], backends["db1"].port)
    fallback = sni_route(node, "tls", first["port"], ["*"], connect_timeout=0.5)
    attach(node, "tls", fallback, backends["default"].port)
    with connect(first["port"]) as sock:
        start = time.monotonic()
        assert recv_all(sock) == b""
        waited = time.monotonic() - start
    assert 0.4 < waited < 3, waited
    # Half a ClientHello, then nothing: the same.
    with connect(first["port"]) as sock:
        sock.sendall(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03")
        assert recv_all(sock) == b""
    assert backends["db1"].backend.accepted == backends["default"].backend.accepted == 0


def test_a_client_that_is_not_tls_goes_to_the_default_or_is_closed(
    node: Node, backends: dict[str, TlsBackend]
) -> None:
    port = shared_port(node, backends, default=False)
    with connect(port) as sock:
        sock.sendall(b"GET / HTTP/1.0\r\n\r\n")
        assert recv_all(sock) == b""
    with pytest.raises((ssl.SSLError, ConnectionResetError)):
        ask(port, "nobody.example.org")  # no default: closed before the handshake
    plain = Backend(echo)
    try:
        fallback = sni_route(node, "tls", port, ["*"])
        attach(node, "tls", fallback, plain.port)
        with connect(port) as sock:
            sock.sendall(b"GET / HTTP/1.0\r\n\r\n")
            sock.shutdown(socket.SHUT_WR)
            assert recv_all(sock) == b"GET / HTTP/1.0\r\n\r\n"
    finally:
        plain.close()


def test_two_routes_claiming_one_name_is_409_and_changes_nothing(
    node: Node, backends: dict[str, TlsBackend]
) -> None:
    port = shared_port(node, backends)
    before = snapshot(node)
    for body in (
        {"port": port, "sni": ["db1.example.com"]},
        {"port": port, "sni": ["new.example.com", "*.STAGING.example.com"]},
        {"port": port, "sni": ["*"]},
        {"port": port},  # no server names: it would take the port alone
    ):
        response = node.call("PUT", "/apps/tls/routes", body)
        assert response.status == 409, response
        assert response.headers["Content-Type"].startswith("application/problem+json")
        assert str(port) in response.json()["detail"]
    response = node.call("PATCH", "/apps/tls/routes/2", {"sni": ["db1.example.com"]})
    assert response.status == 409, response
    assert "db1.example.com" in response.json()["detail"]
    response = node.call("PATCH", "/apps/tls/routes/2", {"sni": None})
    assert response.status == 409, response
    # A plain route's port cannot be joined by a route with server names.
    plain = node.call("PUT", "/apps/tls/routes", {}).json()
    before = snapshot(node)
    response = node.call("PUT", "/apps/tls/routes", {"port": plain["port"], "sni": ["*"]})
    assert response.status == 409, response
    assert snapshot(node) == before
    assert ask(port, "db1.example.com").startswith(b"db1|")


@pytest.mark.parametrize(
    "names",
    [[], ["a..b"], ["*."], ["bücher.example"], ["-a.com"], ["a b"], "a.com", [1], ["a"] * 101],
)
def test_bad_server_names_are_422(node: Node, names: Any) -> None:
    response = node.call("PUT", "/apps/tls/routes", {"sni": names})
    assert response.status == 422, response
    assert node.call("GET", "/apps").json() == []


def test_names_are_stored_in_lower_case_once(node: Node) -> None:
    response = node.call("PUT", "/apps/tls/routes", {"sni": ["A.com", "a.COM.", "*.B.com"]})
    assert response.status == 201, response
    assert response.json()["sni"] == ["a.com", "*.b.com"]


def test_a_route_gains_and_loses_server_names_on_its_own_port(
    node: Node, backends: dict[str, TlsBackend]
) -> None:
    plain = node.call("PUT", "/apps/tls/routes", {}).json()
    port = plain["port"]
    attach(node, "tls", plain["id"], backends["db1"].port)
    assert ask(port, "anything.example.com").startswith(b"db1|")
    response = node.call("PATCH", f"/apps/tls/routes/{plain['id']}", {"sni": ["db1.example.com"]})
    assert response.status == 200, response
    with pytest.raises((ssl.SSLError, ConnectionResetError)):
        ask(port, "anything.example.com")  # no default now
    other = sni_route(node, "tls", port, ["*"])
    attach(node, "tls", other, backends["default"].port)
    assert ask(port, "anything.example.com").startswith(b"default|")
    assert node.call("DELETE", f"/apps/tls/routes/{other}").status == 204
    response = node.call("PATCH", f"/apps/tls/routes/{plain['id']}", {"sni": None})
    assert response.status == 200, response
    assert ask(port, "anything.example.com").startswith(b"db1|")
    # Disabled and enabled again: the port is served by SNI as before.
    node.call("PATCH", f"/apps/tls/routes/{plain['id']}", {"sni": ["*"], "enabled": False})
    with pytest.raises(ConnectionRefusedError):
        connect(port)
    node.call("PATCH", f"/apps/tls/routes/{plain['id']}", {"enabled": True})
    assert ask(port, None).startswith(b"db1|")
    assert node.call("DELETE", f"/apps/tls/routes/{plain['id']}").status == 204
    with pytest.raises(ConnectionRefusedError):
        connect(port)


def test_a_thousand_routes_on_one_port(
    start_node: StartNode, tmp_path: Path, backends: dict[str, TlsBackend]
) -> None:
    lo, hi = free_port_range()
    node = start_node(*serve_args(tmp_path / "r.db", lo, hi, "--max-routes-per-app", "2000"))
    first = node.call("PUT", "/apps/many/routes", {"sni": ["db0.example.com"]}).json()
    port = first["port"]
    attach(node, "many", first["id"], backends["db1"].port)
    start = time.perf_counter()
    for i in range(1, 1000):
        response = node.call(
            "PUT", "/apps/many/routes", {"port": port, "sni": [f"db{i}.example.com"]}
        )
        assert response.status == 201, response
    created = time.perf_counter() - start
    last = node.call("PUT", "/apps/many/routes", {"port": port, "sni": ["*"]}).json()
    attach(node, "many", 1000, backends["staging"].port)
    attach(node, "many", last["id"], backends["default"].port)

    def handshakes(name: str, rounds: int = 30) -> float:
        start = time.perf_counter()
        for _ in range(rounds):
            assert ask(port, name).split(b"|")[1] == name.encode()
        return (time.perf_counter() - start) / rounds

    first_name, last_name = handshakes("db0.example.com"), handshakes("db999.example.com")
    unknown = handshakes("db1000.example.com")
    print(
        f"\n1,000 routes on one port: created in {created:.2f}s "
        f"({created / 999 * 1000:.1f} ms each); connect + handshake + one line: "
        f"{first_name * 1000:.2f} ms (first route), {last_name * 1000:.2f} ms (last), "
        f"{unknown * 1000:.2f} ms (unknown name, to the default)"
    )
    # The lookup's O(1) is asserted where a scan of 1,000 routes would show
    # (tests/unit/core/test_sni.py); a TLS handshake here costs a thousand times more.
    assert ask(port, "db999.example.com").startswith(b"staging|")


def test_shared_ports_with_workers_on_a_memory_store(
    start_node: StartNode, backends: dict[str, TlsBackend]
) -> None:
    """Each worker process joins the shared port (SO_REUSEPORT) once, with every route on
    it; the kernel spreads clients over the processes, each routing them by name."""
    lo, hi = free_port_range()
    node = start_node(
        "--api", "127.0.0.1:0", "--store", "memory://", "--port-range", f"{lo}-{hi}",
        "--workers", "2",
    )  # fmt: skip
    port = shared_port(node, backends)
    for _ in range(20):
        assert ask(port, "db1.example.com").startswith(b"db1|")
        assert ask(port, "q.staging.example.com").startswith(b"staging|")
        assert ask(port, "none.example.org").startswith(b"default|")
    # Clients closed before their route is chosen are counted by every process, summed.
    for _ in range(20):
        connect(port).close()
    wait_until(lambda: sni_closed(node, port) == {"client_closed": 20}, "20 closes counted")
    assert node.call("DELETE", "/apps/tls/routes/1").status == 204
    assert ask(port, "db1.example.com").startswith(b"default|")


def test_a_chosen_route_counts_its_clients_and_applies_its_toxics(
    node: Node, backends: dict[str, TlsBackend]
) -> None:
    port = shared_port(node, backends)
    for _ in range(3):
        ask(port, "db1.example.com")
    ask(port, "none.example.org")
    metrics = node.call("GET", "/metrics").body.decode()
    counted = {
        line.split("{")[1].split("}")[0]: float(line.rsplit(" ", 1)[1])
        for line in metrics.splitlines()
        if line.startswith("restcp_connections_total{")
    }
    # Each client counted on the route its name chose, and on no other.
    assert counted == {
        'app="tls",backend="1",route="1"': 3.0,
        'app="tls",backend="1",route="2"': 0.0,
        'app="other-app",backend="1",route="1"': 0.0,
        'app="tls",backend="1",route="3"': 1.0,
    }
    # A toxic of the chosen route meets its clients: the connection is cut once 4,000
    # bytes went up, before the backend has the whole line.
    toxic = {"type": "limit_data", "stream": "upstream", "attributes": {"bytes": 4000}}
    assert node.call("PUT", "/apps/tls/routes/1/toxics", toxic).status == 201
    assert ask(port, "db1.example.com").startswith(b"db1|")
    try:
        answer = ask(port, "db1.example.com", line=b"x" * 8000 + b"\n")
    except (ssl.SSLError, ConnectionResetError):
        answer = b""
    assert answer == b""
    assert ask(port, "a.staging.example.com").startswith(b"staging|")


def test_silent_clients_leave_nothing_behind(node: Node, backends: dict[str, TlsBackend]) -> None:
    """Clients still being read from hold a socket each; deleting the port's routes closes
    them, and the node holds no socket of the port any more."""
    port = shared_port(node, backends, default=False)
    pid = node.proc.pid
    silent = [connect(port) for _ in range(50)]
    try:
        wait_until(lambda: tcp_states(pid, port).count("ESTABLISHED") == 50, "50 clients accepted")
        for route in ((1, "tls"), (2, "tls"), (1, "other-app")):
            assert node.call("DELETE", f"/apps/{route[1]}/routes/{route[0]}").status == 204
        for sock in silent:
            assert recv_all(sock) == b""
    finally:
        for sock in silent:
            sock.close()
    # Not a socket of the node on the port any more: the listener and every client closed.
    wait_until(lambda: tcp_states(pid, port) == [], "the listener and the clients closed")
    assert "CLOSE_WAIT" not in tcp_states(node.proc.pid)


def test_the_command_line_shares_a_port_and_reports_a_clash(
    node: Node, backends: dict[str, TlsBackend]
) -> None:
    first = restcp(node, "routes", "create", "tls", "--sni", "db1.example.com", "-o", "json")
    port = first.json()["port"]
    names = "*.Staging.example.com,*"
    second = restcp(
        node, "routes", "create", "tls", "--port", str(port), "--sni", names, "-o", "json"
    ).json()
    assert (second["port"], second["sni"]) == (port, ["*.staging.example.com", "*"])
    clash = restcp(node, "routes", "create", "tls", "--port", str(port), "--sni", "*")
    assert clash.code == 1
    assert "'*'" in clash.err
    attach(node, "tls", second["id"], backends["staging"].port)
    assert ask(port, "b.staging.example.com").startswith(b"staging|")
    alone = restcp(node, "routes", "update", "tls", str(second["id"]), "--sni", "none")
    assert alone.code == 1  # the port is shared: a route there must name its own


def sni_closed(node: Node, port: int) -> dict[str, float]:
    """restcp_sni_closed_total of the shared port, by reason."""
    metrics = Metrics.parse(node.call("GET", "/metrics").body.decode())
    return {
        s.labels["reason"]: s.value
        for s in metrics.samples("restcp_sni_closed_total")
        if s.labels["ip"] == "127.0.0.1" and s.labels["port"] == str(port)
    }


def hello_refused(port: int, server_name: str | None) -> bool:
    """Whether the proxy closes a client that sends a ClientHello with ``server_name``
    rather than pass it to a backend (which would answer with its ServerHello)."""
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = client_context().wrap_bio(incoming, outgoing, server_hostname=server_name)
    with pytest.raises(ssl.SSLWantReadError):
        tls.do_handshake()
    try:
        with connect(port) as sock:
            sock.sendall(outgoing.read())
            return closed_by_peer(sock)
    except ConnectionError:  # reset at accept, or while sending
        return True


def test_clients_closed_before_a_route_is_chosen_are_counted_by_reason(
    node: Node, backends: dict[str, TlsBackend]
) -> None:
    first = node.call(
        "PUT", "/apps/tls/routes", {"sni": ["db1.example.com"], "connect_timeout": 0.5}
    ).json()
    port = first["port"]
    attach(node, "tls", first["id"], backends["db1"].port)
    assert sni_closed(node, port) == {}
    expected: dict[str, float] = {}

    def closed(reason: str) -> None:
        expected[reason] = expected.get(reason, 0) + 1
        wait_until(lambda: sni_closed(node, port) == expected, f"{reason} counted: {expected}")

    with connect(port) as sock:  # says nothing
        assert recv_all(sock) == b""
    closed("timeout")
    with connect(port) as sock:  # a ClientHello that says it is over 16 KiB
        sock.sendall(b"\x16\x03\x01\x40\x00\x01\x00\xff\xff" + bytes(100))
        assert closed_by_peer(sock)
    closed("too_big")
    with connect(port) as sock:
        sock.sendall(b"GET / HTTP/1.0\r\n\r\n")
        assert closed_by_peer(sock)
    closed("not_tls")
    with connect(port) as sock:  # a handshake record, but a ServerHello
        sock.sendall(b"\x16\x03\x01\x00\x04\x02\x00\x00\x00")
        assert closed_by_peer(sock)
    closed("malformed")
    assert hello_refused(port, None)
    closed("no_name")
    assert hello_refused(port, "nobody.example.org")
    closed("unknown_name")
    with connect(port) as sock:
        sock.sendall(b"\x16\x03")
    closed("client_closed")
    sock = connect(port)
    sock.sendall(b"\x16\x03")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()
    closed("client_reset")
    # A client routed is none of them; nor is one the default takes.
    assert ask(port, "db1.example.com").startswith(b"db1|")
    fallback = sni_route(node, "tls", port, ["*"])
    attach(node, "tls", fallback, backends["default"].port)
    assert ask(port, "nobody.example.org").startswith(b"default|")
    assert sni_closed(node, port) == expected


def test_clients_reading_their_client_hello_count_against_max_connections(
    start_node: StartNode, backends: dict[str, TlsBackend], tmp_path: Path
) -> None:
    """A flood of silent clients on a shared port holds no more sockets than the node's
    cap: past it, each is reset at once and counted; once they go, clients are served."""
    lo, hi = free_port_range()
    node = start_node(*serve_args(tmp_path / "r.db", lo, hi, "--max-connections", "5"))
    first = node.call(
        "PUT", "/apps/tls/routes", {"sni": ["db1.example.com"], "connect_timeout": 60}
    ).json()
    port = first["port"]
    attach(node, "tls", first["id"], backends["db1"].port)
    silent = [dial(port) for _ in range(20)]
    try:
        wait_until(lambda: sni_closed(node, port) == {"node_limit": 15}, "15 refused")
        assert held_and_reset(silent) == (5, 15)
        assert tcp_states(node.proc.pid, port).count("ESTABLISHED") == 5
        # The node is full: a client with a ClientHello is refused too.
        assert hello_refused(port, "db1.example.com")
        assert sni_closed(node, port) == {"node_limit": 16}
    finally:
        for sock in silent:
            if sock is not None:
                sock.close()
    wait_until(lambda: sni_closed(node, port).get("client_closed") == 5, "the 5 closes seen")
    assert ask(port, "db1.example.com").startswith(b"db1|")
