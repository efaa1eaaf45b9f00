"""The CLI on a cluster of real nodes on a real Redis: `restcp status` shows the routes of
the frontend IPs its node holds (the API lists every node's), `restcp nodes` each node, and
`restcp routes create` for an IP whose node is slow to bind it (202) waits until it does, and
a change that node is too slow to apply (202) exits 1 saying it is stored."""

from __future__ import annotations

import json
import signal
import subprocess

from tests.cluster.conftest import StartNode, fetch, poll, ready
from tests.e2e.cli import RESTCP, clean_env, field, restcp, row

A, C = "127.0.0.2", "127.0.0.3"


def test_status_shows_its_nodes_routes_and_nodes_every_node(start_node: StartNode) -> None:
    a, c = ready(start_node(A, ready=False), start_node(C, ready=False))
    here = restcp(a, "routes", "create", "web", "--frontend-ip", A, "-o", "json").json()
    there = restcp(a, "routes", "create", "web", "--frontend-ip", C, "-o", "json").json()
    assert [r["id"] for r in restcp(a, "routes", "list", "web", "-o", "json").json()] == [1, 2]

    status = restcp(a, "status")
    assert field(status, "routes") == "1 served, 0 unbound"
    assert row(status, "web")[1:3] == ["1", here["url"]]
    assert there["url"] not in status.out
    data = restcp(c, "status", "-o", "json").json()
    assert [(r["id"], r["url"]) for r in data["routes"]] == [(2, there["url"])]
    assert data["health"]["cluster"]["frontend_ips"][C]["lease"] == "held"

    nodes = restcp(a, "nodes", "-o", "json").json()
    assert sorted((n["api"], n["frontend_ips"]) for n in nodes) == sorted(
        [(a.api + "/", [A]), (c.api + "/", [C])]
    )
    table = restcp(a, "nodes")
    assert {line[1].strip() for line in table.lines()[1:]} == {a.api + "/", c.api + "/"}


def test_a_route_being_provisioned_is_waited_for(start_node: StartNode) -> None:
    a, c = ready(
        start_node(A, "--provision-timeout", "0.3", ready=False), start_node(C, ready=False)
    )
    # Stopped, C is subscribed still (Redis counts it as a receiver) but answers nothing.
    c.proc.send_signal(signal.SIGSTOP)
    proc = subprocess.Popen(
        [*RESTCP, "routes", "create", "web", "--frontend-ip", C, "-o", "json"],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env=clean_env(RESTCP_URL=a.api),
    )  # fmt: skip
    try:
        assert proc.stderr is not None
        said = proc.stderr.readline()
        assert said.startswith(f"route 1 of app 'web' is being provisioned by the node serving {C}")
        assert said.rstrip().endswith("waiting for it")
    finally:
        c.proc.send_signal(signal.SIGCONT)
    out, err = proc.communicate(timeout=60)
    assert (proc.returncode, err) == (0, ""), err
    route = json.loads(out)
    assert (route["id"], route["frontend_ip"]) == (1, C)
    assert c.call("GET", "/apps/web/routes/1").json()["port"] == route["port"]


def test_a_change_the_serving_node_has_not_applied_exits_1_saying_it_is_stored(
    start_node: StartNode,
) -> None:
    a, c = ready(
        start_node(A, "--provision-timeout", "0.3", ready=False), start_node(C, ready=False)
    )
    route = restcp(a, "routes", "create", "web", "--frontend-ip", C, "-o", "json").json()
    assert fetch(C, route["port"]) == b""  # served: accepted, and closed (no backend)
    c.proc.send_signal(signal.SIGSTOP)
    try:
        added = restcp(a, "toxics", "add", "web", "1", "latency", "--attr", "latency=100")
        down = restcp(a, "routes", "down", "web", "1")
    finally:
        c.proc.send_signal(signal.SIGCONT)
    for done, request in (
        (added, "PUT /apps/web/routes/1/toxics"),
        (down, "PATCH /apps/web/routes/1"),
    ):
        assert (done.code, done.out) == (1, ""), done
        assert done.err.strip() == (
            f"Error: {request}: 202 stored; the node serving the route's frontend IP has not "
            "applied it yet"
        )
    # Stored all the same, and applied by C once it runs again.
    listed = restcp(c, "toxics", "list", "web", "1", "-o", "json").json()
    assert [t["name"] for t in listed] == ["latency_downstream"]
    shown = restcp(c, "routes", "show", "web", "1", "-o", "json").json()
    assert (shown["port"], shown["enabled"]) == (route["port"], False)
    poll(lambda: fetch(C, route["port"]) is None, "C takes the route down")
