"""The fault run's checker (tests/faults/checker.py) finds each anomaly it is for, in small
histories written by hand, and passes the same histories without it: a checker that cannot
fail would make the fault run prove nothing."""

from __future__ import annotations

from typing import Any

import pytest

from tests.faults.checker import check
from tests.faults.history import Event
from tests.faults.model import outcome

IPS = ["127.0.0.1", "127.0.0.2", "127.0.0.3"]
PORTS = {"b0": 4000, "b1": 4001, "s0": 4100, "s1": 4101}


class Story:
    """A history under construction: a route created on 127.0.0.2 (node 1, spared)."""

    def __init__(self) -> None:
        self.events: list[Event] = [
            {"kind": "nodes", "ips": IPS, "t": 0},
            {"kind": "backends", "ports": PORTS, "t": 0},
            {"kind": "steady_routes", "routes": [], "names": ["s0", "s1"], "t": 0},
            {"kind": "spared", "node": 1, "t": 0},
        ]
        self.t = 1.0
        self.seq = 0

    def add(self, kind: str, **fields: Any) -> Event:
        self.t += 1
        event: Event = {"kind": kind, "t": self.t, **fields}
        self.events.append(event)
        return event

    def op(self, op: str, status: int | None, body: Any = None, **fields: Any) -> Event:
        self.seq += 1
        start = self.t
        return self.add(
            "op",
            op=op,
            seq=self.seq,
            node=0,
            start=start,
            end=start + 0.5,
            status=status,
            body=body,
            error=None,
            outcome=outcome(op, status, body, None),
            **fields,
        )

    def create(self, route: int = 1, port: int = 5000, tag: float = 1.0) -> None:
        body = {"id": route, "port": port}
        self.op("create", 201, body, app="web", ip=IPS[1], tag=tag)

    def ryw(self, op: Event, got: str, route: int = 1, port: int = 5000) -> None:
        end = self.t + 0.1
        self.add(
            "ryw",
            op=op["seq"],
            app="web",
            route=route,
            ip=IPS[1],
            port=port,
            start=self.t,
            end=end,
            got=got,
        )

    def end(self, routes: list[dict[str, Any]], probes: dict[int, list[str]]) -> list[Event]:
        for node in range(3):
            self.add("final", node=node, routes=routes)
        for route in routes:
            self.add("final_probe", app=route["app"], route=route["id"], got=probes[route["id"]])
        return self.events


def stored(
    route: int = 1, port: int = 5000, tag: float = 1.0, backends: Any = ()
) -> dict[str, Any]:
    return {
        "app": "web",
        "id": route,
        "frontend_ip": IPS[1],
        "port": port,
        "idle_timeout": tag,
        "balance": "round_robin",
        "backends": [
            {"id": i, "ip": "127.0.0.1", "port": PORTS[name], "state": state}
            for i, name, state in backends
        ],
    }


def anomalies(events: list[Event]) -> list[str]:
    return check(events).anomalies


def test_a_write_seen_at_once_and_in_the_end_state_is_no_anomaly() -> None:
    story = Story()
    story.create()
    add = story.op("add_backend", 201, {"id": 1}, app="web", route=1, name="b0")
    story.ryw(add, "b0")
    events = story.end([stored(backends=[(1, "b0", "enabled")])], {1: ["b0", "b0"]})
    assert anomalies(events) == []


def test_a_client_that_does_not_see_an_answered_write_is_an_anomaly() -> None:
    story = Story()
    story.create()
    add = story.op("add_backend", 201, {"id": 1}, app="web", route=1, name="b0")
    story.ryw(add, "")
    events = story.end([stored(backends=[(1, "b0", "enabled")])], {1: ["b0", "b0"]})
    [found] = anomalies(events)
    assert found.startswith("read-your-writes: after add_backend")


def test_a_client_of_a_node_down_meanwhile_is_excused() -> None:
    story = Story()
    story.create()
    add = story.op("add_backend", 201, {"id": 1}, app="web", route=1, name="b0")
    story.ryw(add, "refused")
    story.add("fault", fault="kill_node", node=1, start=add["start"], end=story.t + 1)
    events = story.end([stored(backends=[(1, "b0", "enabled")])], {1: ["b0", "b0"]})
    assert anomalies(events) == []


def test_a_deleted_route_that_still_accepts_is_an_anomaly() -> None:
    story = Story()
    story.create()
    delete = story.op("delete_route", 204, None, app="web", route=1)
    story.ryw(delete, "")
    [found] = anomalies(story.end([], {}))
    assert "expected {'refused': True" in found


def test_an_answered_write_missing_from_the_end_state_is_an_anomaly() -> None:
    story = Story()
    story.create()
    story.op("patch_route", 200, {}, app="web", route=1, tag=2.0)
    [found] = anomalies(story.end([stored(tag=1.0)], {1: ["", ""]}))
    assert found.startswith("final state: route ('web', 1) is tag 1.0")


@pytest.mark.parametrize("tag", [1.0, 2.0])
def test_a_write_of_unknown_outcome_may_have_happened_or_not(tag: float) -> None:
    story = Story()
    story.create()
    story.op("patch_route", 503, {"detail": "store is unavailable"}, app="web", route=1, tag=2.0)
    assert anomalies(story.end([stored(tag=tag)], {1: ["", ""]})) == []


def test_a_404_proves_a_delete_of_unknown_outcome_happened() -> None:
    story = Story()
    story.create()
    story.op("delete_route", None, None, app="web", route=1)  # no answer: maybe deleted
    assert anomalies(story.end([stored()], {1: ["", ""]})) == []
    story = Story()
    story.create()
    story.op("delete_route", None, None, app="web", route=1)
    missing = {"detail": "route 1 of app 'web' not found"}
    story.op("patch_route", 404, missing, app="web", route=1, tag=2.0)
    [found] = anomalies(story.end([stored()], {1: ["", ""]}))
    assert "the writes answered allow only deleted" in found
    # A backend's 404 says nothing of its route.
    story = Story()
    story.create()
    story.op("delete_route", None, None, app="web", route=1)
    gone = {"detail": "backend 7 of route 1 of app 'web' not found"}
    story.op("delete_backend", 404, gone, app="web", route=1, backend=7)
    assert anomalies(story.end([stored()], {1: ["", ""]})) == []


def test_a_503_that_said_nothing_was_stored_and_stored_a_route_is_an_anomaly() -> None:
    story = Story()
    refused = {"detail": "no live node serves frontend_ip 127.0.0.2; nothing was stored"}
    story.op("create", 503, refused, app="web", ip=IPS[1], tag=1.0)
    [found] = anomalies(story.end([stored()], {1: ["", ""]}))
    assert "no write that could have created it" in found
    story = Story()
    story.op("create", 503, {"detail": "store is unavailable"}, app="web", ip=IPS[1], tag=1.0)
    assert anomalies(story.end([stored()], {1: ["", ""]})) == []


def test_a_route_not_serving_what_is_stored_is_an_anomaly() -> None:
    story = Story()
    story.create()
    story.op("add_backend", 201, {"id": 1}, app="web", route=1, name="b0")
    story.op("add_backend", 201, {"id": 2}, app="web", route=1, name="b1")
    backends = [(1, "b0", "enabled"), (2, "b1", "enabled")]
    [found] = anomalies(story.end([stored(backends=backends)], {1: ["b0"] * 4}))
    assert found.startswith("served: route ('web', 1)")


def test_nodes_that_disagree_are_an_anomaly() -> None:
    story = Story()
    story.create()
    events = story.end([stored()], {1: ["", ""]})
    events[-2] = {**events[-2], "routes": [stored(tag=9.0)]}
    assert any("differ on routes [('web', 1)]" in a for a in anomalies(events))


def test_an_id_or_an_address_handed_out_twice_is_an_anomaly() -> None:
    story = Story()
    story.create(route=1, port=5000)
    story.create(route=1, port=5001)
    story.create(route=2, port=5000)
    found = anomalies(story.end([], {}))
    assert any(a.startswith("ids: route id ('web', 1) was given to two creates") for a in found)
    assert any(a.startswith("ports: ('127.0.0.2', 5000)") for a in found)


def test_an_address_given_again_after_its_route_was_deleted_is_no_anomaly() -> None:
    story = Story()
    story.create(route=1, port=5000)
    story.op("delete_route", 204, None, app="web", route=1)
    story.create(route=2, port=5000)
    assert anomalies(story.end([stored(route=2)], {2: ["", ""]})) == []


def test_an_ip_served_by_two_processes_at_once_is_an_anomaly() -> None:
    story = Story()
    story.add("serving", ip=IPS[0], node=0, incarnation=0, **{"from": 10.0, "until": 20.0})
    story.add("serving", ip=IPS[0], node=0, incarnation=1, **{"from": 20.5, "until": 30.0})
    assert anomalies(story.end([], {})) == []
    story.add("serving", ip=IPS[0], node=0, incarnation=2, **{"from": 29.0, "until": 40.0})
    story.add("overlap", ip=IPS[2], pids=[11, 12])
    found = anomalies(story.events)
    assert any(a.startswith("IP 127.0.0.1 was served by node 0 (incarnation 1)") for a in found)
    assert any(a.startswith("two processes listened on 127.0.0.3") for a in found)


def test_a_failed_steady_client_counts_on_the_spared_node_only() -> None:
    story = Story()
    story.add("steady", ip=IPS[1], route=2, got="s0")
    story.add("steady", ip=IPS[0], route=1, got="refused")
    assert anomalies(story.end([], {})) == []
    story.add("steady", ip=IPS[1], route=2, got="refused")
    [found] = anomalies(story.events)
    assert found.startswith("steady: a client of the never-changed route on 127.0.0.2")
