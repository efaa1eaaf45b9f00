"""Processes the suite starts: pinned, in their own process group, measured, and always stopped.

Every server runs in a new session (so its process group id is its own pid) and the suite
reads CPU time and memory summed over that group, which covers nginx's worker under its
master and restcp's Python under ``uv run``. Nothing waits with a fixed sleep: a server is
ready when its port accepts (bounded connect retries), when its port shows up LISTENing in
/proc/net/tcp (for proxies, where a probe connection would be relayed to the backend), or
when it prints its ready line.
"""

from __future__ import annotations

import contextlib
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

CLK_TCK = os.sysconf("SC_CLK_TCK")
PROXY_CORE = 1
LOAD_CORE = 0

# Every process the suite started and has not stopped yet; cleanup() ends them all.
_RUNNING: list[Proc] = []


class BenchError(RuntimeError):
    """Something is broken (a peer does not start, a tool fails): the suite must fail."""


def pinned(core: int, argv: Sequence[str]) -> list[str]:
    return ["taskset", "-c", str(core), *argv]


def pin_for_standalone(prog: str, tools: Sequence[str]) -> bool:
    """A benchmark run as a command of its own: False (said on stderr) if a tool or one
    of the two cores is missing; else this process moves to the load core, True."""
    for tool in tools:
        if not shutil.which(tool):
            print(f"{prog}: {tool} is missing", file=sys.stderr)
            return False
    if not {LOAD_CORE, PROXY_CORE} <= os.sched_getaffinity(0):
        print(f"{prog}: needs cores {LOAD_CORE} and {PROXY_CORE}", file=sys.stderr)
        return False
    os.sched_setaffinity(0, {LOAD_CORE})
    return True


def free_port() -> int:
    """A port on 127.0.0.1 that is free right now (the kernel picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _retry_delays(timeout: float) -> Iterator[None]:
    """Yield until ``timeout`` has passed, backing off from 2 ms to 50 ms between tries."""
    deadline = time.monotonic() + timeout
    delay = 0.002
    while time.monotonic() < deadline:
        yield
        time.sleep(delay)  # between bounded retries only, never "long enough to be up"
        delay = min(delay * 2, 0.05)


def wait_accepting(port: int, timeout: float = 10.0, proc: Proc | None = None) -> None:
    """Connect to 127.0.0.1:port until it accepts, or fail after ``timeout``."""
    for _ in _retry_delays(timeout):
        if proc is not None:
            proc.check_alive()
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1.0):
                return
        except OSError:
            continue
    raise BenchError(f"nothing accepts on 127.0.0.1:{port} after {timeout:g}s")


def _listening_ports() -> set[int]:
    ports: set[int] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError), open(table) as fh:
            next(fh)
            for line in fh:
                cols = line.split()
                if cols[3] == "0A":  # TCP_LISTEN
                    ports.add(int(cols[1].rsplit(":", 1)[1], 16))
    return ports


def wait_listening(port: int, timeout: float = 10.0, proc: Proc | None = None) -> None:
    """Wait until some socket LISTENs on ``port``, without connecting to it."""
    for _ in _retry_delays(timeout):
        if proc is not None:
            proc.check_alive()
        if port in _listening_ports():
            return
    raise BenchError(f"nothing listens on port {port} after {timeout:g}s")


@dataclass
class _Stat:
    pgrp: int
    cpu_ticks: int


def _stat(pid: int) -> _Stat | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    rest = text[text.rindex(")") + 2 :].split()
    # Fields from 3 on: state ppid pgrp session tty tpgid flags minflt cminflt majflt
    # cmajflt utime stime cutime cstime ... ; cutime/cstime hold reaped children's time.
    utime, stime, cutime, cstime = (int(x) for x in rest[11:15])
    return _Stat(pgrp=int(rest[2]), cpu_ticks=utime + stime + cutime + cstime)


def _status_kib(pid: int, key: str) -> int:
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


def _pss_kib(pid: int) -> int:
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    return 0


@dataclass
class Proc:
    """A started server: its own process group, its log file, its measurements."""

    name: str
    argv: list[str]
    log_path: Path
    popen: subprocess.Popen[bytes]
    started_at: float  # time.monotonic() just before the spawn
    started_wall: float  # time.time() at the same moment, to compare with log timestamps
    ready_mark: str | None = None
    stopped: bool = field(default=False)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def check_alive(self) -> None:
        if self.popen.poll() is not None:
            raise BenchError(
                f"{self.name} exited with status {self.popen.returncode}; "
                f"its log {self.log_path}:\n{self.log_tail()}"
            )

    def log_tail(self, lines: int = 20) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        return ""

    def wait_line(self, timeout: float) -> str:
        """Wait for the ready mark given at start to show up in the log; return that line.

        The output goes straight to a file, not through a pipe this process would have to
        drain: restcp writes an access-log line per connection, and reading those here would
        cost CPU on the load core.
        """
        assert self.ready_mark is not None, "started without a ready mark"
        mark = self.ready_mark.encode()
        for _ in _retry_delays(timeout):
            with open(self.log_path, "rb") as log:
                for line in log:
                    if mark in line:
                        return line.decode(errors="replace").strip()
            self.check_alive()
        raise BenchError(f"{self.name} printed no ready line within {timeout:g}s")

    def pids(self) -> list[int]:
        """Live processes of this process group (the leader and everything it forked)."""
        found = []
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                stat = _stat(int(entry))
                if stat is not None and stat.pgrp == self.pid:
                    found.append(int(entry))
        return found

    def cpu_seconds(self) -> float:
        ticks = 0
        for pid in self.pids():
            stat = _stat(pid)
            if stat is not None:
                ticks += stat.cpu_ticks
        return ticks / CLK_TCK

    def pss_kib(self) -> int:
        return sum(_pss_kib(pid) for pid in self.pids())

    def max_rss_kib(self) -> int:
        """VmRSS of the group's largest process (restcp's Python, not uv)."""
        return max((_status_kib(pid, "VmRSS") for pid in self.pids()), default=0)

    def open_fds(self) -> int:
        total = 0
        for pid in self.pids():
            with contextlib.suppress(OSError):
                total += len(os.listdir(f"/proc/{pid}/fd"))
        return total

    def stop(self, timeout: float = 15.0) -> float:
        """SIGTERM the leader, wait for it, SIGKILL the group if it lingers; the seconds taken."""
        if self.stopped:
            return 0.0
        self.stopped = True
        start = time.monotonic()
        if self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.pid, signal.SIGKILL)
                self.popen.wait(5)
        took = time.monotonic() - start
        if self.pids():  # a child that outlived its leader
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pid, signal.SIGKILL)
        if self in _RUNNING:
            _RUNNING.remove(self)
        return took


def start(
    name: str,
    argv: Sequence[str],
    *,
    core: int,
    log_dir: Path,
    cwd: Path | None = None,
    ready_mark: str | None = None,
    env: dict[str, str] | None = None,
) -> Proc:
    """Start ``argv`` pinned on ``core`` in a new session; its output goes to a log file."""
    full = pinned(core, argv)
    log_path = log_dir / f"{name}.log"
    n = 1
    while log_path.exists():  # a proxy is started once per measurement: keep every log
        n += 1
        log_path = log_dir / f"{name}.{n}.log"
    with open(log_path, "wb") as log:
        started_at, started_wall = time.monotonic(), time.time()
        popen = subprocess.Popen(
            full,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env=env,
        )
    proc = Proc(name, full, log_path, popen, started_at, started_wall, ready_mark)
    _RUNNING.append(proc)
    return proc


def cleanup() -> None:
    """Stop everything still running, newest first."""
    for proc in reversed(list(_RUNNING)):
        with contextlib.suppress(Exception):
            proc.stop(timeout=5)


def run_tool(argv: Sequence[str], *, core: int, timeout: float) -> subprocess.CompletedProcess[str]:
    """Run a load generator pinned on ``core``; fail loudly if it fails or overruns."""
    full = pinned(core, argv)
    try:
        done = subprocess.run(
            full, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL
        )
    except subprocess.TimeoutExpired as err:
        raise BenchError(f"{argv[0]} did not finish within {timeout:g}s: {' '.join(full)}") from err
    if done.returncode != 0:
        output = done.stdout[-2000:] + done.stderr[-2000:]
        raise BenchError(f"{' '.join(full)} exited {done.returncode}:\n{output}")
    return done


def _machine_busy() -> tuple[float, float]:
    """(busy CPU-seconds over all cores, stolen CPU-seconds) since boot, from /proc/stat."""
    first = Path("/proc/stat").read_text().split("\n", 1)[0].split()
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in first[1:9])
    return (user + nice + system + irq + softirq) / CLK_TCK, steal / CLK_TCK


def _ours() -> float:
    """CPU-seconds of the suite, its finished tools, and every peer it still runs."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    tools = resource.getrusage(resource.RUSAGE_CHILDREN)
    used = own.ru_utime + own.ru_stime + tools.ru_utime + tools.ru_stime
    return used + sum(proc.cpu_seconds() for proc in _RUNNING)


class Noise:
    """How much CPU something other than this suite used while a load ran.

    Other people's test runs on the same 2 cores skew every number; the report flags it.
    """

    def __init__(self) -> None:
        self.wall = time.monotonic()
        self.busy, self.steal = _machine_busy()
        self.ours = _ours()

    def finish(self) -> dict[str, float]:
        wall = max(time.monotonic() - self.wall, 1e-6)
        busy, steal = _machine_busy()
        foreign = max(0.0, (busy - self.busy) - (_ours() - self.ours))
        return {
            "foreign_cpu_pct": 100 * foreign / wall,
            "steal_pct": 100 * (steal - self.steal) / wall,
        }


def wait_quiet(threshold_pct: float, max_s: float) -> float:
    """Before a measurement: watch half-second windows until processes other than the suite's
    use less than ``threshold_pct`` of a core, for at most ``max_s``; the seconds waited."""
    started = time.monotonic()
    while time.monotonic() - started < max_s:
        noise = Noise()
        time.sleep(0.5)  # the observation window, not a wait for a server
        if noise.finish()["foreign_cpu_pct"] < threshold_pct:
            break
    return time.monotonic() - started
