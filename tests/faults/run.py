"""One fault run: start the cluster, create the steady routes, let the writers and the
nemesis loose for ``duration`` seconds, heal, read the end state through every node and the
data plane, and check the history. On anomalies the history is written as JSON lines next
to the run's files, and the seed is in every message, so that a failure can be replayed:

    uv run --frozen python -m tests.faults.run --seed 1234 --duration 60

(The seed fixes every choice of the writers and the nemesis; which of two racing threads
wins is the machine's, so a replay follows the same plan, not the same interleaving.)
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from tests.faults.checker import Report, check
from tests.faults.cluster import IPS, FaultCluster
from tests.faults.history import History
from tests.faults.model import GONE
from tests.faults.nemesis import Nemesis
from tests.faults.workload import Workload, call, probe

WRITERS = 3
# The longest the end state may take to settle once every fault is healed: a 202's change
# is applied at the serving node's next resync (1 s in a run), and a node just restarted
# binds its routes before it says ready.
SETTLE = 20.0
# Route fields that are stored (the rest, health and connections, are observed by nodes).
STORED = ("app", "id", "frontend_ip", "port", "idle_timeout", "balance")


@dataclass
class Result:
    seed: int
    report: Report
    faults: dict[str, int] = field(default_factory=dict)
    history: Path | None = None

    def summary(self) -> str:
        stats = ", ".join(f"{k}: {v}" for k, v in self.report.stats.items())
        faults = ", ".join(f"{k}: {v}" for k, v in self.faults.items())
        anomalies = len(self.report.anomalies)
        text = f"fault run seed {self.seed}: {stats}; faults: {faults}; anomalies: {anomalies}"
        if self.report.anomalies:
            text += "\n  " + "\n  ".join(self.report.anomalies[:30])
            text += f"\nhistory: {self.history}"
            text += f"\nreplay: uv run --frozen python -m tests.faults.run --seed {self.seed}"
        return text


def seed_from_env() -> int:
    """RESTCP_FAULT_SEED, or a new one (printed by every result)."""
    text = os.environ.get("RESTCP_FAULT_SEED", "")
    return int(text) if text else random.SystemRandom().randrange(1, 10**9)


def run(seed: int, duration: float, directory: Path, writers: int = WRITERS) -> Result:
    history = History()
    history.add("seed", seed=seed, duration=duration)
    cluster = FaultCluster(directory, history)
    workload = Workload(cluster, history, seed)
    nemesis = Nemesis(cluster, history, seed)
    listen = ListenProbe(cluster, history)
    try:
        cluster.start()
        history.add("nodes", ips=list(IPS))
        workload.start_backends()
        workload.create_steady_routes()
        listen.start()
        nemesis.start()
        workload.start(writers)
        threading.Event().wait(duration)  # the length of the run
        nemesis.stop()
        workload.stop()
        history.add("healing")
        cluster.heal()
        settle(cluster, workload)
        read_end_state(cluster, workload, history)
        listen.stop()
        serving_spans(cluster, history)
    finally:
        with contextlib.suppress(Exception):
            listen.stop()
        cluster.stop()
        workload.close()
    result = Result(seed, check(history.snapshot()), dict(nemesis.counts))
    if result.report.anomalies:
        result.history = history.dump(directory / f"history-{seed}.jsonl")
    return result


def settle(cluster: FaultCluster, workload: Workload) -> None:
    """Until every route stored is listening on its IP and no other port of the nodes'
    ranges is (or SETTLE seconds have passed: the checker then says what is wrong)."""
    end = time.monotonic() + SETTLE
    base = cluster.slots[0].api
    while time.monotonic() < end:
        stored = {(r["frontend_ip"], r["port"]) for r in stored_routes(base)}
        if stored == listening(cluster):
            return
        time.sleep(0.05)


def stored_routes(base: str) -> list[dict[str, Any]]:
    status, apps, _ = call(base, "GET", "/apps")
    assert status == 200, apps
    routes = []
    for app in apps:
        status, found, _ = call(base, "GET", f"/apps/{app['app']}/routes")
        assert status == 200, found
        routes += found
    return routes


def read_end_state(cluster: FaultCluster, workload: Workload, history: History) -> None:
    """The routes through every node (their stored fields), then the data plane: each route
    stored, connected to twice per enabled backend; each route surely deleted, once."""
    stored: list[dict[str, Any]] = []
    for slot in cluster.slots:
        routes = [
            {
                **{k: r[k] for k in STORED},
                "backends": [
                    {k: b[k] for k in ("id", "ip", "port", "state")} for b in r["backends"]
                ],
            }
            for r in stored_routes(slot.api)
        ]
        history.add("final", node=slot.index, routes=routes)
        stored = routes
    for route in stored:
        enabled = [b for b in route["backends"] if b["state"] == "enabled"]
        got = [probe(route["frontend_ip"], route["port"]) for _ in range(max(2, 2 * len(enabled)))]
        history.add("final_probe", app=route["app"], route=route["id"], got=got)
    held = {(r["frontend_ip"], r["port"]) for r in stored}
    for key, model in workload.model.routes.items():
        if model.states == {GONE} and model.port is not None and (model.ip, model.port) not in held:
            got = probe(model.ip, model.port)
            history.add(
                "final_gone", app=key[0], route=key[1], ip=model.ip, port=model.port, got=got
            )


def listening(cluster: FaultCluster) -> set[tuple[str, int]]:
    """(ip, port) of every socket listening on a frontend IP within the nodes' port ranges."""
    ranges = [_range(slot.args) for slot in cluster.slots]
    return {
        (ip, port)
        for ip, port, _ in _listen_table()
        if ip in IPS and any(lo <= port <= hi for lo, hi in ranges)
    }


def _range(args: tuple[str, ...]) -> tuple[int, int]:
    lo, hi = args[args.index("--port-range") + 1].split("-")
    return int(lo), int(hi)


def _listen_table() -> list[tuple[str, int, str]]:
    rows = []
    for row in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        cols = row.split()
        if cols[3] != "0A":
            continue
        address, port = cols[1].split(":")
        ip = ".".join(str(int(address[i : i + 2], 16)) for i in (6, 4, 2, 0))
        rows.append((ip, int(port, 16), cols[9]))
    return rows


class ListenProbe:
    """Every 0.1 s during the run: which node process listens on which frontend IP (the
    sockets each live node holds, against /proc/net/tcp). Two processes on one IP at once
    are an ``overlap`` event."""

    def __init__(self, cluster: FaultCluster, history: History) -> None:
        self.cluster = cluster
        self.history = history
        self.rounds = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        if self._thread.is_alive():
            self._stop.set()
            self._thread.join(timeout=10)
            self.history.add("listen_probes", rounds=self.rounds)

    def _run(self) -> None:
        ranges = [_range(slot.args) for slot in self.cluster.slots]
        while not self._stop.wait(0.1):
            with self.cluster.lock:
                pids = [pid for slot in self.cluster.slots for pid in slot.pids()]
            # Only frontends count: each node's API listens on 127.0.0.1 too.
            sockets = {
                inode: ip
                for ip, port, inode in _listen_table()
                if ip in IPS and any(lo <= port <= hi for lo, hi in ranges)
            }
            owners: dict[str, set[int]] = {}
            for pid in pids:
                for inode in _socket_inodes(pid) & sockets.keys():
                    owners.setdefault(sockets[inode], set()).add(pid)
            for ip, holders in owners.items():
                if len(holders) > 1:
                    self.history.add("overlap", ip=ip, pids=sorted(holders))
            self.rounds += 1


def _socket_inodes(pid: int) -> set[str]:
    inodes = set()
    with contextlib.suppress(OSError):
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
                if target.startswith("socket:["):
                    inodes.add(target[8:-1])
    return inodes


def serving_spans(cluster: FaultCluster, history: History) -> None:
    """From each incarnation's own log: the spans during which it served each frontend IP
    (from its lease to its loss, or to the end of the process)."""
    for slot in cluster.slots:
        for number, (proc, ended) in enumerate(zip(slot.past, slot.ended, strict=True)):
            since: dict[str, float] = {}
            for line in proc.lines:
                ip = _lease_ip(line)
                if ip is None:
                    continue
                when = datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f").timestamp()
                if " acquired" in line or " taken from node " in line:
                    since.setdefault(ip, when)
                elif ip in since:
                    history.add(
                        "serving",
                        ip=ip,
                        node=slot.index,
                        incarnation=number,
                        **{"from": since.pop(ip), "until": when},
                    )
            for ip, start in since.items():
                history.add(
                    "serving",
                    ip=ip,
                    node=slot.index,
                    incarnation=number,
                    **{"from": start, "until": ended},
                )


def _lease_ip(line: str) -> str | None:
    for marker in ("lease of frontend IP ", "frontend IP "):
        if marker in line and (
            "acquired" in line
            or "taken from node" in line
            or "lost to node" in line
            or "no longer serving it" in line
        ):
            return line.split(marker, 1)[1].split()[0].rstrip(",")
    return None


def main() -> int:
    parser = argparse.ArgumentParser(description="A randomized fault run of a restcp cluster")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--duration", type=float, default=600.0)
    parser.add_argument("--writers", type=int, default=WRITERS)
    parser.add_argument("--keep", type=Path, default=None, help="a directory for the run's files")
    args = parser.parse_args()
    seed = args.seed if args.seed is not None else seed_from_env()
    print(f"fault run seed {seed}, {args.duration:g} s", flush=True)
    with tempfile.TemporaryDirectory(prefix="restcp-faults-") as tmp:
        directory = args.keep or Path(tmp)
        directory.mkdir(parents=True, exist_ok=True)
        result = run(seed, args.duration, directory, args.writers)
        if result.history is not None and args.keep is None:
            kept = Path.cwd() / result.history.name
            kept.write_text(result.history.read_text())
            result.history = kept
        print(result.summary())
    return 1 if result.report.anomalies else 0


if __name__ == "__main__":
    sys.exit(main())
