"""The command line: help that explains, bad flags that say what is wrong (and exit
non-zero without a traceback), and a RESTCP_* variable for every flag."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.e2e.conftest import StartNode, create_route
from tests.e2e.peers import assert_refused, connect, held_port
from tests.helpers import free_port_range

RESTCP = [sys.executable, "-m", "restcp"]


def run(
    args: list[str], cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("RESTCP_")}
    # Were a bad setting accepted, the node would start: keep it off the default port.
    clean["RESTCP_API"] = "127.0.0.1:0"
    return subprocess.run(
        [*RESTCP, *args],
        capture_output=True,
        text=True,
        timeout=15,
        cwd=cwd,
        env={**clean, **(env or {})},
        check=False,
    )


def test_help_explains_every_flag_and_its_variable(tmp_path: Path) -> None:
    top = run(["--help"], tmp_path)
    assert top.returncode == 0, top.stderr
    assert "serve" in top.stdout
    assert "curl -XPUT" in top.stdout
    serve = run(["serve", "--help"], tmp_path)
    assert serve.returncode == 0, serve.stderr
    flags = set(re.findall(r"^\s+(--[a-z-]+)", serve.stdout, re.MULTILINE)) - {"--help"}
    assert {"--api", "--store", "--frontend-ip", "--port-range", "--drain-timeout"} <= flags
    text = " ".join(serve.stdout.split())  # argparse wraps lines anywhere
    for flag in flags:
        assert f"RESTCP_{flag[2:].upper().replace('-', '_')}" in text, flag
    version = run(["--version"], tmp_path)
    assert (version.returncode, version.stdout.startswith("restcp ")) == (0, True)


def test_help_and_usage_name_what_a_user_may_type(tmp_path: Path) -> None:
    """The store's help names every kind of URL; no usage message names the internal
    command a worker process is started with (which still parses: test_workers.py), and an
    unknown command is answered with those a user may type."""
    serve = run(["serve", "--help"], tmp_path)
    text = " ".join(serve.stdout.split())
    for scheme in ("sqlite:///", "memory://", "redis://"):
        assert scheme in text, scheme
    for argv in (["bogus"], [], ["--help"], ["serve", "--bogus"], ["cluster"], ["_worke"]):
        done = run(argv, tmp_path)
        out = done.stdout + done.stderr
        assert "usage: restcp" in out.lower(), (argv, out)
        assert "_worker" not in out, (argv, out)
    visible = (
        "'serve', 'cluster', 'apps', 'routes', 'backends', 'toxics', 'tokens', 'certificates', "
        "'nodes', 'status', 'top', 'completion'."
    )
    assert f"choose from {visible}" in run(["bogus"], tmp_path).stderr


BAD_SETTINGS = [
    ("port-range-reversed", ["--port-range", "5-1"], {}, "--port-range"),
    ("port-range-zero", ["--port-range", "0-10"], {}, "--port-range"),
    ("port-range-words", ["--port-range", "low-high"], {}, "--port-range"),
    ("api-nonsense", ["--api", "nonsense"], {}, "--api"),
    ("api-port-too-big", ["--api", "127.0.0.1:70000"], {}, "--api"),
    ("api-unresolvable", ["--api", "no-such-host.invalid:0"], {}, "--api"),
    ("frontend-ip-name", ["--frontend-ip", "localhost"], {}, "--frontend-ip"),
    ("drain-negative", ["--drain-timeout", "-1"], {}, "--drain-timeout"),
    ("resync-nan", ["--resync-interval", "nan"], {}, "--resync-interval"),
    ("log-level", ["--log-level", "loud"], {}, "--log-level"),
    ("loop", ["--loop", "gevent"], {}, "--loop"),
    ("unknown-flag", ["--colour"], {}, "No such option '--colour'"),
    ("env-port-range", [], {"RESTCP_PORT_RANGE": "5-1"}, "--port-range"),
    ("env-frontend-ip", [], {"RESTCP_FRONTEND_IP": "127.0.0.1,nope"}, "nope"),
    ("env-api", [], {"RESTCP_API": "nonsense"}, "--api"),
    ("env-log-level", [], {"RESTCP_LOG_LEVEL": "loud"}, "RESTCP_LOG_LEVEL"),
    ("env-loop", [], {"RESTCP_LOOP": "gevent"}, "RESTCP_LOOP"),
    ("env-connect-timeout", [], {"RESTCP_CONNECT_TIMEOUT": "soon"}, "--connect-timeout"),
    ("store-scheme", ["--store", "postgres://db/restcp"], {}, "store"),
    ("seed-negative", ["--seed", "-1"], {}, "--seed"),
    ("seed-too-big", ["--seed", str(1 << 63)], {}, "--seed"),
    ("env-seed", [], {"RESTCP_SEED": "lucky"}, "RESTCP_SEED"),
]


@pytest.mark.parametrize(
    ("args", "env", "mentions"), [pytest.param(*case[1:], id=case[0]) for case in BAD_SETTINGS]
)
def test_bad_setting_is_refused_clearly(
    tmp_path: Path, args: list[str], env: dict[str, str], mentions: str
) -> None:
    done = run(["serve", *args], tmp_path, env)
    assert done.returncode != 0
    assert mentions in done.stderr, done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    assert " ready api=" not in done.stderr


def test_api_port_taken_is_refused_clearly(tmp_path: Path) -> None:
    with held_port() as port:
        done = run(["serve", "--api", f"127.0.0.1:{port}"], tmp_path)
    assert done.returncode != 0
    assert "cannot start" in done.stderr, done.stderr
    assert "in use" in done.stderr.lower(), done.stderr
    assert "Traceback" not in done.stderr, done.stderr


def test_store_that_is_not_a_database_is_refused_clearly(tmp_path: Path) -> None:
    (tmp_path / "notes.db").write_text("not a database, whatever its name says\n" * 100)
    done = run(["serve", "--store", "sqlite:///notes.db"], tmp_path)
    assert done.returncode != 0
    assert "cannot start" in done.stderr, done.stderr
    assert "notes.db" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr, done.stderr


def test_every_setting_from_the_environment(tmp_path: Path, start_node: StartNode) -> None:
    lo, hi = free_port_range()
    env = {
        "RESTCP_API": "127.0.0.1:0",
        "RESTCP_STORE": f"sqlite:///{tmp_path}/env.db",
        "RESTCP_PORT_RANGE": f"{lo}-{hi}",
        "RESTCP_FRONTEND_IP": "127.0.0.2, 127.0.0.1,0::1",
        "RESTCP_CONNECT_TIMEOUT": "2.5",
        "RESTCP_IDLE_TIMEOUT": "0",
        "RESTCP_LOG_LEVEL": "DEBUG",
        "RESTCP_LOOP": "asyncio",
        "RESTCP_RESYNC_INTERVAL": "0.5",
        "RESTCP_DRAIN_TIMEOUT": "1",
    }
    # A flag beats its variable.
    node = start_node("--idle-timeout", "7", env=env, cwd=tmp_path)
    assert (tmp_path / "env.db").exists()
    assert any("Using selector" in line for line in node.lines), "asyncio's own debug line"

    route = create_route(node, "app")
    assert route["url"] == f"tcp://127.0.0.2:{lo}/"
    assert (route["connect_timeout"], route["idle_timeout"]) == (2.5, 7.0)
    connect(lo, host="127.0.0.2").close()
    assert_refused(lo)  # 127.0.0.1:lo is not this route's address

    second = create_route(node, "app", frontend_ip="127.0.0.1")
    assert second["url"] == f"tcp://127.0.0.1:{lo}/"  # each address has its own ports
    connect(lo).close()
    v6 = create_route(node, "app", frontend_ip="0:0:0::1")  # any spelling of ::1
    assert v6["url"] == f"tcp://[::1]:{lo}/"
    connect(lo, host="::1").close()
    refused = node.call("PUT", "/apps/app/routes", {"frontend_ip": "127.0.0.3"})
    assert refused.status in (400, 422)
    assert "127.0.0.3" in refused.json()["detail"]
    assert node.stop() == 0
