"""``restcp serve``: run a node. Every flag has a RESTCP_* environment variable; a flag given
on the command line wins over its variable, and a repeatable flag's variable holds a
comma-separated list (docs/configuration.md lists them all)."""

from __future__ import annotations

import contextlib
import importlib
import logging
import resource
import signal
import socket
from collections.abc import Callable, Coroutine
from typing import Any

import click

from restcp import __version__, logs
from restcp.cli.params import EnvOption, Parsed
from restcp.core.policy import parse_networks
from restcp.errors import RestcpError
from restcp.model import APP_ID_RULE, is_app_id
from restcp.settings import (
    Settings,
    default_node_name,
    parse_api_token,
    parse_host_name,
    parse_host_port,
    parse_ip,
    parse_node_name,
    parse_port_range,
    read_token_file,
)

LOG_LEVELS = ("debug", "info", "warning", "error")
LOG_FORMATS = ("text", "json")
# SIGHUP (reload) is held back with them: one sent during the start is not a kill.
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)

# --loop NAME -> "module:function" that runs a coroutine to completion; loaded lazily.
LOOPS = {"uvloop": "uvloop:run", "asyncio": "asyncio:run"}


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


def _app_id(text: str) -> str:
    if not is_app_id(text):
        raise ValueError(f"{text!r} is not an app id: use {APP_ID_RULE}")
    return text


def _positive(text: str) -> int:
    if not text.isascii() or not text.isdigit() or int(text) < 1:
        raise ValueError(f"{text!r} is not a whole number >= 1")
    return int(text)


def _seed(text: str) -> int:
    # The range of a route's own seed (the API's), and of a seed the node draws.
    if not text.isascii() or not text.isdigit() or int(text) >= 1 << 63:
        raise ValueError(f"{text!r} is not a whole number from 0 to 2**63 - 1")
    return int(text)


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


def _cidr(text: str) -> str:
    parse_networks([text])
    return text.strip()


def _count(text: str) -> int | None:
    if text == "auto":
        return None
    if not text.isascii() or not text.isdigit() or int(text) < 1:
        raise ValueError(f"{text!r} is not auto or a whole number >= 1")
    return int(text)


def _setting(
    flag: str, metavar: str | None, text: str, parse: Callable[[str], Any] | None = None, **kw: Any
) -> Callable[[Any], Any]:
    """An option of ``serve`` read from RESTCP_<FLAG> when not given. A value that is parsed
    or chosen takes an empty variable as its value, and refuses it: ``RESTCP_LOOP=`` is
    more likely a script's unset variable than a wish for the default."""
    variable = "RESTCP_" + flag.removeprefix("--").upper().replace("-", "_")
    if parse is not None:
        kw["type"] = Parsed(parse, flag)
    if ("type" in kw) and not kw.get("multiple") and not kw.get("is_flag"):
        kw.setdefault("empty_is_value", True)
    return click.option(
        flag, cls=EnvOption, envvar=variable, metavar=metavar, help=text, show_envvar=False, **kw
    )


def _choice(flag: str, choices: tuple[str, ...], default: str, text: str) -> Callable[[Any], Any]:
    return _setting(
        flag, None, text, type=click.Choice(choices, case_sensitive=False), default=default
    )


# The flags, in the order --help lists them.
SETTINGS = [
    _setting("--api", "HOST:PORT",
        "where the HTTP API listens; port 0 picks a free one (RESTCP_API; 127.0.0.1:8001)",
        _api_address, default="127.0.0.1:8001"),
    _setting("--api-token", "TOKEN",
        "the admin token: every API request but GET /healthz and GET /openapi.json must "
        "send 'Authorization: Bearer TOKEN' (or a token of its app, POST /apps/APP/tokens); "
        "at least 16 characters. The command line shows in ps: prefer --api-token-file or "
        "RESTCP_API_TOKEN (default: none, the API asks for no token)"),
    _setting("--api-token-file", "PATH",
        "read the admin token from this file, trailing newline removed; SIGHUP reads it "
        "again (RESTCP_API_TOKEN_FILE)"),
    _setting("--metrics-token", "TOKEN",
        "a token that reaches GET /metrics only, for a Prometheus scraper; needs "
        "--api-token. Prefer --metrics-token-file (RESTCP_METRICS_TOKEN; default: none, "
        "/metrics needs the admin token)"),
    _setting("--metrics-token-file", "PATH",
        "read the metrics token from this file; SIGHUP reads it again "
        "(RESTCP_METRICS_TOKEN_FILE)"),
    _setting("--insecure", None,
        "serve the API on a non-loopback --api address without --api-token: anyone who "
        "can reach it may change every route. Refused unless given (RESTCP_INSECURE=1)",
        is_flag=True, default=False),
    _setting("--api-allowed-host", "NAME",
        "a host name clients use for the API (behind a proxy or in DNS); requests from "
        "browsers for other names are refused. The API's address, localhost and the name in "
        "--api are always allowed; repeatable (RESTCP_API_ALLOWED_HOST, comma-separated)",
        parse_host_name, multiple=True),
    _setting("--api-request-timeout", "SECONDS",
        "how long an API client may take to send a request's head (from connecting, or "
        "from the previous answer), and as long again for its body; an idle kept-alive "
        "connection is closed after it (RESTCP_API_REQUEST_TIMEOUT; 30)",
        _positive_seconds, default="30"),
    _setting("--max-routes-per-app", "N",
        "routes one app may have; more are refused with 409 (RESTCP_MAX_ROUTES_PER_APP; 1000)",
        _positive, default="1000"),
    _setting("--max-backends-per-route", "N",
        "backends one route may have; more are refused with 409 "
        "(RESTCP_MAX_BACKENDS_PER_ROUTE; 100)",
        _positive, default="100"),
    _setting("--max-toxics-per-route", "N",
        "toxics one route may have; more are refused with 409 "
        "(RESTCP_MAX_TOXICS_PER_ROUTE; 32)",
        _positive, default="32"),
    _setting("--store", "URL",
        "sqlite:///PATH (relative), sqlite:////PATH (absolute), memory://, or "
        "redis://HOST:PORT/DB for a cluster of nodes (also rediss://, redis+sentinel://; "
        "docs/cluster.md) (RESTCP_STORE; sqlite:///restcp.db)",
        default="sqlite:///restcp.db"),
    _setting("--frontend-ip", "IP",
        "an address routes listen on; repeat for several, the first is the default "
        "(RESTCP_FRONTEND_IP, comma-separated; 127.0.0.1)",
        parse_ip, multiple=True),
    _setting("--port-range", "LO-HI",
        "ports handed to routes that do not ask for one (RESTCP_PORT_RANGE; 10000-19999)",
        parse_port_range, default="10000-19999"),
    _setting("--connect-timeout", "SECONDS",
        "default time to connect to a backend (RESTCP_CONNECT_TIMEOUT; 5)",
        _seconds, default="5"),
    _setting("--idle-timeout", "SECONDS",
        "default time a silent connection is kept; 0 keeps it forever "
        "(RESTCP_IDLE_TIMEOUT; 3600)",
        _seconds, default="3600"),
    _setting("--drain-timeout", "SECONDS",
        "on SIGTERM, how long open connections may finish (RESTCP_DRAIN_TIMEOUT; 30)",
        _seconds, default="30"),
    _setting("--resync-interval", "SECONDS",
        "how often the whole store is re-applied (RESTCP_RESYNC_INTERVAL; 5)",
        _seconds, default="5"),
    _setting("--provision-timeout", "SECONDS",
        "Redis store: how long a write for a route of another node's frontend IP (a "
        "create, or any change) waits for that node to apply it before answering 202 "
        "(RESTCP_PROVISION_TIMEOUT; 5)",
        _seconds, default="5"),
    _setting("--lease-ttl", "SECONDS",
        "Redis store: how long this node's claim on its frontend IPs outlives it; a node "
        "started for the same IP takes over after it (RESTCP_LEASE_TTL; 10)",
        _lease_ttl, default="10"),
    _setting("--node-name", "NAME",
        "Redis store: this node's name, the same across its restarts, so that a node "
        "restarted after a crash takes its frontend IPs back at once; one per node on a "
        "host (RESTCP_NODE_NAME; default the host name)",
        parse_node_name),
    _setting("--snapshot", "PATH",
        "Redis store: a local SQLite file of the routes this node serves, served when it "
        "starts with Redis down and written back by `restcp cluster reseed`; one per node; "
        "off: none (RESTCP_SNAPSHOT; restcp-snapshot.db)",
        default="restcp-snapshot.db", empty_is_value=True),
    _setting("--backend-allow", "CIDR",
        "backends may only be in these networks; repeatable "
        "(RESTCP_BACKEND_ALLOW, comma-separated; default: any network not denied)",
        _cidr, multiple=True),
    _setting("--backend-deny", "CIDR",
        "backends may not be in these networks, on top of link-local and cloud "
        "metadata, unspecified, multicast and broadcast addresses and the node's own API "
        "and listeners; repeatable (RESTCP_BACKEND_DENY, comma-separated)",
        _cidr, multiple=True),
    _setting("--max-connections", "N",
        "node-wide cap on relayed connections; clients past it are closed at once. "
        "auto: what the file-descriptor limit allows, two per connection, after raising the "
        "soft limit to the hard one (RESTCP_MAX_CONNECTIONS; auto)",
        _count, default="auto"),
    _setting("--max-connections-per-app", "N",
        "open connections one app's routes may hold together; clients past it are "
        "closed at once; auto: no per-app cap (RESTCP_MAX_CONNECTIONS_PER_APP; auto)",
        _count, default="auto"),
    _setting("--workers", "N",
        "data-plane processes: N-1 workers beside this one serve every route on the "
        "same port (SO_REUSEPORT), so new connections spread over N cores; limits and "
        "passive health are per process (RESTCP_WORKERS; 1)",
        _positive, default="1"),
    _setting("--seed", "N",
        "the seed of the toxics' random draws (toxicity, jitter, slicer sizes): the same "
        "seed, route, connection number and toxic draw the same; a route's own seed wins; "
        "none: a random one, logged at start (RESTCP_SEED)",
        _seed),
    _setting("--toxiproxy-api", "HOST:PORT",
        "also serve toxiproxy's REST API here (toxiproxy's default: localhost:8474), so "
        "that its clients drive restcp; it asks for no token, so a non-loopback address "
        "needs --insecure (RESTCP_TOXIPROXY_API; default: not served)",
        _api_address),
    _setting("--toxiproxy-app", "APP",
        "the app whose named routes are toxiproxy's proxies "
        "(RESTCP_TOXIPROXY_APP; toxiproxy)",
        _app_id, default="toxiproxy"),
    _setting("--toxiproxy-config", "FILE",
        "toxiproxy's -config file (a JSON array of proxies), populated at start "
        "(RESTCP_TOXIPROXY_CONFIG; default: none)"),
    _choice("--log-level", LOG_LEVELS, "info", "(RESTCP_LOG_LEVEL; info)"),
    _choice("--log-format", LOG_FORMATS, "text",
        "text lines, or JSON lines with one object per event (RESTCP_LOG_FORMAT; text)"),
    _choice("--loop", ("auto", *LOOPS), "auto",
        "event loop: uvloop where installed (RESTCP_LOOP; auto)"),
    _choice("--engine", ("asyncio", "native"), "native",
        "data plane of plain routes: native is the compiled relay engine (asyncio, with "
        "a warning, where it is not built); asyncio serves every route in Python "
        "(RESTCP_ENGINE; native; docs/engine.md)"),
]  # fmt: skip


def _token(options: dict[str, Any], kind: str) -> tuple[str | None, str | None]:
    """(the admin token (``kind`` "api") or the metrics token ("metrics"), the file it was
    read from) from --KIND-token, --KIND-token-file or their variables (one only)."""
    flag, var = f"--{kind}-token", f"RESTCP_{kind.upper()}_TOKEN"
    token, path = options[f"{kind}_token"], options[f"{kind}_token_file"] or None
    if token is not None and path is not None:
        raise ValueError(
            f"give the {kind} token once: {flag} ({var}) or {flag}-file ({var}_FILE), not both"
        )
    if path is not None:
        return read_token_file(path, flag=f"{flag}-file"), path
    if token is not None:
        try:
            return parse_api_token(token), None
        except ValueError as err:
            raise ValueError(f"{flag} ({var}): {err}") from None
    return None, None


def settings_from_options(options: dict[str, Any]) -> Settings:
    """The node's Settings from serve's parsed options; ValueError for what no single
    option can check (a token given twice, a metrics token without an admin one)."""
    api_host, api_port, api_name = options["api"]
    api_token, api_token_file = _token(options, "api")
    metrics_token, metrics_token_file = _token(options, "metrics")
    snapshot: str = options["snapshot"]
    allowed: tuple[str, ...] = options["api_allowed_host"]
    toxiproxy: tuple[str, int, str | None] | None = options["toxiproxy_api"]
    settings = Settings(
        api_host=api_host,
        api_port=api_port,
        api_token=api_token,
        api_token_file=api_token_file,
        metrics_token=metrics_token,
        metrics_token_file=metrics_token_file,
        insecure=options["insecure"],
        api_allowed_hosts=tuple(dict.fromkeys([*filter(None, [api_name]), *allowed])),
        api_request_timeout=options["api_request_timeout"],
        max_routes_per_app=options["max_routes_per_app"],
        max_backends_per_route=options["max_backends_per_route"],
        max_toxics_per_route=options["max_toxics_per_route"],
        workers=options["workers"],
        engine=options["engine"],
        seed=options["seed"],
        toxiproxy_api=None if toxiproxy is None else toxiproxy[:2],
        toxiproxy_app=options["toxiproxy_app"],
        toxiproxy_config=options["toxiproxy_config"] or None,
        store=options["store"],
        frontend_ips=tuple(dict.fromkeys(options["frontend_ip"] or ["127.0.0.1"])),
        port_range=options["port_range"],
        log_level=options["log_level"],
        log_format=options["log_format"],
        connect_timeout=options["connect_timeout"],
        idle_timeout=options["idle_timeout"],
        drain_timeout=options["drain_timeout"],
        resync_interval=options["resync_interval"],
        provision_timeout=options["provision_timeout"],
        lease_ttl=options["lease_ttl"],
        node_name=options["node_name"] or default_node_name(),
        snapshot=None if snapshot.strip().lower() in ("", "off", "none") else snapshot,
        max_connections=options["max_connections"] or _fd_connection_cap(),
        max_connections_per_app=options["max_connections_per_app"],
        backend_allow=tuple(options["backend_allow"]),
        backend_deny=tuple(options["backend_deny"]),
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


def runner(name: str) -> Callable[[Coroutine[Any, Any, None]], None]:
    """The function that runs a coroutine on event loop ``name`` (auto: uvloop if it loads)."""
    if name == "auto":
        try:
            return runner("uvloop")
        except ImportError:
            return runner("asyncio")
    module, function = LOOPS[name].split(":")
    run: Callable[[Coroutine[Any, Any, None]], None] = getattr(
        importlib.import_module(module), function
    )
    return run


def _serve(**options: Any) -> None:
    try:
        settings = settings_from_options(options)
    except ValueError as err:
        raise click.UsageError(str(err)) from None
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
            run = runner(options["loop"])
        except ImportError as err:
            raise click.UsageError(f"--loop {options['loop']}: {err}") from None
        run(serve(settings))
    except (RestcpError, OSError) as err:
        log.error("cannot start: %s", err)
        raise SystemExit(1) from None
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, blocked)


def _build() -> click.Command:
    command: Callable[..., None] = _serve
    for option in reversed(SETTINGS):
        command = option(command)
    return click.command(
        "serve",
        help="Run a restcp node. Each flag also reads the RESTCP_* variable named.",
        short_help="run a node: the API and the listeners of its routes",
    )(command)


serve = _build()
