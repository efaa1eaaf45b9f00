"""The Store contract for a route's toxics (src/restcp/store/base.py), run against every
implementation: kept in the order they were added, one per name, with the route."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from restcp.errors import Conflict, DuplicateToxic, NotFound
from restcp.model import Backend, Route, RouteSettings, Toxic
from tests.contract.conftest import SyncStore
from tests.contract.test_store import snapshot

IP = "127.0.0.1"
SLOW = Toxic("slow", "latency", attributes=(("jitter", 10), ("latency", 200)))
THIN = Toxic("thin", "bandwidth", "upstream", 0.5, (("rate", 64),))
CUT = Toxic("cut", "reset_peer", "downstream", 1.0, (("timeout", 0),), ("10.0.0.0/8", "::1/128"))


def route(store: SyncStore, app: str = "a", port: int = 10000) -> Route:
    created: Route = store.create_route(app, IP, port, RouteSettings())
    return created


def names(store: SyncStore, app: str = "a", route_id: int = 1) -> list[str]:
    return [t.name for t in store.get_route(app, route_id).toxics]


def test_toxics_are_kept_in_the_order_they_were_added(store: SyncStore) -> None:
    route(store)
    assert store.get_route("a", 1).toxics == ()
    for toxic in (SLOW, THIN, CUT):
        assert store.add_toxic("a", 1, toxic) == toxic
    assert store.get_route("a", 1).toxics == (SLOW, THIN, CUT)
    # Every read of a route carries them.
    assert store.list_routes("a")[0].toxics == (SLOW, THIN, CUT)
    assert store.all_routes()[0].toxics == (SLOW, THIN, CUT)


def test_update_replaces_a_toxic_in_its_place(store: SyncStore) -> None:
    route(store)
    for toxic in (SLOW, THIN, CUT):
        store.add_toxic("a", 1, toxic)
    changed = THIN.replace(toxicity=0.25, attributes=(("rate", 1),), clients=("10.1.0.0/16",))
    assert store.update_toxic("a", 1, changed) == changed
    assert store.get_route("a", 1).toxics == (SLOW, changed, CUT)


def test_delete_keeps_the_order_of_the_others_and_a_name_added_again_goes_last(
    store: SyncStore,
) -> None:
    route(store)
    for toxic in (SLOW, THIN, CUT):
        store.add_toxic("a", 1, toxic)
    store.delete_toxic("a", 1, "thin")
    assert names(store) == ["slow", "cut"]
    store.add_toxic("a", 1, THIN)
    assert names(store) == ["slow", "cut", "thin"]
    store.delete_toxic("a", 1, "slow")
    store.delete_toxic("a", 1, "cut")
    store.delete_toxic("a", 1, "thin")
    assert store.get_route("a", 1).toxics == ()
    store.add_toxic("a", 1, CUT)
    assert names(store) == ["cut"]


def test_a_name_is_the_routes_own(store: SyncStore) -> None:
    route(store)
    route(store, port=10001)
    route(store, "b", port=10002)
    for app, route_id in (("a", 1), ("a", 2), ("b", 1)):
        store.add_toxic(app, route_id, SLOW)
    store.update_toxic("a", 2, SLOW.replace(toxicity=0.0))
    store.delete_toxic("b", 1, "slow")
    assert store.get_route("a", 1).toxics == (SLOW,)
    assert store.get_route("a", 2).toxics == (SLOW.replace(toxicity=0.0),)
    assert store.get_route("b", 1).toxics == ()


def test_a_name_taken_is_a_conflict_and_nothing_changes(store: SyncStore) -> None:
    route(store)
    store.add_toxic("a", 1, SLOW)
    store.add_toxic("a", 1, THIN)
    before = snapshot(store)
    for taken in (SLOW, THIN.replace(type="latency", attributes=(("jitter", 0), ("latency", 1)))):
        with pytest.raises(DuplicateToxic) as err:
            store.add_toxic("a", 1, taken)
        assert isinstance(err.value, Conflict)
        assert repr(taken.name) in str(err.value)
        assert snapshot(store) == before


def test_route_changes_keep_the_toxics_and_a_delete_takes_them(store: SyncStore) -> None:
    route(store)
    store.add_toxic("a", 1, SLOW)
    store.add_backend("a", 1, Backend(0, IP, 9000))
    store.add_toxic("a", 1, CUT)
    updated = store.update_route("a", 1, RouteSettings(balance="round_robin", enabled=False))
    assert updated.toxics == (SLOW, CUT)
    store.update_backend("a", 1, Backend(1, IP, 9001))
    store.delete_backend("a", 1, 1)
    assert store.get_route("a", 1).toxics == (SLOW, CUT)
    store.delete_route("a", 1)
    # The next route (another id) starts with none.
    assert route(store).toxics == ()
    assert store.get_route("a", 2).toxics == ()


def _populated(store: SyncStore) -> None:
    route(store)
    route(store, port=10001)
    store.add_toxic("a", 1, SLOW)
    store.add_toxic("a", 2, SLOW)
    store.delete_route("a", 2)


UNKNOWN: list[tuple[str, Callable[[SyncStore], Any]]] = [
    ("add to unknown route", lambda s: s.add_toxic("a", 9, THIN)),
    ("add to deleted route", lambda s: s.add_toxic("a", 2, THIN)),
    ("add to unknown app", lambda s: s.add_toxic("zz", 1, THIN)),
    ("update unknown toxic", lambda s: s.update_toxic("a", 1, THIN)),
    ("update toxic of unknown route", lambda s: s.update_toxic("a", 9, SLOW)),
    ("update toxic of deleted route", lambda s: s.update_toxic("a", 2, SLOW)),
    ("update toxic of unknown app", lambda s: s.update_toxic("zz", 1, SLOW)),
    ("delete unknown toxic", lambda s: s.delete_toxic("a", 1, "thin")),
    ("delete toxic of unknown route", lambda s: s.delete_toxic("a", 9, "slow")),
    ("delete toxic of deleted route", lambda s: s.delete_toxic("a", 2, "slow")),
    ("delete toxic of unknown app", lambda s: s.delete_toxic("zz", 1, "slow")),
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


def test_not_found_says_which_toxic(store: SyncStore) -> None:
    route(store)
    with pytest.raises(NotFound, match="toxic 'thin' of route 1 of app 'a' not found"):
        store.update_toxic("a", 1, THIN)
    with pytest.raises(NotFound, match="route 9 of app 'a' not found"):
        store.delete_toxic("a", 9, "thin")


def test_every_field_round_trips(store: SyncStore) -> None:
    route(store)
    full = Toxic(
        "x.y_z-0",
        "slicer",
        "upstream",
        0.123456789012345,
        (("average_size", 1 << 24), ("delay", 60_000_000), ("size_variation", (1 << 24) - 1)),
        ("192.168.0.0/16", "2001:db8::/32", "127.0.0.1/32"),
    )
    huge = Toxic("huge", "limit_data", attributes=(("bytes", 1 << 53),))
    nothing = Toxic("none", "timeout", toxicity=0.0, attributes=(("timeout", 0),))
    for toxic in (full, huge, nothing):
        store.add_toxic("a", 1, toxic)
    assert store.get_route("a", 1).toxics == (full, huge, nothing)


def test_enabled_and_seed_round_trip(store: SyncStore) -> None:
    created = store.create_route("a", IP, 10000, RouteSettings(enabled=False, seed=2**63 - 1))
    assert store.get_route("a", 1).settings == created.settings
    assert (created.settings.enabled, created.settings.seed) == (False, 2**63 - 1)
    updated = store.update_route("a", 1, RouteSettings(seed=0))
    assert (updated.settings.enabled, updated.settings.seed) == (True, 0)
    assert store.get_route("a", 1).settings == RouteSettings(seed=0)


def test_concurrent_adds_of_distinct_names_all_land(store: SyncStore) -> None:
    route(store)
    toxics = [SLOW.replace(name=f"t{i}") for i in range(40)]
    store.gather(*(store.aio.add_toxic("a", 1, t) for t in toxics))
    stored = store.get_route("a", 1).toxics
    assert sorted(stored, key=lambda t: t.name) == sorted(toxics, key=lambda t: t.name)


def test_concurrent_adds_of_one_name_let_exactly_one_win(store: SyncStore) -> None:
    route(store)
    candidates = [SLOW.replace(attributes=(("jitter", 0), ("latency", i))) for i in range(20)]
    results = store.gather(*(_outcome(store.aio.add_toxic("a", 1, t)) for t in candidates))
    winners = [r for r in results if isinstance(r, Toxic)]
    assert len(winners) == 1
    assert all(isinstance(r, DuplicateToxic) for r in results if r not in winners)
    assert store.get_route("a", 1).toxics == tuple(winners)


async def _outcome(awaitable: Any) -> Any:
    try:
        return await awaitable
    except Conflict as err:
        return err


def test_toxics_survive_reopening(durable_url: str, open_url: Callable[[str], SyncStore]) -> None:
    first = open_url(durable_url)
    route(first)
    route(first, port=10001)
    for toxic in (CUT, SLOW, THIN):
        first.add_toxic("a", 1, toxic)
    first.update_toxic("a", 1, SLOW.replace(toxicity=0.5))
    first.delete_toxic("a", 1, "cut")
    first.add_toxic("a", 2, CUT)
    before = snapshot(first)
    first.close()

    second = open_url(durable_url)
    assert snapshot(second) == before
    assert second.get_route("a", 1).toxics == (SLOW.replace(toxicity=0.5), THIN)
    # Positions go on after the restart: a new one is last.
    second.add_toxic("a", 1, CUT)
    assert names(second) == ["slow", "thin", "cut"]
