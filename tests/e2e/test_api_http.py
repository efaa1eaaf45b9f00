"""The API at the HTTP level, as clients that misbehave meet it: a request aiohttp cannot
parse, a body cut short, a head or a body trickled a byte at a time. Each is the client's
mistake: a problem document (when anyone is left to read it) that quotes nothing of the
request, and at most an INFO line without a traceback in the log, never an ERROR. And what a
terminal user sees of every answer: a newline at the end, and ``Server: restcp``.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator

import pytest

from tests.e2e.conftest import serve_args, wait_until
from tests.e2e.peers import log_count
from tests.helpers import Node, free_port_range

# Short, so that the trickling clients below are cut off within a test's patience.
TIMEOUT = 1.0
# An event loop runs a timer up to its clock's resolution early (asyncio: 1 ms or so).
EARLY = 0.05
HOST = b"Host: 127.0.0.1\r\n"
# Echoed back, this would be markup in the answer (and a browser that sniffed it...).
MARKUP = b"<script>alert(1)</script>"


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    lo, hi = free_port_range()
    store = tmp_path_factory.mktemp("http") / "restcp.db"
    node = Node(*serve_args(store, lo, hi, "--api-request-timeout", str(TIMEOUT)))
    try:
        yield node.wait_ready()
    finally:
        node.stop()


def exchange(node: Node, raw: bytes, timeout: float = 5.0) -> bytes:
    """Send ``raw`` on a new connection and read until the node closes it."""
    with socket.create_connection(("127.0.0.1", node.api_port), timeout=timeout) as sock:
        sock.sendall(raw)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
        return answer


def parse(answer: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = answer.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.strip().lower(): v.strip() for k, _, v in (li.partition(":") for li in lines[1:])}
    return status, headers, body


def assert_problem(answer: bytes, status: int) -> dict[str, object]:
    got, headers, body = parse(answer)
    assert got == status, answer
    assert headers["content-type"].startswith("application/problem+json"), answer
    assert headers["server"] == "restcp", answer
    assert body.endswith(b"}\n"), answer
    problem: dict[str, object] = json.loads(body)
    assert problem["status"] == status
    assert isinstance(problem["detail"], str)
    assert problem["detail"]
    return problem


MALFORMED = [
    ("url-over-8190", b"GET /apps/" + b"a" * 9000 + b" HTTP/1.1\r\n" + HOST + b"\r\n"),
    ("header-over-8190", b"GET /apps HTTP/1.1\r\n" + HOST + b"X-Long: " + MARKUP * 400
     + b"\r\n\r\n"),
    ("garbage", b"GARBAGE\r\n\r\n"),
    ("garbage-markup", MARKUP + b" / HTTP/1.1\r\n\r\n"),
    ("content-length-negative", b"PUT /apps/x/routes HTTP/1.1\r\n" + HOST
     + b"Content-Length: -1\r\n\r\n"),
    ("content-length-markup", b"PUT /apps/x/routes HTTP/1.1\r\n" + HOST
     + b"Content-Length: " + MARKUP + b"\r\n\r\n"),
    ("bad-chunk", b"PUT /apps/x/routes HTTP/1.1\r\n" + HOST
     + b"Transfer-Encoding: chunked\r\n\r\nzz\r\n"),
    ("too-many-headers", b"GET /apps HTTP/1.1\r\n" + HOST
     + b"".join(b"X-%d: 1\r\n" % i for i in range(200)) + b"\r\n"),
    ("tls-hello", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 40),
]  # fmt: skip


@pytest.mark.parametrize("raw", [raw for _, raw in MALFORMED], ids=[n for n, _ in MALFORMED])
def test_a_request_that_does_not_parse_gets_a_problem_that_quotes_nothing(
    node: Node, raw: bytes
) -> None:
    answer = exchange(node, raw)
    problem = assert_problem(answer, 400)
    assert b"script" not in answer
    assert b"aaaa" not in answer
    assert "Got more than" not in str(problem["detail"])


def test_a_body_cut_short_is_the_clients_doing(node: Node) -> None:
    """Content-Length: 100, eight bytes, and the client is gone: nobody is left to answer,
    and the log says so at debug level, not as a bug."""
    gone = "closed its connection before its request body was complete"
    for count, end in enumerate((socket.SHUT_WR, socket.SHUT_RDWR), 1):
        with socket.create_connection(("127.0.0.1", node.api_port), timeout=5) as sock:
            sock.sendall(
                b"PUT /apps/zz/routes HTTP/1.1\r\n" + HOST + b'Content-Length: 100\r\n\r\n{"port":'
            )
            sock.shutdown(end)
        wait_until(lambda n=count: log_count(node, gone) == n, "the node noticed")
    assert node.call("GET", "/apps/zz/routes").status == 404


def test_a_head_trickled_a_byte_at_a_time_is_cut_off_at_the_timeout(node: Node) -> None:
    """Slowloris: each byte comes well within the timeout, so a timer that restarted per
    byte would wait for ever; the head's deadline counts from the connection."""
    head = b"GET /apps HTTP/1.1\r\n" + HOST + b"X-Slow: " + b"z" * 100
    with socket.create_connection(("127.0.0.1", node.api_port), timeout=5) as sock:
        start = time.monotonic()
        sock.settimeout(TIMEOUT / 4)
        answer = None
        for byte in head:
            try:
                sock.sendall(bytes([byte]))
                answer = sock.recv(65536)
            except TimeoutError:
                continue  # nothing yet: the next byte
            except ConnectionResetError:
                answer = b""
            break
        elapsed = time.monotonic() - start
    # Closed without an answer (as nginx does): no request was made that could be answered.
    assert answer == b"", answer
    assert TIMEOUT - EARLY <= elapsed < TIMEOUT + 2, elapsed


def test_a_body_trickled_a_byte_at_a_time_gets_408(node: Node) -> None:
    with socket.create_connection(("127.0.0.1", node.api_port), timeout=5) as sock:
        sock.sendall(b"PUT /apps/slow/routes HTTP/1.1\r\n" + HOST + b"Content-Length: 100\r\n\r\n")
        start = time.monotonic()
        sock.settimeout(TIMEOUT / 4)
        answer = b""
        for byte in b'{"port": ' + b" " * 90:
            try:
                sock.sendall(bytes([byte]))
                answer += sock.recv(65536)
            except TimeoutError:
                continue
            if answer.endswith(b"}\n"):
                break
        elapsed = time.monotonic() - start
    problem = assert_problem(answer, 408)
    assert "api-request-timeout" in str(problem["detail"])
    assert TIMEOUT - EARLY <= elapsed < TIMEOUT + 2, elapsed
    assert node.call("GET", "/apps/slow/routes").status == 404


def test_every_answer_ends_with_a_newline_and_names_restcp_only(node: Node) -> None:
    created = node.call("PUT", "/apps/nl/routes")
    added = node.call("PUT", "/apps/nl/routes/1/backends", {"ip": "127.0.0.1", "port": 9})
    for response in (
        created,
        added,
        node.call("GET", "/apps"),
        node.call("GET", "/healthz"),
        node.call("GET", "/openapi.json"),
        node.call("GET", "/nowhere"),
        node.call("PATCH", "/apps"),
        node.call("PUT", "/apps/nl/routes/1/backends", "{"),
    ):
        assert response.body.endswith(b"\n"), response
        json.loads(response.body)
        assert response.headers["Server"] == "restcp", response.headers
    assert added.body == b'{"id": 1}\n'


def test_an_expectation_other_than_100_continue_is_ignored(node: Node) -> None:
    """RFC 9110 lets a server ignore an expectation it does not know; aiohttp would refuse it
    with a 417 that quotes it back, which no endpoint documents. 100-continue is met."""
    odd = {"Expect": "<b>hello</b>"}
    assert node.call("GET", "/apps", headers=odd).status == 200
    created = node.call("PUT", "/apps/expect/routes", {}, headers={"Expect": "100-continue"})
    assert created.status == 201
    # On a path that does not exist, aiohttp answers before any handler: still a problem.
    answer = exchange(node, b"GET /nowhere HTTP/1.1\r\n" + HOST + b"Expect: <b>x</b>\r\n"
                      b"Connection: close\r\n\r\n")  # fmt: skip
    assert_problem(answer, 417)
    assert b"<b>" not in answer


def test_the_node_logged_no_error(node: Node) -> None:
    assert node.stop() == 0
    for line in node.lines:
        assert " ERROR " not in line, "\n".join(node.lines)
        assert "Traceback" not in line, "\n".join(node.lines)
    refused = [line for line in node.lines if "refused a request from" in line]
    assert len(refused) >= len(MALFORMED), "\n".join(node.lines)
    # Nothing of the requests reached the log either.
    assert not any("script" in line for line in node.lines)
