"""The resource commands against a real `restcp serve`: each command's table, its JSON and
YAML (the API's own answer, field for field), what each change did (read back through the
API itself), the exit codes (0 done, 1 refused with the problem on stderr, 2 usage) and
the configuration by flags and RESTCP_URL / RESTCP_TOKEN."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from pydantic import BaseModel

from restcp.api.schemas import BackendOut, RouteOut
from tests.e2e.cli import field, restcp, row
from tests.e2e.conftest import StartNode, serve_args
from tests.e2e.peers import Backend, echo, refusing_port, round_trip
from tests.helpers import Node, free_port_range


@pytest.fixture
def echo_backend() -> Iterator[Backend]:
    with Backend(echo) as backend:
        yield backend


def api(node: Node, path: str) -> Any:
    """The API's answer to GET ``path``, as the API's model of it reads it (the model the
    CLI prints): routes and backends field for field."""
    response = node.call("GET", path)
    assert response.status == 200, response
    found = response.json()
    model: type[BaseModel] | None = None
    if "/backends" in path:
        model = BackendOut
    elif "/routes" in path:
        model = RouteOut
    if model is None:
        return found
    if isinstance(found, list):
        return [
            model.model_validate(item, extra="ignore").model_dump(mode="json") for item in found
        ]
    return model.model_validate(found, extra="ignore").model_dump(mode="json")


def test_routes_create_list_show_update_delete(node: Node, echo_backend: Backend) -> None:
    port = free_port_range(1)[0]
    made = restcp(
        node, "routes", "create", "web", "--port", str(port), "--balance", "round_robin",
        "--idle-timeout", "30", "--health-check", "{}", "--max-connections", "50",
        "--proxy-protocol", "none", "--splice", "false", "--set", "connect_timeout=2.5",
    )  # fmt: skip
    assert made.code == 0, made.err
    route = api(node, "/apps/web/routes/1")
    assert (route["port"], route["balance"], route["idle_timeout"]) == (port, "round_robin", 30)
    assert (route["connect_timeout"], route["max_connections"], route["splice"]) == (2.5, 50, False)
    assert route["health_check"]["interval"] == 2  # {} is a connect check with the defaults
    assert route["proxy_protocol"] is None
    # The table shows the route as created: its settings, then its (no) backends.
    assert field(made, "url") == f"tcp://127.0.0.1:{port}/"
    assert field(made, "balance") == "round_robin"
    assert field(made, "max_connections") == "50"
    assert row(made, "ID") == [
        "ID",
        "ADDRESS",
        "WEIGHT",
        "STATE",
        "HEALTH",
        "CONNECTIONS",
        "REASON",
    ]

    second = restcp(node, "routes", "create", "web", "-o", "json").json()
    assert second == api(node, "/apps/web/routes/2")
    attached = restcp(node, "backends", "add", "web", "2", "127.0.0.1", str(echo_backend.port))
    assert attached.code == 0, attached

    listed = restcp(node, "routes", "list", "web")
    assert row(listed, "ID") == ["ID", "URL", "BALANCE", "BACKENDS", "UP", "DOWN", "CONNECTIONS"]
    assert row(listed, "1")[1:4] == [f"tcp://127.0.0.1:{port}/", "round_robin", "0"]
    assert row(listed, "2")[1:4] == [second["url"], "random", "1"]
    assert restcp(node, "routes", "list", "web", "-o", "json").json() == api(
        node, "/apps/web/routes"
    )
    assert restcp(node, "routes", "list", "web", "-o", "yaml").yaml() == api(
        node, "/apps/web/routes"
    )

    shown = restcp(node, "routes", "show", "web", "2")
    assert field(shown, "url") == second["url"]
    assert row(shown, "1")[1:5] == [f"127.0.0.1:{echo_backend.port}", "1", "enabled", "unknown"]
    assert restcp(node, "routes", "show", "web", "2", "-o", "yaml").yaml() == api(
        node, "/apps/web/routes/2"
    )
    assert round_trip(second["port"], b"through the CLI's route") == b"through the CLI's route"

    updated = restcp(
        node, "routes", "update", "web", "1", "--balance", "least_conn", "--max-connections",
        "none", "--set", "idle_timeout=600", "--set", "health_check=null", "-o", "json",
    ).json()  # fmt: skip
    assert updated == api(node, "/apps/web/routes/1")
    assert (updated["balance"], updated["idle_timeout"]) == ("least_conn", 600)
    assert (updated["max_connections"], updated["health_check"]) == (None, None)
    assert updated["connect_timeout"] == 2.5  # not given: kept

    deleted = restcp(node, "routes", "delete", "web", "1")
    assert (deleted.code, deleted.out.strip()) == (0, "route 1 of app web deleted")
    assert node.call("GET", "/apps/web/routes/1").status == 404
    assert restcp(node, "routes", "delete", "web", "2", "-o", "json").out == ""  # scripts: silent
    assert api(node, "/apps/web/routes") == []


def test_backends_every_command(node: Node, echo_backend: Backend) -> None:
    route = restcp(node, "routes", "create", "web", "-o", "json").json()
    added = restcp(
        node, "backends", "add", "web", "1", "127.0.0.1", str(echo_backend.port), "--weight",
        "3", "--max-connections", "10",
    )  # fmt: skip
    assert (field(added, "id"), field(added, "weight"), field(added, "max_connections")) == (
        "1", "3", "10"
    )  # fmt: skip
    assert field(added, "state") == "enabled"
    assert round_trip(route["port"], b"hello") == b"hello"
    other = restcp(node, "backends", "add", "web", "1", "::1", "8080", "-o", "json").json()
    assert other == api(node, "/apps/web/routes/1/backends/2")

    listed = restcp(node, "backends", "list", "web", "1")
    assert row(listed, "1")[1:4] == [f"127.0.0.1:{echo_backend.port}", "3", "enabled"]
    assert row(listed, "2")[1:4] == ["[::1]:8080", "1", "enabled"]
    backends = api(node, "/apps/web/routes/1/backends")
    assert restcp(node, "backends", "list", "web", "1", "-o", "json").json() == backends
    assert restcp(node, "backends", "list", "web", "1", "-o", "yaml").yaml() == backends
    shown = restcp(node, "backends", "show", "web", "1", "2")
    assert (field(shown, "ip"), field(shown, "port")) == ("::1", "8080")
    assert restcp(node, "backends", "show", "web", "1", "2", "-o", "json").json() == backends[1]

    def state(backend: int) -> tuple[str, float | None]:
        found = api(node, f"/apps/web/routes/1/backends/{backend}")
        return found["state"], found["drain_timeout"]

    drained = restcp(node, "backends", "drain", "web", "1", "2", "--drain-timeout", "5")
    assert (drained.code, field(drained, "state")) == (0, "drain")
    assert state(2) == ("drain", 5)
    assert field(restcp(node, "backends", "disable", "web", "1", "2"), "state") == "disabled"
    assert state(2) == ("disabled", 5)
    assert field(restcp(node, "backends", "enable", "web", "1", "2"), "state") == "enabled"
    assert state(2)[0] == "enabled"

    updated = restcp(
        node, "backends", "update", "web", "1", "2", "--port", "8081", "--drain-timeout", "none",
        "--set", "weight=0", "-o", "json",
    ).json()  # fmt: skip
    assert updated == api(node, "/apps/web/routes/1/backends/2")
    assert (updated["port"], updated["drain_timeout"], updated["weight"]) == (8081, None, 0)

    replaced = restcp(
        node, "backends", "replace", "web", "1", "2", "10.0.0.7", "80", "--state", "drain",
        "-o", "json",
    ).json()  # fmt: skip
    assert (replaced["ip"], replaced["port"], replaced["state"]) == ("10.0.0.7", 80, "drain")
    assert replaced["weight"] == 1  # not given: its default again, as a POST replaces it all

    deleted = restcp(node, "backends", "delete", "web", "1", "2")
    assert deleted.out.strip() == "backend 2 of route 1 of app web deleted"
    assert [b["id"] for b in api(node, "/apps/web/routes/1/backends")] == [1]


def test_apps_nodes_and_tokens(start_node: StartNode, tmp_path: Any) -> None:
    admin = "cli-admin-token-0123456789"
    lo, hi = free_port_range()
    node = start_node(*serve_args(tmp_path / "r.db", lo, hi, "--api-token", admin))
    with_admin = {"RESTCP_TOKEN": admin}
    assert restcp(node, "routes", "create", "web", env=with_admin).code == 0
    assert restcp(node, "routes", "create", "shop", env=with_admin).code == 0

    apps = restcp(node, "apps", "list", env=with_admin)
    assert row(apps, "APP") == ["APP", "ROUTES"]
    assert (row(apps, "web"), row(apps, "shop")) == (["web", "1"], ["shop", "1"])
    assert restcp(node, "apps", "list", "-o", "json", env=with_admin).json() == [
        {"app": "shop", "routes": 1},
        {"app": "web", "routes": 1},
    ]

    nodes = restcp(node, "nodes", env=with_admin)
    assert row(nodes, "local")[1:3] == [node.api + "/", "127.0.0.1"]
    listed = restcp(node, "nodes", "-o", "yaml", env=with_admin).yaml()
    assert [n["id"] for n in listed] == ["local"]

    made = restcp(node, "tokens", "create", "web", env=with_admin)
    token = field(made, "token")
    assert field(made, "id") == "1"
    # The app's token reaches its app, and not another's.
    assert restcp(node, "routes", "list", "web", "--token", token).code == 0
    refused = restcp(node, "routes", "list", "shop", "--token", token)
    assert (refused.code, refused.out) == (1, "")
    assert "404" in refused.err  # another app is not even seen
    second = restcp(node, "tokens", "create", "web", "-o", "json", env=with_admin).json()
    assert set(second) == {"id", "token", "created_at"}
    tokens = restcp(node, "tokens", "list", "web", env=with_admin)
    assert row(tokens, "ID") == ["ID", "CREATED"]
    assert [r[0] for r in tokens.lines()[1:]] == ["1", "2"]
    assert token not in tokens.out  # a secret is shown once, at its creation
    listed = restcp(node, "tokens", "list", "web", "-o", "json", env=with_admin).json()
    assert [t["id"] for t in listed] == [1, 2]
    deleted = restcp(node, "tokens", "delete", "web", "1", env=with_admin)
    assert deleted.out.strip() == "token 1 of app web deleted"
    revoked = restcp(node, "routes", "list", "web", "--token", token)
    assert (revoked.code, "401" in revoked.err) == (1, True)


def test_a_refusal_exits_1_with_the_problem_on_stderr(node: Node) -> None:
    missing = restcp(node, "routes", "show", "web", "9")
    assert (missing.code, missing.out) == (1, "")
    assert (
        missing.err.strip() == "Error: GET /apps/web/routes/9: 404 route 9 of app 'web' not found"
    )

    assert restcp(node, "routes", "create", "web").code == 0
    invalid = restcp(node, "routes", "update", "web", "1", "--set", "balance=fastest")
    assert (invalid.code, invalid.out) == (1, "")
    assert "422" in invalid.err
    assert "balance" in invalid.err
    unknown = restcp(node, "routes", "update", "web", "1", "--set", "colour=blue")
    assert (unknown.code, "colour" in unknown.err) == (1, True)
    taken = api(node, "/apps/web/routes/1")["port"]
    conflict = restcp(node, "routes", "create", "web", "--port", str(taken), "-o", "json")
    assert (conflict.code, conflict.out) == (1, "")
    assert "409" in conflict.err
    bad_app = restcp(node, "routes", "list", "a/b")
    assert (bad_app.code, "400" in bad_app.err) == (1, True)
    # Nothing changed.
    assert [r["id"] for r in api(node, "/apps/web/routes")] == [1]
    assert "Traceback" not in missing.err + invalid.err + conflict.err + bad_app.err

    with refusing_port() as port:
        away = restcp(None, "apps", "list", "--url", f"http://127.0.0.1:{port}")
    assert (away.code, away.out) == (1, "")
    assert "cannot reach the API" in away.err


USAGE_ERRORS = [
    (["routes", "show", "web", "one"], "'one' is not a valid integer"),
    (["routes", "show", "web"], "Missing argument 'ROUTE'"),
    (["routes", "list", "web", "--colour"], "No such option"),
    (["routes", "list", "web", "-o", "xml"], "'xml' is not one of"),
    (["routes", "create", "web", "--balance", "fast"], "--balance"),
    (["routes", "create", "web", "--set", "port"], "FIELD=VALUE"),
    (["routes", "update", "web", "1"], "nothing to change"),
    (["backends", "update", "web", "1", "1"], "nothing to change"),
    (["backends", "add", "web", "1", "10.0.0.1"], "Missing argument 'PORT'"),
    (["routes", "create", "web", "--health-check", "{"], "not JSON"),
    (["routes", "bogus"], "choose from 'list', 'show', 'create', 'update', 'delete'"),
    (["apps", "list", "--url", "ftp://x"], "--url"),
]


def test_usage_errors_exit_2_and_change_nothing(node: Node) -> None:
    for args, mentions in USAGE_ERRORS:
        done = restcp(node, *args)
        assert (done.code, done.out) == (2, ""), (args, done)
        assert mentions in done.err, (args, done.err)
        assert "Traceback" not in done.err
    assert api(node, "/apps") == []


def test_url_and_token_from_flags_or_the_environment(start_node: StartNode, tmp_path: Any) -> None:
    admin = "cli-admin-token-0123456789"
    lo, hi = free_port_range()
    node = start_node(*serve_args(tmp_path / "r.db", lo, hi, "--api-token", admin))
    no_token = restcp(node, "apps", "list")
    assert (no_token.code, "401" in no_token.err) == (1, True)
    assert restcp(node, "apps", "list", env={"RESTCP_TOKEN": admin}).code == 0
    assert restcp(node, "apps", "list", "--token", admin).code == 0
    # A flag wins over its variable.
    wrong = {"RESTCP_TOKEN": "not-the-admin-token-0123"}
    assert restcp(node, "apps", "list", "--token", admin, env=wrong).code == 0
    assert restcp(node, "apps", "list", env=wrong).code == 1
    with refusing_port() as port:
        away = {"RESTCP_URL": f"127.0.0.1:{port}", "RESTCP_TOKEN": admin}
        assert restcp(None, "apps", "list", env=away).code == 1
        assert restcp(None, "apps", "list", "--url", node.api, env=away).code == 0
    # HOST:PORT as `restcp serve --api` takes it.
    bare = node.api.removeprefix("http://")
    assert restcp(None, "apps", "list", "--url", bare, "--token", admin).code == 0
