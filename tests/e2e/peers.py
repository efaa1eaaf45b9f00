"""The other ends of an end-to-end test: backends and clients on plain blocking sockets,
and the API shortcuts the traffic tests share.

Every backend listens on 127.0.0.1 (port 0 unless a test names one, so that a backend can be
killed and started again on the same address) and serves each connection in its own thread;
``close()`` wakes and joins every thread, so no socket outlives a test (the run turns a
ResourceWarning into an error). ``Tagged`` answers each line with its own name, so a client
can tell which backend the proxy picked, and answers the health probe line on its own, so
probes are counted apart from relayed traffic.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Callable, Iterator
from types import TracebackType
from typing import Any

from tests.helpers import Node

Handler = Callable[[socket.socket], None]

PROBE = "PROBE\n"
# A check that only Tagged backends pass, and whose probes they count.
TAGGED_CHECK: dict[str, Any] = {"send": PROBE, "expect": "OK"}


class Backend:
    """A threaded TCP server on 127.0.0.1:``port`` (0: any) running ``handle(conn)`` per
    connection."""

    def __init__(self, handle: Handler, port: int = 0) -> None:
        self.handle = handle
        self.sock = socket.create_server(("127.0.0.1", port), backlog=256)
        self.port: int = self.sock.getsockname()[1]
        self.accepted = 0
        self._lock = threading.Lock()
        self._conns: set[socket.socket] = set()
        self._threads: list[threading.Thread] = []
        self._acceptor = threading.Thread(target=self._accept, daemon=True)
        self._acceptor.start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:  # close() shut the listening socket down
                return
            with self._lock:
                self.accepted += 1
                self._conns.add(conn)
                thread = threading.Thread(target=self._serve, args=(conn,), daemon=True)
                self._threads.append(thread)
            thread.start()

    def _serve(self, conn: socket.socket) -> None:
        try:
            with contextlib.suppress(OSError):
                self.handle(conn)
        finally:
            with self._lock:
                self._conns.discard(conn)
            conn.close()

    def close(self) -> None:
        # shutdown() wakes a thread blocked in accept() or recv(); close() alone does not.
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()
        self._acceptor.join(timeout=5)
        with self._lock:
            conns, threads = list(self._conns), list(self._threads)
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        for thread in threads:
            thread.join(timeout=5)

    def __enter__(self) -> Backend:
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def echo(conn: socket.socket) -> None:
    while data := conn.recv(65536):
        conn.sendall(data)


def sender(payload: bytes) -> Handler:
    """Send ``payload``, then close."""

    def handle(conn: socket.socket) -> None:
        conn.sendall(payload)

    return handle


class Streamer:
    """A handler that sends ``total`` bytes as fast as the peer lets it, counting what the
    kernel took (``sent``), then closes."""

    CHUNK = 256 * 1024

    def __init__(self, total: int) -> None:
        self.total = total
        self.sent = 0
        self.done = threading.Event()

    def __call__(self, conn: socket.socket) -> None:
        block = memoryview(bytes(range(256)) * (self.CHUNK // 256))
        try:
            while self.sent < self.total:
                n = conn.send(block[: min(self.CHUNK, self.total - self.sent)])
                self.sent += n
        finally:
            self.done.set()


@contextlib.contextmanager
def refusing_port() -> Iterator[int]:
    """A port that refuses connections and that nobody else can take meanwhile: bound,
    never listening."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


@contextlib.contextmanager
def held_port(port: int = 0) -> Iterator[int]:
    """A port that another process (this test) listens on."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", port))
        sock.listen()
        yield sock.getsockname()[1]


def connect(port: int, timeout: float = 5.0, host: str = "127.0.0.1") -> socket.socket:
    return socket.create_connection((host, port), timeout=timeout)


def dial(port: int) -> socket.socket | None:
    """A connection to ``port``, or None: reset as soon as accepted (connect() itself may
    see a reset that comes that fast)."""
    try:
        return connect(port)
    except ConnectionResetError:
        return None


def held_and_reset(clients: list[socket.socket | None]) -> tuple[int, int]:
    """How many of ``clients`` (dialled, none has sent anything) the peer still holds
    (nothing came, nothing closed), and how many it reset."""
    held = reset = 0
    for sock in clients:
        if sock is None:
            reset += 1
            continue
        sock.setblocking(False)
        try:
            sock.recv(1)
        except BlockingIOError:
            held += 1
        except ConnectionResetError:
            reset += 1
    return held, reset


def recv_all(sock: socket.socket, bufsize: int = 1 << 20) -> bytes:
    """Everything until EOF."""
    chunks = bytearray()
    while data := sock.recv(bufsize):
        chunks += data
    return bytes(chunks)


def recv_exactly(sock: socket.socket, n: int) -> bytes:
    data = bytearray()
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise AssertionError(f"EOF after {len(data)} of {n} bytes")
        data += chunk
    return bytes(data)


def round_trip(port: int, message: bytes) -> bytes:
    """Send ``message`` through ``port``, half-close, and return everything that came back."""
    with connect(port) as sock:
        sock.sendall(message)
        sock.shutdown(socket.SHUT_WR)
        return recv_all(sock)


def assert_refused(port: int) -> None:
    try:
        sock = connect(port, timeout=2)
    except ConnectionRefusedError:
        return
    sock.close()
    raise AssertionError(f"port {port} accepted a connection")


def closed_by_peer(sock: socket.socket) -> bool:
    """True when the peer ended the connection (EOF or reset) before sending anything."""
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True


class Tagged:
    """A line handler: ``PROBE`` gets ``OK``, any other line comes back as ``NAME|line``."""

    def __init__(self, name: str) -> None:
        self.name = name.encode()
        self.probes = 0
        self.lines: list[bytes] = []
        self._lock = threading.Lock()

    def __call__(self, conn: socket.socket) -> None:
        buf = b""
        while data := conn.recv(65536):
            buf += data
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                if line + b"\n" == PROBE.encode():
                    with self._lock:
                        self.probes += 1
                    conn.sendall(b"OK\n")
                else:
                    with self._lock:
                        self.lines.append(line)
                    conn.sendall(self.name + b"|" + line + b"\n")


class Client:
    """One client connection through a route, optionally from another loopback address."""

    def __init__(self, port: int, source: str = "127.0.0.1", timeout: float = 5.0) -> None:
        self.sock = socket.create_connection(
            ("127.0.0.1", port), timeout=timeout, source_address=(source, 0)
        )
        self._buf = b""

    def ask(self, text: str) -> str:
        """Send one line; the name of the Tagged backend that answered it."""
        self.sock.sendall(text.encode() + b"\n")
        while b"\n" not in self._buf:
            data = self.sock.recv(65536)
            if not data:
                raise EOFError(f"closed before answering {text!r}")
            self._buf += data
        line, self._buf = self._buf.split(b"\n", 1)
        name, _, echoed = line.partition(b"|")
        assert echoed == text.encode(), line
        return name.decode()

    def closed(self) -> bool:
        """True once the proxy ended this connection (EOF or reset), waiting at most the
        socket's timeout."""
        return closed_by_peer(self.sock)

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def served_by(port: int, text: str = "hello", source: str = "127.0.0.1") -> str | None:
    """The backend one new client reached, or None if the proxy closed it. A refusal is a
    reset, and it may reach the client before its connect() has returned, under load."""
    try:
        with Client(port, source) as client:
            return client.ask(text)
    except (EOFError, ConnectionResetError):
        return None


def attach(node: Node, app: str, route: int, port: int, **fields: Any) -> int:
    response = node.call(
        "PUT", f"/apps/{app}/routes/{route}/backends", {"ip": "127.0.0.1", "port": port, **fields}
    )
    assert response.status == 201, response
    backend_id: int = response.json()["id"]
    return backend_id


def backend_of(node: Node, app: str, route: int, backend: int) -> dict[str, Any]:
    response = node.call("GET", f"/apps/{app}/routes/{route}/backends/{backend}")
    assert response.status == 200, response
    found: dict[str, Any] = response.json()
    return found


def patch_route(node: Node, app: str, route: int, **fields: Any) -> dict[str, Any]:
    response = node.call("PATCH", f"/apps/{app}/routes/{route}", fields)
    assert response.status == 200, response
    changed: dict[str, Any] = response.json()
    return changed


def patch_backend(node: Node, app: str, route: int, backend: int, **fields: Any) -> None:
    response = node.call("PATCH", f"/apps/{app}/routes/{route}/backends/{backend}", fields)
    assert response.status == 200, response


def health_is(node: Node, app: str, route: int, backend: int, state: str) -> Callable[[], bool]:
    return lambda: backend_of(node, app, route, backend)["health"] == state


def health_lines(node: Node, app: str, backend: int) -> list[str]:
    """The node's health transition lines of one backend, as ``FROM -> TO``."""
    marker = f"health app={app} route=1 backend={backend} "
    found = []
    for line in list(node.lines):
        if marker in line:
            found.append(line.split(" reason=")[0].split(" addr=")[1].split(" ", 1)[1])
    return found


def log_count(node: Node, needle: str) -> int:
    return sum(needle in line for line in list(node.lines))


def logged_clients(node: Node, app: str, clients: int) -> None:
    """Wait until the node has logged the access line of ``clients`` connections of
    ``app``: every line it wrote about them before (a connect failure) is then read too, as
    stderr is one ordered stream."""
    needle = f"restcp.access app={app} "
    end = time.monotonic() + 10
    while log_count(node, needle) < clients:
        assert time.monotonic() < end, f"{clients} access lines of {app}"
        time.sleep(0.01)


def elapsed_since(start: float) -> float:
    return time.monotonic() - start
