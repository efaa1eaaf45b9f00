"""Shared test helpers: a real `restcp serve` subprocess, HTTP calls, free ports.

Nothing here sleeps to wait for a server: a node is ready when it logs its `ready` line,
which carries the API address it bound (the tests always ask for port 0).
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import random
import signal
import socket
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

READY_TIMEOUT = 20.0


def free_port_range(size: int = 20) -> tuple[int, int]:
    """A run of ``size`` ports that are free now, below Linux's ephemeral range (32768+),
    so that outgoing connections of the test run do not take them meanwhile."""
    rng = random.Random()
    for _ in range(200):
        lo = rng.randrange(20000, 32000 - size)
        socks: list[socket.socket] = []
        try:
            for port in range(lo, lo + size):
                s = socket.socket()
                socks.append(s)
                s.bind(("127.0.0.1", port))
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
        return lo, lo + size - 1
    raise RuntimeError("no free port range found")


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def http(
    method: str,
    url: str,
    body: bytes | str | dict[str, Any] | list[Any] | None = None,
    headers: dict[str, str] | None = None,
    timeout: float = 10.0,
) -> Response:
    """One HTTP request; never raises for a 4xx/5xx status."""
    data: bytes | None
    if isinstance(body, dict | list):
        data = json.dumps(body).encode()
    elif isinstance(body, str):
        data = body.encode()
    else:
        data = body
    req = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return Response(resp.status, dict(resp.headers), resp.read())
    except urllib.error.HTTPError as err:
        with err:
            return Response(err.code, dict(err.headers), err.read())


class Node:
    """A `restcp serve` subprocess. Its stderr is read by a thread into ``lines``."""

    def __init__(self, *args: str, env: dict[str, str] | None = None, cwd: Path | None = None):
        self.args = args
        self.lines: list[str] = []
        self._new_lines: queue.Queue[str | None] = queue.Queue()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "restcp", "serve", *args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            # A node that hangs is sent SIGABRT (see stop): faulthandler then logs where.
            env={"PYTHONFAULTHANDLER": "1", **os.environ, **(env or {})},
            cwd=cwd,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self.api = ""
        self.api_port = 0

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line.rstrip("\n"))
            self._new_lines.put(line)
        self._new_lines.put(None)

    def wait_for_line(self, needle: str, timeout: float = READY_TIMEOUT) -> str:
        """Block until a stderr line containing ``needle`` appears (seen ones count too)."""
        for line in list(self.lines):
            if needle in line:
                return line
        while True:
            try:
                line = self._new_lines.get(timeout=timeout)
            except queue.Empty:
                raise AssertionError(
                    f"no line with {needle!r} within {timeout}s; log:\n" + "\n".join(self.lines)
                ) from None
            if line is None:
                raise AssertionError(
                    f"restcp exited ({self.proc.wait()}) before {needle!r}; log:\n"
                    + "\n".join(self.lines)
                )
            if needle in line:
                return line

    def wait_ready(self) -> Node:
        line = self.wait_for_line(" ready api=")
        self.api = line.split(" ready api=")[1].split()[0].rstrip("/")
        self.api_port = int(self.api.rsplit(":", 1)[1])
        return self

    def call(self, method: str, path: str, body: Any = None, **kw: Any) -> Response:
        return http(method, self.api + path, body, **kw)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            # Report the hang with the stacks of the hung process, and leave no process
            # behind for the rest of the run.
            self.proc.send_signal(signal.SIGABRT)
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self._reader.join(timeout=5)
            raise AssertionError(
                f"restcp did not exit within {timeout}s of signal {sig}; log:\n"
                + "\n".join(self.lines)
            ) from None
        finally:
            self._reader.join(timeout=5)
            # Left open, the pipe is closed by the garbage collector with a ResourceWarning,
            # which this run turns into an error of whichever test happens to run then.
            if self.proc.stderr is not None and not self._reader.is_alive():
                self.proc.stderr.close()

    def kill(self) -> None:
        self.stop(signal.SIGKILL)

    def open_fds(self) -> int:
        return len(os.listdir(f"/proc/{self.proc.pid}/fd"))

    def rss_kib(self) -> int:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise AssertionError("no VmRSS")


class NodeStarter:
    """``start(*args, ready=True, **kw)``: a ``restcp serve ARGS`` (``Node``), waited for its
    ready line unless ``ready=False``. ``stop_all()``, a fixture's teardown, stops every node
    started (or reaps it, if the test killed it), so a failing test leaves no process behind."""

    def __init__(self) -> None:
        self.started: list[Node] = []

    def __call__(self, *args: str, ready: bool = True, **kw: Any) -> Node:
        node = Node(*args, **kw)
        self.started.append(node)
        return node.wait_ready() if ready else node

    def stop_all(self) -> None:
        errors: list[BaseException] = []
        for node in self.started:
            try:
                node.stop()
            except Exception as err:  # stop the others all the same
                errors.append(err)
        if errors:
            raise errors[0]


@contextlib.contextmanager
def running_node(*args: str, **kw: Any) -> Iterator[Node]:
    node = Node(*args, **kw)
    try:
        yield node.wait_ready()
    finally:
        node.stop()


def tcp_states(pid: int, port: int | None = None) -> list[str]:
    """TCP states (e.g. 'CLOSE_WAIT') of every socket the process holds; with ``port``, of
    those whose local port it is."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(OSError):
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    names = {
        "01": "ESTABLISHED", "02": "SYN_SENT", "03": "SYN_RECV", "04": "FIN_WAIT1",
        "05": "FIN_WAIT2", "06": "TIME_WAIT", "07": "CLOSE", "08": "CLOSE_WAIT",
        "09": "LAST_ACK", "0A": "LISTEN", "0B": "CLOSING",
    }  # fmt: skip
    states = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for row in Path(table).read_text().splitlines()[1:]:
            cols = row.split()
            if cols[9] in inodes and (port is None or int(cols[1].rsplit(":", 1)[1], 16) == port):
                states.append(names.get(cols[3], cols[3]))
    return states
