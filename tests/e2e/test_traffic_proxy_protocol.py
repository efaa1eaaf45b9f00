"""PROXY protocol through a real node: the backend reads the exact header first, then the
client's bytes. The expected headers are written out by hand from the spec's layout
(https://www.haproxy.org/download/3.0/doc/proxy-protocol.txt), not with restcp's encoder."""

from __future__ import annotations

import socket
import threading
from pathlib import Path

import pytest

from tests.e2e.conftest import StartNode, create_route, serve_args
from tests.e2e.peers import Backend, attach, patch_route, recv_all
from tests.helpers import Node, free_port_range

V2_SIGNATURE = b"\x0d\x0a\x0d\x0a\x00\x0d\x0a\x51\x55\x49\x54\x0a"


class Recorder:
    """Keeps everything each connection sent, up to its EOF, then closes it."""

    def __init__(self) -> None:
        self.received: list[bytes] = []
        self._lock = threading.Lock()

    def __call__(self, conn: socket.socket) -> None:
        data = recv_all(conn)
        with self._lock:
            self.received.append(data)


def send_through(port: int, payload: bytes, host: str, source: str) -> tuple[str, int]:
    """Send ``payload`` from ``source`` and wait for the backend to close; the client's own
    address and port."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.settimeout(5)
        sock.bind((source, 0))
        sock.connect((host, port))
        ip, client_port = sock.getsockname()[:2]
        sock.sendall(payload)
        sock.shutdown(socket.SHUT_WR)
        assert recv_all(sock) == b""
    return ip, client_port


def v1(src: tuple[str, int], dst: tuple[str, int]) -> bytes:
    family = "TCP6" if ":" in src[0] else "TCP4"
    return f"PROXY {family} {src[0]} {dst[0]} {src[1]} {dst[1]}\r\n".encode()


def v2(src: tuple[str, int], dst: tuple[str, int]) -> bytes:
    if ":" in src[0]:
        family, af, length = b"\x21", socket.AF_INET6, 36  # TCP over IPv6
    else:
        family, af, length = b"\x11", socket.AF_INET, 12  # TCP over IPv4
    return (
        V2_SIGNATURE
        + b"\x21"  # version 2, command PROXY
        + family
        + length.to_bytes(2, "big")
        + socket.inet_pton(af, src[0])
        + socket.inet_pton(af, dst[0])
        + src[1].to_bytes(2, "big")
        + dst[1].to_bytes(2, "big")
    )


@pytest.fixture(params=["asyncio", "native"])
def engine(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name


@pytest.fixture
def any_node(engine: str, request: pytest.FixtureRequest) -> Node:
    """A node on each data plane: ``native`` serves these routes with the engine."""
    node: Node = request.getfixturevalue("engine_node" if engine == "native" else "asyncio_node")
    return node


def served_by(node: Node, app: str, native: bool) -> None:
    line = node.wait_for_line(f"listening app={app} route=1 url=")
    assert ("engine=native" in line) == native, line


def check_route(node: Node, host: str, source: str, proxy: str | None, backend: str | None,
                expect: str | None) -> None:  # fmt: skip
    """A fresh route and backend; the bytes the backend gets must be exactly the header
    ``expect`` says, then the client's."""
    app = f"pp{len(node.lines)}"
    route = create_route(node, app, frontend_ip=host, proxy_protocol=proxy)
    recorder = Recorder()
    with Backend(recorder) as server:
        fields = {} if backend is None else {"proxy_protocol": backend}
        attach(node, app, 1, server.port, **fields)
        served_by(node, app, "native" in node.args)
        payload = b"GET / HTTP/1.0\r\n\r\n"
        frontend = (host, route["port"])
        encode = {"v1": v1, "v2": v2, None: lambda src, dst: b""}[expect]
        client = send_through(route["port"], payload, host, source)
        assert recorder.received == [encode(client, frontend) + payload], (proxy, backend)
        # No client byte at all: the header is still sent, first and alone.
        client = send_through(route["port"], b"", host, source)
        assert recorder.received[1] == encode(client, frontend), (proxy, backend)


def test_proxy_protocol_headers_ipv4(any_node: Node) -> None:
    for proxy, backend, expect in (
        ("v1", None, "v1"),
        ("v2", None, "v2"),
        ("v2", "none", None),
        ("v2", "v1", "v1"),
        (None, "v2", "v2"),
        (None, None, None),
    ):
        check_route(any_node, "127.0.0.1", "127.0.0.2", proxy, backend, expect)


def test_proxy_protocol_headers_ipv6(start_node: StartNode, tmp_path: Path, engine: str) -> None:
    lo, hi = free_port_range()
    args = serve_args(
        tmp_path / "restcp.db", lo, hi, "--engine", engine, "--frontend-ip", "127.0.0.1"
    )
    node = start_node(*args, "--frontend-ip", "::1")
    check_route(node, "::1", "::1", "v1", None, "v1")
    check_route(node, "::1", "::1", "v2", None, "v2")


def test_proxy_protocol_changed_live(any_node: Node, engine: str) -> None:
    node = any_node
    route = create_route(node, "live", proxy_protocol="v1")
    recorder = Recorder()
    with Backend(recorder) as server:
        attach(node, "live", 1, server.port)
        served_by(node, "live", engine == "native")
        frontend = ("127.0.0.1", route["port"])
        client = send_through(route["port"], b"one", "127.0.0.1", "127.0.0.3")
        patch_route(node, "live", 1, proxy_protocol="v2")
        client2 = send_through(route["port"], b"two", "127.0.0.1", "127.0.0.3")
        patch_route(node, "live", 1, proxy_protocol=None)
        send_through(route["port"], b"three", "127.0.0.1", "127.0.0.3")
        assert recorder.received == [
            v1(client, frontend) + b"one",
            v2(client2, frontend) + b"two",
            b"three",
        ]
