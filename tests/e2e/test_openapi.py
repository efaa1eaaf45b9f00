"""GET /openapi.json against the server it describes: every endpoint and method the server has
is in it and nothing else, and requests schemathesis generates from it (a bounded number per
operation) pass every check schemathesis has (its `--checks all`) and, when refused, change
nothing. tests/e2e/test_openapi_st.py runs the `st` command line itself, every phase (the
stateful one, which follows the document's links, included), on a node with tokens and on
one without."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from schemathesis.config import ChecksConfig, SchemathesisConfig

from restcp.api.app import MAX_ID
from restcp.api.endpoints import ENDPOINTS, METHODS
from restcp.api.openapi import build_spec
from restcp.api.schemas import is_app_id
from restcp.core.toxics import ToxicError, check_name
from tests.e2e import openapi_hooks
from tests.e2e.conftest import assert_clean_log, serve_args
from tests.e2e.test_auth import ADMIN, bearer, path_of
from tests.helpers import Node, free_port_range, http

# The paths of the event streams (see schema below).
STREAMS = r"/events$"
# Per operation; with ~20 operations this keeps the run well under a minute.
EXAMPLES = 15
# The node's frontend IPs, which its document lists for a new route.
FRONTEND_IPS = ("127.0.0.1",)


def stored(store: Path) -> Any:
    """Every row of the store, counters and cursors included: a refused request must not
    have moved anything (read from the file, so the cost does not grow with the apps that
    generated requests create)."""
    with closing(sqlite3.connect(store)) as db:
        return {
            table: db.execute(f"SELECT * FROM {table} ORDER BY 1, 2").fetchall()
            for (table,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
        }


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    STORE[:] = [Path(tmp_path_factory.mktemp("openapi")) / "restcp.db"]
    yield STORE[0]
    STORE.clear()


@pytest.fixture(scope="module")
def api_node(store: Path) -> Iterator[Node]:
    """A node with tokens on and small quotas, so generated requests reach those answers too."""
    lo, hi = free_port_range(10)
    node = Node(
        *serve_args(store, lo, hi),
        "--api-token", ADMIN,
        "--max-routes-per-app", "3",
        "--max-backends-per-route", "3",
        "--max-toxics-per-route", "3",
    )  # fmt: skip
    try:
        node.wait_ready()
        # Something to find (see flatmap_path_parameters).
        for app in ("web", "b"):
            assert node.call("PUT", f"/apps/{app}/routes", headers=bearer(ADMIN)).status == 201
            body = {"ip": "127.0.0.1", "port": 9}
            added = node.call("PUT", f"/apps/{app}/routes/1/backends", body, headers=bearer(ADMIN))
            assert added.status == 201
            assert node.call("POST", f"/apps/{app}/tokens", headers=bearer(ADMIN)).status == 201
        yield node
    finally:
        node.stop()


# The document as the node below serves it (test_the_served_document_is_the_generated_one):
# loaded at import, as schemathesis's lazy loading from a fixture fails on pytest 9. Its
# checks are schemathesis's defaults: every check it has (every_check_is_on).
# Schemathesis sends the admin token itself, as the document's bearer scheme, so that it
# can leave it out where it tests that a request without one is refused.
# The event streams are left out: they answer with a stream that does not end (or, to a
# request that does not accept one, 406: a header OpenAPI cannot require), which
# tests/e2e/test_stats_api.py reads.
schema = schemathesis.openapi.from_dict(
    build_spec(auth=True, frontend_ips=FRONTEND_IPS),
    config=SchemathesisConfig.from_dict({"auth": {"openapi": {"bearer": {"bearer": ADMIN}}}}),
).exclude(path_regex=STREAMS)
assert openapi_hooks.before_call  # registered on import: host names sent as localhost


def every_check_is_on() -> bool:
    """No configuration file turned a check off: the runs below are `--checks all`
    (max_response_time is a limit to set, not one of those checks)."""
    checks = schema.config.checks_config_for()
    names = [n for n in ChecksConfig.__dataclass_fields__ if n[0] != "_"]
    names.remove("max_response_time")
    return len(names) >= 14 and all(checks.get_by_name(name=n).enabled for n in names)


assert every_check_is_on()
IDS = ("route", "backend", "token", "toxic")
# The store file of the node under test, for the hook below (set by the store fixture).
STORE: list[Path] = []


def existing(context: schemathesis.HookContext) -> list[dict[str, int | str]]:
    """Ids (and toxic names) of app "web" that exist now, as path parameters. A DELETE never
    gets the lowest route, backend or token, nor a route's first toxic, so that later
    operations still find something."""
    with closing(sqlite3.connect(STORE[0])) as db:
        pairs = db.execute(
            "SELECT r.id, b.id FROM routes r LEFT JOIN backends b "
            "ON b.app = r.app AND b.route_id = r.id WHERE r.app = 'web' ORDER BY 1, 2"
        ).fetchall()
        tokens = [t for (t,) in db.execute("SELECT id FROM tokens WHERE app = 'web' ORDER BY 1")]
        toxics: dict[int, list[str]] = {}
        for route_id, name in db.execute(
            "SELECT route_id, name FROM toxics WHERE app = 'web' ORDER BY route_id, position"
        ):
            toxics.setdefault(route_id, []).append(name)
    if context.operation is not None and context.operation.method.upper() == "DELETE":
        path = context.operation.path
        if path.endswith("{route}"):
            pairs = [p for p in pairs if p[0] != pairs[0][0]] if pairs else []
        elif path.endswith("{backend}"):
            pairs = [p for p in pairs if p[1] is not None]
            pairs = [p for p in pairs if p[1] != min(b for r, b in pairs if r == p[0])]
        elif path.endswith("{toxic}"):
            toxics = {r: names[1:] for r, names in toxics.items()}
        tokens = tokens[1:]
    return [
        {"route": r, "backend": b or 1, "token": t, "toxic": x}
        for r, b in pairs or [(1, 1)]
        for t in tokens or [1]
        for x in toxics.get(r) or ["none"]
    ]


def valid_id(name: str, value: Any) -> bool:
    if name == "toxic":
        try:
            check_name(value)
        except (ToxicError, TypeError):
            return False
        return True
    return type(value) is int and 1 <= value <= MAX_ID


@schema.hook
def flatmap_path_parameters(
    context: schemathesis.HookContext, path_parameters: dict[str, Any] | None
) -> st.SearchStrategy[dict[str, Any] | None]:
    """Half the time, point a valid path at something stored (in app "web"): random app
    names and ids almost never exist, and answers about things that do (200s, conflicts,
    quotas) need checking as much as 404s."""
    if not path_parameters:
        return st.just(path_parameters)
    app = path_parameters.get("app")
    valid = isinstance(app, str) and is_app_id(app)
    ids = {n: path_parameters[n] for n in IDS if n in path_parameters}
    # Only a path the document calls valid: steering an invalid one (a negative case) to
    # something stored would make it valid, and its acceptance look like a bug.
    valid = valid and all(valid_id(n, i) for n, i in ids.items())
    if not valid:
        return st.just(path_parameters)

    def steer(i: int) -> dict[str, Any]:
        # Read when drawn, not when the strategy is built: the store changes as cases run.
        # The draw itself (an index) has one shape always, as Hypothesis requires.
        choices = existing(context)
        ids = choices[i % len(choices)]
        given = {n: ids[n] for n in IDS if n in path_parameters}
        return {**path_parameters, "app": "web", **given}

    return st.one_of(st.just(path_parameters), st.integers(0, 63).map(steer))


@schema.parametrize()
@settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    suppress_health_check=list(HealthCheck),
)
def test_generated_requests_conform_and_refusals_change_nothing(
    case: schemathesis.Case, api_node: Node, store: Path
) -> None:
    before = stored(store)
    response = case.call(base_url=api_node.api, timeout=10)
    case.validate_response(response)
    if response.status_code >= 400:
        assert stored(store) == before, (case.method, case.formatted_path, response.text)


def test_the_served_document_is_the_generated_one(api_node: Node) -> None:
    # Open to anyone: no token.
    response = http("GET", api_node.api + "/openapi.json")
    assert response.status == 200
    assert response.headers["Content-Type"].startswith("application/json")
    assert response.json() == build_spec(auth=True, frontend_ips=FRONTEND_IPS)


def test_every_method_of_every_path_is_documented_or_refused(api_node: Node) -> None:
    """The document cannot drift from the server: what it lists answers, what it does not
    list is a 405 with an Allow header that lists exactly the documented methods."""
    spec = build_spec(auth=True, frontend_ips=FRONTEND_IPS)
    for endpoint in ENDPOINTS:
        documented = {m.upper() for m in spec["paths"][endpoint.path]}
        path = path_of(endpoint, "a", 999)
        for method in METHODS:
            response = api_node.call(method, path, headers=bearer(ADMIN))
            if method in documented:
                assert response.status != 405, (method, path, response)
            else:
                assert response.status == 405, (method, path, response)
                allowed = {m.strip() for m in response.headers["Allow"].split(",")}
                assert allowed - {"HEAD"} == documented, (path, allowed)


def test_the_node_logged_no_bug(api_node: Node) -> None:
    assert api_node.stop() == 0
    assert_clean_log(api_node)
