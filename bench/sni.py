"""``uv run python -m bench.sni``: new TLS connections per second through SNI routing with
TLS passthrough, restcp against HAProxy's ``req.ssl_sni`` after ``tcp-request
inspect-delay``.

    uv run python -m bench.sni [--seconds 5] [--reps 3] [--conns 8] [--routes 1000]

Every request is a new client connection with a full TLS handshake (wrk, one thread,
``Connection: close``, ``https://localhost:PORT/``: wrk sends ``localhost`` as the server
name), relayed by the proxy to an nginx that terminates TLS (P-256 certificate made by
``openssl req``; no session cache nor tickets, so no handshake is resumed). The proxy reads
the ClientHello, picks the backend by name and relays the rest unchanged.

Rows, each proxy on the proxy core, wrk and nginx on the load core:

- ``none``: wrk straight to nginx (what the load core can do: the handshakes' CPU is on
  it, both sides, so it bounds every row's rate);
- ``haproxy``: ``localhost`` to the backend, anything else to a default (two names);
- ``restcp``: two routes on one port, ``["localhost"]`` and ``["*"]``;
- ``restcp N routes``: the same plus N-2 routes of other names on the port;
- ``restcp, no SNI``: one plain route (the ClientHello not read): what SNI adds.

CPU-µs/conn is the proxy's own CPU over the connections made: the figure the load core
does not bound. It prints a table and the restcp/HAProxy ratios.
"""

from __future__ import annotations

import argparse
import os
import shutil
import ssl
import statistics
import sys
import tempfile
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from bench.peers import NOFILE, REPO, _nginx_temp_paths, _start_nginx, api, api_base, start_restcp
from bench.procs import (
    LOAD_CORE,
    PROXY_CORE,
    BenchError,
    Noise,
    Proc,
    cleanup,
    free_port,
    run_tool,
    start,
    wait_accepting,
    wait_listening,
    wait_quiet,
)
from bench.workloads import parse_wrk

NAME = "localhost"  # wrk sends its URL's host as the server name; it resolves to 127.0.0.1
CONNS = 8


@dataclass
class Row:
    proxy: str
    conn_s: float
    cpu_us_per_conn: float
    p99_ms: float
    foreign_cpu_pct: float
    notes: str


def make_certificate(directory: Path) -> tuple[Path, Path]:
    cert, key = directory / "cert.pem", directory / "key.pem"
    run_tool(
        [
            "openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
            "-nodes", "-days", "2", "-subj", f"/CN={NAME}",
            "-addext", f"subjectAltName=DNS:{NAME}", "-keyout", str(key), "-out", str(cert),
        ],
        core=LOAD_CORE,
        timeout=30,
    )  # fmt: skip
    return cert, key


def https_backend_config(prefix: Path, port: int, cert: Path, key: Path) -> str:
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
http {{
    access_log off;
{_nginx_temp_paths(prefix)}
    server {{
        listen 127.0.0.1:{port} ssl backlog=4096;
        ssl_certificate {cert};
        ssl_certificate_key {key};
        ssl_session_cache off;
        ssl_session_tickets off;
        location / {{ return 200 "ok\\n"; }}
    }}
}}
"""


def haproxy_sni_config(listen: int, backend: int) -> str:
    return f"""\
global
    nbthread 1
    maxconn 7000
defaults
    mode tcp
    maxconn 7000
    timeout connect 5s
    timeout client 10m
    timeout server 10m
frontend fe
    bind 127.0.0.1:{listen}
    tcp-request inspect-delay 5s
    tcp-request content accept if {{ req.ssl_hello_type 1 }}
    use_backend named if {{ req.ssl_sni -i {NAME} }}
    default_backend fallback
backend named
    server s1 127.0.0.1:{backend}
backend fallback
    server s1 127.0.0.1:{backend}
"""


def check_tls(port: int) -> None:
    """One HTTPS request through ``port`` with the server name: the backend's answer."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    try:
        with urllib.request.urlopen(
            f"https://{NAME}:{port}/", context=context, timeout=5
        ) as response:
            body = response.read()
    except OSError as err:
        raise BenchError(f"no TLS answer through port {port}: {err}") from err
    if body != b"ok\n":
        raise BenchError(f"port {port} answered {body!r}")


def start_haproxy(backend: int, work: Path, logs: Path) -> tuple[Proc, int]:
    listen = free_port()
    conf = work / "haproxy-sni.cfg"
    conf.write_text(haproxy_sni_config(listen, backend))
    proc = start("haproxy-sni", ["haproxy", "-db", "-f", str(conf)], core=PROXY_CORE, log_dir=logs)
    wait_listening(listen, proc=proc)
    return proc, listen


def restcp_starter(routes: int) -> Callable[[int, Path, Path], tuple[Proc, int]]:
    """restcp with ``routes`` routes sharing one port by SNI; 0: one plain route (no SNI:
    what passthrough costs without reading the ClientHello)."""

    def start_it(backend: int, work: Path, logs: Path) -> tuple[Proc, int]:
        proc = start_restcp(
            "restcp-sni", "memory://", logs, ["--max-routes-per-app", str(routes + 10)]
        )
        base = api_base(proc.wait_line(60))
        listen = free_port()
        for names in ([NAME], ["*"]) if routes else (None,):
            route = api("PUT", f"{base}apps/bench/routes", {"port": listen, "sni": names})
            api(
                "PUT",
                f"{base}apps/bench/routes/{route['id']}/backends",
                {"ip": "127.0.0.1", "port": backend},
            )
        for i in range(routes - 2):
            api("PUT", f"{base}apps/bench/routes", {"port": listen, "sni": [f"db{i}.example.com"]})
        return proc, listen

    return start_it


def measure(
    label: str,
    starter: Callable[[int, Path, Path], tuple[Proc, int]] | None,
    backend: int,
    seconds: int,
    conns: int,
    work: Path,
    logs: Path,
) -> Row:
    proc: Proc | None = None
    try:
        if starter is None:
            port = backend
        else:
            proc, port = starter(backend, work, logs)
        check_tls(port)
        noise = Noise()
        cpu_before = proc.cpu_seconds() if proc is not None else 0.0
        wrk = ["wrk", "-t1", f"-c{conns}", f"-d{seconds}s", "--timeout", "2s"]
        wrk += ["-H", "Connection: close", "--latency", f"https://{NAME}:{port}/"]
        result = parse_wrk(run_tool(wrk, core=LOAD_CORE, timeout=seconds + 30).stdout)
        cpu = 0.0
        if proc is not None:
            proc.check_alive()
            cpu = proc.cpu_seconds() - cpu_before
        foreign = noise.finish()["foreign_cpu_pct"]
        notes = ", ".join(f"{k} {v}" for k, v in result.errors.items())
        return Row(
            label,
            result.rps,
            cpu * 1e6 / max(result.requests, 1),
            result.p99_ms,
            foreign,
            notes,
        )
    finally:
        if proc is not None:
            proc.stop()


def table(rows: list[Row]) -> list[str]:
    """A markdown table of the medians, and the restcp / HAProxy ratios."""
    labels = list(dict.fromkeys(r.proxy for r in rows))
    lines = [
        "| proxy | TLS conn/s | proxy CPU-µs/conn | p99 ms | others' CPU % of a core |",
        "|---|---:|---:|---:|---:|",
    ]
    medians: dict[str, tuple[float, float]] = {}
    for label in labels:
        mine = [r for r in rows if r.proxy == label]
        if not mine:
            continue
        rate = statistics.median(r.conn_s for r in mine)
        cpu = statistics.median(r.cpu_us_per_conn for r in mine)
        medians[label] = (rate, cpu)
        lines.append(
            f"| {label} | {rate:,.0f} | {cpu:.0f} | "
            f"{statistics.median(r.p99_ms for r in mine):.1f} | "
            f"{statistics.median(r.foreign_cpu_pct for r in mine):.0f} |"
        )
    if "haproxy" in medians and "restcp" in medians:
        (h_rate, h_cpu), (r_rate, r_cpu) = medians["haproxy"], medians["restcp"]
        lines.append("")
        lines.append(
            f"restcp / HAProxy: {r_rate / h_rate:.2f}x the TLS connections per second, "
            f"{r_cpu / max(h_cpu, 1e-9):.1f}x the proxy CPU per connection"
        )
    return lines


def starters(routes: int) -> dict[str, Callable[[int, Path, Path], tuple[Proc, int]] | None]:
    """Each row's proxy (None: wrk straight to the backend), in the order measured."""
    return {
        "none": None,
        "haproxy": start_haproxy,
        "restcp": restcp_starter(2),
        f"restcp {routes} routes": restcp_starter(routes),
        "restcp, no SNI": restcp_starter(0),
    }


def run_rows(
    reps: int,
    seconds: int,
    conns: int,
    routes: int,
    work: Path,
    logs: Path,
    settle: Callable[[str], None],
) -> list[Row]:
    """Every row, ``reps`` times, behind one nginx HTTPS backend started here; BenchError
    when something does not run."""
    cert, key = make_certificate(work)
    port = free_port()
    prefix = work / "nginx-https"
    nginx = _start_nginx(
        "backend-https", https_backend_config(prefix, port, cert, key), prefix, LOAD_CORE, logs
    )
    rows: list[Row] = []
    try:
        wait_accepting(port, proc=nginx)
        for rep in range(1, reps + 1):
            for label, starter in starters(routes).items():
                tag = f"[{rep}/{reps}] sni {label:<18}"
                settle(tag)
                row = measure(label, starter, port, seconds, conns, work, logs)
                rows.append(row)
                print(
                    f"{tag} {row.conn_s:8.0f} TLS conn/s "
                    f"{row.cpu_us_per_conn:6.0f} CPU-µs/conn p99 {row.p99_ms:.1f} ms, "
                    f"others {row.foreign_cpu_pct:.0f}% of a core"
                    + (f" ({row.notes})" if row.notes else ""),
                    flush=True,
                )
    finally:
        nginx.stop()
    return rows


def _quiet() -> None:
    wait_quiet(10.0, 60.0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench.sni", description=__doc__)
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--conns", type=int, default=CONNS, help=f"wrk connections ({CONNS})")
    parser.add_argument("--routes", type=int, default=1000, help="routes on the port (1000)")
    args = parser.parse_args(argv)
    for tool in ("wrk", "nginx", "haproxy", "openssl", "taskset", "uv"):
        if not shutil.which(tool):
            print(f"bench.sni: {tool} is missing", file=sys.stderr)
            return 2
    if not {LOAD_CORE, PROXY_CORE} <= os.sched_getaffinity(0):
        print(f"bench.sni: needs cores {LOAD_CORE} and {PROXY_CORE}", file=sys.stderr)
        return 2
    os.sched_setaffinity(0, {LOAD_CORE})
    work = Path(tempfile.mkdtemp(prefix="restcp-bench-sni-"))
    logs = work / "logs"
    logs.mkdir()
    try:
        rows = run_rows(
            args.reps,
            args.seconds,
            args.conns,
            args.routes,
            work,
            logs,
            lambda _label: _quiet(),
        )
    except BenchError as err:
        print(f"bench.sni: FAILED: {err}; logs in {logs}", file=sys.stderr)
        return 1
    finally:
        cleanup()
    print(
        f"\nmedian of {args.reps}, wrk -t1 -c{args.conns} -d{args.seconds}s "
        f"-H 'Connection: close' https://{NAME}:PORT/, {os.cpu_count()} cores, "
        f"restcp at {REPO}"
    )
    print("\n".join(table(rows)))
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
