"""The Store contract (src/restcp/store/base.py), run against every implementation."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from restcp.errors import Conflict, DuplicateBackend, NotFound
from restcp.model import Backend, BackendTls, HealthCheck, Route, RouteSettings
from restcp.store import AppInfo
from tests.contract.conftest import SyncStore

IP = "127.0.0.1"
IP6 = "::1"
DEFAULT = RouteSettings()


def snapshot(store: SyncStore) -> Any:
    """Everything a store can be asked, to show that a failed call changed nothing."""
    return (
        sorted(store.list_apps(), key=lambda a: a.app),
        sorted(store.all_routes(), key=lambda r: r.key),
        {ip: (store.ports_in_use(ip), store.get_port_cursor(ip)) for ip in (IP, IP6)},
    )


def create(store: SyncStore, app: str, port: int, ip: str = IP, **settings: Any) -> Route:
    route: Route = store.create_route(app, ip, port, DEFAULT.replace(**settings))
    return route


# -- ids -----------------------------------------------------------------------------------


def test_ids_count_from_one_per_app_and_per_route(store: SyncStore) -> None:
    assert [create(store, "a", p).id for p in (10000, 10001, 10002)] == [1, 2, 3]
    assert [create(store, "b", p).id for p in (10003, 10004)] == [1, 2]
    assert [store.add_backend("a", 1, Backend(0, IP, 9000 + i)).id for i in range(3)] == [1, 2, 3]
    assert [store.add_backend("a", 2, Backend(0, IP, 9000 + i)).id for i in range(2)] == [1, 2]
    assert store.add_backend("b", 1, Backend(0, IP, 9000)).id == 1


def test_route_ids_are_never_reused(store: SyncStore) -> None:
    for port in (10000, 10001, 10002):
        create(store, "a", port)
    store.delete_route("a", 3)
    store.delete_route("a", 2)
    assert create(store, "a", 10002).id == 4
    store.delete_route("a", 1)
    store.delete_route("a", 4)
    assert store.list_routes("a") == []
    # The app outlives its routes, and so does its counter.
    assert create(store, "a", 10000).id == 5
    # Another app's counter is its own.
    assert create(store, "b", 10001).id == 1


def test_backend_ids_are_never_reused(store: SyncStore) -> None:
    create(store, "a", 10000)
    for port in (9000, 9001, 9002):
        store.add_backend("a", 1, Backend(0, IP, port))
    store.delete_backend("a", 1, 3)
    store.delete_backend("a", 1, 1)
    assert store.add_backend("a", 1, Backend(0, IP, 9003)).id == 4
    store.delete_backend("a", 1, 2)
    store.delete_backend("a", 1, 4)
    assert store.add_backend("a", 1, Backend(0, IP, 9004)).id == 5
    assert store.get_route("a", 1).backends == (Backend(5, IP, 9004),)


# -- reads -----------------------------------------------------------------------------


def test_a_new_store_is_empty(store: SyncStore) -> None:
    assert store.list_apps() == []
    assert store.all_routes() == []
    assert store.ports_in_use(IP) == set()
    assert store.get_port_cursor(IP) is None


def test_list_routes(store: SyncStore) -> None:
    with pytest.raises(NotFound):
        store.list_routes("a")
    first = create(store, "a", 10000)
    second = create(store, "a", 10001, ip=IP6, balance="round_robin")
    create(store, "b", 10002)
    store.add_backend("a", 2, Backend(0, IP6, 9000))
    assert store.list_routes("a") == [
        first,
        Route("a", 2, IP6, 10001, second.settings, (Backend(1, IP6, 9000),)),
    ]
    store.delete_route("a", 1)
    store.delete_route("a", 2)
    # An app whose routes were all deleted still exists: it lists as empty.
    assert store.list_routes("a") == []
    with pytest.raises(NotFound):
        store.list_routes("c")


def test_get_route_has_its_backends_in_id_order(store: SyncStore) -> None:
    created = create(store, "a", 10000, connect_timeout=1.5)
    assert created == Route("a", 1, IP, 10000, DEFAULT.replace(connect_timeout=1.5))
    assert store.get_route("a", 1) == created
    added = [
        store.add_backend("a", 1, Backend(0, ip, port)) for ip, port in ((IP, 9001), (IP6, 9000))
    ]
    assert added == [Backend(1, IP, 9001), Backend(2, IP6, 9000)]
    assert store.get_route("a", 1).backends == tuple(added)


def test_list_apps_counts_routes(store: SyncStore) -> None:
    create(store, "b", 10000)
    create(store, "a", 10001)
    create(store, "b", 10002)
    create(store, "c", 10003)
    store.delete_route("c", 1)
    assert sorted(store.list_apps(), key=lambda a: a.app) == [
        AppInfo("a", 1),
        AppInfo("b", 2),
        AppInfo("c", 0),
    ]


def test_all_routes_spans_apps(store: SyncStore) -> None:
    a1 = create(store, "a", 10000)
    create(store, "b", 10001, ip=IP6)
    a2 = create(store, "a", 10002)
    store.add_backend("b", 1, Backend(0, IP, 9000))
    b1 = Route("b", 1, IP6, 10001, DEFAULT, (Backend(1, IP, 9000),))
    assert sorted(store.all_routes(), key=lambda r: r.key) == [a1, a2, b1]


def test_ports_in_use_per_frontend_ip(store: SyncStore) -> None:
    create(store, "a", 10000)
    create(store, "b", 10001)
    create(store, "a", 10000, ip=IP6)
    create(store, "a", 10005)
    store.delete_route("a", 3)
    assert store.ports_in_use(IP) == {10000, 10001}
    assert store.ports_in_use(IP6) == {10000}
    assert store.ports_in_use("10.0.0.1") == set()


def test_port_cursors_are_per_frontend_ip(store: SyncStore) -> None:
    assert store.get_port_cursor(IP) is None
    store.set_port_cursor(IP, 10001)
    assert store.get_port_cursor(IP) == 10001
    assert store.get_port_cursor(IP6) is None
    store.set_port_cursor(IP6, 12000)
    store.set_port_cursor(IP, 10000)
    assert (store.get_port_cursor(IP), store.get_port_cursor(IP6)) == (10000, 12000)


# -- writes ----------------------------------------------------------------------------


def test_update_route_settings_round_trip(store: SyncStore) -> None:
    create(store, "a", 10000)
    store.add_backend("a", 1, Backend(0, IP, 9000))
    for settings in (
        RouteSettings(balance="round_robin", connect_timeout=0.25, idle_timeout=0.0),
        RouteSettings(balance="random", connect_timeout=3600.0, idle_timeout=86400.5),
        # TLS to the backends, every field set, then its defaults.
        RouteSettings(
            backend_tls=BackendTls(
                verify=True,
                ca="-----BEGIN CERTIFICATE-----\n...",
                server_name="db.internal",
                certificate="client",
            )
        ),
        RouteSettings(backend_tls=BackendTls(verify=False)),
        DEFAULT,
    ):
        updated = store.update_route("a", 1, settings)
        assert updated == Route("a", 1, IP, 10000, settings, (Backend(1, IP, 9000),))
        assert store.get_route("a", 1) == updated
        assert store.list_routes("a") == [updated]


def test_create_route_stores_its_settings(store: SyncStore) -> None:
    settings = RouteSettings(balance="round_robin", connect_timeout=2.0, idle_timeout=30.0)
    created = store.create_route("a", IP6, 10000, settings)
    assert created.settings == settings
    assert store.get_route("a", 1).settings == settings


def test_replace_backend_keeps_its_id_and_place(store: SyncStore) -> None:
    create(store, "a", 10000)
    for port in (9000, 9001, 9002):
        store.add_backend("a", 1, Backend(0, IP, port))
    assert store.update_backend("a", 1, Backend(2, IP6, 9999)) == Backend(2, IP6, 9999)
    assert store.get_route("a", 1).backends == (
        Backend(1, IP, 9000),
        Backend(2, IP6, 9999),
        Backend(3, IP, 9002),
    )
    # Not a delete and re-add: the counter did not move.
    assert store.add_backend("a", 1, Backend(0, IP, 9003)).id == 4


def test_one_address_is_one_backend_of_a_route(store: SyncStore) -> None:
    """Attaching, or replacing another backend with, an address the route has already is a
    Conflict that changes nothing (the backend counter included); the same address on
    another route, or a backend replaced by its own address, is fine."""
    create(store, "a", 10000)
    create(store, "a", 10001)
    store.add_backend("a", 1, Backend(0, IP, 9000))
    store.add_backend("a", 1, Backend(0, IP6, 9000, weight=2))
    before = snapshot(store)
    for attempt in (
        lambda: store.add_backend("a", 1, Backend(0, IP, 9000, weight=3)),
        lambda: store.add_backend("a", 1, Backend(0, IP6, 9000)),
        lambda: store.update_backend("a", 1, Backend(2, IP, 9000)),
        lambda: store.update_backend("a", 1, Backend(1, IP6, 9000, state="drain")),
    ):
        with pytest.raises(DuplicateBackend) as err:
            attempt()
        assert isinstance(err.value, Conflict)
        assert snapshot(store) == before
    assert store.update_backend("a", 1, Backend(1, IP, 9000, weight=5)).weight == 5
    assert store.add_backend("a", 2, Backend(0, IP, 9000)).id == 1
    assert store.add_backend("a", 1, Backend(0, IP, 9001)).id == 3
    store.delete_backend("a", 1, 1)
    assert store.update_backend("a", 1, Backend(3, IP, 9000)) == Backend(3, IP, 9000)


def test_delete_route_cascades_to_its_backends_only(store: SyncStore) -> None:
    create(store, "a", 10000)
    create(store, "a", 10001)
    store.add_backend("a", 1, Backend(0, IP, 9000))
    store.add_backend("a", 2, Backend(0, IP, 9001))
    store.delete_route("a", 1)
    with pytest.raises(NotFound):
        store.get_route("a", 1)
    with pytest.raises(NotFound):
        store.delete_backend("a", 1, 1)
    assert store.get_route("a", 2).backends == (Backend(1, IP, 9001),)
    # Its address is free again.
    assert create(store, "b", 10000).port == 10000


def test_delete_backend(store: SyncStore) -> None:
    create(store, "a", 10000)
    store.add_backend("a", 1, Backend(0, IP, 9000))
    store.add_backend("a", 1, Backend(0, IP, 9001))
    store.delete_backend("a", 1, 1)
    assert store.get_route("a", 1).backends == (Backend(2, IP, 9001),)


# -- failed calls change nothing ------------------------------------------------------------


def _populated(store: SyncStore) -> None:
    create(store, "a", 10000)
    create(store, "a", 10001, ip=IP6)
    store.add_backend("a", 1, Backend(0, IP, 9000))
    store.add_backend("a", 2, Backend(0, IP, 9001))
    store.delete_route("a", 2)
    store.set_port_cursor(IP, 10001)


UNKNOWN: list[tuple[str, Callable[[SyncStore], Any]]] = [
    ("get route of unknown app", lambda s: s.get_route("zz", 1)),
    ("get unknown route", lambda s: s.get_route("a", 9)),
    ("get deleted route", lambda s: s.get_route("a", 2)),
    ("update unknown route", lambda s: s.update_route("a", 9, RouteSettings("round_robin"))),
    ("update route of unknown app", lambda s: s.update_route("zz", 1, DEFAULT)),
    ("delete unknown route", lambda s: s.delete_route("a", 9)),
    ("delete deleted route", lambda s: s.delete_route("a", 2)),
    ("delete route of unknown app", lambda s: s.delete_route("zz", 1)),
    ("add backend to unknown route", lambda s: s.add_backend("a", 9, Backend(0, IP, 9000))),
    ("add backend to deleted route", lambda s: s.add_backend("a", 2, Backend(0, IP, 9000))),
    ("add backend to unknown app", lambda s: s.add_backend("zz", 1, Backend(0, IP, 9000))),
    ("replace unknown backend", lambda s: s.update_backend("a", 1, Backend(9, IP, 9999))),
    ("replace backend of unknown route", lambda s: s.update_backend("a", 9, Backend(1, IP, 9999))),
    ("replace backend of deleted route", lambda s: s.update_backend("a", 2, Backend(1, IP, 9999))),
    ("delete unknown backend", lambda s: s.delete_backend("a", 1, 9)),
    ("delete backend of unknown route", lambda s: s.delete_backend("a", 9, 1)),
    ("delete backend of unknown app", lambda s: s.delete_backend("zz", 1, 1)),
]


@pytest.mark.parametrize("call", [c for _, c in UNKNOWN], ids=[n for n, _ in UNKNOWN])
def test_unknown_things_are_not_found_and_nothing_changes(
    store: SyncStore, call: Callable[[SyncStore], Any]
) -> None:
    _populated(store)
    before = snapshot(store)
    with pytest.raises(NotFound):
        call(store)
    assert snapshot(store) == before
    # The counters did not move either.
    assert store.add_backend("a", 1, Backend(0, IP, 9002)).id == 2
    assert create(store, "a", 10002).id == 3


def test_taken_address_is_a_conflict_and_nothing_changes(store: SyncStore) -> None:
    create(store, "a", 10000)
    create(store, "a", 10001, ip=IP6)
    before = snapshot(store)
    for app, ip, port in (("a", IP, 10000), ("b", IP, 10000), ("a", IP6, 10001)):
        with pytest.raises(Conflict):
            create(store, app, port, ip=ip)
        assert snapshot(store) == before
    # "b" never got a route, so it does not exist.
    with pytest.raises(NotFound):
        store.list_routes("b")
    # The app's counter did not move: the next route gets the next id after the last success.
    assert create(store, "a", 10002).id == 3
    assert create(store, "b", 10001).id == 1
    # The same port on another address is no conflict.
    assert create(store, "a", 10000, ip=IP6).id == 4


# -- concurrency -------------------------------------------------------------------------


def test_concurrent_creates_get_distinct_ids(store: SyncStore) -> None:
    routes = store.gather(
        *(store.aio.create_route(app, IP, 10000 + i, DEFAULT) for i, app in enumerate("ab" * 30))
    )
    assert sorted(r.id for r in routes if r.app == "a") == list(range(1, 31))
    assert sorted(r.id for r in routes if r.app == "b") == list(range(1, 31))
    assert len(store.all_routes()) == 60


def test_concurrent_adds_get_distinct_ids(store: SyncStore) -> None:
    create(store, "a", 10000)
    create(store, "a", 10001)
    backends = store.gather(
        *(store.aio.add_backend("a", 1 + i % 2, Backend(0, IP, 9000 + i)) for i in range(60))
    )
    assert sorted(b.id for b in backends[0::2]) == list(range(1, 31))
    assert sorted(b.id for b in backends[1::2]) == list(range(1, 31))
    assert [len(r.backends) for r in store.list_routes("a")] == [30, 30]


def test_concurrent_conflicting_creates_let_exactly_one_win(store: SyncStore) -> None:
    results = store.gather(
        *(_outcome(store.aio.create_route(f"app{i}", IP, 10000, DEFAULT)) for i in range(20))
    )
    winners = [r for r in results if isinstance(r, Route)]
    assert len(winners) == 1
    assert all(isinstance(r, Conflict) for r in results if r not in winners)
    assert store.list_apps() == [AppInfo(winners[0].app, 1)]


async def _outcome(awaitable: Any) -> Any:
    try:
        return await awaitable
    except Conflict as err:
        return err


# -- durability --------------------------------------------------------------------------


def test_data_survives_reopening(durable_url: str, open_url: Callable[[str], SyncStore]) -> None:
    first = open_url(durable_url)
    create(first, "a", 10000)
    create(first, "a", 10001, ip=IP6, balance="round_robin", idle_timeout=0.0)
    create(first, "b", 10002)
    first.add_backend("a", 1, Backend(0, IP, 9000))
    first.add_backend("a", 1, Backend(0, IP6, 9001))
    first.add_backend("a", 2, Backend(0, IP, 9002))
    first.update_backend("a", 1, Backend(1, IP, 9100))
    first.delete_backend("a", 1, 2)
    first.delete_route("b", 1)
    first.set_port_cursor(IP, 10003)
    before = snapshot(first)
    first.close()

    second = open_url(durable_url)
    assert snapshot(second) == before
    # The counters came along too: nothing is reused after a restart.
    assert create(second, "b", 10002).id == 2
    assert second.add_backend("a", 1, Backend(0, IP, 9003)).id == 3


# -- settings round-trip --------------------------------------------------------------------


def test_every_route_setting_round_trips(store: SyncStore) -> None:
    check = HealthCheck(interval=0.5, timeout=0.25, rise=1, fall=5, send="PING\r\n", expect="+PONG")
    settings = RouteSettings(
        balance="source_hash",
        connect_timeout=1.5,
        idle_timeout=0,
        health_check=check,
        when_all_down="try_all",
        max_connections=7,
        half_close_timeout=3,
        max_connect_attempts=2,
        proxy_protocol="v2",
        passive_fall=0,
        passive_cooldown=4,
    )
    created = store.create_route("a", IP, 10000, settings)
    assert store.get_route("a", 1) == created
    assert store.get_route("a", 1).settings == settings
    updated = store.update_route("a", 1, settings.replace(health_check=None, balance="least_conn"))
    assert updated.settings.health_check is None
    assert store.get_route("a", 1).settings == updated.settings


def test_every_backend_setting_round_trips_and_update_replaces_them(store: SyncStore) -> None:
    create(store, "a", 10000)
    full = Backend(
        0, IP, 9000, weight=7, state="drain", drain_timeout=2.5, max_connections=3,
        proxy_protocol="none",
    )  # fmt: skip
    added = store.add_backend("a", 1, full)
    assert added == full.replace(id=1)
    assert store.get_route("a", 1).backends == (added,)
    plain = store.update_backend("a", 1, Backend(1, IP6, 9001))
    assert store.get_route("a", 1).backends == (plain,)
    assert (plain.weight, plain.state, plain.proxy_protocol) == (1, "enabled", None)


# -- routes sharing a port by SNI --------------------------------------------------------


def test_routes_with_server_names_share_a_port_and_others_do_not(store: SyncStore) -> None:
    a = create(store, "a", 9443, sni=("db1.example.com",))
    b = create(store, "b", 9443, sni=("*",))
    assert (a.port, b.port) == (9443, 9443)
    assert store.ports_in_use(IP) == {9443}
    before = snapshot(store)
    with pytest.raises(Conflict, match="9443"):
        create(store, "c", 9443)  # no server names: it would take the port alone
    assert snapshot(store) == before
    plain = create(store, "c", 9444)
    with pytest.raises(Conflict, match="9444"):
        create(store, "d", 9444, sni=("db2.example.com",))
    assert store.get_route("a", 1).settings.sni == ("db1.example.com",)
    # The port stays in use until the last route sharing it is gone.
    store.delete_route("a", 1)
    assert store.ports_in_use(IP) == {9443, 9444}
    store.delete_route("b", 1)
    assert store.ports_in_use(IP) == {9444}
    assert create(store, "d", 9443).port == 9443  # alone on it now
    store.delete_route("c", plain.id)


def test_a_route_alone_on_its_port_may_gain_and_lose_server_names(store: SyncStore) -> None:
    route = create(store, "a", 9443)
    store.update_route("a", route.id, DEFAULT.replace(sni=("db1.example.com",)))
    create(store, "b", 9443, sni=("*",))
    store.delete_route("b", 1)
    store.update_route("a", route.id, DEFAULT)
    with pytest.raises(Conflict, match="9443"):
        create(store, "c", 9443, sni=("*",))
    store.delete_route("a", route.id)
    assert store.ports_in_use(IP) == set()


def test_a_change_of_server_names_that_clashes_is_refused_in_the_write(
    store: SyncStore,
) -> None:
    """The store refuses it in the write itself, so two nodes' changes cannot both land."""
    create(store, "a", 9443, sni=("db1.example.com",))
    create(store, "b", 9443, sni=("*.staging.example.com", "*"))
    before = snapshot(store)
    with pytest.raises(Conflict, match=r"db1\.example\.com"):
        store.update_route("b", 1, DEFAULT.replace(sni=("db1.example.com",)))
    with pytest.raises(Conflict, match="server names"):
        store.update_route("b", 1, DEFAULT)  # no names while another shares the port
    assert snapshot(store) == before
    changed = store.update_route("b", 1, DEFAULT.replace(sni=("db2.example.com", "*")))
    assert changed.settings.sni == ("db2.example.com", "*")
    assert store.update_route("a", 1, DEFAULT.replace(sni=("db1.example.com",), seed=7))
