"""Out of file descriptors: a node with a low RLIMIT_NOFILE, filled with held connections.

The listener pauses its accepts (it does not stop for good, nor spin on EMFILE), a backend
whose connects fail for want of descriptors is not blamed for it, and once the held
connections go, the waiting client and new ones are served.

Descriptor arithmetic: each relayed client holds two of the node's descriptors (client and
backend sockets), a route's listener one. Linux's accept() fails with EMFILE when no
descriptor is free even with nobody waiting, and a relay whose accept took the last
descriptor fails its backend connect instead. The test steers between the two on purpose.
"""

from __future__ import annotations

import contextlib
import os
import resource
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.conftest import StartNode, create_route, wait_until
from tests.e2e.peers import (
    Backend,
    Client,
    Tagged,
    attach,
    backend_of,
    log_count,
    served_by,
)
from tests.helpers import Node, free_port_range

LIMIT = 96


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    # utime and stime: fields 14 and 15 of the line, 12 and 13 after the command name.
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def steady_fds(node: Node) -> int:
    """The node's descriptor count once it stops changing (a closed API call's socket
    goes a moment after the answer)."""
    counts = [node.open_fds()]
    end = time.monotonic() + 10
    while len(counts) < 5 or len(set(counts[-5:])) > 1:
        assert time.monotonic() < end, counts
        time.sleep(0.02)
        counts.append(node.open_fds())
    return counts[-1]


def fds_are(node: Node, count: int) -> None:
    wait_until(lambda: node.open_fds() == count, f"node at {count} descriptors")


@contextlib.contextmanager
def clients_held() -> Iterator[list[Client]]:
    held: list[Client] = []
    try:
        yield held
    finally:
        for client in held:
            client.close()


@pytest.mark.parametrize("engine", ["asyncio", "native"])
def test_out_of_descriptors(start_node: StartNode, tmp_path: Path, engine: str) -> None:
    lo, hi = free_port_range()
    # memory://: no journal file to open on a write while descriptors are short.
    node = start_node(
        "--api", "127.0.0.1:0", "--store", "memory://", "--port-range", f"{lo}-{hi}",
        "--max-connections", "1000", "--engine", engine,
    )  # fmt: skip
    # Lowered from outside once it runs: the same limit as a preexec_fn setrlimit would set,
    # without forking a multi-threaded test process.
    resource.prlimit(node.proc.pid, resource.RLIMIT_NOFILE, (LIMIT, LIMIT))
    port = create_route(node, "emf")["port"]
    with Backend(Tagged("x")) as backend, clients_held() as held:
        attach(node, "emf", 1, backend.port)
        if (LIMIT - steady_fds(node)) % 2 == 0:
            create_route(node, "pad")  # one more listener: an odd number free
        free = LIMIT - steady_fds(node)
        assert free % 2 == 1, free

        for _ in range(free // 2):
            held.append(Client(port))
            assert held[-1].ask("hold") == "x"
        fds_are(node, LIMIT - 1)
        print(f"{len(held)} connections held, 1 descriptor free")

        # One free: the accept takes it, the backend connect finds none.
        for i in range(3):
            assert served_by(port, f"no room {i}") is None
            fds_are(node, LIMIT - 1)
        if engine == "asyncio":
            # Its accept loop accepts again while the failed client's socket is still open:
            # EMFILE with nobody waiting. The engine has closed that client by then.
            node.wait_for_line("accept paused app=emf")
        wait_until(
            lambda: log_count(node, "error=[Errno 24] Too many open files") == 3, "3 failures"
        )

        # Make it even (one held connection out, one listener in), then fill every slot.
        held.pop().close()
        fds_are(node, LIMIT - 3)
        create_route(node, "pad2")
        fds_are(node, LIMIT - 2)
        held.append(Client(port))
        assert held[-1].ask("last slot") == "x"
        fds_are(node, LIMIT)
        if engine == "native":
            # The engine connects within its accept loop: the backend socket took the last
            # descriptor before its next accept, which found none and paused already.
            node.wait_for_line("accept paused app=emf")
            paused = log_count(node, "accept paused app=emf")
        else:
            paused = log_count(node, "accept paused app=emf") + 1
        resumed = log_count(node, "accept resumed app=emf")

        # Now a client waits in the listen backlog, unaccepted.
        waiting = Client(port, timeout=0.5)
        held.append(waiting)
        waiting.sock.sendall(b"waited\n")
        wait_until(lambda: log_count(node, "accept paused app=emf") == paused, "paused")
        with contextlib.suppress(TimeoutError):
            waiting.sock.recv(64)
            raise AssertionError("accepted with no descriptor free")
        cpu_before = cpu_seconds(node.proc.pid)
        time.sleep(1.0)
        cpu = cpu_seconds(node.proc.pid) - cpu_before
        print(f"paused for 1.0s: {cpu:.3f}s of CPU")
        assert cpu < 0.2, "spinning on EMFILE"
        assert node.proc.poll() is None
        assert log_count(node, "accept paused app=emf") == paused  # logged once, not per retry

        # Release: the waiting client is accepted and served, then new ones.
        for client in held[:-1]:
            client.close()
        waiting.sock.settimeout(5)
        assert waiting.sock.recv(64) == b"x|waited\n"
        # Earlier resumes are in the log too: wait for this one's line to be read.
        wait_until(lambda: log_count(node, "accept resumed app=emf") > resumed, "resumed")
        for i in range(5):
            assert served_by(port, f"again {i}") == "x"
        assert log_count(node, "accept resumed app=emf") == resumed + 1  # once, not per accept
        # Its connects failed for want of descriptors here, not there: not marked down.
        assert backend_of(node, "emf", 1, 1)["health"] == "unknown"
        assert node.call("GET", "/healthz").status == 200
    # Everything handed back: only the node's own descriptors are left.
    wait_until(lambda: node.open_fds() <= LIMIT - free + 2, "descriptors released")
