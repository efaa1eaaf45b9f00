"""The peers: backends the workloads talk to, and the proxies under test in front of them.

Backends (on the load core, started once per run): an ``iperf3 -s``, an nginx serving a
tiny static HTTP response, a ``redis-server``, and an echo server for idle connections.

Proxies (on the proxy core, started fresh for every measurement so none inherits another
workload's memory or warm-up): none (the client talks to the backend directly: the limit),
HAProxy ``mode tcp`` with ``nbthread 1``, the same with splice, nginx ``stream`` with one
worker, and restcp as a user runs it (``uv run restcp serve`` with a ``memory://`` store, a
route created and a backend attached through its API): with the route's default
(``"splice": "auto"``), with ``splice`` true (every connection spliced) and false (the
event loop's transports only).

Every config is rendered here and kept on the result so the report can print it verbatim.
"""

from __future__ import annotations

import json
import sys
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from bench.procs import (
    LOAD_CORE,
    PROXY_CORE,
    BenchError,
    Proc,
    free_port,
    start,
    wait_accepting,
    wait_listening,
)

REPO = Path(__file__).resolve().parent.parent
NGINX_STREAM_MODULE = Path("/usr/lib/nginx/modules/ngx_stream_module.so")
# The hard RLIMIT_NOFILE of this machine is 20000; stay under it in every config.
NOFILE = 19000


# -- backends -------------------------------------------------------------------------------


@dataclass
class Backend:
    kind: str  # "iperf3", "http", "redis", "echo"
    port: int
    proc: Proc
    config: str


def _nginx_head(prefix: Path) -> str:
    """What every nginx of the benchmarks starts with: one worker in the foreground, its
    files under ``prefix``, as many descriptors as the proxies get."""
    return f"""\
worker_processes 1;
daemon off;
master_process on;
pid {prefix / "nginx.pid"};
error_log {prefix / "error.log"} warn;
worker_rlimit_nofile {NOFILE};
events {{
    worker_connections 16384;
}}
"""


def _nginx_temp_paths(prefix: Path) -> str:
    return "\n".join(
        f"    {key}_temp_path {prefix / 'tmp' / key};"
        for key in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )


def http_backend_config(prefix: Path, port: int) -> str:
    return f"""\
{_nginx_head(prefix)}http {{
    access_log off;
{_nginx_temp_paths(prefix)}
    keepalive_requests 1000000;
    keepalive_timeout 60s;
    default_type text/plain;
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        location / {{
            return 200 "ok\\n";
        }}
    }}
}}
"""


def _start_nginx(name: str, config: str, prefix: Path, core: int, log_dir: Path) -> Proc:
    prefix.mkdir(parents=True, exist_ok=True)
    (prefix / "tmp").mkdir(exist_ok=True)
    conf = prefix / "nginx.conf"
    conf.write_text(config)
    argv = ["nginx", "-e", str(prefix / "error.log"), "-p", str(prefix), "-c", str(conf)]
    return start(name, argv, core=core, log_dir=log_dir)


def start_backends(work: Path, log_dir: Path) -> dict[str, Backend]:
    """Start all four backends on the load core; wait until each accepts."""
    backends: dict[str, Backend] = {}

    port = free_port()
    argv = ["iperf3", "-s", "-B", "127.0.0.1", "-p", str(port), "--forceflush"]
    proc = start("backend-iperf3", argv, core=LOAD_CORE, log_dir=log_dir, ready_mark="listening")
    proc.wait_line(10)
    backends["iperf3"] = Backend("iperf3", port, proc, " ".join(argv))

    port = free_port()
    config = http_backend_config(work / "nginx-http", port)
    proc = _start_nginx("backend-http", config, work / "nginx-http", LOAD_CORE, log_dir)
    wait_accepting(port, proc=proc)
    backends["http"] = Backend("http", port, proc, config)

    port = free_port()
    (work / "redis").mkdir(exist_ok=True)
    argv = [
        "redis-server",
        "--port",
        str(port),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
        "--daemonize",
        "no",
        "--dir",
        str(work / "redis"),
    ]
    proc = start("backend-redis", argv, core=LOAD_CORE, log_dir=log_dir)
    wait_accepting(port, proc=proc)
    backends["redis"] = Backend("redis", port, proc, " ".join(a or "''" for a in argv))

    port = free_port()
    argv = [sys.executable, "-m", "bench.echo", str(port)]
    proc = start(
        "backend-echo", argv, core=LOAD_CORE, log_dir=log_dir, cwd=REPO, ready_mark="listening"
    )
    proc.wait_line(10)
    backends["echo"] = Backend("echo", port, proc, "python -m bench.echo PORT (asyncio echo)")
    return backends


# -- proxies --------------------------------------------------------------------------------


@dataclass
class RunningProxy:
    name: str
    port: int  # where clients connect
    proc: Proc | None  # None for "none"
    config: str

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop()


# What every HAProxy of the benchmarks starts with: one thread, TCP, the same caps and timeouts.
HAPROXY_HEAD = """\
global
    nbthread 1
    maxconn 7000
defaults
    mode tcp
    maxconn 7000
    timeout connect 5s
    timeout client 10m
    timeout server 10m
"""


def haproxy_config(listen: int, backend: int, splice: bool, bind_options: str = "") -> str:
    """HAProxy ``mode tcp``, one thread; ``bind_options`` follow the bind's address (such
    as ``ssl crt PEM``: TLS terminated)."""
    splice_lines = "    option splice-request\n    option splice-response\n" if splice else ""
    return f"""\
{HAPROXY_HEAD}{splice_lines}frontend fe
    bind 127.0.0.1:{listen}{bind_options}
    default_backend be
backend be
    server s1 127.0.0.1:{backend}
"""


def nginx_stream_config(prefix: Path, listen: int, backend: int) -> str:
    return f"""\
load_module {NGINX_STREAM_MODULE};
{_nginx_head(prefix)}stream {{
    server {{
        listen 127.0.0.1:{listen} backlog=4096;
        proxy_pass 127.0.0.1:{backend};
    }}
}}
"""


def _none(backend: Backend, work: Path, log_dir: Path) -> RunningProxy:
    return RunningProxy(
        "none", backend.port, None, "(no proxy: the client connects to the backend)"
    )


def _haproxy(splice: bool) -> Callable[[Backend, Path, Path], RunningProxy]:
    name = "haproxy-splice" if splice else "haproxy"

    def start_haproxy(backend: Backend, work: Path, log_dir: Path) -> RunningProxy:
        listen = free_port()
        config = haproxy_config(listen, backend.port, splice)
        conf = work / f"{name}.cfg"
        conf.write_text(config)
        proc = start(name, ["haproxy", "-db", "-f", str(conf)], core=PROXY_CORE, log_dir=log_dir)
        wait_listening(listen, proc=proc)
        return RunningProxy(name, listen, proc, config)

    return start_haproxy


def _nginx(backend: Backend, work: Path, log_dir: Path) -> RunningProxy:
    listen = free_port()
    prefix = work / "nginx-stream"
    config = nginx_stream_config(prefix, listen, backend.port)
    proc = _start_nginx("nginx", config, prefix, PROXY_CORE, log_dir)
    wait_listening(listen, proc=proc)
    return RunningProxy("nginx", listen, proc, config)


def restcp_argv(store: str) -> list[str]:
    return [
        "uv",
        "run",
        "restcp",
        "serve",
        "--api",
        "127.0.0.1:0",
        "--store",
        store,
        "--drain-timeout",
        "5",
    ]


READY_MARK = " ready api=http://"


def start_restcp(name: str, store: str, log_dir: Path, extra: list[str] | None = None) -> Proc:
    return start(
        name,
        restcp_argv(store) + (extra or []),
        core=PROXY_CORE,
        log_dir=log_dir,
        cwd=REPO,
        ready_mark=READY_MARK,
    )


def api_base(ready_line: str) -> str:
    """http://HOST:PORT/ out of restcp's ready line."""
    return ready_line.split("api=", 1)[1].split()[0]


def api(method: str, url: str, body: dict[str, object] | None = None) -> dict[str, object]:
    data = json.dumps(body).encode() if body is not None else b""
    request = urllib.request.Request(url, data=data, method=method)
    with urllib.request.urlopen(request, timeout=10) as response:
        answer: dict[str, object] = json.loads(response.read() or b"{}")
        return answer


def _restcp(
    name: str, splice: bool | str | None = None, engine: str | None = None
) -> Callable[[Backend, Path, Path], RunningProxy]:
    """restcp with one route; ``splice`` is the route's setting (None: its default): true
    relays every connection with os.splice, as HAProxy's splice options do; "auto" a
    connection once it moves bulk. ``engine``: restcp's --engine (None: its default)."""
    extra = [] if engine is None else ["--engine", engine]

    def start_it(backend: Backend, work: Path, log_dir: Path) -> RunningProxy:
        proc = start_restcp(name, "memory://", log_dir, extra)
        base = api_base(proc.wait_line(30))
        listen = free_port()
        body: dict[str, object] = {"port": listen}
        if splice is not None:
            body["splice"] = splice
        route = api("PUT", f"{base}apps/bench/routes", body)
        if route.get("port") != listen or (splice is not None and route.get("splice") != splice):
            raise BenchError(f"restcp created {route} instead of a route like {body}")
        api(
            "PUT",
            f"{base}apps/bench/routes/{route['id']}/backends",
            {"ip": "127.0.0.1", "port": backend.port},
        )
        if engine == "native":
            served_natively(proc.log_path)
        config = (
            f"cd {REPO} && {' '.join(restcp_argv('memory://') + extra)}\n"
            f"curl -XPUT -d '{json.dumps(body)}' {base}apps/bench/routes\n"
            f'curl -XPUT -d \'{{"ip": "127.0.0.1", "port": {backend.port}}}\' '
            f"{base}apps/bench/routes/{route['id']}/backends\n"
        )
        return RunningProxy(name, listen, proc, config)

    return start_it


PROXIES: dict[str, Callable[[Backend, Path, Path], RunningProxy]] = {
    "none": _none,
    "haproxy": _haproxy(splice=False),
    "haproxy-splice": _haproxy(splice=True),
    "nginx": _nginx,
    # The asyncio data plane, named (the native engine is restcp's default).
    "restcp": _restcp("restcp", engine="asyncio"),
    "restcp-splice": _restcp("restcp-splice", splice=True, engine="asyncio"),
    "restcp-copy": _restcp("restcp-copy", splice=False, engine="asyncio"),
    # The native relay engine (docs/engine.md) on the same route. "auto": on the bulk
    # workload it spent no more CPU per MB than true, often less (docs/benchmarks.md).
    "restcp-native": _restcp("restcp-native", splice="auto", engine="native"),
}


def served_natively(log_path: Path) -> None:
    """The route is on the native engine (its listening line says so), or BenchError."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        for line in log_path.read_text(errors="replace").splitlines():
            if " listening app=bench " in line:
                if "engine=native" in line:
                    return
                raise BenchError(f"the route is not on the native engine: {line}")
        time.sleep(0.05)
    raise BenchError("restcp never logged its route's listening line")


def restcp_log_notes(log_path: Path) -> list[str]:
    """What a user would notice in restcp's log: errors, and connections that did not end
    ``closed`` (the access log's ``end=`` field)."""
    errors: list[str] = []
    ends: dict[str, int] = {}
    with open(log_path, errors="replace") as log:
        for line in log:
            if " ERROR " in line or " CRITICAL " in line or line.startswith("Traceback"):
                errors.append(line.strip())
            if " restcp.access " in line and " end=" in line:
                end = line.rsplit(" end=", 1)[1].split()[0]
                ends[end] = ends.get(end, 0) + 1
    notes = []
    if errors:
        notes.append(f"restcp logged {len(errors)} error line(s), first: {errors[0][:200]}")
    odd = {k: v for k, v in ends.items() if k != "closed"}
    if odd:
        counts = ", ".join(f"{k} {v}" for k, v in sorted(odd.items(), key=lambda kv: -kv[1]))
        notes.append(f"restcp access log: {ends.get('closed', 0)} closed, {counts}")
    return notes
