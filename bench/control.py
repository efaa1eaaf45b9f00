"""restcp's control plane at scale: create many routes through the API, then restart.

One restcp with a SQLite store file (pinned on the proxy core). The client creates routes one
after another on one kept-alive HTTP connection and times each; restcp's RSS is sampled as
the count grows. Then SIGTERM, and restcp is started again (several times): the time from
spawning ``uv run restcp serve`` to its ``ready`` line, with every stored route bound again.
"""

from __future__ import annotations

import datetime
import http.client
import json
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from bench.peers import api_base, restcp_log_notes, start_restcp
from bench.procs import BenchError, Proc

ROUTES_PER_APP = 500


@dataclass
class ControlResult:
    routes_wanted: int
    routes_created: int = 0
    create_total_s: float = 0.0
    create_p50_ms: float = 0.0
    create_p99_ms: float = 0.0
    create_max_ms: float = 0.0
    cold_start_s: float = 0.0  # empty store, start to ready
    rss_empty_kib: int = 0
    rss_full_kib: int = 0
    fds_full: int = 0
    stop_s: list[float] = field(default_factory=list)
    restart_s: list[float] = field(default_factory=list)
    rss_restarted_kib: int = 0
    growth: list[tuple[int, int, float]] = field(default_factory=list)  # (routes, rss, ms)
    notes: list[str] = field(default_factory=list)
    argv: str = ""

    @property
    def restart_median_s(self) -> float:
        return statistics.median(self.restart_s) if self.restart_s else 0.0


def _port_range(routes: int) -> str:
    """A range below the kernel's ephemeral ports, so a route never races an outgoing socket."""
    lo_ephemeral = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    hi = lo_ephemeral - 1
    lo = max(1024, hi - routes - 2000)
    if hi - lo + 1 < routes:
        raise BenchError(f"no room for {routes} route ports below {lo_ephemeral}")
    return f"{lo}-{hi}"


def _ready_after(proc: Proc, line: str) -> float:
    """Seconds from spawn to the ready line: from the line's own timestamp where it has one
    (``2026-01-02 03:04:05,678 INFO ...``), else from when the suite saw it."""
    try:
        stamp = datetime.datetime.strptime(" ".join(line.split()[:2]), "%Y-%m-%d %H:%M:%S,%f")
        return stamp.timestamp() - proc.started_wall
    except ValueError:
        return time.monotonic() - proc.started_at


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def run_control(
    routes: int, restarts: int, work: Path, log_dir: Path, budget_s: float
) -> ControlResult:
    result = ControlResult(routes_wanted=routes)
    store = f"sqlite:///{work / 'control.db'}"  # an absolute path: sqlite:////tmp/...
    extra = ["--port-range", _port_range(routes)]

    proc = start_restcp("restcp-control", store, log_dir, extra)
    line = proc.wait_line(60)
    base = api_base(line)
    result.cold_start_s = _ready_after(proc, line)
    result.argv = " ".join(proc.argv)
    result.rss_empty_kib = proc.max_rss_kib()

    address = urlsplit(base)
    conn = http.client.HTTPConnection(address.hostname or "127.0.0.1", address.port, timeout=30)
    latencies: list[float] = []
    checkpoint = max(1, routes // 40)
    deadline = time.monotonic() + budget_s
    started = time.monotonic()
    for i in range(1, routes + 1):
        t0 = time.perf_counter()
        app = f"scale{(i - 1) // ROUTES_PER_APP}"  # restcp caps routes per app (1000)
        conn.request("PUT", f"/apps/{app}/routes", body=b"", headers={"Content-Length": "0"})
        response = conn.getresponse()
        body = response.read()
        latencies.append((time.perf_counter() - t0) * 1e3)
        if response.status != 201:
            raise BenchError(f"route {i}: restcp answered {response.status} {body[:300]!r}")
        if i % checkpoint == 0 or i == routes:
            window = latencies[-checkpoint:]
            result.growth.append((i, proc.max_rss_kib(), statistics.median(window)))
        if time.monotonic() > deadline:
            result.notes.append(f"stopped at {i} routes: the {budget_s:g}s budget ran out")
            break
    result.create_total_s = time.monotonic() - started
    conn.close()
    result.routes_created = len(latencies)
    result.create_p50_ms = _pct(latencies, 0.50)
    result.create_p99_ms = _pct(latencies, 0.99)
    result.create_max_ms = max(latencies)
    result.rss_full_kib = proc.max_rss_kib()
    result.fds_full = proc.open_fds()
    result.stop_s.append(proc.stop(timeout=60))
    result.notes += restcp_log_notes(proc.log_path)

    for n in range(restarts):
        proc = start_restcp(f"restcp-restart-{n + 1}", store, log_dir, extra)
        line = proc.wait_line(300)
        result.restart_s.append(_ready_after(proc, line))
        if f"routes={result.routes_created}" not in line:
            result.notes.append(f"restart {n + 1}: ready line says {line!r}")
        health = _get_json(api_base(line) + "healthz")
        if health.get("routes") != result.routes_created:
            result.notes.append(f"restart {n + 1}: /healthz says {health}")
        result.rss_restarted_kib = proc.max_rss_kib()
        result.stop_s.append(proc.stop(timeout=60))
        result.notes += restcp_log_notes(proc.log_path)
    return result


def _get_json(url: str) -> dict[str, object]:
    address = urlsplit(url)
    conn = http.client.HTTPConnection(address.hostname or "127.0.0.1", address.port, timeout=30)
    try:
        conn.request("GET", address.path)
        answer: dict[str, object] = json.loads(conn.getresponse().read())
        return answer
    finally:
        conn.close()
