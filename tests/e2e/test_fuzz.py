"""Generated requests against one node: whatever the method, path and body, the answer is
never a 5xx, every error is a problem document, and a refused request changes nothing."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.e2e.conftest import add_backend, assert_clean_log, create_route, serve_args, snapshot
from tests.helpers import Node, free_port_range


@pytest.fixture(scope="module")
def fuzzed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    lo, hi = free_port_range(8)
    node = Node(*serve_args(Path(tmp_path_factory.mktemp("fuzz")) / "restcp.db", lo, hi))
    try:
        node.wait_ready()
        create_route(node, "a")
        add_backend(node, "a", 1, 9)
        yield node
    finally:
        node.stop()


# Mostly the values that reach deep into a handler (a valid app and route id, near misses of
# both), sometimes anything at all.
known = st.sampled_from(
    ["a", "a", "1", "1", "0", "2", "-1", "01", "1.0", "9" * 25, "x" * 65, "%C2%B2", "%D9%A1",
     "..", "a%20b", "%00"]
)  # fmt: skip
segment = st.one_of(
    known, known, known, st.text(min_size=1, max_size=12).map(lambda s: quote(s, safe=""))
)
paths = st.one_of(
    st.tuples(segment).map(lambda p: f"/apps/{p[0]}/routes"),
    st.tuples(segment, segment).map(lambda p: f"/apps/{p[0]}/routes/{p[1]}"),
    st.tuples(segment, segment).map(lambda p: f"/apps/{p[0]}/routes/{p[1]}/backends"),
    st.tuples(segment, segment, segment).map(
        lambda p: f"/apps/{p[0]}/routes/{p[1]}/backends/{p[2]}"
    ),
    st.tuples(segment).map(lambda p: f"/{p[0]}"),
)
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=40),
    st.sampled_from(["127.0.0.1", "::1", "random", "round_robin", "0.0.0.0"]),
)
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3), max_leaves=6)
fields = st.sampled_from(
    ["ip", "port", "frontend_ip", "balance", "connect_timeout", "idle_timeout", "id", ""]
)
nasty = st.sampled_from(
    [
        "[" * 60_000,
        '{"port": ' + "9" * 5000 + "}",
        "NaN",
        '{"port": 1e400}',
        r'{"ip": "\ud800", "port": 80}',
        "",
    ]
)
bodies = st.one_of(
    st.none(),
    nasty,
    st.dictionaries(fields, values, max_size=4).map(json.dumps),
    values.map(json.dumps),
    st.binary(max_size=64),
)


@settings(
    max_examples=250,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(method=st.sampled_from(["GET", "PUT", "POST", "PATCH", "DELETE"]), path=paths, body=bodies)
def test_no_request_gets_a_5xx(fuzzed: Node, method: str, path: str, body: Any) -> None:
    before = snapshot(fuzzed)
    response = fuzzed.call(method, path, body)
    assert response.status < 500, (method, path, body, response.status, response.body)
    if response.status >= 400:
        assert response.headers["Content-Type"].startswith("application/problem+json")
        assert response.json()["status"] == response.status
        assert snapshot(fuzzed) == before


def test_fuzzed_node_logged_no_bug(fuzzed: Node) -> None:
    assert fuzzed.stop() == 0
    assert_clean_log(fuzzed)
