"""Cluster timings for docs/cluster.md (a script, not a test):

1. change latency: a backend replaced through node A's API, which does not serve the route,
   and through node C's, which does: 1,000 changes each; p50/p99 of the answer, which
   comes once C has applied the change (a client connecting right after it is checked).
2. resume time: node C with 1,000 routes is killed (SIGKILL) and started again at once
   under its name: until all 1,000 ports listen again, with the lease taken broken out;
   then a clean stop handing the IP to a standby node.

    uv run python -m bench.cluster_timing [--changes 1000] [--routes 1000] [--lease-ttl 2]

Real redis-server and ``restcp serve`` processes on loopback aliases (127.0.0.2, 127.0.0.3);
every wait polls with a deadline.
"""

from __future__ import annotations

import argparse
import json
import signal
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path

from tests.cluster.conftest import fetch
from tests.e2e.peers import Backend, sender
from tests.helpers import Node, free_port_range, http
from tests.redis_server import RedisServer

A, C = "127.0.0.2", "127.0.0.3"


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def ms(values: list[float]) -> str:
    return (
        f"p50 {1000 * pct(values, 0.5):.2f} ms, p99 {1000 * pct(values, 0.99):.2f} ms, "
        f"max {1000 * max(values):.2f} ms, mean {1000 * statistics.fmean(values):.2f} ms"
    )


def until(check: Callable[[], bool], what: str, deadline: float = 30.0) -> float:
    start = time.perf_counter()
    while not check():
        if time.perf_counter() - start > deadline:
            raise RuntimeError(f"{what}: not within {deadline}s")
    return time.perf_counter() - start


@contextmanager
def node(redis_url: str, ip: str, ports: int, *extra: str, name: str) -> Iterator[Node]:
    lo, hi = free_port_range(ports)
    # Each node its own snapshot: one in the working directory would carry another run's
    # cluster epoch into this run's fresh Redis.
    snapshots = tempfile.TemporaryDirectory(prefix="restcp-snapshot-")
    proc = Node(
        "--api", "127.0.0.1:0",
        "--store", redis_url,
        "--frontend-ip", ip,
        "--node-name", name,
        "--port-range", f"{lo}-{hi}",
        "--log-level", "info",
        "--snapshot", str(Path(snapshots.name) / "snapshot.db"),
        *extra,
    )  # fmt: skip
    try:
        yield proc
    finally:
        try:
            proc.stop()
        finally:
            snapshots.cleanup()


def logged_at(proc: Node, needle: str) -> float:
    """Unix time of the node's first log line containing ``needle`` (its own timestamp, so
    the order of events inside the node is exact, whenever this script reads the line)."""
    return stamped(proc.wait_for_line(needle, 60.0))


def stamped(line: str) -> float:
    """Unix time of a node's log line, from its own timestamp."""
    return datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f").timestamp()


def listening(ip: str) -> set[int]:
    """Ports in LISTEN on ``ip`` (IPv4), from /proc/net/tcp: no probe connection needed."""
    want = "".join(f"{int(octet):02X}" for octet in reversed(ip.split(".")))
    ports = set()
    for row in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        cols = row.split()
        address, port = cols[1].split(":")
        if address == want and cols[3] == "0A":
            ports.add(int(port, 16))
    return ports


def change_latency(redis_url: str, changes: int) -> dict[str, dict[str, object]]:
    """A backend replaced ``changes`` times through node A (which does not serve the route)
    and as many times through node C (which does): each answer's time, and how many
    clients connecting right after an answer did not reach the new backend (none should)."""
    results: dict[str, dict[str, object]] = {}
    with (
        # No resync timer to speak of: every change must come by its notice.
        node(redis_url, C, 20, "--resync-interval", "3600", name="c") as c,
        node(redis_url, A, 20, "--resync-interval", "3600", name="a") as a,
        Backend(sender(b"one")) as one,
        Backend(sender(b"two")) as two,
    ):
        c.wait_ready()
        a.wait_ready()
        route = json.loads(http("PUT", c.api + "/apps/bench/routes").body)
        port = route["port"]
        path = f"/apps/bench/routes/{route['id']}/backends"
        http("PUT", a.api + path, {"ip": "127.0.0.1", "port": one.port})
        until(lambda: fetch(C, port) == b"one", "first backend live")
        for via, api in (("through A, not serving", a.api), ("through C, serving", c.api)):
            answered: list[float] = []
            stale = 0
            for i in range(changes):
                target, name = (two, b"two") if i % 2 == 0 else (one, b"one")
                began = time.perf_counter()
                reply = http("PUT", f"{api}{path}/1", {"ip": "127.0.0.1", "port": target.port})
                answered.append(time.perf_counter() - began)
                assert reply.status == 200, reply
                stale += fetch(C, port) != name
            results[via] = {"answered": answered, "stale": stale}
    return results


def resume_time(redis_url: str, routes: int, lease_ttl: str) -> tuple[dict[str, float], bool]:
    """The restart's timings, and whether the new process took the lease from the killed
    one (False: that lease had run out first)."""
    with node(redis_url, C, routes + 50, "--lease-ttl", lease_ttl, name="c") as old:
        old.wait_ready()
        ports = set()
        for _ in range(routes):
            route = json.loads(http("PUT", old.api + "/apps/bench/routes").body)
            ports.add(route["port"])
        assert len(ports) == routes
        assert ports <= listening(C)
        # SIGKILL: no lease released, no goodbye. The new node is started right after, as a
        # supervisor restarting a crashed service would, under the same name: it takes the
        # lease at once (docs/cluster.md, "Node names and incarnations").
        old.stop(signal.SIGKILL)
        killed = time.time()
        with node(redis_url, C, routes + 50, "--lease-ttl", lease_ttl, name="c") as new:
            new.wait_ready()
            until(lambda: ports <= listening(C), f"{routes} ports listening again", 60.0)
            resumed = time.time() - killed
            started = logged_at(new, "starting restcp") - killed
            # The killed node's lease may run out before the new process asks for it (a
            # TTL shorter than a start): then it is acquired as any free lease.
            line = new.wait_for_line(f"lease of frontend IP {C} ", 60.0)
            early = " taken from node " in line
            leased = stamped(line) - killed
            ready = logged_at(new, " ready api=") - killed
        # A clean stop (SIGTERM) releases the lease: a successor waits for nothing.
        with node(redis_url, C, routes + 50, "--lease-ttl", lease_ttl, name="s") as successor:
            new.stop()
            stopped = time.perf_counter()
            successor.wait_ready()
            until(lambda: ports <= listening(C), f"{routes} ports listening again", 60.0)
            graceful = time.perf_counter() - stopped
    return {
        "kill_to_new_process_logging_s": started,
        "kill_to_lease_acquired_s": leased,
        "kill_to_new_node_ready_s": ready,
        "kill_to_all_listening_s": resumed,
        "lease_to_all_listening_s": resumed - leased,
        "sigterm_to_successor_all_listening_s": graceful,
    }, early


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--changes", type=int, default=1000)
    parser.add_argument("--routes", type=int, default=1000)
    parser.add_argument("--lease-ttl", default="2")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, RedisServer(Path(tmp)) as server:
        latency = change_latency(server.url(prefix="lat:"), args.changes)
        print(f"{args.changes} backend changes of a route node C serves, each answer timed:")
        for via, found in latency.items():
            print(f"  {via:24s} {ms(found['answered'])}")  # type: ignore[arg-type]
            print(
                f"  {'':24s} clients right after an answer not on the new backend: {found['stale']}"
            )
        resume, early = resume_time(server.url(prefix="res:"), args.routes, args.lease_ttl)
        ttl = args.lease_ttl
        print(f"{args.routes} routes, kill -9 and restart of their node (--lease-ttl {ttl}):")
        how = "taken from the killed node" if early else "acquired once the killed node's ran out"
        print(f"  the lease was {how}")
        for name, value in resume.items():
            print(f"  {name:38s} {value:.3f}")


if __name__ == "__main__":
    main()
