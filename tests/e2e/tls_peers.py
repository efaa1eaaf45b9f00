"""TLS ends for the SNI tests: a self-signed certificate made by ``openssl req`` for the
test, TLS backends on Python's ssl module that tell which backend a client reached and
which server name it saw, and clients (Python's ssl, ``openssl s_client``, ``curl``); and a
TLS backend for the tests of TLS towards backends (``TlsServer``)."""

from __future__ import annotations

import http.server
import socket
import ssl
import subprocess
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.certs import Authority, Pem
from tests.e2e.peers import Backend

NAMES = ["*.example.com", "*.staging.example.com", "example.com", "xn--bcher-kva.example"]


@dataclass(frozen=True)
class Certificate:
    cert: Path
    key: Path


def make_certificate(directory: Path) -> Certificate:
    """A self-signed P-256 certificate for NAMES, made by openssl as an operator would."""
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
            "-nodes", "-days", "2", "-subj", "/CN=example.com",
            "-addext", "subjectAltName=" + ",".join(f"DNS:{n}" for n in NAMES),
            "-keyout", str(key), "-out", str(cert),
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return Certificate(cert, key)


class TlsBackend:
    """A TLS server (a peers.Backend) that answers each line of a client with
    ``TAG|SNI|line``: which backend it is and the server name the handshake carried, so a
    test sees both where the proxy sent the client and that its bytes came unchanged."""

    def __init__(self, tag: str, certificate: Certificate) -> None:
        self.tag = tag
        self.names: list[str | None] = []
        self._lock = threading.Lock()
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.load_cert_chain(certificate.cert, certificate.key)
        self._seen: dict[int, str | None] = {}  # id of the TLS socket -> its SNI
        self.context.sni_callback = self._on_sni
        self.backend = Backend(self._handle)
        self.port = self.backend.port

    def _handle(self, conn: socket.socket) -> None:
        conn.settimeout(10)
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with self.context.wrap_socket(conn, server_side=True) as tls:
            with self._lock:
                name = self._seen.pop(id(tls), None)
                self.names.append(name)
            reader = tls.makefile("rb")
            for line in reader:
                tls.sendall(f"{self.tag}|{name}|".encode() + line)

    def _on_sni(
        self, tls: ssl.SSLSocket | ssl.SSLObject, name: str | None, _context: ssl.SSLContext
    ) -> None:
        with self._lock:
            self._seen[id(tls)] = name

    def close(self) -> None:
        self.backend.close()


def client_context() -> ssl.SSLContext:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def ask(
    port: int, server_name: str | None, line: bytes = b"hello\n", host: str = "127.0.0.1"
) -> bytes:
    """One TLS connection through ``host:port`` with ``server_name``: the backend's answer
    to ``line``."""
    with socket.create_connection((host, port), timeout=10) as sock:
        # No Nagle: the line would wait for the ACK of the handshake's last flight.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with client_context().wrap_socket(sock, server_hostname=server_name) as tls:
            tls.sendall(line)
            answer = b""
            while not answer.endswith(b"\n"):
                chunk = tls.recv(4096)
                if not chunk:
                    break
                answer += chunk
            return answer


def s_client(port: int, server_name: str, line: str = "hello\n") -> str:
    """``openssl s_client -servername``: the backend's answer to ``line`` (s_client keeps
    the connection until it is stopped, once the answer is read)."""
    proc = subprocess.Popen(
        [
            "openssl", "s_client", "-connect", f"127.0.0.1:{port}",
            "-servername", server_name, "-quiet",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )  # fmt: skip
    assert proc.stdin is not None
    assert proc.stdout is not None
    try:
        proc.stdin.write(line)
        proc.stdin.flush()
        return proc.stdout.readline()
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        proc.stdin.close()
        proc.stdout.close()


class HttpsBackend:
    """An HTTPS server answering every GET with its tag (for curl)."""

    def __init__(self, tag: str, certificate: Certificate) -> None:
        body = tag.encode()

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                pass

        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(certificate.cert, certificate.key)
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        self.port = self.server.server_address[1]
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(timeout=5)


def curl(port: int, name: str) -> str:
    """``curl --resolve NAME:PORT:127.0.0.1 https://NAME:PORT/``: the body."""
    done = subprocess.run(
        [
            "curl", "-sS", "--insecure", "--max-time", "10",
            "--resolve", f"{name}:{port}:127.0.0.1", f"https://{name}:{port}/",
        ],
        capture_output=True,
        text=True,
        timeout=20,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return done.stdout


class TlsServer:
    """A TLS backend (Python's ssl) that runs ``serve(tls)`` per connection once the
    handshake is done, and keeps what each handshake saw: the SNI and the client's
    certificate subject."""

    def __init__(
        self,
        pem: Pem,
        tmp_path: Path,
        serve: Callable[[ssl.SSLSocket], None],
        client_ca: Authority | None = None,
    ) -> None:
        self.names: list[str | None] = []
        self.peers: list[dict[str, Any] | None] = []
        self.handshakes = 0
        self._lock = threading.Lock()
        cert, key = pem.write(tmp_path, f"srv-{id(self)}")
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.load_cert_chain(cert, key)
        if client_ca is not None:
            self.context.verify_mode = ssl.CERT_REQUIRED
            self.context.load_verify_locations(cadata=client_ca.pem)
        self._seen: dict[int, str | None] = {}
        self.context.sni_callback = self._on_sni
        self._serve = serve
        self.backend = Backend(self._handle)
        self.port = self.backend.port

    def _on_sni(self, tls: Any, name: str | None, _context: ssl.SSLContext) -> None:
        with self._lock:
            self._seen[id(tls)] = name

    def _handle(self, conn: socket.socket) -> None:
        conn.settimeout(10)
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with self.context.wrap_socket(conn, server_side=True) as tls:
            with self._lock:
                self.handshakes += 1
                self.names.append(self._seen.pop(id(tls), None))
                self.peers.append(tls.getpeercert() or None)
            self._serve(tls)

    def close(self) -> None:
        self.backend.close()


def tls_echo(tls: ssl.SSLSocket) -> None:
    """Echo until the client's close_notify, then answer it with ours."""
    while chunk := tls.recv(65536):
        tls.sendall(chunk)
    tls.unwrap()
