"""The seed README's commands, run literally with curl; only the port numbers differ."""

from __future__ import annotations

import json
import shlex
import subprocess

from tests.e2e.conftest import port_range, seed_fields
from tests.e2e.peers import Backend, assert_refused, connect, echo, recv_exactly
from tests.helpers import Node


def curl(command: str) -> bytes:
    argv = shlex.split(command)
    assert argv[0] == "curl"
    done = subprocess.run(argv, capture_output=True, timeout=30, check=False)
    assert done.returncode == 0, done.stderr
    return done.stdout


def type_line(port: int, line: bytes) -> bytes:
    """What a telnet user sees after typing ``line`` into the route."""
    with connect(port) as sock:
        sock.sendall(line)
        return recv_exactly(sock, len(line))


def test_readme_commands(node: Node) -> None:
    lo, _ = port_range(node)
    api = f"http://localhost:{node.api_port}"
    with Backend(echo) as first, Backend(echo) as second:
        out = curl(f"curl -XPUT {api}/apps/123/routes")
        assert out.startswith(f'{{"id": 1, "url": "tcp://127.0.0.1:{lo}/"'.encode()), out

        out = curl(
            f"""curl -XPUT -d '{{"ip": "127.0.0.1", "port": {first.port}}}' """
            f"{api}/apps/123/routes/1/backends"
        )
        # The seed's answer, and a newline so that the shell's prompt starts a line.
        assert out == b'{"id": 1}\n'

        assert type_line(lo, b"hello through restcp\r\n") == b"hello through restcp\r\n"
        assert (first.accepted, second.accepted) == (1, 0)

        out = curl(
            f"""curl -XPOST -d '{{"ip": "127.0.0.1", "port": {second.port}}}' """
            f"{api}/apps/123/routes/1/backends/1"
        )
        assert seed_fields(json.loads(out)) == {"ip": "127.0.0.1", "port": second.port, "id": 1}
        assert type_line(lo, b"and again\r\n") == b"and again\r\n"
        assert (first.accepted, second.accepted) == (1, 1)

        out = curl(f"curl -XGET {api}/apps/123/routes/1/backends")
        assert out.startswith(f'[{{"ip": "127.0.0.1", "port": {second.port}'.encode()), out

        out = curl(f"curl -XGET {api}/apps/123/routes")
        assert out.startswith(
            f'[{{"id": 1, "url": "tcp://127.0.0.1:{lo}/", '
            f'"backends": [{{"ip": "127.0.0.1", "port": {second.port}'.encode()
        ), out

        assert curl(f"curl -XDELETE {api}/apps/123/routes/1/backends/1") == b""
        assert json.loads(curl(f"curl -XGET {api}/apps/123/routes/1/backends")) == []

        assert curl(f"curl -XDELETE {api}/apps/123/routes/1") == b""
        assert_refused(lo)
        assert json.loads(curl(f"curl -XGET {api}/apps/123/routes")) == []
