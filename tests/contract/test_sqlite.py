"""What only the SQLite store promises: its file format, and sharing a file between processes."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import threading
from collections.abc import Callable
from contextlib import closing
from pathlib import Path

import pytest

from restcp.errors import DuplicateBackend, InvalidSpec
from restcp.model import Backend, Route, RouteSettings, Toxic
from restcp.store import Store, open_store
from tests.contract.conftest import SyncStore

IP = "127.0.0.1"


def raw(path: Path, sql: str, *params: object) -> list[tuple[object, ...]]:
    """A statement on the file, from a connection of its own (another process, say)."""
    with closing(sqlite3.connect(path)) as db, db:
        return db.execute(sql, params).fetchall()


def test_settings_with_unknown_or_missing_keys_still_load(
    tmp_path: Path, open_url: Callable[[str], SyncStore]
) -> None:
    store = open_url(f"sqlite:///{tmp_path}/x.db")
    store.create_route("a", IP, 10000, RouteSettings())
    # As a newer restcp might have written it (a new knob), and without idle_timeout.
    settings = {"balance": "round_robin", "connect_timeout": 2.0, "weights": {"1": 3}}
    raw(tmp_path / "x.db", "UPDATE routes SET settings = ?", json.dumps(settings))
    expected = RouteSettings(balance="round_robin", connect_timeout=2.0)
    assert store.get_route("a", 1).settings == expected
    store.close()
    assert open_url(f"sqlite:///{tmp_path}/x.db").list_routes("a") == [
        Route("a", 1, IP, 10000, expected)
    ]


def test_delete_route_leaves_no_backend_rows(
    tmp_path: Path, open_url: Callable[[str], SyncStore]
) -> None:
    store = open_url(f"sqlite:///{tmp_path}/x.db")
    store.create_route("a", IP, 10000, RouteSettings())
    store.create_route("a", IP, 10001, RouteSettings())
    for route_id, port in ((1, 9000), (1, 9001), (2, 9000)):
        store.add_backend("a", route_id, Backend(0, IP, port))
    store.delete_route("a", 1)
    assert raw(tmp_path / "x.db", "SELECT app, route_id, id FROM backends") == [("a", 2, 1)]


@pytest.mark.parametrize("url", ["sqlite://", "sqlite:///", "postgres://db/x", "x.db"])
def test_bad_store_urls(url: str) -> None:
    with pytest.raises(InvalidSpec):
        open_store(url)


def test_two_stores_on_one_file_from_threads_never_report_locked(tmp_path: Path) -> None:
    """Two processes sharing a file, as far as SQLite can tell: each write waits its turn
    (busy_timeout) instead of failing with "database is locked", and ids stay distinct."""
    url = f"sqlite:///{tmp_path}/x.db"
    rounds = 150
    start = threading.Barrier(2)
    results: dict[int, list[tuple[int, int]]] = {}
    errors: list[BaseException] = []

    async def work(n: int, store: Store) -> list[tuple[int, int]]:
        ids = []
        for i in range(rounds):
            route = await store.create_route("shared", IP, 10000 + 2 * i + n, RouteSettings())
            backend = await store.add_backend("shared", 1, Backend(0, IP, 9000 + 2 * i + n))
            await store.set_port_cursor(IP, i)
            assert (await store.get_route("shared", route.id)).port == route.port
            ids.append((route.id, backend.id))
        return ids

    def thread(n: int) -> None:
        try:
            start.wait(timeout=30)
            # Opened at the same moment too: schema creation races as well.
            store = open_store(url)
            try:
                results[n] = asyncio.run(work(n, store))
            finally:
                asyncio.run(store.close())
        except BaseException as err:
            errors.append(err)

    threads = [threading.Thread(target=thread, args=(n,)) for n in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not any(t.is_alive() for t in threads)
    assert errors == []
    route_ids = sorted(r for ids in results.values() for r, _ in ids)
    backend_ids = sorted(b for ids in results.values() for _, b in ids)
    assert route_ids == list(range(1, 2 * rounds + 1))
    assert backend_ids == list(range(1, 2 * rounds + 1))
    with closing(sqlite3.connect(tmp_path / "x.db")) as db:
        assert db.execute("SELECT COUNT(*) FROM routes").fetchone() == (2 * rounds,)
    store = open_store(url)
    try:
        route = asyncio.run(store.get_route("shared", 1))
    finally:
        asyncio.run(store.close())
    assert len(route.backends) == 2 * rounds


def test_a_read_is_one_snapshot(tmp_path: Path, open_url: Callable[[str], SyncStore]) -> None:
    store = open_url(f"sqlite:///{tmp_path}/x.db")
    store.create_route("a", IP, 10000, RouteSettings())
    store.add_backend("a", 1, Backend(0, IP, 9000))
    old = store.get_route("a", 1)
    new = Route("a", 1, IP, 10000, RouteSettings("round_robin"), (Backend(1, IP, 9001),))
    # White box: another writer commits between the store's SELECT of the backends and its
    # SELECT of the routes, the window a read without a snapshot would mix two states in.
    db: sqlite3.Connection = store.aio._db  # type: ignore[attr-defined]

    def between(sql: str) -> None:
        if sql.startswith("SELECT app, id, frontend_ip"):
            db.set_trace_callback(None)
            with closing(sqlite3.connect(tmp_path / "x.db")) as other, other:
                other.execute("UPDATE backends SET port = 9001")
                other.execute(
                    "UPDATE routes SET settings = ?", (json.dumps({"balance": "round_robin"}),)
                )

    db.set_trace_callback(between)
    assert store.get_route("a", 1) == old
    assert store.get_route("a", 1) == new


def test_a_pair_stored_before_the_one_address_rule_may_still_change(
    tmp_path: Path, open_url: Callable[[str], SyncStore]
) -> None:
    store = open_url(f"sqlite:///{tmp_path}/x.db")
    store.create_route("a", IP, 10000, RouteSettings())
    store.add_backend("a", 1, Backend(0, IP, 9000))
    store.add_backend("a", 1, Backend(0, IP, 9001))
    raw(tmp_path / "x.db", "UPDATE backends SET port = 9000 WHERE id = 2")
    assert store.update_backend("a", 1, Backend(2, IP, 9000, weight=5)).weight == 5
    assert store.update_backend("a", 1, Backend(1, IP, 9000, state="drain")).state == "drain"
    # Once one has moved, the rule holds for it.
    store.update_backend("a", 1, Backend(1, IP, 9002))
    with pytest.raises(DuplicateBackend):
        store.update_backend("a", 1, Backend(1, IP, 9000))
    assert [b.port for b in store.get_route("a", 1).backends] == [9002, 9000]


def test_a_file_from_before_toxics_gets_their_table(
    tmp_path: Path, open_url: Callable[[str], SyncStore]
) -> None:
    url = f"sqlite:///{tmp_path}/x.db"
    store = open_url(url)
    store.create_route("a", IP, 10000, RouteSettings())
    store.add_backend("a", 1, Backend(0, IP, 9000))
    store.close()
    # As an earlier restcp left it: no toxics table.
    raw(tmp_path / "x.db", "DROP TABLE toxics")
    reopened = open_url(url)
    assert reopened.get_route("a", 1) == Route(
        "a", 1, IP, 10000, RouteSettings(), (Backend(1, IP, 9000),)
    )
    slow = Toxic("slow", "latency", attributes=(("jitter", 0), ("latency", 5)))
    reopened.add_toxic("a", 1, slow)
    assert reopened.get_route("a", 1).toxics == (slow,)
    # Deleting the route takes its toxics' rows.
    reopened.delete_route("a", 1)
    assert raw(tmp_path / "x.db", "SELECT * FROM toxics") == []


def test_toxic_attributes_unknown_to_this_version_are_dropped_and_missing_ones_default(
    tmp_path: Path, open_url: Callable[[str], SyncStore]
) -> None:
    store = open_url(f"sqlite:///{tmp_path}/x.db")
    store.create_route("a", IP, 10000, RouteSettings())
    store.add_toxic("a", 1, Toxic("slow", "latency", attributes=(("jitter", 1), ("latency", 5))))
    newer = {
        "type": "latency",
        "stream": "upstream",
        "toxicity": 0.5,
        "attributes": {"latency": 7, "curve": 3},
        "knob": 1,
    }
    raw(tmp_path / "x.db", "UPDATE toxics SET settings = ?", json.dumps(newer))
    assert store.get_route("a", 1).toxics == (
        Toxic("slow", "latency", "upstream", 0.5, (("jitter", 0), ("latency", 7))),
    )


def test_a_file_whose_addresses_were_unique_is_rebuilt_to_share_them(
    tmp_path: Path, open_url: Callable[[str], SyncStore]
) -> None:
    path = tmp_path / "x.db"
    store = open_url(f"sqlite:///{path}")
    store.create_route("a", IP, 10000, RouteSettings())
    store.add_backend("a", 1, Backend(0, IP, 9000))
    slow = Toxic("slow", "latency", attributes=(("jitter", 0), ("latency", 5)))
    store.add_toxic("a", 1, slow)
    store.close()
    # The routes table as restcp made it before SNI routing (foreign keys are off on a
    # connection of its own: the drop takes no backend with it).
    with closing(sqlite3.connect(path)) as db, db:
        db.execute(
            "CREATE TABLE routes_old (app TEXT NOT NULL REFERENCES apps(app), "
            "id INTEGER NOT NULL, frontend_ip TEXT NOT NULL, port INTEGER NOT NULL, "
            "settings TEXT NOT NULL, last_backend_id INTEGER NOT NULL DEFAULT 0, "
            "PRIMARY KEY (app, id), UNIQUE (frontend_ip, port))"
        )
        db.execute("INSERT INTO routes_old SELECT * FROM routes")
        db.execute("DROP TABLE routes")
        db.execute("ALTER TABLE routes_old RENAME TO routes")
    (table,) = raw(path, "SELECT sql FROM sqlite_master WHERE name = 'routes'")
    assert "UNIQUE (frontend_ip, port)" in str(table[0])
    reopened = open_url(f"sqlite:///{path}")
    assert reopened.get_route("a", 1) == Route(
        "a", 1, IP, 10000, RouteSettings(), (Backend(1, IP, 9000),), (slow,)
    )
    (table,) = raw(path, "SELECT sql FROM sqlite_master WHERE name = 'routes'")
    assert "UNIQUE" not in str(table[0])
    assert raw(path, "SELECT name FROM sqlite_master WHERE name = 'routes_address'")
    sni = RouteSettings(sni=("a.example.com",))
    reopened.create_route("b", IP, 10001, sni)
    assert reopened.create_route("c", IP, 10001, sni.replace(sni=("*",))).port == 10001
    # Foreign keys still hold on the new table: deleting the route takes its rows.
    reopened.delete_route("a", 1)
    assert raw(path, "SELECT * FROM backends") == raw(path, "SELECT * FROM toxics") == []
