"""A real ``redis-server`` for tests: a free loopback port, a tmp dir, no persistence.

    with RedisServer(tmp_path) as server:
        store = open_store(server.url(prefix="t1:"))

The binary comes from Debian's ``redis-server`` package (scripts/test installs it). Without
it a test that asks for a server fails with a message saying so: a skipped Redis suite would
look like a passing one.

``RedisServer(tmp, sentinel_for=server)`` runs the same binary as a Sentinel that monitors
``server`` under the service name ``SENTINEL_SERVICE``.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path
from types import TracebackType
from typing import IO, Final

BINARY: Final = "redis-server"
SENTINEL_SERVICE: Final = "restcp-test"
# How long a server may take to answer its first PING, and how many free ports to try
# (another process may take a port between our probe and the server's bind).
READY_TIMEOUT: Final = 10.0
BIND_ATTEMPTS: Final = 3


class RedisServerMissing(RuntimeError):
    pass


class RedisServer:
    def __init__(
        self,
        directory: Path,
        *,
        sentinel_for: RedisServer | None = None,
        appendonly: bool = False,
    ) -> None:
        self.directory = directory
        self.sentinel_for = sentinel_for
        # AOF, fsynced at every write: a kill -9 loses nothing that was acknowledged.
        self.appendonly = appendonly
        self.port = 0
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def host(self) -> str:
        return "127.0.0.1"

    def url(self, db: int = 0, prefix: str | None = None) -> str:
        if self.sentinel_for is not None:
            url = f"redis+sentinel://{self.host}:{self.port}/{SENTINEL_SERVICE}/{db}"
        else:
            url = f"redis://{self.host}:{self.port}/{db}"
        return url if prefix is None else f"{url}?prefix={prefix}"

    def __enter__(self) -> RedisServer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self) -> None:
        binary = shutil.which(BINARY)
        if binary is None:
            raise RedisServerMissing(
                f"{BINARY} is not on PATH: the Redis store tests need a real server. "
                "Install Debian's redis-server package (apt-get install -y redis-server); "
                "scripts/test does that."
            )
        self.directory.mkdir(parents=True, exist_ok=True)
        errors = []
        for _ in range(BIND_ATTEMPTS):
            self.port = _free_port()
            self._spawn(binary)
            try:
                self._wait_ready()
                return
            except _Exited as err:
                errors.append(str(err))
                self.stop()
        raise RuntimeError(f"{BINARY} did not start: " + " | ".join(errors))

    def _spawn(self, binary: str) -> None:
        args = [
            "--port", str(self.port),
            "--bind", self.host,
            "--dir", str(self.directory),
            "--save", "",
            *(
                ("--appendonly", "yes", "--appendfsync", "always")
                if self.appendonly
                else ("--appendonly", "no")
            ),
            "--daemonize", "no",
            "--logfile", "",
        ]  # fmt: skip
        if self.sentinel_for is not None:
            # A Sentinel rewrites its config file, so each gets its own.
            config = self.directory / f"sentinel-{self.port}.conf"
            config.write_text(
                f"sentinel monitor {SENTINEL_SERVICE} {self.sentinel_for.host} "
                f"{self.sentinel_for.port} 1\n"
            )
            args = [str(config), "--sentinel", *args[:4], "--daemonize", "no", "--logfile", ""]
        self._log = (self.directory / f"redis-{self.port}.log").open("wb")
        self._proc = subprocess.Popen(
            [binary, *args], stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )

    def _wait_ready(self) -> None:
        """Until the server answers PING: the port opens before it takes commands while it
        loads, and a Sentinel must know its master before it is any use."""
        assert self._proc is not None
        probe = (
            f"SENTINEL get-master-addr-by-name {SENTINEL_SERVICE}\r\n"
            if self.sentinel_for is not None
            else "PING\r\n"
        )
        deadline = time.monotonic() + READY_TIMEOUT
        while True:
            if self._proc.poll() is not None:
                raise _Exited(f"exited with {self._proc.returncode}: {self.log()[-2000:]}")
            try:
                with socket.create_connection((self.host, self.port), timeout=1.0) as conn:
                    conn.sendall(probe.encode())
                    reply = conn.recv(1024)
                if reply.startswith((b"+PONG", b"*2")):
                    return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"{BINARY} on port {self.port} did not answer within {READY_TIMEOUT} s: "
                    f"{self.log()[-2000:]}"
                )
            # Polling, not waiting a fixed time: the loop ends at the first answer.
            time.sleep(0.01)

    def log(self) -> str:
        if self._log is None:
            return ""
        self._log.flush()
        return (self.directory / f"redis-{self.port}.log").read_text(errors="replace")

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        log, self._log = self._log, None
        if log is not None:
            log.close()


class PinnedRedisServer(RedisServer):
    """A server that comes back on the port it had, as a restarted Redis does for the nodes
    configured with its address; its data comes back from what it persisted (the AOF with
    ``appendonly``, or the dump.rdb a SAVE wrote)."""

    def start(self) -> None:
        if self.port == 0:
            super().start()
            return
        binary = shutil.which(BINARY)
        assert binary is not None
        self._spawn(binary)
        self._wait_ready()

    def kill(self) -> None:
        """SIGKILL: no goodbye to the clients, no save on the way out."""
        assert self._proc is not None
        self._proc.kill()
        self.stop()

    @property
    def running(self) -> bool:
        return self._proc is not None


class _Exited(RuntimeError):
    pass


def _free_port() -> int:
    # The kernel's pick for port 0 is free now; start() retries if it is taken by the time
    # the server binds it.
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port
