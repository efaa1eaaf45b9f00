"""``restcp serve`` and friends. Every flag has a RESTCP_* environment variable."""

from __future__ import annotations

import argparse
import contextlib
import importlib
import logging
import os
import resource
import signal
import socket
import sys
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

from restcp import __version__, cluster_commands, logs
from restcp.api.schemas import APP_ID_RULE, is_app_id
from restcp.core.policy import parse_networks
from restcp.errors import RestcpError
from restcp.settings import (
    Settings,
    parse_api_token,
    parse_host_name,
    parse_host_port,
    parse_ip,
    parse_port_range,
    read_token_file,
)

LOG_LEVELS = ("debug", "info", "warning", "error")
LOG_FORMATS = ("text", "json")
# SIGHUP (reload) is held back with them: one sent during the start is not a kill.
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)

# --loop NAME -> "module:function" that runs a coroutine to completion; loaded lazily.
LOOPS = {"uvloop": "uvloop:run", "asyncio": "asyncio:run"}

DESCRIPTION = """\
restcp: a REST-driven TCP proxy and layer-4 load balancer.

Create a route through the HTTP API and restcp opens a TCP port for it; every client that
connects is relayed to one of the route's backends, which you attach, replace and detach
through the same API, live:

  curl -XPUT http://localhost:8001/apps/123/routes
  curl -XPUT -d '{"ip": "127.0.0.1", "port": 8888}' http://localhost:8001/apps/123/routes/1/backends
"""


def _env(name: str, default: str) -> str:
    return os.environ.get(f"RESTCP_{name}", default)


def _api_address(text: str) -> tuple[str, int, str | None]:
    """(IP, port, the name given if it was one): browsers may call the API by that name."""
    host, port = parse_host_port(text)
    try:
        return parse_ip(host), port, None
    except ValueError:
        try:  # a name such as "localhost": its first address
            ip = str(socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][4][0])
        except OSError:
            raise ValueError(f"cannot resolve API host {host!r}") from None
        try:
            name: str | None = parse_host_name(host)
        except ValueError:  # resolvable here (/etc/hosts), but no name a browser would send
            name = None
        return ip, port, name


def _flag(text: str) -> bool:
    if text.lower() in ("1", "true", "yes", "on"):
        return True
    if text.lower() in ("", "0", "false", "no", "off"):
        return False
    raise ValueError(f"{text!r} is not one of 1, true, yes, on, 0, false, no, off")


def _positive(text: str) -> int:
    if not text.isascii() or not text.isdigit() or int(text) < 1:
        raise ValueError(f"{text!r} is not a whole number >= 1")
    return int(text)


def _api_token(args: argparse.Namespace, kind: str = "api") -> str | None:
    """The admin token (``kind`` "api") or the metrics token ("metrics") from --KIND-token,
    --KIND-token-file or their variables (one only)."""
    flag, var = f"--{kind}-token", f"{kind.upper()}_TOKEN"
    given = getattr(args, f"{kind}_token")
    token = given if given is not None else _env(var, "") or None
    path = _token_file(args, kind)
    if token is not None and path is not None:
        raise ValueError(
            f"give the {kind} token once: {flag} (RESTCP_{var}) or {flag}-file "
            f"(RESTCP_{var}_FILE), not both"
        )
    if path is not None:
        return read_token_file(path, flag=f"{flag}-file")
    if token is not None:
        try:
            return parse_api_token(token)
        except ValueError as err:
            raise ValueError(f"{flag} (RESTCP_{var}): {err}") from None
    return None


def _token_file(args: argparse.Namespace, kind: str) -> str | None:
    path: str | None = getattr(args, f"{kind}_token_file") or _env(f"{kind.upper()}_TOKEN_FILE", "")
    return path or None


def _seconds(text: str) -> float:
    value = float(text)
    if not 0 <= value < float("inf"):
        raise ValueError(f"{text!r} is not a number of seconds >= 0")
    return value


def _positive_seconds(text: str) -> float:
    value = _seconds(text)
    if value <= 0:
        raise ValueError(f"{text!r} is not a number of seconds > 0")
    return value


def _lease_ttl(text: str) -> float:
    # Renewed at a third of it: below 0.1 s the renewals alone would keep Redis busy.
    value = _seconds(text)
    if value < 0.1:
        raise ValueError(f"{text!r} is too short a lease: use at least 0.1 seconds")
    return value


def _arg(parse: Callable[[str], Any], what: str) -> Callable[[str], Any]:
    """Wrap a parser so argparse prints its message instead of a bare "invalid value"."""

    def parse_arg(text: str) -> Any:
        try:
            return parse(text)
        except ValueError as err:
            raise argparse.ArgumentTypeError(f"{what}: {err}") from None

    parse_arg.__name__ = what
    return parse_arg


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="restcp", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--version", action="version", version=f"restcp {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    serve = commands.add_parser(
        "serve",
        help="run a node: the API and the listeners of its routes",
        description="Run a restcp node. Each flag also reads the RESTCP_* variable named.",
    )
    serve.add_argument(
        "--api",
        type=_arg(_api_address, "--api"),
        default=_env("API", "127.0.0.1:8001"),
        metavar="HOST:PORT",
        help="where the HTTP API listens; port 0 picks a free one (RESTCP_API; %(default)s)",
    )
    serve.add_argument(
        "--api-token",
        metavar="TOKEN",
        help="the admin token: every API request but GET /healthz and GET /openapi.json must "
        "send 'Authorization: Bearer TOKEN' (or a token of its app, POST /apps/APP/tokens); "
        "at least 16 characters. The command line shows in ps: prefer --api-token-file or "
        "RESTCP_API_TOKEN (default: none, the API asks for no token)",
    )
    serve.add_argument(
        "--api-token-file",
        metavar="PATH",
        help="read the admin token from this file, trailing newline removed; SIGHUP reads it "
        "again (RESTCP_API_TOKEN_FILE)",
    )
    serve.add_argument(
        "--metrics-token",
        metavar="TOKEN",
        help="a token that reaches GET /metrics only, for a Prometheus scraper; needs "
        "--api-token. Prefer --metrics-token-file (RESTCP_METRICS_TOKEN; default: none, "
        "/metrics needs the admin token)",
    )
    serve.add_argument(
        "--metrics-token-file",
        metavar="PATH",
        help="read the metrics token from this file; SIGHUP reads it again "
        "(RESTCP_METRICS_TOKEN_FILE)",
    )
    serve.add_argument(
        "--insecure",
        action="store_true",
        default=None,
        help="serve the API on a non-loopback --api address without --api-token: anyone who "
        "can reach it may change every route. Refused unless given (RESTCP_INSECURE=1)",
    )
    serve.add_argument(
        "--api-allowed-host",
        action="append",
        type=_arg(parse_host_name, "--api-allowed-host"),
        metavar="NAME",
        help="a host name clients use for the API (behind a proxy or in DNS); requests from "
        "browsers for other names are refused. The API's address, localhost and the name in "
        "--api are always allowed; repeatable (RESTCP_API_ALLOWED_HOST, comma-separated)",
    )
    serve.add_argument(
        "--api-request-timeout",
        type=_arg(_positive_seconds, "--api-request-timeout"),
        default=_env("API_REQUEST_TIMEOUT", "30"),
        metavar="SECONDS",
        help="how long an API client may take to send a request's head (from connecting, or "
        "from the previous answer), and as long again for its body; an idle kept-alive "
        "connection is closed after it (RESTCP_API_REQUEST_TIMEOUT; %(default)s)",
    )
    serve.add_argument(
        "--max-routes-per-app",
        type=_arg(_positive, "--max-routes-per-app"),
        default=_env("MAX_ROUTES_PER_APP", "1000"),
        metavar="N",
        help="routes one app may have; more are refused with 409 "
        "(RESTCP_MAX_ROUTES_PER_APP; %(default)s)",
    )
    serve.add_argument(
        "--max-backends-per-route",
        type=_arg(_positive, "--max-backends-per-route"),
        default=_env("MAX_BACKENDS_PER_ROUTE", "100"),
        metavar="N",
        help="backends one route may have; more are refused with 409 "
        "(RESTCP_MAX_BACKENDS_PER_ROUTE; %(default)s)",
    )
    serve.add_argument(
        "--max-toxics-per-route",
        type=_arg(_positive, "--max-toxics-per-route"),
        default=_env("MAX_TOXICS_PER_ROUTE", "32"),
        metavar="N",
        help="toxics one route may have; more are refused with 409 "
        "(RESTCP_MAX_TOXICS_PER_ROUTE; %(default)s)",
    )
    serve.add_argument(
        "--store",
        default=_env("STORE", "sqlite:///restcp.db"),
        metavar="URL",
        help="sqlite:///PATH (relative), sqlite:////PATH (absolute), memory://, or "
        "redis://HOST:PORT/DB for a cluster of nodes (also rediss://, redis+sentinel://; "
        "docs/cluster.md) (RESTCP_STORE; %(default)s)",
    )
    serve.add_argument(
        "--frontend-ip",
        action="append",
        type=_arg(parse_ip, "--frontend-ip"),
        metavar="IP",
        help="an address routes listen on; repeat for several, the first is the default "
        "(RESTCP_FRONTEND_IP, comma-separated; 127.0.0.1)",
    )
    serve.add_argument(
        "--port-range",
        type=_arg(parse_port_range, "--port-range"),
        default=_env("PORT_RANGE", "10000-19999"),
        metavar="LO-HI",
        help="ports handed to routes that do not ask for one (RESTCP_PORT_RANGE; %(default)s)",
    )
    serve.add_argument(
        "--connect-timeout",
        type=_arg(_seconds, "--connect-timeout"),
        default=_env("CONNECT_TIMEOUT", "5"),
        metavar="SECONDS",
        help="default time to connect to a backend (RESTCP_CONNECT_TIMEOUT; %(default)s)",
    )
    serve.add_argument(
        "--idle-timeout",
        type=_arg(_seconds, "--idle-timeout"),
        default=_env("IDLE_TIMEOUT", "3600"),
        metavar="SECONDS",
        help="default time a silent connection is kept; 0 keeps it forever "
        "(RESTCP_IDLE_TIMEOUT; %(default)s)",
    )
    serve.add_argument(
        "--drain-timeout",
        type=_arg(_seconds, "--drain-timeout"),
        default=_env("DRAIN_TIMEOUT", "30"),
        metavar="SECONDS",
        help="on SIGTERM, how long open connections may finish (RESTCP_DRAIN_TIMEOUT; %(default)s)",
    )
    serve.add_argument(
        "--resync-interval",
        type=_arg(_seconds, "--resync-interval"),
        default=_env("RESYNC_INTERVAL", "5"),
        metavar="SECONDS",
        help="how often the whole store is re-applied (RESTCP_RESYNC_INTERVAL; %(default)s)",
    )
    serve.add_argument(
        "--provision-timeout",
        type=_arg(_seconds, "--provision-timeout"),
        default=_env("PROVISION_TIMEOUT", "5"),
        metavar="SECONDS",
        help="Redis store: how long a route created for another node's frontend IP waits for "
        "that node to bind it before answering 202 (RESTCP_PROVISION_TIMEOUT; %(default)s)",
    )
    serve.add_argument(
        "--lease-ttl",
        type=_arg(_lease_ttl, "--lease-ttl"),
        default=_env("LEASE_TTL", "10"),
        metavar="SECONDS",
        help="Redis store: how long this node's claim on its frontend IPs outlives it; a node "
        "started for the same IP takes over after it (RESTCP_LEASE_TTL; %(default)s)",
    )
    serve.add_argument(
        "--snapshot",
        default=_env("SNAPSHOT", "restcp-snapshot.db"),
        metavar="PATH",
        help="Redis store: a local SQLite file of the routes this node serves, served when it "
        "starts with Redis down and written back by `restcp cluster reseed`; one per node; "
        "off: none (RESTCP_SNAPSHOT; %(default)s)",
    )
    serve.add_argument(
        "--backend-allow",
        action="append",
        type=_arg(_cidr, "--backend-allow"),
        metavar="CIDR",
        help="backends may only be in these networks; repeatable "
        "(RESTCP_BACKEND_ALLOW, comma-separated; default: any network not denied)",
    )
    serve.add_argument(
        "--backend-deny",
        action="append",
        type=_arg(_cidr, "--backend-deny"),
        metavar="CIDR",
        help="backends may not be in these networks, on top of link-local and cloud "
        "metadata, unspecified, multicast and broadcast addresses and the node's own API "
        "and listeners; repeatable (RESTCP_BACKEND_DENY, comma-separated)",
    )
    serve.add_argument(
        "--max-connections",
        type=_arg(_count, "--max-connections"),
        default=_env("MAX_CONNECTIONS", "auto"),
        metavar="N",
        help="node-wide cap on relayed connections; clients past it are closed at once. "
        "auto: what the file-descriptor limit allows, two per connection, after raising the "
        "soft limit to the hard one (RESTCP_MAX_CONNECTIONS; %(default)s)",
    )
    serve.add_argument(
        "--max-connections-per-app",
        type=_arg(_count, "--max-connections-per-app"),
        default=_env("MAX_CONNECTIONS_PER_APP", "auto"),
        metavar="N",
        help="open connections one app's routes may hold together; clients past it are "
        "closed at once; auto: no per-app cap (RESTCP_MAX_CONNECTIONS_PER_APP; %(default)s)",
    )
    serve.add_argument(
        "--workers",
        type=_arg(_positive, "--workers"),
        default=_env("WORKERS", "1"),
        metavar="N",
        help="data-plane processes: N-1 workers beside this one serve every route on the "
        "same port (SO_REUSEPORT), so new connections spread over N cores; limits and "
        "passive health are per process (RESTCP_WORKERS; %(default)s)",
    )
    serve.add_argument(
        "--toxiproxy-api",
        type=_arg(_api_address, "--toxiproxy-api"),
        default=_env("TOXIPROXY_API", "") or None,
        metavar="HOST:PORT",
        help="also serve toxiproxy's REST API here (toxiproxy's default: localhost:8474), "
        "so that its clients drive restcp; it asks for no token, so a non-loopback "
        "address needs --insecure (RESTCP_TOXIPROXY_API; default: not served)",
    )
    serve.add_argument(
        "--toxiproxy-app",
        type=_arg(_app_id, "--toxiproxy-app"),
        default=_env("TOXIPROXY_APP", "toxiproxy"),
        metavar="APP",
        help="the app whose named routes are toxiproxy's proxies (RESTCP_TOXIPROXY_APP; "
        "%(default)s)",
    )
    serve.add_argument(
        "--toxiproxy-config",
        default=_env("TOXIPROXY_CONFIG", "") or None,
        metavar="FILE",
        help="toxiproxy's -config file (a JSON array of proxies), populated at start "
        "(RESTCP_TOXIPROXY_CONFIG; default: none)",
    )
    serve.add_argument(
        "--log-level",
        choices=LOG_LEVELS,
        default=_env("LOG_LEVEL", "info").lower(),
        help="(RESTCP_LOG_LEVEL; %(default)s)",
    )
    serve.add_argument(
        "--log-format",
        choices=LOG_FORMATS,
        default=_env("LOG_FORMAT", "text").lower(),
        help="text lines, or JSON lines with one object per event (RESTCP_LOG_FORMAT; %(default)s)",
    )
    serve.add_argument(
        "--loop",
        choices=("auto", *LOOPS),
        default=_env("LOOP", "auto").lower(),
        help="event loop: uvloop where installed (RESTCP_LOOP; %(default)s)",
    )
    cluster_commands.add_commands(commands)
    return parser


# Internal: a worker process of `restcp serve --workers N`, started by the main process. Not
# a command of the parser above, so that no usage message or error lists it.
WORKER = "_worker"


def _worker_parser() -> argparse.ArgumentParser:
    worker = argparse.ArgumentParser(prog=f"restcp {WORKER}")
    worker.add_argument("index", type=int)
    worker.add_argument("channel", type=int)
    worker.add_argument("parent", type=int)
    worker.add_argument("loop", choices=("auto", *LOOPS))
    return worker


def _check_choices(args: argparse.Namespace) -> None:
    """argparse checks ``choices`` against the command line only, not against a default
    taken from the environment; an unchecked value would fail later with a traceback."""
    for name, value, choices in (
        ("LOG_LEVEL", args.log_level, LOG_LEVELS),
        ("LOOP", args.loop, ("auto", *LOOPS)),
        ("LOG_FORMAT", args.log_format, LOG_FORMATS),
    ):
        if value not in choices:
            raise ValueError(f"RESTCP_{name}={value!r}: choose from {', '.join(choices)}")


def settings_from_args(args: argparse.Namespace) -> Settings:
    _check_choices(args)
    frontend_ips: Sequence[str] = args.frontend_ip or [
        parse_ip(ip.strip()) for ip in _env("FRONTEND_IP", "127.0.0.1").split(",") if ip.strip()
    ]
    api_host, api_port, api_name = args.api
    allowed_hosts = args.api_allowed_host or _env_list("API_ALLOWED_HOST", parse_host_name)
    insecure = args.insecure if args.insecure is not None else _flag(_env("INSECURE", ""))
    settings = Settings(
        api_host=api_host,
        api_port=api_port,
        api_token=_api_token(args),
        api_token_file=_token_file(args, "api"),
        metrics_token=_api_token(args, "metrics"),
        metrics_token_file=_token_file(args, "metrics"),
        insecure=insecure,
        api_allowed_hosts=tuple(dict.fromkeys([*filter(None, [api_name]), *allowed_hosts])),
        api_request_timeout=args.api_request_timeout,
        max_routes_per_app=args.max_routes_per_app,
        max_backends_per_route=args.max_backends_per_route,
        max_toxics_per_route=args.max_toxics_per_route,
        workers=args.workers,
        toxiproxy_api=None if args.toxiproxy_api is None else args.toxiproxy_api[:2],
        toxiproxy_app=args.toxiproxy_app,
        toxiproxy_config=args.toxiproxy_config,
        store=args.store,
        frontend_ips=tuple(dict.fromkeys(frontend_ips)),
        port_range=args.port_range,
        log_level=args.log_level,
        log_format=args.log_format,
        connect_timeout=args.connect_timeout,
        idle_timeout=args.idle_timeout,
        drain_timeout=args.drain_timeout,
        resync_interval=args.resync_interval,
        provision_timeout=args.provision_timeout,
        lease_ttl=args.lease_ttl,
        snapshot=None if args.snapshot.strip().lower() in ("", "off", "none") else args.snapshot,
        max_connections=args.max_connections or _fd_connection_cap(),
        max_connections_per_app=args.max_connections_per_app,
        backend_allow=tuple(args.backend_allow or _env_list("BACKEND_ALLOW", _cidr)),
        backend_deny=tuple(args.backend_deny or _env_list("BACKEND_DENY", _cidr)),
    )
    if settings.metrics_token is not None and settings.api_token is None:
        raise ValueError(
            "--metrics-token needs --api-token: without an admin token every endpoint, "
            "/metrics included, is open"
        )
    if settings.metrics_token is not None and settings.metrics_token == settings.api_token:
        raise ValueError("the metrics token must not be the admin token")
    if settings.exposed_without_token() and not settings.insecure:
        raise ValueError(
            f"--api {settings.api_host} is not a loopback address and no --api-token is set: "
            "anyone who can reach it could change every route. Set --api-token-file (or "
            "--api-token, RESTCP_API_TOKEN), or pass --insecure to accept that"
        )
    if settings.toxiproxy_exposed() and not settings.insecure:
        raise ValueError(
            "--toxiproxy-api is not a loopback address, and toxiproxy's API asks for no "
            "token: anyone who can reach it could change its proxies. Pass --insecure to "
            "accept that"
        )
    return settings


def _app_id(text: str) -> str:
    if not is_app_id(text):
        raise ValueError(f"{text!r} is not an app id: use {APP_ID_RULE}")
    return text


def _cidr(text: str) -> str:
    parse_networks([text])
    return text.strip()


def _env_list(name: str, parse: Callable[[str], str]) -> list[str]:
    try:
        return [parse(item) for item in _env(name, "").split(",") if item.strip()]
    except ValueError as err:
        raise ValueError(f"RESTCP_{name}: {err}") from None


def _count(text: str) -> int | None:
    if text == "auto":
        return None
    if not text.isascii() or not text.isdigit() or int(text) < 1:
        raise ValueError(f"{text!r} is not auto or a whole number >= 1")
    return int(text)


# Descriptors kept out of the connection cap: the API, health probes, the store, logs.
FD_RESERVE = 128


def _fd_connection_cap() -> int | None:
    """Raise the soft descriptor limit to the hard one (as HAProxy does), then cap relayed
    connections so that accepting never runs out of descriptors: two per connection."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
    if soft == resource.RLIM_INFINITY:
        return None
    return max(1, (soft - FD_RESERVE) // 2)


def _runner(name: str) -> Callable[[Coroutine[Any, Any, None]], None]:
    if name == "auto":
        try:
            return _runner("uvloop")
        except ImportError:
            return _runner("asyncio")
    module, function = LOOPS[name].split(":")
    run: Callable[[Coroutine[Any, Any, None]], None] = getattr(
        importlib.import_module(module), function
    )
    return run


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == [WORKER]:
        from restcp import workers

        args = _worker_parser().parse_args(argv[1:])
        return workers.main(args.index, args.channel, args.parent, _runner(args.loop))
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        if args.command == "serve":
            # argparse applies type= to string defaults too, so env values are checked here.
            settings = settings_from_args(args)
    except ValueError as err:
        parser.error(str(err))
    if args.command == "cluster":
        return cluster_commands.run(args)
    # With workers, every process's lines carry its index (this one is 0).
    logs.configure(settings.log_level, settings.log_format, 0 if settings.workers > 1 else None)
    log = logging.getLogger("restcp")
    # SIGTERM and SIGINT stay blocked (pending, not lost) until serve() has its handlers on
    # the event loop and unblocks them. Delivered during the imports, a Ctrl-C is a
    # KeyboardInterrupt that either escapes with a traceback or is swallowed by the module
    # being imported (the node then runs on, deaf to the signal), and a SIGTERM kills.
    blocked = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        log.info("starting restcp %s", __version__)
        from restcp.node import serve

        try:
            run = _runner(args.loop)
        except ImportError as err:
            parser.error(f"--loop {args.loop}: {err}")
        run(serve(settings))
    except (RestcpError, OSError) as err:
        log.error("cannot start: %s", err)
        return 1
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
    return 0
