"""The data-plane workloads. Each runs one bounded load through a proxy and returns a Sample.

The proxy's CPU time (utime+stime, its whole process group) is read just before and just
after the load generator runs, and divided by the operations done: CPU-µs per MB relayed,
per connection, per request. Load generators run on the load core with the backends.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import socket
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from bench.peers import Backend, RunningProxy
from bench.procs import LOAD_CORE, BenchError, Noise, run_tool


@dataclass(frozen=True)
class Plan:
    """How hard and how long: --quick makes every number here small."""

    seconds: int  # iperf3 and wrk durations
    wrk_conns: int
    redis_requests: int  # per redis-benchmark test
    redis_clients: int
    idle_conns: int
    routes: int  # control plane scale
    reps: int


@dataclass
class Sample:
    proxy: str
    workload: str
    rate: float  # the headline number, in rate_unit
    rate_unit: str
    ops: float  # operations done, in op_unit, for the CPU division
    op_unit: str
    cpu_s: float | None = None
    extra: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def cpu_us_per_op(self) -> float | None:
        if self.cpu_s is None or self.ops <= 0:
            return None
        return self.cpu_s * 1e6 / self.ops


@dataclass(frozen=True)
class Workload:
    name: str
    title: str
    backend: str  # which Backend it needs
    run: Callable[[RunningProxy, Plan], Sample]
    needs_proxy: bool = False  # meaningless without one (there is no proxy memory to read)


def _noise(sample: Sample, noise: Noise) -> None:
    sample.extra.update(noise.finish())


def _measured(proxy: RunningProxy, load: Callable[[], Sample]) -> Sample:
    noise = Noise()
    before = proxy.proc.cpu_seconds() if proxy.proc else None
    sample = load()
    if proxy.proc is not None and before is not None:
        proxy.proc.check_alive()
        sample.cpu_s = proxy.proc.cpu_seconds() - before
    _noise(sample, noise)
    return sample


# -- sanity: one exchange through the proxy before measuring (also a warm-up) -------------


def _exchange(port: int, send: bytes, expect: bytes) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(send)
        got = b""
        while expect not in got:
            chunk = sock.recv(4096)
            if not chunk:
                break
            got += chunk
    if expect not in got:
        raise BenchError(f"127.0.0.1:{port} answered {got[:200]!r}, expected {expect!r}")


def check_relays(kind: str, port: int) -> None:
    if kind == "http":
        _exchange(port, b"GET / HTTP/1.1\r\nHost: b\r\nConnection: close\r\n\r\n", b"200 OK")
    elif kind == "redis":
        _exchange(port, b"PING\r\n", b"+PONG")
    elif kind == "echo":
        _exchange(port, b"ping\n", b"ping\n")
    # iperf3: a stray connection makes the server log an error; iperf3 -c checks for itself.


# -- bulk: iperf3 ---------------------------------------------------------------------------


def bulk(proxy: RunningProxy, plan: Plan) -> Sample:
    def load() -> Sample:
        argv = ["iperf3", "-c", "127.0.0.1", "-p", str(proxy.port), "-t", str(plan.seconds)]
        done = run_tool(
            [*argv, "-J", "--connect-timeout", "5000"], core=LOAD_CORE, timeout=plan.seconds + 30
        )
        end = json.loads(done.stdout)["end"]
        received = end["sum_received"]
        sample = Sample(
            proxy.name,
            "bulk",
            rate=received["bits_per_second"] / 1e9,
            rate_unit="Gbit/s",
            ops=received["bytes"] / 1e6,
            op_unit="MB",
        )
        retransmits = end.get("sum_sent", {}).get("retransmits")
        if retransmits:
            sample.extra["retransmits"] = float(retransmits)
        return sample

    return _measured(proxy, load)


# -- HTTP through wrk -----------------------------------------------------------------------

_UNITS_MS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3}


def _ms(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text)
    if not match:
        raise BenchError(f"cannot read wrk latency {text!r}")
    return float(match[1]) * _UNITS_MS[match[2]]


@dataclass
class WrkResult:
    requests: int
    rps: float
    p50_ms: float
    p99_ms: float
    errors: dict[str, int]
    non_2xx: int


def parse_wrk(out: str) -> WrkResult:
    requests = re.search(r"(\d+) requests in", out)
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    p50 = re.search(r"^\s+50%\s+(\S+)", out, re.M)
    p99 = re.search(r"^\s+99%\s+(\S+)", out, re.M)
    if not (requests and rps and p50 and p99):
        raise BenchError(f"cannot read wrk output:\n{out}")
    errors: dict[str, int] = {}
    socket_errors = re.search(r"Socket errors: (.*)", out)
    if socket_errors:
        for part in socket_errors[1].split(","):
            key, value = part.split()
            if int(value):
                errors[key] = int(value)
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return WrkResult(
        requests=int(requests[1]),
        rps=float(rps[1]),
        p50_ms=_ms(p50[1]),
        p99_ms=_ms(p99[1]),
        errors=errors,
        non_2xx=int(non_2xx[1]) if non_2xx else 0,
    )


def _wrk(proxy: RunningProxy, plan: Plan, workload: str, close: bool) -> Sample:
    def load() -> Sample:
        argv = ["wrk", "-t1", f"-c{plan.wrk_conns}", f"-d{plan.seconds}s", "--timeout", "2s"]
        if close:
            argv += ["-H", "Connection: close"]
        argv += ["--latency", f"http://127.0.0.1:{proxy.port}/"]
        result = parse_wrk(run_tool(argv, core=LOAD_CORE, timeout=plan.seconds + 30).stdout)
        sample = Sample(
            proxy.name,
            workload,
            rate=result.rps,
            rate_unit="conn/s" if close else "req/s",
            ops=result.requests,
            op_unit="conn" if close else "req",
            extra={"p50_ms": result.p50_ms, "p99_ms": result.p99_ms},
        )
        if result.errors:
            sample.notes.append(
                "socket errors: " + ", ".join(f"{k} {v}" for k, v in result.errors.items())
            )
        if result.non_2xx:
            sample.notes.append(f"{result.non_2xx} non-2xx responses")
        return sample

    return _measured(proxy, load)


def connections(proxy: RunningProxy, plan: Plan) -> Sample:
    return _wrk(proxy, plan, "connections", close=True)


def keepalive(proxy: RunningProxy, plan: Plan) -> Sample:
    return _wrk(proxy, plan, "keepalive", close=False)


# -- redis-benchmark ------------------------------------------------------------------------


def redis(proxy: RunningProxy, plan: Plan) -> Sample:
    def load() -> Sample:
        argv = ["redis-benchmark", "-h", "127.0.0.1", "-p", str(proxy.port)]
        argv += ["-t", "ping,set,get", "-n", str(plan.redis_requests)]
        argv += ["-c", str(plan.redis_clients), "-q", "--csv"]
        started = time.monotonic()
        out = run_tool(argv, core=LOAD_CORE, timeout=300).stdout
        wall = time.monotonic() - started
        rows = [line.replace('"', "").split(",") for line in out.strip().splitlines()]
        tests = {row[0]: row for row in rows[1:] if len(row) >= 7}
        if set(tests) != {"PING_INLINE", "PING_MBULK", "SET", "GET"}:
            raise BenchError(f"cannot read redis-benchmark output:\n{out}")
        total = plan.redis_requests * len(tests)
        extra = {f"{name.lower()}_rps": float(row[1]) for name, row in tests.items()}
        extra["get_p50_ms"] = float(tests["GET"][4])
        extra["get_p99_ms"] = float(tests["GET"][6])
        # The headline: the four tests' mean rate, i.e. requests over their summed durations.
        mean_rate = total / sum(plan.redis_requests / float(row[1]) for row in tests.values())
        extra["wall_s"] = wall
        return Sample(proxy.name, "redis", mean_rate, "req/s", total, "req", extra=extra)

    return _measured(proxy, load)


# -- idle connections -----------------------------------------------------------------------


async def _open_idle(
    port: int, count: int, limit_s: float
) -> tuple[list[asyncio.StreamWriter], list[str]]:
    """Open ``count`` connections, each proven relayed by one echoed byte; keep them open."""
    gate = asyncio.Semaphore(128)
    writers: list[asyncio.StreamWriter] = []
    failures: list[str] = []

    async def one() -> None:
        async with gate:
            try:
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
            except OSError as err:
                failures.append(f"connect: {err.strerror or err}")
                return
            writers.append(writer)
            try:
                writer.write(b"x")
                await reader.readexactly(1)
            except (OSError, asyncio.IncompleteReadError) as err:
                failures.append(f"echo: {type(err).__name__}")

    try:
        await asyncio.wait_for(asyncio.gather(*(one() for _ in range(count))), limit_s)
    except TimeoutError:
        failures.append(f"gave up after {limit_s:g}s")
    return writers, failures


def idle(proxy: RunningProxy, plan: Plan) -> Sample:
    count = plan.idle_conns

    async def run() -> Sample:
        noise = Noise()
        pss_before = proxy.proc.pss_kib() if proxy.proc else 0
        cpu_before = proxy.proc.cpu_seconds() if proxy.proc else 0.0
        writers, failures = await _open_idle(proxy.port, count, limit_s=120)
        opened = len(writers) - sum(1 for f in failures if f.startswith("echo"))
        sample = Sample(proxy.name, "idle", 0.0, "KiB/conn", float(max(opened, 0)), "conn")
        if proxy.proc is not None:
            proxy.proc.check_alive()
            pss_after = proxy.proc.pss_kib()
            sample.cpu_s = proxy.proc.cpu_seconds() - cpu_before
            sample.extra = {"pss_before_kib": pss_before, "pss_after_kib": pss_after}
            if opened > 0:
                sample.rate = (pss_after - pss_before) / opened
        _noise(sample, noise)
        for writer in writers:
            writer.close()
        for writer in writers:
            with contextlib.suppress(OSError):
                await writer.wait_closed()
        if opened < count:
            kinds = statistics.multimode(failures) if failures else ["?"]
            sample.notes.append(f"only {opened}/{count} relayed ({kinds[0]} x{len(failures)})")
        return sample

    return asyncio.run(run())


WORKLOADS: dict[str, Workload] = {
    w.name: w
    for w in (
        Workload("bulk", "Bulk throughput (iperf3, 1 stream)", "iperf3", bulk),
        Workload("connections", "New connections (wrk, Connection: close)", "http", connections),
        Workload("keepalive", "Kept-alive requests (wrk --latency)", "http", keepalive),
        Workload("redis", "Redis (redis-benchmark -t ping,set,get)", "redis", redis),
        Workload("idle", "Memory per idle relayed connection (PSS)", "echo", idle, True),
    )
}


def backend_for(workload: Workload, backends: dict[str, Backend]) -> Backend:
    return backends[workload.backend]
