"""The processes of a fault run: one redis-server with an fsynced AOF, and three nodes, one
per frontend IP, each under a name of its own, so that a node killed and restarted takes
its IP back at once (docs/cluster.md, "Node names and incarnations").

Every kill and restart is recorded in the history (``fault`` events) with the interval the
node was down or paused, which the checker needs to excuse what a dead node could not do.
"""

from __future__ import annotations

import contextlib
import signal
import threading
import time
from pathlib import Path

import redis

from tests.faults.history import History
from tests.helpers import Node, free_port_range, http
from tests.redis_server import PinnedRedisServer

IPS = ("127.0.0.1", "127.0.0.2", "127.0.0.3")
PREFIX = "faults:"
# Short, so that everything a fault delays is over within a short run.
LEASE_TTL = "2"
RESYNC_INTERVAL = "1"
PROVISION_TIMEOUT = "1"
PORTS = 400


class NodeSlot:
    """One of the three nodes, across its incarnations."""

    def __init__(self, index: int, ip: str, args: tuple[str, ...]) -> None:
        self.index = index
        self.ip = ip
        self.args = args
        self.proc: Node | None = None
        # Earlier incarnations, and when each was seen dead (Unix time).
        self.past: list[Node] = []
        self.ended: list[float] = []
        self.paused = False

    @property
    def api(self) -> str:
        assert self.proc is not None
        return self.proc.api

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.proc.poll() is None

    def pids(self) -> list[int]:
        return [self.proc.proc.pid] if self.alive and self.proc else []


class FaultCluster:
    def __init__(self, directory: Path, history: History) -> None:
        self.directory = directory
        self.history = history
        self.redis = PinnedRedisServer(directory / "redis", appendonly=True)
        self.slots: list[NodeSlot] = []
        # Held while a node is being replaced, so that the workload's choice of a node and
        # the probe's reading of its pid see one incarnation or the other.
        self.lock = threading.Lock()

    def start(self) -> None:
        self.redis.start()
        url = self.redis.url(prefix=PREFIX)
        for index, ip in enumerate(IPS):
            lo, hi = free_port_range(PORTS)
            args = (
                "--api", "127.0.0.1:0",
                "--store", url,
                "--frontend-ip", ip,
                "--node-name", f"n{index}",
                "--port-range", f"{lo}-{hi}",
                "--snapshot", str(self.directory / f"snapshot-{index}.db"),
                "--lease-ttl", LEASE_TTL,
                "--resync-interval", RESYNC_INTERVAL,
                "--provision-timeout", PROVISION_TIMEOUT,
                "--log-level", "info",
            )  # fmt: skip
            self.slots.append(NodeSlot(index, ip, args))
        for slot in self.slots:
            slot.proc = Node(*slot.args)
        for slot in self.slots:
            assert slot.proc is not None
            slot.proc.wait_ready()
        for slot in self.slots:
            self.wait_serving(slot)

    def wait_serving(self, slot: NodeSlot, deadline: float = 30.0) -> None:
        """Until the node's /healthz says ready (its IP held, its routes bound)."""
        end = time.monotonic() + deadline
        while http("GET", slot.api + "/healthz", timeout=5).status != 200:
            if time.monotonic() > end:
                assert slot.proc is not None
                raise AssertionError(f"node {slot.index} not ready:\n" + "\n".join(slot.proc.lines))
            time.sleep(0.01)

    # -- faults ------------------------------------------------------------------------------

    def kill_node(self, slot: NodeSlot) -> None:
        assert slot.proc is not None
        with self.lock:
            slot.proc.stop(signal.SIGKILL)
            slot.past.append(slot.proc)
            slot.ended.append(time.time())
            slot.proc = None
            slot.paused = False

    def start_node(self, slot: NodeSlot) -> None:
        proc = Node(*slot.args)
        proc.wait_ready()
        with self.lock:
            slot.proc = proc
        self.wait_serving(slot)

    def pause(self, slot: NodeSlot) -> None:
        assert slot.proc is not None
        slot.proc.proc.send_signal(signal.SIGSTOP)
        slot.paused = True

    def resume(self, slot: NodeSlot) -> None:
        if slot.paused and slot.proc is not None:
            slot.proc.proc.send_signal(signal.SIGCONT)
        slot.paused = False

    def kill_redis(self) -> None:
        self.redis.kill()

    def start_redis(self) -> None:
        self.redis.start()

    def kill_pubsub(self) -> int:
        """CLIENT KILL TYPE pubsub: every node's subscription is cut; how many were."""
        with redis.Redis(self.redis.host, self.redis.port, socket_timeout=5) as client:
            return int(client.execute_command("CLIENT", "KILL", "TYPE", "pubsub"))

    # -- the end -------------------------------------------------------------------------------

    def heal(self) -> None:
        """Every fault undone: Redis up, every node resumed, running and ready."""
        if not self.redis.running:
            self.start_redis()
        for slot in self.slots:
            self.resume(slot)
            if not slot.alive:
                if slot.proc is not None:  # died by itself: the checker will ask why
                    slot.past.append(slot.proc)
                    slot.ended.append(time.time())
                    slot.proc = None
                self.start_node(slot)
        for slot in self.slots:
            self.wait_serving(slot)

    def stop(self) -> None:
        for slot in self.slots:
            with contextlib.suppress(Exception):
                self.resume(slot)
            if slot.proc is not None:
                with contextlib.suppress(AssertionError):
                    slot.proc.stop()
                slot.past.append(slot.proc)
                slot.ended.append(time.time())
                slot.proc = None
        self.redis.stop()
