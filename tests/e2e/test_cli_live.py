"""`restcp status`, `restcp top` and shell completion against a real `restcp serve`: the
health, backends up and down and connections open that status reports; top's rates from
real traffic between two of its refreshes, its bounded and interrupted runs, and its live
view on a terminal (a pty) that quits on q and gives the terminal back as it was, also on a
Ctrl-C while a refresh waits for the node (held by a toxic of another node); and the
completion scripts, run by a real bash."""

from __future__ import annotations

import fcntl
import json
import os
import pty
import select
import signal
import struct
import subprocess
import sys
import termios
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from restcp.client import Client
from tests.e2e.cli import RESTCP, clean_env, field, restcp, row
from tests.e2e.conftest import StartNode, serve_args, wait_until
from tests.e2e.peers import Backend, connect, echo, recv_exactly, refusing_port, round_trip
from tests.helpers import Node, free_port_range

FAST_CHECK = {"interval": 0.1, "timeout": 0.5, "rise": 1, "fall": 1}


@pytest.fixture
def echo_backend() -> Iterator[Backend]:
    with Backend(echo) as backend:
        yield backend


def create(node: Node, app: str = "web", **body: Any) -> dict[str, Any]:
    response = node.call("PUT", f"/apps/{app}/routes", body or None)
    assert response.status == 201, response
    made: dict[str, Any] = response.json()
    return made


def attach(node: Node, route: int, port: int) -> None:
    body = {"ip": "127.0.0.1", "port": port}
    assert node.call("PUT", f"/apps/web/routes/{route}/backends", body).status == 201


def backends(node: Node, route: int) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = node.call("GET", f"/apps/web/routes/{route}/backends").json()
    return found


def test_status_reports_health_backends_and_connections(node: Node, echo_backend: Backend) -> None:
    empty = restcp(node, "status")
    assert (field(empty, "status"), field(empty, "routes")) == ("ok", "0 served, 0 unbound")
    assert field(empty, "connections") == "0"

    route = create(node, health_check=FAST_CHECK)
    create(node, "shop")  # no backends
    with refusing_port() as dead:
        attach(node, 1, echo_backend.port)
        attach(node, 1, dead)
        wait_until(lambda: [b["health"] for b in backends(node, 1)] == ["up", "down"], "checked")
        with connect(route["port"]) as held:
            held.sendall(b"ping")
            assert recv_exactly(held, 4) == b"ping"
            wait_until(lambda: backends(node, 1)[0]["active_connections"] == 1, "counted")

            shown = restcp(node, "status")
            assert field(shown, "node") == node.api
            assert field(shown, "status") == "ok"
            assert field(shown, "routes") == "2 served, 0 unbound"
            assert field(shown, "backends") == "1 up, 1 down, 0 unknown"
            assert field(shown, "connections") == "1"
            assert row(shown, "APP") == [
                "APP", "ROUTE", "URL", "BACKENDS", "UP", "DOWN", "UNKNOWN", "CONNECTIONS"
            ]  # fmt: skip
            assert row(shown, "web") == ["web", "1", route["url"], "2", "1", "1", "0", "1"]
            assert row(shown, "shop")[3:] == ["0", "0", "0", "0", "0"]

            data = restcp(node, "status", "-o", "json").json()
            assert data["health"]["status"] == "ok"
            assert data["health"]["routes"] == 2
            assert (data["backends"], data["connections"]) == (
                {"up": 1, "down": 1, "unknown": 0}, 1
            )  # fmt: skip
            by_app = {shown["app"]: shown for shown in data["routes"]}
            assert by_app["web"] == {
                "app": "web", "id": 1, "url": route["url"], "backends": 2, "up": 1, "down": 1,
                "unknown": 0, "connections": 1,
            }  # fmt: skip
            assert restcp(node, "status", "-o", "yaml").yaml()["backends"] == data["backends"]


def test_top_bounded_run_prints_each_refresh(node: Node, echo_backend: Backend) -> None:
    route = create(node)
    attach(node, 1, echo_backend.port)
    done = restcp(node, "top", "-o", "json", "--iterations", "3", "--interval", "0.05")
    assert done.code == 0, done.err
    frames = [json.loads(line) for line in done.out.splitlines()]
    assert len(frames) == 3
    first, *later = frames
    # Nothing to compare the first read with: no rates yet.
    assert first["seconds"] is None
    assert first["routes"][0]["connections_per_s"] is None
    assert first["routes"][0]["backends"][0]["bytes_in_per_s"] is None
    for frame in later:
        assert frame["seconds"] > 0
        shown = frame["routes"][0]
        assert (shown["app"], shown["id"], shown["url"]) == ("web", 1, route["url"])
        assert shown["connections_per_s"] == 0.0
        (backend,) = shown["backends"]
        assert (backend["id"], backend["port"], backend["connections_per_s"]) == (
            1, echo_backend.port, 0.0
        )  # fmt: skip

    table = restcp(node, "top", "--iterations", "2", "--interval", "0.05")
    assert table.code == 0, table.err
    assert table.out.count("restcp top  " + node.api) == 2
    assert table.out.count("\nweb/1 ") == 2
    head = [line for line in table.out.splitlines() if line.startswith("ROUTE")]
    assert head[0].split() == ["ROUTE", "URL", "/", "BACKEND", "HEALTH", "ACTIVE", "CONN/S",
                               "IN/S", "OUT/S", "FAILED"]  # fmt: skip
    yaml_run = restcp(node, "top", "-o", "yaml", "--iterations", "2", "--interval", "0.05")
    assert yaml_run.out.count("---\n") == 2


def test_top_rates_come_from_the_traffic_between_refreshes(
    node: Node, echo_backend: Backend
) -> None:
    route = create(node)
    attach(node, 1, echo_backend.port)
    proc = subprocess.Popen(
        [*RESTCP, "top", "-o", "json", "--interval", "0.1"],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env=clean_env(RESTCP_URL=node.api),
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        frames = [json.loads(proc.stdout.readline())]
        assert frames[0]["routes"][0]["connections"] == 0
        for _ in range(4):
            assert round_trip(route["port"], b"x" * 1000) == b"x" * 1000
        # Read on until a refresh has seen all four (each is counted once it is relayed).
        while frames[-1]["routes"][0]["backends"][0]["bytes_out"] < 4000:
            line = proc.stdout.readline()
            assert line, proc.stderr.read() if proc.stderr else ""
            frames.append(json.loads(line))
        frames.append(json.loads(proc.stdout.readline()))  # and one refresh after
        proc.send_signal(signal.SIGINT)  # Ctrl-C: quits as q does
        assert proc.wait(timeout=20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        errors = proc.stderr.read() if proc.stderr else ""
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()
    assert "Traceback" not in errors, errors
    assert errors == ""
    # Each refresh's rate times its seconds is what was counted since the one before: the
    # four connections and their bytes in total, over however many refreshes they spread.
    later = frames[1:]
    backend = [f["routes"][0]["backends"][0] for f in later]

    def counted(rate: str) -> float:
        return sum(b[rate] * f["seconds"] for b, f in zip(backend, later, strict=True))

    connections = counted("connections_per_s")
    sent, received = counted("bytes_in_per_s"), counted("bytes_out_per_s")
    assert round(connections, 6) == 4
    assert (round(sent, 3), round(received, 3)) == (4000, 4000)
    assert any(b["connections_per_s"] > 0 for b in backend)
    assert later[-1]["routes"][0]["connections_per_s"] == 0.0  # nothing since
    assert later[-1]["routes"][0]["connections"] == 4


def read_until(fd: int, needle: bytes, deadline: float) -> bytes:
    seen = b""
    while needle not in seen:
        left = deadline - time.monotonic()
        assert left > 0, seen[-2000:]
        ready, _, _ = select.select([fd], [], [], left)
        if ready:
            try:
                chunk = os.read(fd, 65536)
            except OSError:  # the other side closed: EIO on Linux
                break
            if not chunk:
                break
            seen += chunk
    assert needle in seen, seen[-2000:]
    return seen


def test_top_on_a_terminal_refreshes_in_place_and_quits_on_q(
    node: Node, echo_backend: Backend
) -> None:
    create(node)
    attach(node, 1, echo_backend.port)
    main, child = pty.openpty()
    fcntl.ioctl(child, termios.TIOCSWINSZ, struct.pack("HHHH", 30, 120, 0, 0))
    before = termios.tcgetattr(child)
    proc = subprocess.Popen(
        [*RESTCP, "top", "--interval", "0.1"],
        stdin=child, stdout=child, stderr=child, close_fds=True,
        env=clean_env(RESTCP_URL=node.api, TERM="xterm-256color"),
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        shown = read_until(main, b"q quits", deadline)
        assert b"\x1b[?1049h" in shown  # the terminal's alternate screen, as top's
        shown = read_until(main, b"q quits", deadline)  # refreshed
        # The frame's table follows its title, possibly in a later read.
        frame = shown[shown.rindex(b"q quits") :]
        if b"web/1" not in frame:
            frame += read_until(main, b"web/1", deadline)
        assert b"CONN/S" in frame
        os.write(main, b"q")
        assert proc.wait(timeout=20) == 0
        assert b"\x1b[?1049l" in read_until(main, b"\x1b[?1049l", deadline)  # back
        after = termios.tcgetattr(child)
        # cbreak mode was undone: line editing and echo are back.
        assert after[3] & (termios.ICANON | termios.ECHO) == before[3] & (
            termios.ICANON | termios.ECHO
        )
        assert after[3] & termios.ICANON
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(main)
        os.close(child)


def test_completion_scripts_complete_commands_options_and_choices(tmp_path: Path) -> None:
    scripts = {shell: restcp(None, "completion", shell) for shell in ("bash", "zsh", "fish")}
    for shell, done in scripts.items():
        assert done.code == 0, done.err
        assert "_RESTCP_COMPLETE" in done.out, shell
    assert "complete -o nosort -F _restcp_completion restcp" in scripts["bash"].out
    assert scripts["zsh"].out.lstrip().startswith("#compdef restcp")
    assert "complete --no-files --command restcp" in scripts["fish"].out
    bad = restcp(None, "completion", "tcsh")
    assert (bad.code, "'tcsh' is not one of" in bad.err) == (2, True)

    # bash runs the script as a user's start-up file would, and completes as if TAB was hit.
    (tmp_path / "complete.bash").write_text(scripts["bash"].out)
    bindir = str(Path(sys.executable).parent)  # where `restcp` is installed

    def complete(*words: str) -> list[str]:
        script = (
            f"source {tmp_path / 'complete.bash'}\n"
            f"COMP_WORDS=(restcp {' '.join(words)}); COMP_CWORD={len(words)}\n"
            "_restcp_completion restcp\n"
            'printf "%s\\n" "${COMPREPLY[@]}"\n'
        )
        done = subprocess.run(
            ["bash", "-c", script], capture_output=True, text=True, timeout=30, check=False,
            env=clean_env(PATH=bindir + os.pathsep + os.environ["PATH"]),
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        return done.stdout.split()

    commands = complete("")
    assert commands[:4] == ["serve", "cluster", "apps", "routes"]
    assert {"backends", "toxics", "tokens", "nodes", "status", "top", "completion"} <= set(commands)
    assert not [c for c in commands if c.startswith("_")]
    assert complete("_") == []
    assert complete("ro") == ["routes"]
    assert complete("backends", "d") == ["delete", "drain", "disable"]
    assert "--balance" in complete("routes", "create", "web", "--ba")
    assert complete("routes", "create", "web", "--balance", "r") == ["random", "round_robin"]
    assert complete("serve", "--log-l") == ["--log-level"]
    assert complete("toxics", "add", "web", "1", "l") == ["latency", "limit_data", "limit_time"]
    assert complete("toxics", "add", "web", "1", "latency", "--stream", "u") == ["upstream"]
    assert complete("routes", "u") == ["update", "up"]


def test_python_m_restcp_and_the_console_script_are_one_command() -> None:
    by_module = restcp(None, "--help")
    script = Path(sys.executable).parent / "restcp"
    done = subprocess.run(
        [str(script), "--help"], capture_output=True, text=True, timeout=30, check=False,
        env=clean_env(),
    )  # fmt: skip
    assert (done.returncode, by_module.code) == (0, 0)
    assert done.stdout == by_module.out


@pytest.fixture
def stalled_api(
    node: Node, start_node: StartNode, tmp_path: Path
) -> Iterator[tuple[str, Callable[[], None]]]:
    """``node``'s API (which has route web/1) through a route of another node (a node may
    not relay to its own API), and a function that stalls it: a ``timeout`` toxic that holds
    every request from then on, returning once one of top's requests is held (mid-refresh)."""
    lo, hi = free_port_range()
    proxy = start_node(*serve_args(tmp_path / "proxy.db", lo, hi))
    create(node)
    made = create(proxy, "api")
    api_port = int(node.api.rsplit(":", 1)[1])
    body = {"ip": "127.0.0.1", "port": api_port}
    assert proxy.call("PUT", "/apps/api/routes/1/backends", body).status == 201

    def stall() -> None:
        toxic = {"type": "timeout", "stream": "upstream", "attributes": {"timeout": 0}}
        assert proxy.call("PUT", "/apps/api/routes/1/toxics", toxic).status == 201
        with Client(proxy.api) as client:
            wait_until(
                lambda: client.metrics().value("restcp_toxic_held_bytes", app="api") > 0,
                "a request of top held by the toxic",
            )

    yield f"http://127.0.0.1:{made['port']}", stall
    # The toxic holds the closed client's FIN too: let it go, so that the route's connection
    # ends and the node stops without draining it.
    proxy.call("DELETE", "/apps/api/routes/1/toxics/timeout_upstream")


def test_top_on_a_terminal_gives_it_back_on_ctrl_c_mid_refresh(
    stalled_api: tuple[str, Callable[[], None]],
) -> None:
    url, stall = stalled_api
    main, child = pty.openpty()
    fcntl.ioctl(child, termios.TIOCSWINSZ, struct.pack("HHHH", 30, 120, 0, 0))
    before = termios.tcgetattr(child)
    proc = subprocess.Popen(
        [*RESTCP, "top", "--interval", "0.1"],
        stdin=child, stdout=child, stderr=child, close_fds=True,
        env=clean_env(RESTCP_URL=url, TERM="xterm-256color"),
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        shown = read_until(main, b"q quits", deadline)
        assert b"\x1b[?1049h" in shown
        shown += read_until(main, b"web/1", deadline)  # a whole frame, through the route
        stall()  # top now waits for an answer, in cbreak mode, on the alternate screen
        proc.send_signal(signal.SIGINT)
        proc.send_signal(signal.SIGINT)  # impatient: a second Ctrl-C cuts nothing short
        assert proc.wait(timeout=10) == 0
        rest = read_until(main, b"\x1b[?1049l", deadline)  # the screen given back
        after = termios.tcgetattr(child)
        assert after[3] & termios.ICANON
        assert after[3] & (termios.ICANON | termios.ECHO | termios.ISIG) == before[3] & (
            termios.ICANON | termios.ECHO | termios.ISIG
        )
        assert b"Traceback" not in shown + rest
        assert b"Error" not in rest
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(main)
        os.close(child)


def test_top_into_a_pipe_exits_0_on_ctrl_c_mid_refresh(
    stalled_api: tuple[str, Callable[[], None]],
) -> None:
    url, stall = stalled_api
    proc = subprocess.Popen(
        [*RESTCP, "top", "-o", "json", "--interval", "0.1"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True,
        env=clean_env(RESTCP_URL=url),
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        first = json.loads(proc.stdout.readline())
        assert [(r["app"], r["id"]) for r in first["routes"]] == [("web", 1)]
        stall()
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=10) == 0
        errors = proc.stderr.read() if proc.stderr else ""
        assert errors == ""
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()
