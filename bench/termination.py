"""``uv run python -m bench.termination``: new TLS connections per second and CPU per
handshake through a proxy terminating TLS, restcp against HAProxy (``bind … ssl crt``).

    uv run python -m bench.termination [--seconds 5] [--reps 3] [--conns 8] [--versions 1.3,1.2]

Every connection is new and handshakes in full: ``openssl s_time -new`` (``--conns``
processes at once, each one connection after another, on the load core) connects, shakes
hands without resuming a session, sends ``GET / HTTP/1.0``, reads the answer and closes.
The proxy terminates TLS with one ECDSA P-256 certificate (``openssl req``, the same file
for both) and relays the plain bytes to an nginx answering ``ok`` (on the load core).
Client and servers agree on one version and cipher per row, set by the client: TLS 1.3
``TLS_AES_128_GCM_SHA256``, TLS 1.2 ``ECDHE-ECDSA-AES128-GCM-SHA256``; X25519 in both
(both servers' default, the client's first choice). Each row checks with one exchange
through the proxy that this is what was negotiated. s_time sends no server name (SNI),
so neither proxy picks a certificate by name: both serve their one.

Why not wrk, as bench.sni does: wrk reuses its SSL object (``SSL_clear``), so it resumes
about half its sessions wherever the server allows it, and restcp's server side keeps
OpenSSL's session cache and tickets.

Rows per version, the proxy alone on the proxy core (HAProxy ``nbthread 1``, restcp one
process, no ``--workers``):

- ``none``: s_time straight to an nginx terminating TLS itself (what the load core can
  do: both ends' handshakes are on it, so it bounds every rate);
- ``haproxy``: ``bind 127.0.0.1:PORT ssl crt <pem>``, ``mode tcp``, the nginx behind;
- ``restcp``: a route with ``"tls": {"certificates": ["bench"]}``, the nginx behind.

The figure to compare is CPU-µs/conn, the CPU time of the proxy's process group divided
by the handshakes made: the load core bounds the rates, not that. Prints the medians and,
per version, restcp's rate and CPU over HAProxy's.
"""

from __future__ import annotations

import argparse
import functools
import re
import ssl
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from bench import sni
from bench.peers import (
    _start_nginx,
    api,
    api_base,
    haproxy_config,
    http_backend_config,
    start_restcp,
)
from bench.procs import LOAD_CORE, BenchError, Proc, free_port, pinned, wait_accepting

CONNS = 8
VERSIONS = ("1.3", "1.2")
# The one cipher each version's rows use, as s_time's option and as Python names it.
CIPHERS = {
    "1.3": ("-ciphersuites", "TLS_AES_128_GCM_SHA256"),
    "1.2": ("-cipher", "ECDHE-ECDSA-AES128-GCM-SHA256"),
}
_SSL_VERSIONS = {"1.3": ssl.TLSVersion.TLSv1_3, "1.2": ssl.TLSVersion.TLSv1_2}


def client_context(version: str) -> ssl.SSLContext:
    """The check's client: the version and cipher s_time is given, no verification."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.minimum_version = context.maximum_version = _SSL_VERSIONS[version]
    if version == "1.2":
        context.set_ciphers(CIPHERS[version][1])
    # Python cannot narrow TLS 1.3's suites; the check below finds out what was chosen.
    return context


def check_negotiated(version: str) -> Callable[[int], object]:
    """One exchange through the port: it must be TLS ``version`` with its row's cipher
    (for 1.3, one the server chose among the client's: s_time offers only that one)."""

    def check(port: int) -> tuple[str, str]:
        got = sni.check_tls(port, client_context(version))
        want = (f"TLSv{version}", CIPHERS[version][1])
        if version == "1.2" and got != want:
            raise BenchError(f"port {port} negotiated {got}, not {want}")
        if got[0] != want[0]:
            raise BenchError(f"port {port} negotiated {got[0]}, not {want[0]}")
        return got

    return check


def haproxy_termination_config(pem: Path) -> Callable[[int, int], str]:
    """The suite's HAProxy (peers.haproxy_config), terminating TLS with ``pem``."""
    return functools.partial(haproxy_config, splice=False, bind_options=f" ssl crt {pem}")


def restcp_starter(cert: Path, key: Path) -> sni.Starter:
    """restcp with the certificate stored through its API and one route terminating TLS."""

    def start_it(backend: int, work: Path, logs: Path) -> tuple[Proc | None, int]:
        proc = start_restcp("restcp-tls", "memory://", logs)
        base = api_base(proc.wait_line(60))
        body: dict[str, object] = {
            "name": "bench",
            "cert": cert.read_text(),
            "key": key.read_text(),
        }
        api("POST", f"{base}certificates", body)
        listen = free_port()
        sni.add_route(base, {"port": listen, "tls": {"certificates": ["bench"]}}, backend)
        return proc, listen

    return start_it


_DONE = re.compile(r"^(\d+) connections in [\d.]+s;", re.M)


def s_time_load(version: str, seconds: int, conns: int) -> Callable[[int], sni.Load]:
    """``conns`` ``openssl s_time -new`` at once on the load core, for ``seconds``."""

    def run(port: int) -> sni.Load:
        option, cipher = CIPHERS[version]
        argv = ["openssl", "s_time", "-connect", f"127.0.0.1:{port}", "-new"]
        argv += [f"-tls{version.replace('.', '_')}", option, cipher]
        argv += ["-time", str(seconds), "-www", "/"]
        started = time.monotonic()
        clients = [
            subprocess.Popen(
                pinned(LOAD_CORE, argv),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
            for _ in range(conns)
        ]
        try:
            outputs = [c.communicate(timeout=seconds + 30)[0] for c in clients]
        finally:
            for client in clients:
                if client.poll() is None:
                    client.kill()
                    client.wait()
        wall = time.monotonic() - started
        total = 0
        for client, out in zip(clients, outputs, strict=True):
            done = _DONE.search(out)
            if client.returncode != 0 or done is None or "ERROR" in out:
                raise BenchError(f"{' '.join(argv)} exited {client.returncode}:\n{out[-2000:]}")
            total += int(done[1])
        # s_time prints "*" per new session and "r" per resumed one: -new asks for none.
        marks = [line for out in outputs for line in out.splitlines() if set(line) <= {"*", "r"}]
        resumed = sum(line.count("r") for line in marks)
        return sni.Load(total / wall, total, None, f"{resumed} resumed" if resumed else "")

    return run


def starters(cert: Path, key: Path, pem: Path, https: int) -> dict[str, sni.Starter | None]:
    """Each row's proxy, in the order measured; ``none`` goes to the HTTPS nginx."""
    return {
        "none": lambda _backend, _work, _logs: (None, https),
        "haproxy": sni.haproxy_starter("haproxy-tls", haproxy_termination_config(pem)),
        "restcp": restcp_starter(cert, key),
    }


def label(proxy: str, version: str) -> str:
    return f"{proxy} TLS {version}"


def pairs(versions: tuple[str, ...]) -> list[tuple[str, str, str]]:
    return [(label("restcp", v), label("haproxy", v), f", TLS {v}") for v in versions]


def run_rows(
    reps: int,
    seconds: int,
    conns: int,
    work: Path,
    logs: Path,
    settle: Callable[[str], None],
    versions: tuple[str, ...] = VERSIONS,
) -> list[sni.Row]:
    """Every row of every version, ``reps`` times, in front of one plain nginx (and an
    HTTPS one for ``none``) started here; BenchError when something does not run."""
    cert, key = sni.make_certificate(work)
    pem = work / "haproxy.pem"  # HAProxy takes the chain and key in one file
    pem.write_text(cert.read_text() + key.read_text())
    http, https = free_port(), free_port()
    https_config = sni.https_backend_config(
        work / "nginx-https", https, cert, key, protocols="TLSv1.2 TLSv1.3"
    )
    nginx = [
        _start_nginx("backend-http", http_backend_config(work / "nginx-http", http),
                     work / "nginx-http", LOAD_CORE, logs),
        _start_nginx("backend-https", https_config, work / "nginx-https", LOAD_CORE, logs),
    ]  # fmt: skip
    try:
        wait_accepting(http, proc=nginx[0])
        wait_accepting(https, proc=nginx[1])
        return sni.repeat(
            reps,
            "tls",
            lambda: {
                label(proxy, version): functools.partial(
                    sni.measure,
                    starter=starter,
                    backend=http,
                    load=s_time_load(version, seconds, conns),
                    work=work,
                    logs=logs,
                    check=check_negotiated(version),
                )
                for version in versions
                for proxy, starter in starters(cert, key, pem, https).items()
            },
            settle,
        )
    finally:
        for proc in nginx:
            proc.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="bench.termination",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--conns", type=int, default=CONNS, help=f"s_time at once ({CONNS})")
    parser.add_argument("--versions", default=",".join(VERSIONS), help="TLS versions (1.3,1.2)")
    args = parser.parse_args(argv)
    versions = tuple(v for v in args.versions.split(",") if v)
    for version in versions:
        if version not in CIPHERS:
            parser.error(f"unknown TLS version {version!r}; choose from {', '.join(CIPHERS)}")
    return sni.standalone(
        "bench.termination",
        ("openssl", "nginx", "haproxy", "taskset", "uv"),
        lambda work, logs, settle: run_rows(
            args.reps, args.seconds, args.conns, work, logs, settle, versions
        ),
        f"median of {args.reps}, {args.conns} x openssl s_time -new -time {args.seconds} -www /",
        pairs(versions),
    )


if __name__ == "__main__":
    sys.exit(main())
