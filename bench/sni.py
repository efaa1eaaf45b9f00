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
import functools
import os
import shutil
import socket
import ssl
import statistics
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from bench.peers import (
    HAPROXY_HEAD,
    REPO,
    _nginx_head,
    _nginx_temp_paths,
    _start_nginx,
    api,
    api_base,
    start_restcp,
)
from bench.procs import (
    LOAD_CORE,
    PROXY_CORE,
    BenchError,
    Noise,
    Proc,
    cleanup,
    free_port,
    pin_for_standalone,
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
    p99_ms: float | None  # None: the load generator does not tell
    foreign_cpu_pct: float
    notes: str


@dataclass
class Load:
    """What a load generator did: connections per second, how many, p99 and errors."""

    conn_s: float
    conns: int
    p99_ms: float | None
    notes: str


# Starts a proxy in front of a backend port (work dir, log dir): the process and the port
# clients connect to; (None, port) for a row without a proxy.
Starter = Callable[[int, Path, Path], tuple[Proc | None, int]]


def make_certificate(directory: Path) -> tuple[Path, Path]:
    """A self-signed ECDSA P-256 certificate for ``NAME``: its chain and key files."""
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


def https_backend_config(
    prefix: Path, port: int, cert: Path, key: Path, protocols: str | None = None
) -> str:
    """nginx terminating TLS and answering ``ok``; ``protocols``: its ``ssl_protocols``
    (None: nginx's default, TLS 1.2 and older before nginx 1.23.4)."""
    versions = f"        ssl_protocols {protocols};\n" if protocols else ""
    return f"""\
{_nginx_head(prefix)}http {{
    access_log off;
{_nginx_temp_paths(prefix)}
    server {{
        listen 127.0.0.1:{port} ssl backlog=4096;
        ssl_certificate {cert};
        ssl_certificate_key {key};
        ssl_session_cache off;
        ssl_session_tickets off;
{versions}        location / {{ return 200 "ok\\n"; }}
    }}
}}
"""


def haproxy_sni_config(listen: int, backend: int) -> str:
    return f"""\
{HAPROXY_HEAD}frontend fe
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


def check_tls(port: int, context: ssl.SSLContext | None = None) -> tuple[str, str]:
    """One HTTP/1.0 request over TLS through ``port`` with the server name; the backend
    must answer ``ok``. Returns the (version, cipher) negotiated. ``context``: the client's
    (default: any version and cipher, no verification)."""
    if context is None:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    try:
        with (
            socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
            context.wrap_socket(raw, server_hostname=NAME) as tls,
        ):
            tls.sendall(f"GET / HTTP/1.0\r\nHost: {NAME}\r\n\r\n".encode())
            answer = b""
            while chunk := tls.recv(4096):
                answer += chunk
            version, cipher = tls.version() or "?", tls.cipher()
    except OSError as err:
        raise BenchError(f"no TLS answer through port {port}: {err}") from err
    if not answer.endswith(b"\r\n\r\nok\n"):
        raise BenchError(f"port {port} answered {answer[-200:]!r}")
    return version, cipher[0] if cipher else "?"


def wrk_load(seconds: int, conns: int) -> Callable[[int], Load]:
    """wrk, one thread, ``conns`` connections, each request on a new one."""

    def run(port: int) -> Load:
        wrk = ["wrk", "-t1", f"-c{conns}", f"-d{seconds}s", "--timeout", "2s"]
        wrk += ["-H", "Connection: close", "--latency", f"https://{NAME}:{port}/"]
        result = parse_wrk(run_tool(wrk, core=LOAD_CORE, timeout=seconds + 30).stdout)
        notes = ", ".join(f"{k} {v}" for k, v in result.errors.items())
        return Load(result.rps, result.requests, result.p99_ms, notes)

    return run


def haproxy_starter(name: str, config: Callable[[int, int], str]) -> Starter:
    """HAProxy with ``config(listen port, backend port)``, on the proxy core."""

    def start_it(backend: int, work: Path, logs: Path) -> tuple[Proc | None, int]:
        listen = free_port()
        conf = work / f"{name}.cfg"
        conf.write_text(config(listen, backend))
        proc = start(name, ["haproxy", "-db", "-f", str(conf)], core=PROXY_CORE, log_dir=logs)
        wait_listening(listen, proc=proc)
        return proc, listen

    return start_it


start_haproxy = haproxy_starter("haproxy-sni", haproxy_sni_config)


def add_route(base: str, body: dict[str, object], backend: int | None) -> None:
    """A route of app ``bench`` through restcp's API at ``base``, with one backend."""
    route = api("PUT", f"{base}apps/bench/routes", body)
    if backend is not None:
        api(
            "PUT",
            f"{base}apps/bench/routes/{route['id']}/backends",
            {"ip": "127.0.0.1", "port": backend},
        )


def restcp_starter(routes: int) -> Starter:
    """restcp with ``routes`` routes sharing one port by SNI; 0: one plain route (no SNI:
    what passthrough costs without reading the ClientHello)."""

    def start_it(backend: int, work: Path, logs: Path) -> tuple[Proc | None, int]:
        proc = start_restcp(
            "restcp-sni", "memory://", logs, ["--max-routes-per-app", str(routes + 10)]
        )
        base = api_base(proc.wait_line(60))
        listen = free_port()
        for names in ([NAME], ["*"]) if routes else (None,):
            add_route(base, {"port": listen, "sni": names}, backend)
        for i in range(routes - 2):
            add_route(base, {"port": listen, "sni": [f"db{i}.example.com"]}, None)
        return proc, listen

    return start_it


def measure(
    label: str,
    starter: Starter | None,
    backend: int,
    load: Callable[[int], Load],
    work: Path,
    logs: Path,
    check: Callable[[int], object] = check_tls,
) -> Row:
    """One row: the proxy started, one exchange checked through it, then ``load`` on its
    port while its CPU time is read before and after."""
    proc: Proc | None = None
    try:
        proc, port = (None, backend) if starter is None else starter(backend, work, logs)
        check(port)
        noise = Noise()
        cpu_before = proc.cpu_seconds() if proc is not None else 0.0
        done = load(port)
        cpu = 0.0
        if proc is not None:
            proc.check_alive()
            cpu = proc.cpu_seconds() - cpu_before
        foreign = noise.finish()["foreign_cpu_pct"]
        return Row(
            label,
            done.conn_s,
            cpu * 1e6 / max(done.conns, 1),
            done.p99_ms,
            foreign,
            done.notes,
        )
    finally:
        if proc is not None:
            proc.stop()


def table(rows: list[Row], pairs: Sequence[tuple[str, str, str]] | None = None) -> list[str]:
    """A markdown table of the medians, then a line per (restcp row, HAProxy row, what they
    do) in ``pairs`` with restcp / HAProxy ratios (default: "restcp" against "haproxy")."""
    labels = list(dict.fromkeys(r.proxy for r in rows))
    lines = [
        "| proxy | TLS conn/s | proxy CPU-µs/conn | p99 ms | others' CPU % of a core |",
        "|---|---:|---:|---:|---:|",
    ]
    medians: dict[str, tuple[float, float]] = {}
    for label in labels:
        mine = [r for r in rows if r.proxy == label]
        rate = statistics.median(r.conn_s for r in mine)
        cpu = statistics.median(r.cpu_us_per_conn for r in mine)
        medians[label] = (rate, cpu)
        p99s = [r.p99_ms for r in mine if r.p99_ms is not None]
        lines.append(
            f"| {label} | {rate:,.0f} | {cpu:.0f} | "
            f"{f'{statistics.median(p99s):.1f}' if p99s else '—'} | "
            f"{statistics.median(r.foreign_cpu_pct for r in mine):.0f} |"
        )
    ratios = []
    for ours, theirs, what in pairs if pairs is not None else [("restcp", "haproxy", "")]:
        if ours in medians and theirs in medians:
            (h_rate, h_cpu), (r_rate, r_cpu) = medians[theirs], medians[ours]
            ratios.append(
                f"restcp / HAProxy{what}: {r_rate / h_rate:.2f}x the TLS connections per "
                f"second, {r_cpu / max(h_cpu, 1e-9):.2f}x the proxy CPU per connection"
            )
    if ratios:
        lines += ["", *(f"- {line}" if len(ratios) > 1 else line for line in ratios)]
    return lines


def starters(routes: int) -> dict[str, Starter | None]:
    """Each row's proxy (None: wrk straight to the backend), in the order measured."""
    return {
        "none": None,
        "haproxy": start_haproxy,
        "restcp": restcp_starter(2),
        f"restcp {routes} routes": restcp_starter(routes),
        "restcp, no SNI": restcp_starter(0),
    }


def repeat(
    reps: int,
    section: str,
    rows_of: Callable[[], dict[str, Callable[[str], Row]]],
    settle: Callable[[str], None],
) -> list[Row]:
    """Measure every row ``reps`` times, the rows interleaved; print each as it comes."""
    rows: list[Row] = []
    for rep in range(1, reps + 1):
        for label, measure_row in rows_of().items():
            tag = f"[{rep}/{reps}] {section} {label:<18}"
            settle(tag)
            row = measure_row(label)
            rows.append(row)
            print(
                f"{tag} {row.conn_s:8.0f} TLS conn/s "
                f"{row.cpu_us_per_conn:6.0f} CPU-µs/conn"
                + (f" p99 {row.p99_ms:.1f} ms" if row.p99_ms is not None else "")
                + f", others {row.foreign_cpu_pct:.0f}% of a core"
                + (f" ({row.notes})" if row.notes else ""),
                flush=True,
            )
    return rows


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
    load = wrk_load(seconds, conns)
    try:
        wait_accepting(port, proc=nginx)
        return repeat(
            reps,
            "sni",
            lambda: {
                label: functools.partial(
                    measure, starter=starter, backend=port, load=load, work=work, logs=logs
                )
                for label, starter in starters(routes).items()
            },
            settle,
        )
    finally:
        nginx.stop()


def _quiet() -> None:
    wait_quiet(10.0, 60.0)


def standalone(
    prog: str,
    tools: Sequence[str],
    run: Callable[[Path, Path, Callable[[str], None]], list[Row]],
    how: str,
    pairs: Sequence[tuple[str, str, str]] | None = None,
) -> int:
    """Run ``run(work dir, log dir, settle)`` as a command of its own: the tools checked,
    this process on the load core, a quiet machine awaited before each row, the table
    printed after ``how`` (the load, in a line)."""
    if not pin_for_standalone(prog, tools):
        return 2
    work = Path(tempfile.mkdtemp(prefix=f"restcp-{prog.replace('.', '-')}-"))
    logs = work / "logs"
    logs.mkdir()
    try:
        rows = run(work, logs, lambda _label: _quiet())
    except BenchError as err:
        print(f"{prog}: FAILED: {err}; logs in {logs}", file=sys.stderr)
        return 1
    finally:
        cleanup()
    print(f"\n{how}, {os.cpu_count()} cores, restcp at {REPO}")
    print("\n".join(table(rows, pairs)))
    shutil.rmtree(work, ignore_errors=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench.sni", description=__doc__)
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--conns", type=int, default=CONNS, help=f"wrk connections ({CONNS})")
    parser.add_argument("--routes", type=int, default=1000, help="routes on the port (1000)")
    args = parser.parse_args(argv)
    return standalone(
        "bench.sni",
        ("wrk", "nginx", "haproxy", "openssl", "taskset", "uv"),
        lambda work, logs, settle: run_rows(
            args.reps, args.seconds, args.conns, args.routes, work, logs, settle
        ),
        f"median of {args.reps}, wrk -t1 -c{args.conns} -d{args.seconds}s "
        f"-H 'Connection: close' https://{NAME}:PORT/",
    )


if __name__ == "__main__":
    sys.exit(main())
