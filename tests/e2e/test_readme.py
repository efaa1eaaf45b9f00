"""The README's commands, as a newcomer types them: read from README.md itself, so that the
README cannot say what does not work. Only addresses change (the node's API, ports free now);
tests/e2e/test_readme_curl.py runs the seed's own commands."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.cli import clean_env
from tests.e2e.conftest import StartNode, free_port_outside, port_range, serve_args, wait_until
from tests.helpers import Node, free_port_range, tcp_states

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"


def block(heading: str, index: int = 0) -> list[str]:
    """The lines of the ``index``-th fenced code block of README.md's section ``heading``,
    joined where a shell would join them, without blank lines and comment lines."""
    text = README.read_text()
    section = text[text.index(f"\n## {heading}\n") :]
    section = section[: section.find("\n## ", 1)]
    code = re.findall(r"```\w*\n(.*?)```", section, re.DOTALL)[index]
    lines = [line.strip() for line in code.replace("\\\n", " ").splitlines()]
    return [line for line in lines if line and not line.startswith("#")]


def commands(lines: list[str]) -> list[str]:
    """A console block's commands (``$ ...``), without their trailing comments."""
    return [line[2:] for line in lines if line.startswith("$ ")]


def local(command: str, node: Node, **ports: int) -> str:
    """``command`` pointed at ``node``'s API, with each README port replaced."""
    command = command.replace("http://localhost:8001", node.api)
    for readme_port, port in ports.items():
        command = re.sub(rf"\b{readme_port[1:]}\b", str(port), command)
    return command


def curl(command: str) -> bytes:
    """Run a README curl line; an HTTP error status fails it (curl's --fail-with-body)."""
    argv = shlex.split(command)
    assert argv[0] == "curl", command
    done = subprocess.run(
        [*argv, "--silent", "--show-error", "--fail-with-body"],
        capture_output=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 0, (command, done.stdout, done.stderr)
    return done.stdout


@pytest.fixture
def checkout(tmp_path: Path) -> Path:
    """The project as a newcomer's clone has it: every file git knows (or would add)."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT, capture_output=True, check=True,
    ).stdout  # fmt: skip
    clone = tmp_path / "restcp"
    for name in filter(None, listed.decode().split("\0")):
        source = ROOT / name
        if source.is_file():
            (clone / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, clone / name)
    return clone


def newcomer_env() -> dict[str, str]:
    """The environment of a shell that has uv (so that the set-up needs no download) but no
    restcp: none of this test run's virtual environment."""
    uv = os.environ.get("UV") or shutil.which("uv")
    assert uv is not None, "uv is needed to set up the clone"
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    env = {k: v for k, v in env.items() if not k.startswith("UV_PROJECT")}
    paths = [p for p in env.get("PATH", "").split(os.pathsep) if not p.startswith(str(ROOT))]
    env["PATH"] = os.pathsep.join([str(Path(uv).parent), *paths])
    return env


@pytest.mark.slow
def test_after_the_set_up_restcp_runs_by_name(checkout: Path) -> None:
    env = newcomer_env()
    assert shutil.which("restcp", path=env["PATH"]) is None
    serve = subprocess.run(
        ["./scripts/serve", "--help"], cwd=checkout, env=env,
        capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert serve.returncode == 0, serve.stderr
    assert "Usage: restcp serve" in serve.stdout
    assert ".venv/bin/restcp" in serve.stderr, serve.stderr
    lines = block("Two commands", 1)
    assert any(line.startswith("restcp ") for line in lines), lines
    # The README's lines, in one shell, as typed.
    script = "set -e\n" + "\n".join(line.split("  #")[0] for line in lines)
    done = subprocess.run(
        ["bash", "-c", script], cwd=checkout, env=env,
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, (script, done.stdout, done.stderr)
    assert "Usage: restcp" in done.stdout
    assert "Usage: restcp serve" in done.stdout
    assert "restcp 0." in done.stdout


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for proc in started:
        if proc.poll() is None:
            proc.terminate()
        proc.wait(timeout=10)
        for stream in (proc.stdin, proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()


def test_the_original_example_runs_on_what_restcp_needs(
    node: Node, processes: list[subprocess.Popen[bytes]]
) -> None:
    """Python and curl only: no ncat, no telnet (the original's)."""
    lines = commands(block("The original example"))
    assert [line.split()[0] for line in lines] == ["curl", "curl", "python3", "curl"], lines
    lo, _ = port_range(node)
    backend_port = free_port_range(1)[0]
    ports = {"_10000": lo, "_8888": backend_port}
    route = json.loads(curl(local(lines[0], node, **ports)))
    assert route["port"] == lo
    assert json.loads(curl(local(lines[1], node, **ports))) == {"id": 1}

    backend = subprocess.Popen(
        shlex.split(local(lines[2], node, **ports)),
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    processes.append(backend)
    # Listening: a connection to see would be the one connection it serves.
    wait_until(lambda: "LISTEN" in tcp_states(backend.pid, backend_port), "the backend listens")
    client = subprocess.Popen(
        shlex.split(local(lines[3], node, **ports)),
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    processes.append(client)
    assert client.stdin is not None
    assert client.stdout is not None
    typed = b"hello through restcp\n"
    client.stdin.write(typed)
    client.stdin.flush()
    assert client.stdout.read(len(typed)) == typed
    client.stdin.close()


def assert_toured(node: Node, asked: int) -> None:
    """The state the tour leaves: the round-robin route it created is the one its backends
    went to."""
    routes = node.call("GET", "/apps/web/routes").json()
    assert [(r["id"], r["port"], r["balance"]) for r in routes] == [(2, asked, "round_robin")]
    assert [(b["id"], b["ip"]) for b in routes[0]["backends"]] == [(1, "10.0.0.7")]
    assert routes[0]["idle_timeout"] == 600


def test_the_tour_runs_as_written(node: Node) -> None:
    lo, hi = port_range(node)
    asked = free_port_outside(lo, hi)
    lines = block("A short tour")
    assert all(line.startswith("curl ") for line in lines), lines
    for line in lines:
        curl(local(line, node, _15000=asked))
    assert_toured(node, asked)


def test_the_tour_with_the_cli_runs_as_written_and_does_what_curl_did(node: Node) -> None:
    """The README's second tour, step for step the first with `restcp` commands: the same
    state at its end."""
    lo, hi = port_range(node)
    asked = free_port_outside(lo, hi)
    lines = block("A short tour", 1)
    curls = block("A short tour")
    assert all(line.startswith("restcp ") for line in lines), lines
    # Step for step: each change of the one is a change of the other.
    changes = [line for line in lines if not {"list", "status"} & set(line.split())]
    assert len(changes) == len([line for line in curls if "-X" in line]), (changes, curls)
    # `restcp` by name, as the README's reader has it on PATH after the set-up.
    env = clean_env(RESTCP_URL=node.api)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    for line in lines:
        done = subprocess.run(
            shlex.split(local(line, node, _15000=asked)), env=env,
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert done.returncode == 0, (line, done.stdout, done.stderr)
        assert done.stderr == "", (line, done.stderr)
    assert_toured(node, asked)


def test_the_faults_blocks_run_as_written_and_do_the_same(
    node: Node, start_node: StartNode, tmp_path: Path
) -> None:
    """The README's toxics with curl on one node, and with `restcp` on another: each runs,
    and route 1 ends with the same toxics on both (and up again after its down and up)."""
    lo, hi = free_port_range()
    other = start_node(*serve_args(tmp_path / "other.db", lo, hi))
    curls = block("Faults: toxics")
    lines = block("Faults: toxics", 1)
    assert all(line.startswith("curl ") for line in curls), curls
    assert all(line.startswith("restcp ") for line in lines), lines
    for each in (node, other):
        assert each.call("PUT", "/apps/web/routes").status == 201
    for line in curls:
        curl(local(line, node))
    env = clean_env(RESTCP_URL=other.api)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    for line in lines:
        done = subprocess.run(
            shlex.split(line), env=env, capture_output=True, text=True, timeout=60, check=False
        )
        assert done.returncode == 0, (line, done.stdout, done.stderr)
        assert done.stderr == "", (line, done.stderr)
    toxics = [each.call("GET", "/apps/web/routes/1/toxics").json() for each in (node, other)]
    assert toxics[0] == toxics[1]
    assert [(t["name"], t["toxicity"], t["attributes"]) for t in toxics[1]] == [
        ("reset_peer_downstream", 0.5, {"timeout": 1000})
    ]
    assert other.call("GET", "/apps/web/routes/1").json()["enabled"] is True
