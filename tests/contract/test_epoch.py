"""What the Redis store's coordination half offers a cluster against a Redis that lost its
data: the epoch (claimed once, and guarding every read and write of the desired state, the
Store half's included), reseeding routes with their ids, and the backends' health lists
(docs/cluster.md)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import pytest
import redis

from restcp.errors import EpochMismatch, NotFound
from restcp.model import Backend, Route, RouteSettings, Toxic
from tests.contract.conftest import SyncStore

IP = "127.0.0.3"


@pytest.fixture
def store(redis_url: str, open_url: Callable[[str], SyncStore]) -> SyncStore:
    return open_url(redis_url)


def full_route(route_id: int = 7, port: int = 10004) -> Route:
    return Route(
        "web",
        route_id,
        IP,
        port,
        RouteSettings(balance="round_robin"),
        (Backend(2, "10.0.0.1", 8080, weight=3), Backend(5, "10.0.0.2", 8080)),
        TOXICS,
    )


TOXICS = (
    Toxic("slow", "latency", attributes=(("jitter", 5), ("latency", 200))),
    Toxic("cut", "reset_peer", "upstream", 0.5, (("timeout", 0),), ("10.0.0.0/8",)),
)


def test_the_first_claim_sets_the_epoch_and_later_ones_get_it(store: SyncStore) -> None:
    assert store.coordination.get_epoch() is None
    assert store.coordination.claim_epoch("e1") == "e1"
    assert store.coordination.claim_epoch("e2") == "e1"
    assert store.coordination.get_epoch() == "e1"


def test_a_store_expecting_an_epoch_touches_nothing_in_a_redis_without_it(
    store: SyncStore, raw_redis: redis.Redis
) -> None:
    store.coordination.claim_epoch("e1")
    store.coordination.aio.expect_epoch("e1")
    route = store.create_route("web", IP, 10000, RouteSettings())
    store.add_backend("web", route.id, Backend(0, "10.0.0.1", 80))
    assert [r.id for r in store.all_routes()] == [1]

    raw_redis.flushdb()  # Redis lost its data
    before = set(raw_redis.keys("*"))
    for call in (
        lambda: store.all_routes(),
        lambda: store.get_route("web", 1),
        lambda: store.list_apps(),
        lambda: store.create_route("web", IP, 10001, RouteSettings()),
        lambda: store.set_port_cursor(IP, 10002),
        lambda: store.coordination.reserve_route_id("web"),
        lambda: store.create_token("web", "ab" * 32, 1.0),
        lambda: store.coordination.put_backend_health("web", 1, [1], []),
    ):
        with pytest.raises(EpochMismatch) as caught:
            call()
        assert caught.value.found is None
        assert "reseed" in str(caught.value)
    assert set(raw_redis.keys("*")) == before == set()

    # Another cluster's epoch is refused alike, and names it.
    store.coordination.claim_epoch("e2")
    with pytest.raises(EpochMismatch) as caught:
        store.all_routes()
    assert (caught.value.expected, caught.value.found) == ("e1", "e2")
    # Expecting nothing reads whatever is there.
    store.coordination.aio.expect_epoch(None)
    assert store.all_routes() == []


def test_restore_writes_a_route_with_its_ids_and_raises_the_counters(
    store: SyncStore, raw_redis: redis.Redis
) -> None:
    store.coordination.claim_epoch("e1")
    route = full_route()
    assert store.coordination.restore_route(route, "e1", route_counter=9, backend_counter=6) == (
        "written",
        "",
    )
    assert store.get_route("web", 7) == route
    assert raw_redis.get("restcp:app:web:route_counter") == "9"
    assert raw_redis.get("restcp:route:web:7:backend_counter") == "6"
    # The indexes are as create_route leaves them: the address is taken, the app listed.
    assert store.ports_in_use(IP) == {10004}
    assert [a.app for a in store.list_apps()] == ["web"]
    # New ids continue after the counters, never reusing one.
    assert store.create_route("web", IP, 10010, RouteSettings()).id == 10
    assert store.add_backend("web", 7, Backend(0, "10.0.0.3", 1)).id == 7
    # Counters only grow: a lower one given later changes nothing.
    other = Route("web", 3, IP, 10020)
    assert store.coordination.restore_route(other, "e1")[0] == "written"
    assert raw_redis.get("restcp:app:web:route_counter") == "10"


def test_restore_is_idempotent_and_never_overwrites_other_content(
    store: SyncStore, raw_redis: redis.Redis
) -> None:
    store.coordination.claim_epoch("e1")
    route = full_route()
    assert store.coordination.restore_route(route, "e1")[0] == "written"
    assert store.coordination.restore_route(route, "e1") == ("unchanged", "")
    before = {k: raw_redis.dump(k) for k in raw_redis.keys("*")}

    changed_settings = Route("web", 7, IP, 10004, RouteSettings(), route.backends, TOXICS)
    fewer_backends = Route("web", 7, IP, 10004, route.settings, route.backends[:1], TOXICS)
    other_backend = Route(
        "web",
        7,
        IP,
        10004,
        route.settings,
        (route.backends[0], Backend(5, "10.0.0.9", 1)),
        TOXICS,
    )
    fewer_toxics = dataclasses.replace(route, toxics=TOXICS[:1])
    reordered_toxics = dataclasses.replace(route, toxics=TOXICS[::-1])
    other_toxic = dataclasses.replace(route, toxics=(TOXICS[0], TOXICS[1].replace(toxicity=0.25)))
    same_address = Route("billing", 1, IP, 10004)
    for conflicting in (
        changed_settings,
        fewer_backends,
        other_backend,
        fewer_toxics,
        reordered_toxics,
        other_toxic,
        same_address,
    ):
        outcome, why = store.coordination.restore_route(conflicting, "e1")
        assert outcome == "conflict", conflicting
        assert why
    assert "route 7 of app 'web'" in store.coordination.restore_route(same_address, "e1")[1]
    # Nothing written by any refusal, counters included.
    assert {k: raw_redis.dump(k) for k in raw_redis.keys("*")} == before


def test_restore_into_another_epoch_writes_nothing(
    store: SyncStore, raw_redis: redis.Redis
) -> None:
    with pytest.raises(EpochMismatch):
        store.coordination.restore_route(full_route(), "e1")
    store.coordination.claim_epoch("e2")
    with pytest.raises(EpochMismatch) as caught:
        store.coordination.restore_route(full_route(), "e1")
    assert caught.value.found == "e2"
    assert raw_redis.keys("*") == ["restcp:epoch"]


def test_health_lists_are_replaced_whole_for_existing_backends_only(
    store: SyncStore, raw_redis: redis.Redis
) -> None:
    route = store.create_route("web", IP, 10000, RouteSettings())
    for port in (1, 2, 3):
        store.add_backend("web", route.id, Backend(0, "10.0.0.1", port))
    assert store.coordination.backend_health("web", 1) == {}
    assert store.coordination.put_backend_health("web", 1, [1, 2], [3]) is True
    assert store.coordination.backend_health("web", 1) == {1: "up", 2: "up", 3: "down"}
    # Backend 9 does not exist: left out. 2 went unknown: in neither list.
    assert store.coordination.put_backend_health("web", 1, [1], [3, 9]) is True
    assert raw_redis.lrange("restcp:route:web:1:backends_live", 0, -1) == ["1"]
    assert raw_redis.lrange("restcp:route:web:1:backends_dead", 0, -1) == ["3"]
    assert store.coordination.backend_health("web", 1) == {1: "up", 3: "down"}
    # All unknown: no lists at all.
    assert store.coordination.put_backend_health("web", 1, [], []) is True
    assert raw_redis.keys("restcp:route:web:1:backends_*") == []
    # A route deleted meanwhile gets no lists back.
    store.delete_route("web", 1)
    assert store.coordination.put_backend_health("web", 1, [1], []) is False
    assert raw_redis.keys("restcp:route:web:1*") == []
    with pytest.raises(NotFound):
        store.get_route("web", 1)
