"""The node's local snapshot (store.base.Snapshot), on every store that keeps one: what a
node of a Redis cluster serves with Redis down, and writes back into a Redis that lost it."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable
from pathlib import Path

import pytest

from restcp.model import Backend, Route, RouteSettings, Toxic
from restcp.store import SnapshotData, open_snapshot
from tests.contract.conftest import STORE_URLS, SyncStore

SNAPSHOTS = ["memory", "sqlite"]
A, C = "127.0.0.2", "127.0.0.3"


def route(
    app: str, route_id: int, ip: str, port: int, *backend_ids: int, balance: str = "random"
) -> Route:
    return Route(
        app,
        route_id,
        ip,
        port,
        RouteSettings(balance=balance),  # type: ignore[arg-type]
        tuple(Backend(b, "10.0.0.1", 8000 + b, weight=b) for b in backend_ids),
    )


@pytest.fixture(params=SNAPSHOTS)
def snap(
    request: pytest.FixtureRequest, tmp_path: Path, open_url: Callable[[str], SyncStore]
) -> SyncStore:
    return open_url(STORE_URLS[request.param](request, tmp_path))


def test_an_empty_snapshot_knows_nothing(snap: SyncStore) -> None:
    assert snap.load_snapshot([C]) == SnapshotData()


def test_routes_come_back_with_their_ids_ports_backends_settings_and_epoch(
    snap: SyncStore,
) -> None:
    web = route("web", 7, C, 10004, 2, 5, balance="round_robin")
    api = route("api", 1, C, 10005)
    snap.save_snapshot("e1", [web, api], [])
    data = snap.load_snapshot([C])
    assert data.epoch == "e1"
    assert sorted(data.routes, key=lambda r: r.key) == [api, web]
    assert data.route_counters == {"web": 7, "api": 1}
    assert data.backend_counters == {("web", 7): 5, ("api", 1): 0}


def test_changes_replace_routes_and_counters_only_grow(snap: SyncStore) -> None:
    snap.save_snapshot("e1", [route("web", 7, C, 10004, 2, 5)], [])
    # Backend 5 detached, 6 attached; route 9 created, route 7 then deleted.
    snap.save_snapshot(None, [route("web", 7, C, 10004, 2, 6)], [])
    assert snap.load_snapshot([C]).routes == (route("web", 7, C, 10004, 2, 6),)
    snap.save_snapshot(None, [route("web", 3, C, 10006)], [])
    snap.save_snapshot(None, [], [("web", 7)])
    data = snap.load_snapshot([C])
    assert data.epoch == "e1", "None keeps the epoch stored"
    assert data.routes == (route("web", 3, C, 10006),)
    # Route 7 is gone, its id is not forgotten: a reseed never hands it out again.
    assert data.route_counters == {"web": 7}


def test_a_route_on_a_taken_address_replaces_the_one_there(snap: SyncStore) -> None:
    snap.save_snapshot("e1", [route("web", 1, C, 10004, 1)], [])
    snap.save_snapshot(None, [route("web", 2, C, 10004)], [])
    assert snap.load_snapshot([C]).routes == (route("web", 2, C, 10004),)


def test_each_node_reads_back_the_routes_of_its_own_frontend_ips(snap: SyncStore) -> None:
    snap.save_snapshot("e1", [route("web", 1, C, 10004)], [])
    snap.save_snapshot("e1", [route("web", 2, A, 10004)], [])
    assert [r.id for r in snap.load_snapshot([C]).routes] == [1]
    assert [r.id for r in snap.load_snapshot([A, C]).routes] == [1, 2]
    assert snap.load_snapshot(["127.0.0.9"]).routes == ()


def test_a_snapshot_file_outlives_its_process(tmp_path: Path, runner: asyncio.Runner) -> None:
    path = str(tmp_path / "snap.db")
    first = open_snapshot(path)
    runner.run(first.save_snapshot("e1", [route("web", 1, C, 10004, 3)], []))
    runner.run(first.close())
    second = open_snapshot(path)
    try:
        data = runner.run(second.load_snapshot([C]))
    finally:
        runner.run(second.close())
    assert (data.epoch, data.routes) == ("e1", (route("web", 1, C, 10004, 3),))


def test_toxics_come_back_in_their_order_and_follow_each_save(snap: SyncStore) -> None:
    slow = Toxic("slow", "latency", attributes=(("jitter", 0), ("latency", 200)))
    cut = Toxic("cut", "reset_peer", "upstream", 0.5, (("timeout", 10),), ("10.0.0.0/8",))
    web = dataclasses.replace(route("web", 7, C, 10004, 2), toxics=(slow, cut))
    snap.save_snapshot("e1", [web], [])
    assert snap.load_snapshot([C]).routes == (web,)
    # A toxic removed and another added: the snapshot holds the route as saved last.
    changed = dataclasses.replace(web, toxics=(cut, slow.replace(name="slower")))
    snap.save_snapshot(None, [changed], [])
    assert snap.load_snapshot([C]).routes == (changed,)
    snap.save_snapshot(None, [], [("web", 7)])
    assert snap.load_snapshot([C]).routes == ()
