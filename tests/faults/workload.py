"""The load of a fault run: writers, the read-your-writes check after each of their 2xx,
and steady clients of routes nobody changes.

A writer picks a write and a node at random (from its own seeded generator), sends it, and
records it with its answer (``op``). After a 2xx it connects to the route at once, through
the route's frontend IP, and records what it got (``ryw``): a change answered is a change
applied by the node serving the route, so this client must already see it. Writes to one
route are made one at a time (``busy``), so that each route's history is a sequence the
model can follow; writes to different routes run side by side.
"""

from __future__ import annotations

import json
import random
import socket
import threading
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from tests.e2e.peers import Backend, sender
from tests.faults.cluster import IPS, FaultCluster
from tests.faults.history import Event, History
from tests.faults.model import Model, Route, RouteKey, outcome, route_not_found

APPS = ("web", "db")
BACKENDS = ("b0", "b1", "b2", "b3", "b4")
STEADY = ("s0", "s1")
# Seconds a write may take: a node paused by the nemesis answers when it is resumed.
HTTP_TIMEOUT = 15.0
# The routes that may exist at once: beyond it, writers delete more than they create.
MAX_ROUTES = 24
# Possible states beyond which a route gets no more writes (each unknown outcome may double
# them).
MAX_STATES = 32
# Seconds a writer waits after a write of unknown outcome.
BACKOFF = 0.2
WEIGHTS = {
    "create": 14,
    "patch_route": 10,
    "delete_route": 6,
    "add_backend": 24,
    "replace_backend": 16,
    "patch_backend": 16,
    "delete_backend": 10,
}


@dataclass(frozen=True)
class Target:
    """A node a write is sent to: its index, and its API as it was when chosen."""

    index: int
    api: str


def probe(ip: str, port: int, timeout: float = 3.0) -> str:
    """What a client of ``ip:port`` gets: a backend's banner, "" (closed without a word),
    "refused", or "error: ..." (a reset, a timeout)."""
    try:
        sock = socket.create_connection((ip, port), timeout=timeout)
    except ConnectionRefusedError:
        return "refused"
    except OSError as err:
        return f"error: {err}"
    with sock:
        chunks = bytearray()
        try:
            while data := sock.recv(4096):
                chunks += data
        except OSError as err:
            return f"error: {err}"
        return chunks.decode(errors="replace")


def call(base: str, method: str, path: str, body: Any = None) -> tuple[int | None, Any, str | None]:
    """(status, parsed body, error): error "refused" when the request never reached the
    node, else why there was no answer."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(base + path, data=data, method=method)
    try:
        with urllib.request.urlopen(request, timeout=HTTP_TIMEOUT) as response:
            return response.status, _parse(response.read()), None
    except urllib.error.HTTPError as err:
        with err:
            return err.code, _parse(err.read()), None
    except urllib.error.URLError as err:
        if isinstance(err.reason, ConnectionRefusedError):
            return None, None, "refused"
        return None, None, str(err.reason)
    except OSError as err:
        return None, None, str(err)


def _parse(raw: bytes) -> Any:
    try:
        return json.loads(raw) if raw else None
    except ValueError:
        return raw.decode(errors="replace")


class Workload:
    def __init__(self, cluster: FaultCluster, history: History, seed: int) -> None:
        self.cluster = cluster
        self.history = history
        self.seed = seed
        self.model = Model()
        self.backends: dict[str, Backend] = {}
        self.steady: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._busy: set[RouteKey] = set()
        # Routes whose create is of unknown outcome and which a write found missing: they
        # may appear yet (the checker allows it), but writing to them is no use.
        self._retired: set[RouteKey] = set()
        self._ops = 0
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._errors: list[BaseException] = []

    # -- setup ---------------------------------------------------------------------------

    def start_backends(self) -> None:
        for name in (*BACKENDS, *STEADY):
            self.backends[name] = Backend(sender(name.encode()))
        self.history.add("backends", ports={name: b.port for name, b in self.backends.items()})

    def create_steady_routes(self) -> None:
        """One route per IP with two backends, created before the faults and never written
        again: their clients must never fail on a node that is never killed."""
        for slot in self.cluster.slots:
            body = {"frontend_ip": slot.ip, "balance": "round_robin"}
            status, route, _ = call(slot.api, "PUT", "/apps/steady/routes", body)
            assert status == 201, route
            for name in STEADY:
                body = {"ip": "127.0.0.1", "port": self.backends[name].port}
                path = f"/apps/steady/routes/{route['id']}/backends"
                status, answer, _ = call(slot.api, "PUT", path, body)
                assert status == 201, answer
            self.steady.append({"ip": slot.ip, "port": route["port"], "route": route["id"]})
        self.history.add("steady_routes", routes=self.steady, names=list(STEADY))

    def close(self) -> None:
        for backend in self.backends.values():
            backend.close()

    # -- running -------------------------------------------------------------------------

    def start(self, writers: int) -> None:
        for index in range(writers):
            rng = random.Random(f"{self.seed}-writer-{index}")
            self._spawn(lambda rng=rng, index=index: self._write_forever(rng, index))
        for steady in self.steady:
            self._spawn(lambda steady=steady: self._steady_client(steady))

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=HTTP_TIMEOUT + 10)
            assert not thread.is_alive(), "a workload thread did not stop"
        if self._errors:
            raise self._errors[0]

    def _spawn(self, target: Callable[[], None]) -> None:
        def guarded() -> None:
            try:
                target()
            except BaseException as err:  # reported by stop(), in the test's thread
                self._errors.append(err)
                self._stop.set()

        thread = threading.Thread(target=guarded, daemon=True)
        self._threads.append(thread)
        thread.start()

    def _steady_client(self, steady: dict[str, Any]) -> None:
        while not self._stop.is_set():
            got = probe(steady["ip"], steady["port"])
            self.history.add("steady", ip=steady["ip"], route=steady["route"], got=got)
            self._stop.wait(0.02)  # a client's pace, not a wait for anything

    def _write_forever(self, rng: random.Random, worker: int) -> None:
        while not self._stop.is_set():
            if self.write_once(rng, worker) == "unknown":
                # As a client would, back off a little after a 5xx or no answer (Redis or
                # the node is away), rather than pile up writes of unknown outcome.
                self._stop.wait(BACKOFF)

    # -- one write -------------------------------------------------------------------------

    def write_once(self, rng: random.Random, worker: int) -> str | None:
        """One write and its check; its outcome (None: no node was up to take it)."""
        kind = rng.choices(list(WEIGHTS), weights=list(WEIGHTS.values()))[0]
        with self._lock:
            # A route many unknown outcomes made too uncertain to follow is left alone.
            live = [
                r
                for r in self.model.routes.values()
                if r.may_exist() and r.key not in self._retired and len(r.states) <= MAX_STATES
            ]
            free = [r for r in live if r.key not in self._busy]
            if kind == "create" and len(live) + len(self.model.maybe_creates) >= MAX_ROUTES:
                kind = "delete_route"
            route = rng.choice(free) if free and kind != "create" else None
            if kind != "create" and route is None:
                kind = "create"
            if route is not None:
                self._busy.add(route.key)
            self._ops += 1
            number = self._ops
        try:
            slot = self._node(rng)
            if slot is None:
                return None
            if route is not None and route.port is None:
                self._find_port(slot, route.key)
            op = self._op(rng, kind, route.key if route else None, number)
            return self._send(slot, {**op, "seq": number})
        finally:
            if route is not None:
                with self._lock:
                    self._busy.discard(route.key)

    def _node(self, rng: random.Random) -> Target | None:
        """A live node, as it is now: the nemesis may kill it while a write is on its way,
        which then meets a refused or cut connection, as a client would."""
        with self.cluster.lock:
            alive = [Target(s.index, s.api) for s in self.cluster.slots if s.alive]
        return rng.choice(alive) if alive else None

    def _op(self, rng: random.Random, kind: str, key: RouteKey | None, number: int) -> Event:
        tag = float(1000 + number)  # unique per write
        if kind == "create":
            return {"op": kind, "app": rng.choice(APPS), "ip": rng.choice(IPS), "tag": tag}
        assert key is not None
        op: Event = {"op": kind, "app": key[0], "route": key[1]}
        if kind == "patch_route":
            return {**op, "tag": tag}
        if kind in ("delete_route",):
            return op
        if kind == "add_backend":
            return {**op, "name": rng.choice(BACKENDS)}
        with self._lock:
            route = self.model.routes[key]
            ids = sorted(route.backend_ids())
            if not ids:
                return {
                    "op": "add_backend",
                    "app": key[0],
                    "route": key[1],
                    "name": rng.choice(BACKENDS),
                }
            backend_id = rng.choice(ids)
            state = route.backend(backend_id)
        op["backend"] = backend_id
        if kind == "replace_backend":
            return {**op, "name": rng.choice(BACKENDS)}
        if kind == "patch_backend":
            return {**op, "state": "disabled" if state == "enabled" else "enabled"}
        return op

    def _request(self, op: Event) -> tuple[str, str, Any]:
        app, kind = op["app"], op["op"]
        routes = f"/apps/{app}/routes"
        if kind == "create":
            body = {"frontend_ip": op["ip"], "balance": "round_robin", "idle_timeout": op["tag"]}
            return "PUT", routes, body
        path = f"{routes}/{op['route']}"
        if kind == "patch_route":
            return "PATCH", path, {"idle_timeout": op["tag"]}
        if kind == "delete_route":
            return "DELETE", path, None
        backend = {"ip": "127.0.0.1", "port": self.backends[op.get("name", "b0")].port}
        if kind == "add_backend":
            return "PUT", f"{path}/backends", backend
        path = f"{path}/backends/{op['backend']}"
        if kind == "replace_backend":
            return "PUT", path, backend
        if kind == "patch_backend":
            return "PATCH", path, {"state": op["state"]}
        return "DELETE", path, None

    def _send(self, slot: Target, op: Event) -> str:
        method, path, body = self._request(op)
        start = self.history.now()
        status, answer, error = call(slot.api, method, path, body)
        result = outcome(op["op"], status, answer, error)
        with self._lock:
            event = self.history.add(
                "op",
                **op,
                node=slot.index,
                start=start,
                end=self.history.now(),
                status=status,
                body=answer,
                error=error,
                outcome=result,
            )
            self.model.apply(event)
            if op["op"] != "create" and route_not_found(event):
                key = (op["app"], op["route"])
                if self.model.routes[key].may_exist():
                    self._retired.add(key)
            route_id = op.get("route")
            if op["op"] == "create" and isinstance(answer, dict) and "id" in answer:
                # A new route: no other writer may touch it before its check is done.
                route_id = answer["id"]
                self._busy.add((op["app"], route_id))
            route = None if route_id is None else self.model.routes.get((op["app"], route_id))
        try:
            if result == "ok" and route is not None and route.port is not None:
                self._check(op, route)
        finally:
            if op["op"] == "create" and route is not None:
                with self._lock:
                    self._busy.discard(route.key)
        return result

    def _check(self, op: Event, route: Route) -> None:
        """Read-your-writes: a client connects to the route right after the answer."""
        assert route.port is not None
        started = self.history.now()
        got = probe(route.ip, route.port)
        self.history.add(
            "ryw",
            op=op["seq"],
            app=route.app,
            route=route.id,
            ip=route.ip,
            port=route.port,
            start=started,
            end=self.history.now(),
            got=got,
        )

    def _find_port(self, slot: Target, key: RouteKey) -> None:
        """A route created with a 202 has no port known yet: ask for it."""
        status, answer, _ = call(slot.api, "GET", f"/apps/{key[0]}/routes/{key[1]}")
        if status == 200 and isinstance(answer, dict):
            with self._lock:
                self.model.routes[key].port = answer["port"]
            self.history.add("port", app=key[0], route=key[1], port=answer["port"])
