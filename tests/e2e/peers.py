"""The other ends of an end-to-end test: backends and clients on plain blocking sockets.

Every backend listens on 127.0.0.1 port 0 and serves each connection in its own thread;
``close()`` wakes and joins every thread, so no socket outlives a test (the run turns a
ResourceWarning into an error).
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Callable, Iterator
from types import TracebackType

Handler = Callable[[socket.socket], None]


class Backend:
    """A threaded TCP server on 127.0.0.1:0 running ``handle(conn)`` per connection."""

    def __init__(self, handle: Handler) -> None:
        self.handle = handle
        self.sock = socket.create_server(("127.0.0.1", 0))
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
