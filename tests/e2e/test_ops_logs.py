"""Log output of a real node: JSON lines a shipper can parse, and one event per happening.

A log pipeline splits stderr on newlines and parses each line; a line that is not a JSON
object, an access record with a wrong byte count, or a health transition logged twice (or
not at all) is what these tests look for.
"""

from __future__ import annotations

import json
import re
import socket
from pathlib import Path
from typing import Any

from tests.e2e.conftest import StartNode, create_route, serve_args, wait_until
from tests.e2e.peers import Backend, attach, connect, echo, recv_exactly
from tests.e2e.test_ops_metrics import (
    Acceptor,
    Scrape,
    doubler,
    health_one_hot,
    start_json_node,
)
from tests.helpers import Node, free_port_range

ISO_UTC = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")
TEXT_LINE = re.compile(
    r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (DEBUG|INFO|WARNING|ERROR|CRITICAL) restcp[\w.]* "
)


def parsed(node: Node) -> list[dict[str, Any]]:
    """Every stderr line so far, each of which must be one JSON object with the core keys."""
    records = []
    for line in list(node.lines):
        record = json.loads(line)  # one object per line: a second one would not parse
        assert isinstance(record, dict), line
        assert ISO_UTC.fullmatch(record["time"]), line
        assert record["level"] in ("debug", "info", "warning", "error", "critical"), line
        assert record["logger"].startswith("restcp"), line
        assert isinstance(record["message"], str), line
        records.append(record)
    return records


def events(node: Node, kind: str, **match: Any) -> list[dict[str, Any]]:
    return [
        r
        for r in parsed(node)
        if r.get("event") == kind and all(r.get(k) == v for k, v in match.items())
    ]


def address_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"{host}:{port}"


def json_node(start_node: StartNode, tmp_path: Path) -> Node:
    lo, hi = free_port_range()
    return start_json_node(start_node, *serve_args(tmp_path / "j.db", lo, hi))


def test_every_line_is_json_and_a_connection_is_one_event(
    start_node: StartNode, tmp_path: Path
) -> None:
    node = json_node(start_node, tmp_path)
    port = create_route(node, "logs")["port"]
    with Backend(doubler) as backend:
        attach(node, "logs", 1, backend.port)
        with connect(port) as sock:
            client = address_of(sock)
            sock.sendall(b"a" * 1000)
            assert recv_exactly(sock, 2000) == b"a" * 2000
            sock.sendall(b"b" * 24)
            assert recv_exactly(sock, 48) == b"b" * 48
            sock.shutdown(socket.SHUT_WR)
            assert sock.recv(1) == b""
        wait_until(lambda: bool(events(node, "connection", client=client)), "access event")
        # And a client refused for want of a backend is an event as well.
        assert node.call("DELETE", "/apps/logs/routes/1/backends/1").status == 204
        with connect(port) as sock:
            refused_client = address_of(sock)
            assert sock.recv(1) == b""
        wait_until(lambda: bool(events(node, "connection", client=refused_client)), "refusal")
    [line] = events(node, "connection", client=client)
    assert line["logger"] == "restcp.access"
    assert line["app"] == "logs"
    assert line["route"] == 1
    assert line["backend"] == 1
    assert line["backend_addr"] == f"127.0.0.1:{backend.port}"
    assert line["bytes_up"] == 1024
    assert line["bytes_down"] == 2048
    assert line["end"] == "closed"
    assert isinstance(line["duration"], float)
    assert 0 <= line["duration"] < 10
    # The same facts in the message, for whoever reads the line without a parser.
    assert "bytes_up=1024 bytes_down=2048" in line["message"]
    [refusal] = events(node, "connection", client=refused_client)
    assert (refusal["backend"], refusal["backend_addr"]) == (None, None)
    assert (refusal["bytes_up"], refusal["bytes_down"], refusal["end"]) == (0, 0, "no_backend")
    # Lines of other kinds (startup, listening, the API) are JSON too, and on shutdown.
    assert node.stop() == 0
    records = parsed(node)
    messages = [r["message"] for r in records]
    assert any(m.startswith("ready api=") for m in messages)
    assert messages[-1] == "stopped"
    assert len(events(node, "connection")) == 2


def test_each_health_transition_is_logged_once(start_node: StartNode, tmp_path: Path) -> None:
    node = json_node(start_node, tmp_path)
    check = {"interval": 0.2, "timeout": 1, "rise": 2, "fall": 2}
    create_route(node, "hl", health_check=check)
    first = Acceptor()
    try:
        attach(node, "hl", 1, first.port)
        wait_until(lambda: health_one_hot(node, "hl", 1, 1, "up"), "up", deadline=15)
    finally:
        first.close()
    wait_until(lambda: health_one_hot(node, "hl", 1, 1, "down"), "down", deadline=15)
    # The same address again: down -> up.
    again = Acceptor(port=first.port)
    try:
        wait_until(lambda: health_one_hot(node, "hl", 1, 1, "up"), "up again", deadline=15)
        # Several more checks with nothing changing must log nothing more.
        checks = checks_of(node, "hl")
        wait_until(lambda: checks_of(node, "hl") >= checks + 5, "five more checks")
    finally:
        again.close()
    moves = [(e["from"], e["to"]) for e in events(node, "health", app="hl")]
    assert moves == [("unknown", "up"), ("up", "down"), ("down", "up")]
    for event in events(node, "health", app="hl"):
        assert event["logger"] == "restcp.health"
        assert (event["route"], event["backend"]) == (1, 1)
        assert event["backend_addr"] == f"127.0.0.1:{first.port}"
        assert event["reason"]
        assert event["level"] == ("warning" if event["to"] == "down" else "info")


def checks_of(node: Node, app: str) -> float:
    value = Scrape(node).value(
        "restcp_health_check_duration_seconds_count", app=app, route=1, backend=1
    )
    return value or 0.0


def test_text_is_the_default(node: Node) -> None:
    port = create_route(node, "txt")["port"]
    with Backend(echo) as backend:
        attach(node, "txt", 1, backend.port)
        with connect(port) as sock:
            client = address_of(sock)
            sock.sendall(b"hello")
            assert recv_exactly(sock, 5) == b"hello"
            sock.shutdown(socket.SHUT_WR)
            assert sock.recv(1) == b""
        wait_until(lambda: any(f"client={client}" in line for line in node.lines), "access line")
    for line in node.lines:
        assert TEXT_LINE.match(line), line
        assert not line.startswith("{"), line
    [access] = [line for line in node.lines if f"client={client}" in line]
    assert " INFO restcp.access app=txt route=1 " in access
    assert f"backend=1/127.0.0.1:{backend.port} bytes_up=5 bytes_down=5 " in access
    assert access.endswith(" end=closed"), access
