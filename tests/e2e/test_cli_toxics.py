"""`restcp toxics ...` and `restcp routes down|up` against a real `restcp serve`: each
command's table and its JSON and YAML (the API's own answer), what each change did (read
back through the API, and seen on the route's traffic), `routes show` listing the route's
toxics, and the exit codes (0 done, 1 refused with the problem on stderr, 2 usage)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.e2e.cli import field, restcp, row
from tests.e2e.peers import Backend, assert_refused, echo, round_trip
from tests.helpers import Node


@pytest.fixture
def echo_backend() -> Iterator[Backend]:
    with Backend(echo) as backend:
        yield backend


def api(node: Node, path: str) -> Any:
    response = node.call("GET", path)
    assert response.status == 200, response
    return response.json()


def echo_route(node: Node, backend: Backend) -> dict[str, Any]:
    """Route 1 of app web, relaying to ``backend``."""
    made: dict[str, Any] = restcp(node, "routes", "create", "web", "-o", "json").json()
    added = restcp(node, "backends", "add", "web", "1", "127.0.0.1", str(backend.port))
    assert added.code == 0, added
    return made


def timed_round_trip(port: int) -> float:
    start = time.monotonic()
    assert round_trip(port, b"ping") == b"ping"
    return time.monotonic() - start


TOXICS = "/apps/web/routes/1/toxics"


def test_toxics_add_list_show_update_remove(node: Node, echo_backend: Backend) -> None:
    route = echo_route(node, echo_backend)

    added = restcp(
        node, "toxics", "add", "web", "1", "latency", "--attr", "latency=200", "--attr",
        "jitter=20", "--stream", "upstream", "--toxicity", "0.5", "--clients", "10.0.0.0/8",
        "--clients", "192.168.1.7", "--name", "slow",
    )  # fmt: skip
    assert added.code == 0, added.err
    assert api(node, f"{TOXICS}/slow") == {
        "name": "slow",
        "type": "latency",
        "stream": "upstream",
        "toxicity": 0.5,
        "attributes": {"jitter": 20, "latency": 200},
        "clients": ["10.0.0.0/8", "192.168.1.7/32"],
    }
    # The table shows the toxic as the API stored it.
    assert (field(added, "name"), field(added, "type"), field(added, "stream")) == (
        "slow", "latency", "upstream"
    )  # fmt: skip
    assert field(added, "toxicity") == "0.5"
    assert field(added, "attributes") == "jitter=20 latency=200"
    assert field(added, "clients") == "10.0.0.0/8, 192.168.1.7/32"

    # Defaults: downstream, toxicity 1, every client, named TYPE_STREAM; -o json is the API's.
    reset = restcp(
        node, "toxics", "add", "web", "1", "reset_peer", "--attr", "timeout=5000", "-o", "json"
    ).json()
    assert reset == api(node, f"{TOXICS}/reset_peer_downstream")
    assert (reset["stream"], reset["toxicity"], reset["clients"]) == ("downstream", 1.0, [])

    listed = restcp(node, "toxics", "list", "web", "1")
    assert row(listed, "NAME") == ["NAME", "TYPE", "STREAM", "TOXICITY", "ATTRIBUTES", "CLIENTS"]
    assert row(listed, "slow")[1:] == [
        "latency", "upstream", "0.5", "jitter=20 latency=200", "10.0.0.0/8, 192.168.1.7/32"
    ]  # fmt: skip
    assert row(listed, "reset_peer_downstream")[1:] == [
        "reset_peer", "downstream", "1", "timeout=5000", "-"
    ]  # fmt: skip
    # In the order they were added: the order a connection meets them.
    assert [cells[0].strip() for cells in listed.lines()[1:]] == ["slow", "reset_peer_downstream"]
    assert restcp(node, "toxics", "list", "web", "1", "-o", "json").json() == api(node, TOXICS)
    assert restcp(node, "toxics", "list", "web", "1", "-o", "yaml").yaml() == api(node, TOXICS)

    shown = restcp(node, "toxics", "show", "web", "1", "slow")
    assert field(shown, "attributes") == "jitter=20 latency=200"
    assert restcp(node, "toxics", "show", "web", "1", "slow", "-o", "yaml").yaml() == api(
        node, f"{TOXICS}/slow"
    )

    # routes show lists them under the backends.
    route_shown = restcp(node, "routes", "show", "web", "1")
    assert row(route_shown, "NAME") == row(listed, "NAME")
    assert row(route_shown, "slow") == row(listed, "slow")
    assert row(route_shown, "reset_peer_downstream") == row(listed, "reset_peer_downstream")
    assert "toxics" in route_shown.out.splitlines()  # its table's title
    assert restcp(node, "routes", "show", "web", "1", "-o", "json").json()["toxics"] == api(
        node, TOXICS
    )

    # update: the attributes given merge over the others; toxicity and clients replace.
    updated = restcp(
        node, "toxics", "update", "web", "1", "slow", "--attr", "latency=50", "--toxicity", "1",
        "--all-clients", "-o", "json",
    ).json()  # fmt: skip
    assert updated == api(node, f"{TOXICS}/slow")
    assert updated["attributes"] == {"jitter": 20, "latency": 50}
    assert (updated["toxicity"], updated["clients"]) == (1.0, [])
    narrowed = restcp(node, "toxics", "update", "web", "1", "slow", "--clients", "10.1.0.0/16")
    assert (narrowed.code, field(narrowed, "clients")) == (0, "10.1.0.0/16")
    assert api(node, f"{TOXICS}/slow")["attributes"] == {"jitter": 20, "latency": 50}

    removed = restcp(node, "toxics", "remove", "web", "1", "slow")
    assert (removed.code, removed.out.strip()) == (0, "toxic slow of route 1 of app web removed")
    assert node.call("GET", f"{TOXICS}/slow").status == 404
    silent = restcp(node, "toxics", "remove", "web", "1", "reset_peer_downstream", "-o", "json")
    assert (silent.code, silent.out) == (0, "")
    assert api(node, TOXICS) == []
    assert round_trip(route["port"], b"untouched") == b"untouched"


def test_a_toxic_added_by_the_cli_acts_on_the_traffic(node: Node, echo_backend: Backend) -> None:
    route = echo_route(node, echo_backend)
    assert timed_round_trip(route["port"]) < 0.4
    added = restcp(node, "toxics", "add", "web", "1", "latency", "--attr", "latency=400")
    assert added.code == 0, added.err
    # Each reply is held 400 ms: the round trip takes that long at least.
    assert timed_round_trip(route["port"]) >= 0.4
    assert restcp(node, "toxics", "remove", "web", "1", "latency_downstream").code == 0
    assert timed_round_trip(route["port"]) < 0.4


def test_routes_down_and_up(node: Node, echo_backend: Backend) -> None:
    route = echo_route(node, echo_backend)
    down = restcp(node, "routes", "down", "web", "1")
    assert (down.code, field(down, "enabled")) == (0, "false"), down.err
    assert api(node, "/apps/web/routes/1")["enabled"] is False
    assert_refused(route["port"])
    # Down, it keeps its backends.
    assert row(down, "1")[1] == f"127.0.0.1:{echo_backend.port}"

    up = restcp(node, "routes", "up", "web", "1", "-o", "json").json()
    assert up == api(node, "/apps/web/routes/1")
    assert (up["enabled"], up["port"]) == (True, route["port"])
    assert round_trip(route["port"], b"back") == b"back"


def test_refusals_exit_1_and_change_nothing(node: Node, echo_backend: Backend) -> None:
    echo_route(node, echo_backend)
    assert restcp(node, "toxics", "add", "web", "1", "latency", "--attr", "latency=10").code == 0

    missing = restcp(node, "toxics", "show", "web", "1", "nope")
    assert (missing.code, missing.out) == (1, "")
    assert missing.err.startswith("Error: GET /apps/web/routes/1/toxics/nope: 404")
    again = restcp(node, "toxics", "add", "web", "1", "latency", "--attr", "latency=20")
    assert (again.code, again.out, "409" in again.err) == (1, "", True)
    invalid = restcp(node, "toxics", "add", "web", "1", "bandwidth", "--attr", "rate=0")
    assert (invalid.code, invalid.out) == (1, "")
    assert "422" in invalid.err
    assert "attributes.rate" in invalid.err
    unknown = restcp(
        node, "toxics", "add", "web", "1", "latency", "--attr", "speed=1", "--name", "x"
    )
    assert (unknown.code, "speed" in unknown.err) == (1, True)
    bad_change = restcp(
        node, "toxics", "update", "web", "1", "latency_downstream", "--toxicity", "2"
    )
    assert (bad_change.code, "toxicity" in bad_change.err) == (1, True)
    bad_clients = restcp(node, "toxics", "add", "web", "1", "timeout", "--clients", "nowhere")
    assert (bad_clients.code, "clients" in bad_clients.err) == (1, True)
    no_route = restcp(node, "routes", "down", "web", "9")
    assert (no_route.code, "404" in no_route.err) == (1, True)
    gone = restcp(node, "toxics", "remove", "web", "1", "nope")
    assert (gone.code, "404" in gone.err) == (1, True)
    # Nothing changed.
    assert api(node, TOXICS) == [
        {
            "name": "latency_downstream",
            "type": "latency",
            "stream": "downstream",
            "toxicity": 1.0,
            "attributes": {"jitter": 0, "latency": 10},
            "clients": [],
        }
    ]
    assert api(node, "/apps/web/routes/1")["enabled"] is True
    everything = missing.err + again.err + invalid.err + unknown.err + bad_change.err
    assert "Traceback" not in everything


USAGE_ERRORS = [
    (["toxics", "add", "web", "1", "fast"], "'fast' is not one of"),
    (["toxics", "add", "web", "1"], "Missing argument 'TYPE'"),
    (["toxics", "add", "web", "1", "latency", "--attr", "latency"], "FIELD=VALUE"),
    (["toxics", "add", "web", "1", "latency", "--attr", "stream=upstream"], "give --stream"),
    (["toxics", "add", "web", "1", "latency", "--stream", "sideways"], "'sideways' is not"),
    (["toxics", "add", "web", "1", "latency", "--toxicity", "half"], "not a valid float"),
    (["toxics", "show", "web", "one", "x"], "'one' is not a valid integer"),
    (["toxics", "update", "web", "1", "x"], "nothing to change"),
    (["toxics", "update", "web", "1", "x", "--clients", "10.0.0.0/8", "--all-clients"],
     "--all-clients"),
    (["toxics", "remove", "web", "1"], "Missing argument 'NAME'"),
    (["toxics", "bogus"], "choose from 'list', 'show', 'add', 'update', 'remove'"),
    (["routes", "down", "web"], "Missing argument 'ROUTE'"),
]  # fmt: skip


def test_usage_errors_exit_2_and_change_nothing(node: Node, echo_backend: Backend) -> None:
    echo_route(node, echo_backend)
    for args, mentions in USAGE_ERRORS:
        done = restcp(node, *args)
        assert (done.code, done.out) == (2, ""), (args, done)
        assert mentions in done.err, (args, done.err)
        assert "Traceback" not in done.err
    assert api(node, TOXICS) == []
    assert api(node, "/apps/web/routes/1")["enabled"] is True
