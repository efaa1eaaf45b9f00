"""The properties of a fault run, judged from its history alone (a live one, or one loaded
from the JSON lines a failed run wrote), each anomaly a sentence:

1. read-your-writes: a client connecting right after a write's 2xx sees the write (a
   route's new backends, a deleted route's port refusing), unless the node serving the route
   was down or paused meanwhile;
2. every acknowledged write is in the state the cluster ends in, the same through every node,
   and the serving node serves that state: each route's port accepts, and its clients reach
   every enabled backend and no other; a route surely deleted refuses;
3. a write that answered 5xx (or no answer) either happened whole or not at all: the end
   state is one the model allows, and a 503 "nothing was stored" stored nothing (no route,
   no id, no backend appears for it);
4. no route id of an app, and no address, was handed out twice (an address again only after
   its route's delete);
5. no frontend IP was served by two processes at once: not by the nodes' own lease lines,
   nor by the probe of listening sockets during the run;
6. the steady clients of the node never killed never failed, Redis and pub/sub faults
   included.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from itertools import pairwise
from typing import Any

from tests.faults.history import Event
from tests.faults.model import Model, Route, RouteKey, State

# A delete whose answer is lost may still have happened: its route's address may come back.
ATTEMPTED = ("ok", "stored", "maybe", "unknown")


@dataclass
class Report:
    anomalies: list[str] = field(default_factory=list)
    stats: dict[str, Any] = field(default_factory=dict)

    def add(self, text: str) -> None:
        self.anomalies.append(text)


def check(events: list[Event]) -> Report:
    report = Report()
    setup = {
        e["kind"]: e
        for e in events
        if e["kind"] in ("nodes", "backends", "steady_routes", "spared")
    }
    ips: list[str] = setup["nodes"]["ips"]
    names_of = {port: name for name, port in setup["backends"]["ports"].items()}
    down = _down_intervals(events)
    model = Model()
    ops_by_seq: dict[int, Event] = {}
    outcomes: dict[str, int] = defaultdict(int)
    checked = excused = 0
    addresses = _addresses(events)
    for event in events:
        if event["kind"] == "op":
            model.apply(event)
            ops_by_seq[event["seq"]] = event
            outcomes[event["outcome"]] += 1
        elif event["kind"] == "ryw":
            op = ops_by_seq[event["op"]]
            key = (event["app"], event["route"])
            expected = model.expectation(key)
            if expected is None:
                continue
            node = ips.index(event["ip"])
            if _overlaps(down[node], op["start"], event["end"]):
                excused += 1
                continue
            if expected.allows(event["got"]) or _reused(addresses, event, key):
                checked += 1
                continue
            report.add(
                f"read-your-writes: after {_describe(op)} answered {op['status']} at "
                f"t={op['end']}, a client of {event['ip']}:{event['port']} got "
                f"{event['got']!r} at t={event['end']}; expected {expected.as_json()}"
            )
    report.stats.update(
        writes=sum(outcomes.values()),
        outcomes=dict(outcomes),
        ryw_passed=checked,
        ryw_failed=len(report.anomalies),
        ryw_excused=excused,
    )
    _check_final(events, model, names_of, report)
    _check_ids_and_ports(events, report)
    _check_overlaps(events, report)
    _check_steady(events, setup, ips, report)
    return report


def _describe(op: Event) -> str:
    what = {k: op[k] for k in ("app", "route", "ip", "backend", "name", "state", "tag") if k in op}
    return f"{op['op']} {what} through node {op['node']}"


def _down_intervals(events: list[Event]) -> dict[int, list[tuple[float, float]]]:
    down: dict[int, list[tuple[float, float]]] = defaultdict(list)
    for e in events:
        if e["kind"] == "fault" and "node" in e:
            down[e["node"]].append((e["start"], e["end"]))
    return down


def _overlaps(intervals: list[tuple[float, float]], start: float, end: float) -> bool:
    return any(a <= end and b >= start for a, b in intervals)


def _addresses(events: list[Event]) -> dict[tuple[str, int], list[tuple[RouteKey, float]]]:
    """(ip, port) -> the routes created there, with when their create answered."""
    found: dict[tuple[str, int], list[tuple[RouteKey, float]]] = defaultdict(list)
    for e in events:
        body = e.get("body")
        if (
            e["kind"] == "op"
            and e["op"] == "create"
            and e["status"] == 201
            and isinstance(body, dict)
        ):
            found[(e["ip"], body["port"])].append(((e["app"], body["id"]), e["end"]))
    return found


def _reused(
    addresses: dict[tuple[str, int], list[tuple[RouteKey, float]]], ryw: Event, key: RouteKey
) -> bool:
    """Another route was created on the address before the client connected."""
    return any(
        other != key and answered <= ryw["end"]
        for other, answered in addresses.get((ryw["ip"], ryw["port"]), [])
    )


# -- the end state --------------------------------------------------------------------------


def _stored_state(route: dict[str, Any], names_of: dict[int, str]) -> State:
    return State(
        True,
        float(route["idle_timeout"]),
        frozenset(
            (b["id"], names_of.get(b["port"], f"port {b['port']}"), b["state"])
            for b in route["backends"]
        ),
    )


def _check_final(
    events: list[Event], model: Model, names_of: dict[int, str], report: Report
) -> None:
    finals = [e for e in events if e["kind"] == "final"]
    if not finals:
        report.add("no final state was read")
        return
    views = {e["node"]: {(r["app"], r["id"]): r for r in e["routes"]} for e in finals}
    first = finals[0]["node"]
    stored = views[first]
    for node, view in views.items():
        if view != stored:
            differ = sorted(k for k in set(view) | set(stored) if view.get(k) != stored.get(k))
            report.add(f"final state: node {node} and node {first} differ on routes {differ}")
    maybe = list(model.maybe_creates)
    for key, route in model.routes.items():
        _check_route(key, route, stored.get(key), names_of, report)
    for key, found in stored.items():
        if key[0] == "steady" or key in model.routes:
            continue
        candidate = (found["app"], found["frontend_ip"], float(found["idle_timeout"]))
        if candidate in maybe and not found["backends"]:
            maybe.remove(candidate)
            continue
        report.add(
            f"final state: route {key} on {found['frontend_ip']}:{found['port']} is stored, "
            "but no write that could have created it was answered with anything but a "
            "refusal (a 5xx or a 503 'nothing was stored' left it behind)"
        )
    probes = {(e["app"], e["route"]): e for e in events if e["kind"] == "final_probe"}
    for key, found in stored.items():
        state = _stored_state(found, names_of)
        probe = probes.get(key)
        if probe is None:
            report.add(f"final state: route {key} was not probed")
            continue
        enabled = state.enabled()
        got = probe["got"]
        if not enabled and set(got) != {""}:
            report.add(f"served: route {key} has no enabled backend; its clients got {got}")
        elif enabled and set(got) != enabled:
            report.add(
                f"served: route {key} on {found['frontend_ip']}:{found['port']} has enabled "
                f"backends {sorted(enabled)}; {len(got)} clients got {got}"
            )
    for e in events:
        if e["kind"] == "final_gone" and e["got"] != "refused":
            report.add(
                f"served: route {(e['app'], e['route'])} was deleted, yet a client of "
                f"{e['ip']}:{e['port']} got {e['got']!r}"
            )
    report.stats["final_routes"] = len(stored)


def _check_route(
    key: RouteKey,
    route: Route,
    found: dict[str, Any] | None,
    names_of: dict[int, str],
    report: Report,
) -> None:
    if found is None:
        if State(False) not in route.states:
            report.add(
                f"final state: route {key} was created and never surely deleted, but is gone"
            )
        return
    state = _stored_state(found, names_of)
    known = {i for s in route.states for i in s.ids()}
    extra = [b for b in state.backends if b[0] not in known]
    wildcards = list(route.wildcards)
    for backend in extra:
        if backend[1] in wildcards and backend[2] == "enabled":
            wildcards.remove(backend[1])
        else:
            report.add(f"final state: route {key} has backend {backend}, which no write made")
            return
    state = State(True, state.tag, frozenset(b for b in state.backends if b[0] in known))
    if state not in route.states:
        report.add(
            f"final state: route {key} is {_show(state)}; the writes answered allow only "
            + " or ".join(_show(s) for s in sorted(route.states, key=repr))
        )


def _show(state: State) -> str:
    if not state.exists:
        return "deleted"
    return f"tag {state.tag} with backends {sorted(state.backends)}"


# -- ids and addresses ---------------------------------------------------------------------


def _check_ids_and_ports(events: list[Event], report: Report) -> None:
    ids: dict[RouteKey, Event] = {}
    deletes: dict[RouteKey, float] = {}
    for e in events:
        if e["kind"] == "op" and e["op"] == "delete_route" and e["outcome"] in ATTEMPTED:
            deletes.setdefault((e["app"], e["route"]), e["start"])
    for e in events:
        body = e.get("body")
        if (
            e["kind"] != "op"
            or e["op"] != "create"
            or not isinstance(body, dict)
            or "id" not in body
        ):
            continue
        key = (e["app"], body["id"])
        if key in ids:
            report.add(
                f"ids: route id {key} was given to two creates (t={ids[key]['t']} and t={e['t']})"
            )
        ids[key] = e
    for address, routes in _addresses(events).items():
        for (earlier, _), (later, _) in pairwise(routes):
            created = ids[later]["start"]
            if deletes.get(earlier, float("inf")) > ids[later]["end"]:
                report.add(
                    f"ports: {address} was given to route {earlier} and then to {later} "
                    f"(created from t={created}) while {earlier} was not being deleted"
                )


# -- one node per IP ----------------------------------------------------------------------


def _check_overlaps(events: list[Event], report: Report) -> None:
    for e in events:
        if e["kind"] == "overlap":
            report.add(f"two processes listened on {e['ip']} at t={e['t']}: {e['pids']}")
    by_ip: dict[str, list[Event]] = defaultdict(list)
    for e in events:
        if e["kind"] == "serving":
            by_ip[e["ip"]].append(e)
    for ip, spans in by_ip.items():
        spans.sort(key=lambda s: s["from"])
        for a, b in pairwise(spans):
            if b["from"] < a["until"]:
                report.add(
                    f"IP {ip} was served by node {a['node']} (incarnation {a['incarnation']}) "
                    f"until {a['until']} and by node {b['node']} (incarnation "
                    f"{b['incarnation']}) from {b['from']}"
                )
    report.stats["listen_probes"] = sum(e["rounds"] for e in events if e["kind"] == "listen_probes")


def _check_steady(
    events: list[Event], setup: dict[str, Event], ips: list[str], report: Report
) -> None:
    spared_ip = ips[setup["spared"]["node"]]
    names = set(setup["steady_routes"]["names"])
    total = failed = 0
    for e in events:
        if e["kind"] != "steady":
            continue
        if e["ip"] != spared_ip:
            continue
        total += 1
        if e["got"] not in names:
            failed += 1
            if failed <= 5:
                report.add(
                    f"steady: a client of the never-changed route on {e['ip']} (its node never "
                    f"killed) got {e['got']!r} at t={e['t']}"
                )
    report.stats["steady_connections"] = total
    if failed > 5:
        report.add(f"steady: {failed} of {total} connections failed in all")
