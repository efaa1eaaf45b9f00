"""restcp's pytest plugin (entry point ``pytest11``: ``restcp``), after pytest-redis:

    restcp_proc     session: a ``restcp serve`` of the test run's own (memory store, API on a
                    free port, waited for), stopped at the end; or, with --restcp-url, a
                    restcp that is already running
    restcp          function: a Client of it; routes the test created are deleted after it
    restcp_proxy    function: restcp_proxy("HOST:PORT") is a route in front of that upstream,
                    with host, port and url for the code under test, and the fault helpers
    restcp_proxy_fixture(host, port)  declares a fixture of one's own that is such a route

Settings come from the command line, then the ini file: --restcp-exec / restcp_exec (the
``restcp`` program; this Python's ``-m restcp`` by default), --restcp-url / restcp_url,
--restcp-token / restcp_token. Under pytest-xdist every worker starts its own restcp; route
ports are found free by restcp itself, so workers never clash. docs/pytest.md is the guide.

The client is imported when a fixture first needs it, not when pytest loads the plugin.
"""

from __future__ import annotations

import collections
import contextlib
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Unpack

import pytest

if TYPE_CHECKING:
    from restcp.client import Client, Route
    from restcp.client.fields import RouteFields
    from restcp.client.transport import SyncTransport

    Proxy = Route[SyncTransport]

# How long restcp may take to log that it is ready, and to exit once asked to stop.
START_TIMEOUT = 30.0
STOP_TIMEOUT = 30.0
# The app restcp_proxy makes its routes in, unless told another.
PROXY_APP = "pytest"
READY = " ready api="
# Log lines kept to explain a restcp that could not start.
LOG_TAIL = 40


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("restcp", "restcp (a real TCP proxy between the code and its peers)")
    options = (
        ("exec", "the restcp program to run (default: this Python's `-m restcp`)"),
        ("url", "use the restcp already running at this API URL instead of starting one"),
        ("token", "the API token to send (with --restcp-url, if its API asks for one)"),
    )
    for name, text in options:
        group.addoption(f"--restcp-{name}", dest=f"restcp_{name}", metavar=name.upper(), help=text)
        parser.addini(f"restcp_{name}", text)


def _setting(config: pytest.Config, name: str) -> str | None:
    value = config.getoption(name) or config.getini(name)
    return str(value) if value else None


@dataclass
class RestcpProcess:
    """The restcp the fixtures use: its API ``url`` and ``token``; ``process`` is the
    ``restcp serve`` the plugin started (None for --restcp-url) and ``log_path`` its log."""

    url: str
    token: str | None = None
    process: subprocess.Popen[str] | None = None
    log_path: Path | None = None

    def client(self) -> Client:
        from restcp.client import Client

        return Client(self.url, self.token)


@dataclass
class _Server:
    """A ``restcp serve`` subprocess: started on a free API port (port 0; its address comes
    from the ``ready api=`` line of its log), read by a thread that keeps its log, and
    stopped with SIGTERM."""

    command: list[str]
    log_path: Path
    url: str | None = None
    process: subprocess.Popen[str] | None = None
    tail: collections.deque[str] = field(default_factory=lambda: collections.deque(maxlen=LOG_TAIL))
    _ready: threading.Event = field(default_factory=threading.Event)
    _reader: threading.Thread | None = None

    def start(self) -> None:
        args = ["serve", "--api", "127.0.0.1:0", "--store", "memory://"]
        # Its configuration is the plugin's alone: none leaks in from the environment.
        env = {k: v for k, v in os.environ.items() if not k.startswith("RESTCP_")}
        try:
            self.process = subprocess.Popen(
                [*self.command, *args],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                text=True,
                env=env,
            )
        except OSError as err:
            raise _CannotStart(f"cannot run {self.command[0]!r}: {err}") from None
        self._reader = threading.Thread(target=self._read, name="restcp log", daemon=True)
        self._reader.start()
        said = self._ready.wait(START_TIMEOUT)
        if said and self.url is not None:
            return
        if said:
            # Its log ended without the ready line: it is exiting. Its stderr closes before
            # it has exited (and long before it is reaped), so wait for its status rather
            # than poll for it.
            try:
                status: int | None = self.process.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                status = None
            why = (
                f"it exited with status {status}"
                if status is not None
                else "it closed its log without saying it was ready, and did not exit"
            )
        else:
            why = f"it did not say it was ready within {START_TIMEOUT:g}s"
        self.stop()
        raise _CannotStart(why + self._log_tail())

    def _read(self) -> None:
        assert self.process is not None
        assert self.process.stderr is not None
        with self.log_path.open("w") as log:
            for line in self.process.stderr:
                log.write(line)
                log.flush()
                self.tail.append(line.rstrip("\n"))
                if self.url is None and READY in line:
                    self.url = line.split(READY, 1)[1].split()[0].rstrip("/")
                    self._ready.set()
        self._ready.set()

    def _log_tail(self) -> str:
        return "; its log ends:\n" + "\n".join(self.tail) if self.tail else "; it logged nothing"

    def stop(self) -> None:
        process = self.process
        if process is None:
            return
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
        try:
            process.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        if self._reader is not None:
            self._reader.join(STOP_TIMEOUT)
        if process.stderr is not None:
            process.stderr.close()


class _CannotStart(Exception):
    pass


@pytest.fixture(scope="session")
def restcp_proc(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RestcpProcess]:
    """The restcp of this test run (of this xdist worker): started, or --restcp-url's."""
    config = request.config
    token = _setting(config, "restcp_token")
    url = _setting(config, "restcp_url")
    if url is not None:
        running = RestcpProcess(url, token)
        _check_health(running, f"--restcp-url {url}")
        yield running
        return
    program = _setting(config, "restcp_exec")
    command = [program] if program else [sys.executable, "-m", "restcp"]
    server = _Server(command, tmp_path_factory.mktemp("restcp") / "restcp.log")
    try:
        server.start()
    except _CannotStart as err:
        pytest.fail(
            f"restcp could not start ({' '.join(command)} serve): {err}\n"
            "Set --restcp-exec (or the restcp_exec ini option) to the restcp program, or "
            "--restcp-url to a restcp that is running.",
            pytrace=False,
        )
    assert server.url is not None
    try:
        started = RestcpProcess(server.url, token, server.process, server.log_path)
        _check_health(started, f"restcp at {server.url}")
        yield started
    finally:
        server.stop()


def _check_health(restcp: RestcpProcess, what: str) -> None:
    """Fail the tests, saying why, unless ``restcp`` is ready and takes the token (the
    ``restcp`` fixture lists every app's routes, which takes the admin token)."""
    from restcp.client import ApiError, Forbidden, Unauthorized

    with restcp.client() as client:
        try:
            health = client.healthz()
        except ApiError as err:
            pytest.fail(f"{what} does not answer /healthz: {err}", pytrace=False)
        if health.status not in ("ok", "degraded"):
            pytest.fail(f"{what} is not ready: /healthz says {health.status}", pytrace=False)
        try:
            client.apps()
        except (Unauthorized, Forbidden) as err:
            pytest.fail(
                f"{what} refuses the plugin: {err}. Give its admin token with --restcp-token "
                "(or the restcp_token ini option)",
                pytrace=False,
            )


def _route_keys(client: Client) -> set[tuple[str, int]]:
    return {(app.app, r.id) for app in client.apps() for r in client.routes(app.app).list()}


@pytest.fixture
def restcp(restcp_proc: RestcpProcess) -> Iterator[Client]:
    """A Client of restcp_proc. Every route that appeared during the test is deleted after
    it (those that were there before, on a shared --restcp-url, are left alone)."""
    from restcp.client import NotFound

    with restcp_proc.client() as client:
        before = _route_keys(client)
        yield client
        for app, route_id in sorted(_route_keys(client) - before):
            # Deleted meanwhile perhaps, by the code under test.
            with contextlib.suppress(NotFound):
                client.routes(app)[route_id].delete()


def _upstream(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"upstream {text!r}: expected HOST:PORT")
    return host.removeprefix("[").removesuffix("]"), int(port)


@pytest.fixture
def restcp_proxy(restcp: Client) -> Callable[..., Proxy]:
    """``restcp_proxy("HOST:PORT", app="pytest", **settings)``: a new route relaying to that
    upstream, its one backend being backends[1]. Connect the code under test to its
    ``host`` and ``port``; break things with ``backends[1].disabled()`` and the like."""

    def make(upstream: str, app: str = PROXY_APP, **settings: Unpack[RouteFields]) -> Proxy:
        host, port = _upstream(upstream)
        route = restcp.routes(app).create(**settings)
        route.backends.add(host, port)
        return route.refresh()

    return make


def restcp_proxy_fixture(
    host: str, port: int, *, app: str = PROXY_APP, **settings: Any
) -> Callable[..., Proxy]:
    """A fixture (function scope) that is a route in front of ``host:port``:

    redis_through_restcp = restcp_proxy_fixture("127.0.0.1", 6379)

    def test_reconnects(redis_through_restcp): ...
    """

    @pytest.fixture
    def proxy(restcp_proxy: Callable[..., Proxy]) -> Proxy:
        target = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        return restcp_proxy(target, app=app, **settings)

    return proxy
