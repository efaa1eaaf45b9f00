"""control.routes: the route service's ordering rules, without sockets.

The store is a real one (``memory://``), wrapped so that every call is recorded and yields
to the loop first (as a store over the network does). The data plane, the workers, the
probes and the placement are stand-ins that record what they are asked, into the same
journal: the tests read the order of events.
"""

from __future__ import annotations

import asyncio
import errno
from collections.abc import Awaitable, Callable, Collection, Mapping
from typing import Any

import pytest

from restcp.control.known import KnownRoutes
from restcp.control.routes import RouteService
from restcp.errors import (
    Conflict,
    DuplicateBackend,
    Forbidden,
    NotFound,
    NotYetApplied,
    Unavailable,
)
from restcp.model import Backend, BackendStatus, Route, RouteKey, RouteSettings
from restcp.settings import Settings
from restcp.store import Store, open_store

IP = "127.0.0.1"
OTHER = "127.0.0.9"
DENIED = "169.254.169.254"
Journal = list[tuple[str, Any]]


class RecordingStore:
    """A store whose calls are journaled, each after a turn of the loop; ``fail`` makes the
    named method raise that error instead (once)."""

    WRITES = frozenset(
        ("create_route", "update_route", "delete_route", "add_backend", "update_backend",
         "delete_backend", "add_toxic", "update_toxic", "delete_toxic", "set_port_cursor")
    )  # fmt: skip

    def __init__(self, store: Store, journal: Journal) -> None:
        self._store = store
        self._journal = journal
        self.fail: dict[str, Exception] = {}

    def __getattr__(self, name: str) -> Callable[..., Awaitable[Any]]:
        method = getattr(self._store, name)

        async def call(*args: Any) -> Any:
            await asyncio.sleep(0)
            self._journal.append((f"store.{name}", args[:2]))
            error = self.fail.pop(name, None)
            if error is not None:
                raise error
            return await method(*args)

        return call


class FakeSocket:
    def __init__(self, port: int) -> None:
        self.port = port
        self.closed = False

    def close(self) -> None:
        self.closed = True


class FakePlane:
    """A data plane that binds nothing: ``taken`` ports refuse a bind; ``held`` makes
    ``serve`` wait until it is set."""

    def __init__(self, journal: Journal) -> None:
        self._journal = journal
        self._running: dict[RouteKey, Route] = {}
        self.taken: set[int] = set()
        self.sockets: list[FakeSocket] = []
        self.held: asyncio.Event | None = None
        self.serving = asyncio.Event()
        self.api_address: tuple[str, int] | None = None

    def bind(self, ip: str, port: int) -> FakeSocket:
        self._journal.append(("plane.bind", port))
        if port in self.taken:
            raise OSError(errno.EADDRINUSE, "Address already in use")
        sock = FakeSocket(port)
        self.sockets.append(sock)
        return sock

    def refusal(self, ip: str, port: int) -> str | None:
        return "denied" if ip == DENIED else None

    def running(self) -> Mapping[RouteKey, Route]:
        return self._running

    def backends_on(self, port: int) -> set[RouteKey]:
        return set()

    def backend_status(self, key: RouteKey) -> Mapping[int, BackendStatus]:
        return {}

    async def serve(self, route: Route, sock: FakeSocket) -> None:
        self._journal.append(("plane.serve", route.key))
        self.serving.set()
        if self.held is not None:
            await self.held.wait()
        self._running[route.key] = route

    async def apply(
        self, desired: Mapping[RouteKey, Route], only: Collection[RouteKey] | None = None
    ) -> None:
        self._journal.append(("plane.apply", tuple(desired.values())))
        for key in list(self._running) if only is None else only:
            self._running.pop(key, None)
        self._running.update(desired)


class FakeWorkers:
    def __init__(self, journal: Journal) -> None:
        self._journal = journal

    def route(self, key: RouteKey, route: Route | None) -> None:
        self._journal.append(("workers.route", route))

    def routes(self, routes: Mapping[RouteKey, Route]) -> None:
        self._journal.append(("workers.routes", dict(routes)))

    async def settle(self) -> None:
        self._journal.append(("workers.settle", None))


class FakeProbes:
    async def sync(self, only: Collection[RouteKey] | None = None) -> None:
        pass


class Elsewhere:
    """Stands in for the placement's cluster half, for routes of an IP another node serves
    (``OTHER``): that node found alive (or ``away``), told of a change, and acknowledging
    it (or not: ``acked``)."""

    def __init__(self, journal: Journal, service: RouteService) -> None:
        self._journal = journal
        self._locked = service._lock.locked
        self.away = False
        self.acked = True

    async def require_server(self, ip: str) -> None:
        self._journal.append(("require", (ip, self._locked())))
        if self.away:
            raise Unavailable(f"no live node serves frontend_ip {ip}; nothing was stored")

    async def announce(self, key: RouteKey, ip: str, route: Route | None) -> bool:
        self._journal.append(("announce", (route, self._locked())))
        return self.acked


class Harness:
    def __init__(self) -> None:
        self.journal: Journal = []
        self.real_store = open_store("memory://")
        self.store = RecordingStore(self.real_store, self.journal)
        self.plane = FakePlane(self.journal)
        settings = Settings(store="memory://", port_range=(20000, 20009))
        self.routes = RouteService(
            self.store,  # type: ignore[arg-type]
            settings,
            self.plane,  # type: ignore[arg-type]
            FakeWorkers(self.journal),  # type: ignore[arg-type]
            FakeProbes(),  # type: ignore[arg-type]
            KnownRoutes(None, settings.frontend_ips),
        )
        self.elsewhere = Elsewhere(self.journal, self.routes)
        placement: Any = self.routes.placement
        placement.require_server = self.elsewhere.require_server
        placement.announce = self.elsewhere.announce

    def events(self, *prefixes: str) -> list[str]:
        return [name for name, _ in self.journal if name.startswith(prefixes)]

    async def route(self, port: int | None = None) -> Route:
        return await self.routes.create_route("a", None, port, RouteSettings())

    async def remote_route(self) -> Route:
        """A route of an IP another node serves, stored as that node would."""
        return await self.real_store.create_route("a", OTHER, 30000, RouteSettings())

    def reset(self) -> None:
        self.journal.clear()


def run(scenario: Callable[[Harness], Awaitable[None]]) -> None:
    async def main() -> None:
        harness = Harness()
        try:
            await scenario(harness)
        finally:
            await harness.real_store.close()

    asyncio.run(main())


# -- creates: bind, then store ---------------------------------------------------------


def test_a_create_binds_then_stores_then_serves() -> None:
    async def scenario(h: Harness) -> None:
        route = await h.route()
        assert route.port == 20000
        assert h.events("plane.", "store.create_route") == [
            "plane.bind", "store.create_route", "plane.serve"
        ]  # fmt: skip
        # Answered once the workers applied it too.
        assert h.events("plane.serve", "workers.")[-2:] == ["workers.route", "workers.settle"]

    run(scenario)


def test_a_create_whose_port_is_taken_stores_nothing_not_even_an_id() -> None:
    async def scenario(h: Harness) -> None:
        h.plane.taken.add(20005)
        with pytest.raises(Conflict, match=r"port 20005 of 127\.0\.0\.1 cannot be bound"):
            await h.route(20005)
        assert "store.create_route" not in h.events("store.")
        assert await h.real_store.all_routes() == []
        # The id the failed create would have had is the next one's.
        assert (await h.route()).id == 1

    run(scenario)


def test_a_create_with_no_free_port_left_moves_no_cursor() -> None:
    async def scenario(h: Harness) -> None:
        h.plane.taken.update(range(20000, 20010))
        with pytest.raises(Conflict, match="no free port left in 20000-20009"):
            await h.route()
        assert h.events("store.") == ["store.ports_in_use", "store.get_port_cursor"]
        assert await h.real_store.get_port_cursor(IP) is None

    run(scenario)


def test_a_create_the_store_refuses_closes_its_socket_and_serves_nothing() -> None:
    async def scenario(h: Harness) -> None:
        h.store.fail["create_route"] = Unavailable("the store is away")
        with pytest.raises(Unavailable):
            await h.route(20003)
        assert [s.closed for s in h.plane.sockets] == [True]
        assert "plane.serve" not in h.events("plane.")
        assert h.plane.running() == {}

    run(scenario)


# -- changes: store, then apply, then (served elsewhere) announce and wait ---------------


def test_a_change_of_a_route_served_here_is_stored_then_applied_and_told_to_nobody() -> None:
    async def scenario(h: Harness) -> None:
        route = await h.route()
        h.reset()
        changed = await h.routes.update_route(route.key, lambda s: s.replace(connect_timeout=1.5))
        assert changed.settings.connect_timeout == 1.5
        assert h.events("store.", "plane.", "workers.", "require", "announce") == [
            "store.get_route",  # read to edit
            "store.update_route",
            "store.get_route",  # read back: what is applied is what is stored
            "plane.apply",
            "workers.route",
            "workers.settle",
        ]
        applied = next(arg for name, arg in h.journal if name == "plane.apply")
        assert applied == (changed,)

    run(scenario)


def test_a_change_of_a_route_another_node_serves_waits_for_it_outside_the_lock() -> None:
    async def scenario(h: Harness) -> None:
        route = await h.remote_route()
        h.reset()
        changed = await h.routes.update_route(route.key, lambda s: s.replace(connect_timeout=1.5))
        assert h.events("store.", "plane.", "workers.", "require", "announce") == [
            "store.get_route",  # its frontend IP
            "require",  # that IP's node is alive, before anything is stored
            "store.get_route",
            "store.update_route",
            "store.get_route",
            "plane.apply",  # serves nothing of it here
            "workers.route",
            "workers.settle",
            "announce",
        ]
        # Outside the lock: finding that node alive may wait a moment for it (a pub/sub
        # reconnection), and writes of other routes do not wait with it.
        assert ("require", (OTHER, False)) in h.journal
        # Announced with the route as stored, once the lock is free again; the serving
        # node acknowledged it, so the write answers.
        assert h.journal[-1] == ("announce", (changed, False))
        assert h.plane.running() == {}

    run(scenario)


def test_a_change_the_serving_node_does_not_acknowledge_in_time_is_stored_and_202() -> None:
    async def scenario(h: Harness) -> None:
        route = await h.remote_route()
        h.elsewhere.acked = False
        with pytest.raises(NotYetApplied) as pending:
            await h.routes.add_backend(route.key, Backend(0, IP, 9000))
        assert pending.value.result == Backend(1, IP, 9000)
        assert pending.value.frontend_ip == OTHER
        assert (await h.real_store.get_route(*route.key)).backends == (Backend(1, IP, 9000),)

    run(scenario)


def test_a_change_of_a_route_no_live_node_serves_stores_nothing() -> None:
    async def scenario(h: Harness) -> None:
        route = await h.remote_route()
        h.elsewhere.away = True
        h.reset()
        with pytest.raises(Unavailable, match="nothing was stored"):
            await h.routes.add_backend(route.key, Backend(0, IP, 9000))
        with pytest.raises(Unavailable, match="nothing was stored"):
            await h.routes.delete_route(route.key)
        assert [n for n in h.events("store.") if n.removeprefix("store.") in h.store.WRITES] == []
        assert h.events("plane.", "workers.", "announce") == []
        assert await h.real_store.get_route(*route.key) == route

    run(scenario)


def test_a_failed_change_applies_and_announces_nothing() -> None:
    async def scenario(h: Harness) -> None:
        route = await h.route()
        remote = await h.remote_route()
        h.reset()
        with pytest.raises(NotFound, match="backend 7 of route 1"):
            await h.routes.update_backend(route.key, 7, lambda b: b.replace(weight=2))
        with pytest.raises(NotFound):
            await h.routes.delete_route(("a", 9))
        with pytest.raises(NotFound, match="backend 7 of route 2"):
            await h.routes.update_backend(remote.key, 7, lambda b: b.replace(weight=2))
        h.store.fail["delete_backend"] = Unavailable("the store is away")
        with pytest.raises(Unavailable):
            await h.routes.delete_backend(route.key, 1)
        assert h.events("plane.", "workers.", "announce") == []

    run(scenario)


def test_a_delete_stops_serving_before_it_answers() -> None:
    async def scenario(h: Harness) -> None:
        route = await h.route()
        remote = await h.remote_route()
        h.reset()
        await h.routes.delete_route(route.key)
        assert h.events("store.delete", "plane.", "workers.route", "announce") == [
            "store.delete_route", "plane.apply", "workers.route"
        ]  # fmt: skip
        assert h.plane.running() == {}
        # Another node's route: once that node has stopped it (None: deleted).
        await h.routes.delete_route(remote.key)
        assert h.journal[-1] == ("announce", (None, False))

    run(scenario)


# -- one lock ---------------------------------------------------------------------------


def test_a_change_waits_for_a_create_being_applied() -> None:
    async def scenario(h: Harness) -> None:
        first = await h.route()
        h.reset()
        h.plane.held = asyncio.Event()
        create = asyncio.create_task(h.route())
        await h.plane.serving.wait()
        change = asyncio.create_task(h.routes.delete_route(first.key))
        # Unlocked, the delete would reach the store within two turns of the loop (each
        # store call yields once): give it many more.
        for _ in range(20):
            await asyncio.sleep(0)
        assert "store.delete_route" not in h.events("store.")
        h.plane.held.set()
        await create
        await change
        events = h.events("plane.serve", "store.delete_route")
        assert events == ["plane.serve", "store.delete_route"]

    run(scenario)


def test_concurrent_edits_of_one_backend_lose_neither() -> None:
    async def scenario(h: Harness) -> None:
        route = await h.route()
        backend = await h.routes.add_backend(route.key, Backend(0, IP, 9000))
        await asyncio.gather(
            h.routes.update_backend(route.key, backend.id, lambda b: b.replace(weight=7)),
            h.routes.update_backend(route.key, backend.id, lambda b: b.replace(state="drain")),
        )
        stored = (await h.real_store.get_route(*route.key)).backend(backend.id)
        assert stored is not None
        assert (stored.weight, stored.state) == (7, "drain")

    run(scenario)


def test_concurrent_adds_cannot_overshoot_the_backend_limit() -> None:
    async def scenario(h: Harness) -> None:
        route = await h.route()
        results = await asyncio.gather(
            *(h.routes.add_backend(route.key, Backend(0, IP, 9000 + i), 2) for i in range(5)),
            return_exceptions=True,
        )
        assert sum(isinstance(r, Backend) for r in results) == 2
        assert all(isinstance(r, Conflict) for r in results if not isinstance(r, Backend))
        assert len((await h.real_store.get_route(*route.key)).backends) == 2

    run(scenario)


# -- the address policy ----------------------------------------------------------------


def test_a_denied_backend_is_refused_before_anything_is_stored() -> None:
    async def scenario(h: Harness) -> None:
        route = await h.route()
        backend = await h.routes.add_backend(route.key, Backend(0, IP, 9000))
        h.reset()
        with pytest.raises(Forbidden):
            await h.routes.add_backend(route.key, Backend(0, DENIED, 80))
        with pytest.raises(Forbidden):
            await h.routes.update_backend(route.key, backend.id, lambda b: b.replace(ip=DENIED))
        assert [n for n in h.events("store.") if n.removeprefix("store.") in h.store.WRITES] == []
        assert h.events("plane.", "workers.", "announce") == []

    run(scenario)


def test_a_second_backend_at_one_address_is_refused_and_applies_nothing() -> None:
    async def scenario(h: Harness) -> None:
        route = await h.route()
        first = await h.routes.add_backend(route.key, Backend(0, IP, 9000))
        other = await h.routes.add_backend(route.key, Backend(0, IP, 9001))
        h.reset()
        with pytest.raises(DuplicateBackend, match=r"backend 1 of route 1 .* 127\.0\.0\.1:9000"):
            await h.routes.add_backend(route.key, Backend(0, IP, 9000), 10)
        with pytest.raises(DuplicateBackend):
            await h.routes.update_backend(route.key, other.id, lambda b: b.replace(port=9000))
        assert h.events("plane.", "workers.", "announce") == []
        stored = await h.real_store.get_route(*route.key)
        assert [(b.id, b.port) for b in stored.backends] == [(first.id, 9000), (other.id, 9001)]
        # A backend that keeps its address may change the rest.
        kept = await h.routes.update_backend(route.key, first.id, lambda b: b.replace(weight=4))
        assert (kept.port, kept.weight) == (9000, 4)

    run(scenario)
