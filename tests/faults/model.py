"""What each route may be, given the writes recorded so far.

Writes to one route are made one at a time (the workload holds a lock per route), so a
route's writes are a sequence. A write whose answer is certain moves every possible state of
the route; one whose outcome is unknown (a reset, a timeout, a 5xx that does not say
nothing was stored) may or may not have happened, so the states it would make join the ones
there were. A route is therefore a set of possible states; the checker wants the state the
cluster ends in, and every read-your-writes check, to be one of them.

How an answer counts (``outcome``)::

    ok       2xx (a create's 201): the write happened
    stored   202 to a change: stored, the serving node had not applied it in time
    maybe    202 to a create: handed to the serving node, which may store it or not
    unknown  no answer (reset, timeout), or a 5xx that does not say nothing was stored
    none     4xx, a 503 "nothing was stored", or a connection refused: nothing happened

A 404 for a route that surely existed proves it deleted: route ids are never given out
again, so a delete of unknown outcome is then known to have happened.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from tests.faults.history import Event

RouteKey = tuple[str, int]
CERTAIN = ("ok", "stored")
UNCERTAIN = ("maybe", "unknown")


def outcome(op: str, status: int | None, body: Any, error: str | None) -> str:
    if status is None:
        return "none" if error == "refused" else "unknown"
    if status == 202:
        return "maybe" if op == "create" else "stored"
    if 200 <= status < 300:
        return "ok"
    if status < 500:
        return "none"
    detail = body.get("detail", "") if isinstance(body, dict) else ""
    return "none" if status == 503 and "nothing was stored" in detail else "unknown"


def route_not_found(op: Event) -> bool:
    """Whether a write to a route was answered 404 for the route itself (not a backend)."""
    detail = _object(op.get("body")).get("detail", "")
    return op["status"] == 404 and detail.startswith(f"route {op.get('route')} of app ")


def _object(body: Any) -> dict[str, Any]:
    """An answer's JSON object; {} for anything else (none, a text, a list)."""
    return body if isinstance(body, dict) else {}


@dataclass(frozen=True)
class State:
    """One possible state of a route: whether it exists, its tag (the ``idle_timeout`` each
    write of its settings sets to a value of its own), its backends as (id, name, state)."""

    exists: bool
    tag: float | None = None
    backends: frozenset[tuple[int, str, str]] = frozenset()

    def enabled(self) -> set[str]:
        return {name for _, name, state in self.backends if state == "enabled"}

    def ids(self) -> set[int]:
        return {backend_id for backend_id, _, _ in self.backends}

    def with_backend(self, backend_id: int, name: str, state: str) -> State:
        kept = {b for b in self.backends if b[0] != backend_id}
        return replace(self, backends=frozenset({*kept, (backend_id, name, state)}))

    def without_backend(self, backend_id: int) -> State:
        return replace(self, backends=frozenset(b for b in self.backends if b[0] != backend_id))


GONE = State(False)


@dataclass
class Route:
    app: str
    id: int
    ip: str
    port: int | None
    states: set[State]
    # Names of backends added with an unknown outcome: no id is known for them, so they may
    # be there (once each) or not, and no later write touches them.
    wildcards: list[str] = field(default_factory=list)
    # Whether it was surely stored at some point (a 201, or a change answered 2xx or 202).
    existed: bool = False

    @property
    def key(self) -> RouteKey:
        return (self.app, self.id)

    def may_exist(self) -> bool:
        return any(s.exists for s in self.states)

    def surely_exists(self) -> bool:
        return all(s.exists for s in self.states)

    def backend_ids(self) -> set[int]:
        return {i for s in self.states for i in s.ids()}

    def backend(self, backend_id: int) -> str | None:
        """The state a backend may have (for a write choosing what to change)."""
        for s in self.states:
            for b in s.backends:
                if b[0] == backend_id:
                    return b[2]
        return None


@dataclass
class Expectation:
    """What a client connecting to a route sees now: refused, or one of ``names`` (a
    backend's banner), or nothing at all (``empty``: no enabled backend is a possibility)."""

    refused: bool
    names: frozenset[str] = frozenset()
    empty: bool = False

    def allows(self, got: str) -> bool:
        if self.refused:
            return got == "refused"
        return got in self.names or (self.empty and got == "")

    def as_json(self) -> dict[str, Any]:
        return {"refused": self.refused, "names": sorted(self.names), "empty": self.empty}


class Model:
    def __init__(self) -> None:
        self.routes: dict[RouteKey, Route] = {}
        # Creates with an unknown outcome and no id: (app, ip, tag) of a route that may exist.
        self.maybe_creates: list[tuple[str, str, float]] = []

    def apply(self, op: Event) -> None:
        """Move the model by one recorded write (an ``op`` event with its ``outcome``)."""
        kind, result = op["op"], op["outcome"]
        if result == "none":
            self._not_found(op)
            return
        if kind == "create":
            body = _object(op.get("body"))
            if "id" not in body:
                self.maybe_creates.append((op["app"], op["ip"], op["tag"]))
                return
            created = State(True, op["tag"])
            states = {created} if result in CERTAIN else {created, GONE}
            route = Route(op["app"], body["id"], op["ip"], body.get("port"), states)
            route.existed = result in CERTAIN
            self.routes[route.key] = route
            return
        route = self.routes[(op["app"], op["route"])]
        # An answered change proves the route was stored then.
        route.existed = route.existed or result in CERTAIN
        if kind == "add_backend" and "id" not in _object(op.get("body")):
            route.wildcards.append(op["name"])  # no id known: it may be there or not
            return
        moved = {self._move(s, op) for s in route.states}
        route.states = moved if result in CERTAIN else route.states | moved

    def _not_found(self, op: Event) -> None:
        """A 404 for a route that surely existed once: it is deleted for good (ids are never
        given out again), whatever write of unknown outcome deleted it. (One whose create
        is still unknown may yet be stored: a 404 proves nothing of it.)"""
        route = self.routes.get((op["app"], op.get("route") or 0))
        if route is not None and route.existed and route_not_found(op):
            route.states = {GONE}

    @staticmethod
    def _move(s: State, op: Event) -> State:
        kind = op["op"]
        if not s.exists:
            return s
        if kind == "delete_route":
            return GONE
        if kind == "patch_route":
            return replace(s, tag=op["tag"])
        if kind == "add_backend":
            return s.with_backend(op["body"]["id"], op["name"], "enabled")
        backend_id = op["backend"]
        if backend_id not in s.ids():
            return s
        if kind == "replace_backend":
            return s.with_backend(backend_id, op["name"], "enabled")
        if kind == "patch_backend":
            name = next(b[1] for b in s.backends if b[0] == backend_id)
            return s.with_backend(backend_id, name, op["state"])
        if kind == "delete_backend":
            return s.without_backend(backend_id)
        raise AssertionError(f"unknown write {kind}")

    def expectation(self, key: RouteKey) -> Expectation | None:
        """What a client of the route must see now; None when the model cannot say (the
        route may exist or not)."""
        route = self.routes[key]
        if not route.may_exist():
            return Expectation(refused=True)
        if not route.surely_exists():
            return None
        names = {n for s in route.states for n in s.enabled()} | set(route.wildcards)
        empty = any(not s.enabled() for s in route.states)
        return Expectation(refused=False, names=frozenset(names), empty=empty)
