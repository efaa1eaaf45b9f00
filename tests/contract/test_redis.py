"""What only the Redis store promises: its key layout (docs/cluster.md), atomic scripts under
concurrent writers, prefixes, its URLs, and releasing its connections."""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import inspect
import itertools
import json
import re
import socket
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import redis
from redis.asyncio import SSLConnection

from restcp.cluster import Coordination, SharedStore
from restcp.errors import (
    Conflict,
    DuplicateBackend,
    DuplicateToxic,
    InvalidSpec,
    NotFound,
    Unavailable,
)
from restcp.model import Backend, Certificate, Route, RouteSettings, Toxic
from restcp.store import AppInfo, Store, open_store
from restcp.store.redis import Keys, RedisStore, RedisTarget, parse_url
from tests.contract.conftest import SyncStore
from tests.redis_server import RedisServer, RedisServerMissing

IP = "127.0.0.1"
IP6 = "::1"
DEFAULT = RouteSettings()
DOC = Path(__file__).resolve().parents[2] / "docs" / "cluster.md"
# Written by the node serving a route (put_backend_health), after health transitions.
HEALTH_LISTS = {"route:<app>:<route>:backends_live", "route:<app>:<route>:backends_dead"}


def documented_keys() -> dict[str, str]:
    """Key pattern -> Redis type, from the data model table of docs/cluster.md."""
    keys = {}
    for line in DOC.read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 5 and cells[0].startswith("`") and cells[2].startswith("`"):
            keys[cells[0].strip("`")] = cells[1]
    return keys


def pattern_regex(pattern: str) -> re.Pattern[str]:
    # An IP may contain colons (IPv6); no other part may.
    parts = re.split(r"(<[a-z]+>)", pattern)
    regex = "".join(
        ".+" if p == "<ip>" else "[^:]+" if p.startswith("<") else re.escape(p) for p in parts
    )
    return re.compile(regex)


def keyspace(raw: redis.Redis, prefix: str = "restcp:") -> dict[str, tuple[str, Any]]:
    """Every key under ``prefix`` with its type and value, prefix removed."""
    out: dict[str, tuple[str, Any]] = {}
    for key in raw.scan_iter(match=f"{prefix}*"):
        kind = raw.type(key)
        value: Any = {
            "string": raw.get,
            "set": raw.smembers,
            "hash": raw.hgetall,
            "list": lambda k: raw.lrange(k, 0, -1),
        }[kind](key)
        out[key.removeprefix(prefix)] = (kind, value)
    return out


def classify(keys: dict[str, tuple[str, Any]]) -> dict[str, str]:
    """Each key -> the one documented pattern it matches; fails on unknown or wrong types."""
    documented = {p: (pattern_regex(p), t) for p, t in documented_keys().items()}
    found = {}
    for key, (kind, _) in keys.items():
        matches = [p for p, (regex, _) in documented.items() if regex.fullmatch(key)]
        assert len(matches) == 1, f"{key!r} matches {matches} of docs/cluster.md"
        assert kind == documented[matches[0]][1], f"{key!r} is a {kind}, documented otherwise"
        found[key] = matches[0]
    return found


@pytest.fixture
def store(redis_url: str, open_url: Callable[[str], SyncStore]) -> SyncStore:
    return open_url(redis_url)


# -- key layout ------------------------------------------------------------------------------


def test_the_doc_table_covers_every_key_family() -> None:
    # Guards the parser below it: a reformatted table must not make the layout test vacuous.
    assert documented_keys() == {
        "apps": "set",
        "app:<app>:route_counter": "string",
        "app:<app>:routes": "set",
        "frontend_ips": "set",
        "ip:<ip>:routes": "set",
        "ip:<ip>:ports": "hash",
        "ip:<ip>:ports:shared": "hash",
        "port_cursors": "hash",
        "route:<app>:<route>": "hash",
        "route:<app>:<route>:backend_counter": "string",
        "route:<app>:<route>:backends": "set",
        "route:<app>:<route>:backend:<id>": "hash",
        "route:<app>:<route>:backends_live": "list",
        "route:<app>:<route>:backends_dead": "list",
        "route:<app>:<route>:toxics": "hash",
        "route:<app>:<route>:toxic_order": "list",
        "tokens": "hash",
        "app:<app>:token_counter": "string",
        "app:<app>:tokens": "hash",
        "certificates": "hash",
        "epoch": "string",
    }


def test_keys_types_and_values_are_as_documented(store: SyncStore, raw_redis: redis.Redis) -> None:
    store.create_route("web", IP, 10000, RouteSettings(balance="round_robin"))
    store.create_route("web", IP6, 10001, DEFAULT)
    store.create_route("billing", IP, 10002, DEFAULT)
    # Two routes sharing a port by SNI (docs/tls.md).
    store.create_route("sni", IP, 9443, RouteSettings(sni=("a.example.com",)))
    store.create_route("sni", IP, 9443, RouteSettings(sni=("*",)))
    for port in (8080, 8081, 8082):
        store.add_backend("web", 1, Backend(0, "10.0.1.7", port, weight=3))
    # The health lists, as the node serving the route writes them; the epoch, as the
    # first node of a cluster claims it.
    assert store.coordination.put_backend_health("web", 1, [1, 2], [3]) is True
    assert store.coordination.claim_epoch("e1") == "e1"
    store.delete_backend("web", 1, 2)
    slow = Toxic("slow", "latency", attributes=(("jitter", 0), ("latency", 200)))
    for name in ("slow", "cut", "later"):
        store.add_toxic("web", 1, slow.replace(name=name))
    store.delete_toxic("web", 1, "cut")
    store.set_port_cursor(IP, 10003)
    web_hash, billing_hash = "ab" * 32, "cd" * 32
    store.create_token("web", "00" * 32, 1.5)
    store.create_token("web", web_hash, 1764181343.25)
    store.create_token("billing", billing_hash, 2.0)
    store.delete_token("web", 1)
    store.create_certificate(Certificate("web", "CERT PEM", "KEY PEM"))

    keys = keyspace(raw_redis)
    found = classify(keys)
    assert set(found.values()) == set(documented_keys())
    assert keys["apps"] == ("set", {"web", "billing", "sni"})
    assert keys["app:web:route_counter"] == ("string", "2")
    assert keys["app:web:routes"] == ("set", {"1", "2"})
    assert keys["frontend_ips"] == ("set", {IP, IP6})
    assert keys[f"ip:{IP}:routes"] == ("set", {"web:1", "billing:1", "sni:1", "sni:2"})
    assert keys[f"ip:{IP6}:routes"] == ("set", {"web:2"})
    assert keys[f"ip:{IP}:ports"] == (
        "hash",
        {"10000": "web:1", "10002": "billing:1", "9443": "*sni"},
    )
    assert keys[f"ip:{IP}:ports:shared"] == ("hash", {"9443": "2"})
    assert keys["port_cursors"] == ("hash", {IP: "10003"})
    kind, route = keys["route:web:1"]
    assert (kind, set(route)) == ("hash", {"ip", "port", "settings", "version"})
    assert (route["ip"], route["port"]) == (IP, "10000")
    # Created, three backends added, one deleted, three toxics added, one deleted: nine
    # changes (health is not one).
    assert route["version"] == "9"
    assert '"balance": "round_robin"' in route["settings"]
    assert keys["route:web:1:backend_counter"] == ("string", "3")
    assert keys["route:web:1:backends"] == ("set", {"1", "3"})
    kind, backend = keys["route:web:1:backend:3"]
    assert (kind, backend["ip"], backend["port"]) == ("hash", "10.0.1.7", "8082")
    assert '"weight": 3' in backend["settings"]
    kind, toxics = keys["route:web:1:toxics"]
    assert (kind, set(toxics)) == ("hash", {"slow", "later"})
    assert json.loads(toxics["slow"]) == {
        "type": "latency",
        "stream": "downstream",
        "toxicity": 1.0,
        "attributes": {"jitter": 0, "latency": 200},
        "clients": [],
    }
    assert keys["route:web:1:toxic_order"] == ("list", ["slow", "later"])
    assert keys["tokens"] == ("hash", {web_hash: "web:2", billing_hash: "billing:1"})
    assert keys["app:web:token_counter"] == ("string", "2")
    kind, web_tokens = keys["app:web:tokens"]
    assert (kind, set(web_tokens)) == ("hash", {"2"})
    assert json.loads(web_tokens["2"]) == {"hash": web_hash, "created_at": 1764181343.25}
    # Tokens do not make an app: "billing" is in apps for its route, not its token.
    assert "app:billing:tokens" in keys
    assert keys["epoch"] == ("string", "e1")
    kind, certificates = keys["certificates"]
    assert (kind, set(certificates)) == ("hash", {"web"})
    assert json.loads(certificates["web"]) == {"cert": "CERT PEM", "key": "KEY PEM"}
    # delete_backend took its id out of the health lists too.
    assert keys["route:web:1:backends_live"] == ("list", ["1"])
    assert keys["route:web:1:backends_dead"] == ("list", ["3"])


def test_deletes_leave_only_what_outlives_routes(store: SyncStore, raw_redis: redis.Redis) -> None:
    store.create_route("web", IP, 10000, DEFAULT)
    store.create_route("web", IP6, 10001, DEFAULT)
    for route_id, port in ((1, 9000), (1, 9001), (2, 9000)):
        store.add_backend("web", route_id, Backend(0, IP, port))
    raw_redis.rpush("restcp:route:web:1:backends_live", 1, 2)
    raw_redis.rpush("restcp:route:web:1:backends_dead", 2)
    slow = Toxic("slow", "latency", attributes=(("jitter", 0), ("latency", 1)))
    store.add_toxic("web", 1, slow)
    store.add_toxic("web", 2, slow)
    store.delete_toxic("web", 2, "slow")
    store.set_port_cursor(IP, 10001)
    store.delete_route("web", 1)
    store.delete_backend("web", 2, 1)
    assert set(keyspace(raw_redis)) == {
        "apps",
        "app:web:route_counter",
        "app:web:routes",
        "frontend_ips",
        f"ip:{IP6}:routes",
        f"ip:{IP6}:ports",
        "port_cursors",
        "route:web:2",
        "route:web:2:backend_counter",
    }
    store.delete_route("web", 2)
    # The app and its counter stay (ids are never reused), and so does the cursor.
    assert set(keyspace(raw_redis)) == {"apps", "app:web:route_counter", "port_cursors"}


SLOW = Toxic("slow", "latency", attributes=(("jitter", 0), ("latency", 200)))
FAILING: list[tuple[str, Callable[[SyncStore], Any], type[Exception]]] = [
    ("taken address", lambda s: s.create_route("new", IP, 10000, DEFAULT), Conflict),
    ("taken address, same app", lambda s: s.create_route("web", IP, 10000, DEFAULT), Conflict),
    ("update deleted route", lambda s: s.update_route("web", 2, DEFAULT), NotFound),
    ("delete deleted route", lambda s: s.delete_route("web", 2), NotFound),
    ("add to unknown app", lambda s: s.add_backend("new", 1, Backend(0, IP, 1)), NotFound),
    ("replace unknown backend", lambda s: s.update_backend("web", 1, Backend(9, IP, 1)), NotFound),
    ("delete unknown backend", lambda s: s.delete_backend("web", 1, 9), NotFound),
    ("token hash taken", lambda s: s.create_token("new", "ab" * 32, 1.0), Conflict),
    ("delete unknown token", lambda s: s.delete_token("web", 9), NotFound),
    ("delete revoked token", lambda s: s.delete_token("web", 1), NotFound),
    ("toxic name taken", lambda s: s.add_toxic("web", 1, SLOW), DuplicateToxic),
    ("update unknown toxic", lambda s: s.update_toxic("web", 1, SLOW.replace(name="x")), NotFound),
    ("delete unknown toxic", lambda s: s.delete_toxic("web", 1, "x"), NotFound),
    ("toxic of deleted route", lambda s: s.add_toxic("web", 2, SLOW), NotFound),
    (
        "same address twice",
        lambda s: s.add_backend("web", 1, Backend(0, IP, 9000)),
        DuplicateBackend,
    ),
]


@pytest.mark.parametrize(
    ("call", "error"), [(c, e) for _, c, e in FAILING], ids=[n for n, _, _ in FAILING]
)
def test_a_refused_call_writes_no_key(
    store: SyncStore,
    raw_redis: redis.Redis,
    call: Callable[[SyncStore], Any],
    error: type[Exception],
) -> None:
    store.create_route("web", IP, 10000, DEFAULT)
    store.create_route("web", IP, 10001, DEFAULT)
    store.add_backend("web", 1, Backend(0, IP, 9000))
    store.add_toxic("web", 1, SLOW)
    store.delete_route("web", 2)
    store.create_token("web", "cd" * 32, 1.0)
    store.delete_token("web", 1)
    store.create_token("web", "ab" * 32, 1.0)
    before = keyspace(raw_redis)
    with pytest.raises(error):
        call(store)
    assert keyspace(raw_redis) == before


ROUND_ROBIN = RouteSettings(balance="round_robin")


def test_every_stored_change_of_a_route_bumps_its_version(store: SyncStore) -> None:
    """The version the node serving a route acknowledges (docs/cluster.md, "Every write
    through any node"): each change of the route or its backends raises it by one, a read
    returns it, and a refused write or a health write leaves it."""
    created = store.create_route("web", IP, 10000, DEFAULT)
    assert created.version == 1
    assert store.get_route("web", 1).version == 1
    assert store.update_route("web", 1, ROUND_ROBIN).version == 2
    backend = store.add_backend("web", 1, Backend(0, "10.0.1.7", 8080))
    assert store.get_route("web", 1).version == 3
    store.update_backend("web", 1, backend.replace(port=8081))
    assert store.get_route("web", 1).version == 4
    with pytest.raises(NotFound):
        store.update_backend("web", 1, backend.replace(id=9))
    store.coordination.put_backend_health("web", 1, [1], [])
    assert store.get_route("web", 1).version == 4
    store.delete_backend("web", 1, backend.id)
    assert [r.version for r in store.all_routes()] == [5]
    assert [r.version for r in store.list_routes("web")] == [5]
    # Versions are no part of what a route is: two reads of one state compare equal.
    assert store.get_route("web", 1) == dataclasses.replace(created, settings=ROUND_ROBIN)


# Every method of the Store protocol that changes a stored route, with a call that changes
# route 1 of "web" (which has backend 1). The node serving a route acknowledges the version
# it applied (cluster/changes.py), so a change that does not raise it could be answered
# before that node applied it: a new kind of write of a route (toxics, certificates) raises
# it in the same atomic step, and belongs here.
ROUTE_WRITES: dict[str, Callable[[SyncStore], object]] = {
    "update_route": lambda s: s.update_route("web", 1, ROUND_ROBIN),
    "add_backend": lambda s: s.add_backend("web", 1, Backend(0, "10.0.1.8", 8080)),
    "update_backend": lambda s: s.update_backend("web", 1, Backend(1, "10.0.1.7", 8081)),
    "delete_backend": lambda s: s.delete_backend("web", 1, 1),
    "add_toxic": lambda s: s.add_toxic("web", 1, Toxic("thin", "bandwidth")),
    "update_toxic": lambda s: s.update_toxic("web", 1, SLOW.replace(toxicity=0.5)),
    "delete_toxic": lambda s: s.delete_toxic("web", 1, "slow"),
    "touch_route": lambda s: s.touch_route("web", 1),
}
# The rest: reads, a route's creation (version 1) and deletion (acknowledged as gone), and
# what is not a route.
OTHER_METHODS = {
    "close", "list_apps", "list_routes", "all_routes", "get_route", "create_route",
    "delete_route", "ports_in_use", "get_port_cursor", "set_port_cursor", "create_token",
    "list_tokens", "delete_token", "find_token", "list_certificates", "get_certificate",
    "create_certificate", "replace_certificate", "delete_certificate",
}  # fmt: skip


def test_every_method_of_the_store_is_known_to_change_a_route_or_not() -> None:
    methods = {name for name in dir(Store) if not name.startswith("_")}
    assert methods - OTHER_METHODS == ROUTE_WRITES.keys(), (
        "a Store method is new: if it changes a stored route, it must raise the route's "
        'version in the same write (docs/cluster.md, "Every write through any node"); '
        "add it to ROUTE_WRITES, or else to OTHER_METHODS"
    )


@pytest.mark.parametrize("write", ROUTE_WRITES)
def test_each_write_of_a_route_raises_its_version_by_one(store: SyncStore, write: str) -> None:
    store.create_route("web", IP, 10000, DEFAULT)
    store.add_backend("web", 1, Backend(0, "10.0.1.7", 8080))
    store.add_toxic("web", 1, SLOW)
    before = store.get_route("web", 1).version
    ROUTE_WRITES[write](store)
    assert store.get_route("web", 1).version == before + 1


def test_a_pair_stored_before_the_one_address_rule_may_still_change(
    store: SyncStore, raw_redis: redis.Redis
) -> None:
    store.create_route("web", IP, 10000, DEFAULT)
    store.add_backend("web", 1, Backend(0, IP, 9000))
    store.add_backend("web", 1, Backend(0, IP, 9001))
    raw_redis.hset(Keys("restcp:").backend("web", 1, 2), "port", "9000")
    assert store.update_backend("web", 1, Backend(2, IP, 9000, weight=5)).weight == 5
    assert store.update_backend("web", 1, Backend(1, IP, 9000, state="drain")).state == "drain"
    # Once one has moved, the rule holds for it.
    store.update_backend("web", 1, Backend(1, IP, 9002))
    with pytest.raises(DuplicateBackend):
        store.update_backend("web", 1, Backend(1, IP, 9000))
    assert [b.port for b in store.get_route("web", 1).backends] == [9002, 9000]


def test_app_ids_with_key_separators_cannot_collide(store: SyncStore) -> None:
    # Unencoded, route 1 of "a" with its backend 3 and route 3 of "a:1:backend" would both
    # use the key route:a:1:backend:3.
    store.create_route("a", IP, 10000, DEFAULT)
    for port in (9001, 9002, 9003):
        store.add_backend("a", 1, Backend(0, IP, port))
    odd = ["a:1:backend", "a:1:backend:3", "x%3Ay", "x:y", "ünï code", ""]
    for n, app in enumerate(odd):
        for _ in range(3):
            store.create_route(app, IP6, 10000 + len(store.ports_in_use(IP6)), DEFAULT)
        store.add_backend(app, 3, Backend(0, IP6, 7000 + n))
    assert [b.port for b in store.get_route("a", 1).backends] == [9001, 9002, 9003]
    for n, app in enumerate(odd):
        assert store.get_route(app, 3).backends == (Backend(1, IP6, 7000 + n),)
    assert sorted(store.list_apps(), key=lambda a: a.app) == sorted(
        [AppInfo("a", 1), *(AppInfo(app, 3) for app in odd)], key=lambda a: a.app
    )
    store.delete_route("a:1:backend", 3)
    assert len(store.get_route("a", 1).backends) == 3


def test_scripts_are_loaded_again_after_the_server_forgot_them(
    store: SyncStore, raw_redis: redis.Redis
) -> None:
    store.create_route("a", IP, 10000, DEFAULT)
    # What a restarted server or a new master after a failover looks like to EVALSHA.
    raw_redis.script_flush()
    store.add_backend("a", 1, Backend(0, IP, 9000))
    assert store.get_route("a", 1).backends == (Backend(1, IP, 9000),)


# -- change notices and acknowledgements ------------------------------------------------------


def test_a_notice_goes_on_its_ips_stream_and_channel_and_acks_after_it_are_read(
    store: SyncStore, raw_redis: redis.Redis
) -> None:
    bus = store.coordination
    # Acknowledged before the notice: not for the writer who announces next.
    bus.acknowledge(IP, ["web:1 1"])
    with raw_redis.pubsub() as listener:
        listener.subscribe("restcp:provision:" + IP)
        assert listener.get_message(timeout=5)["type"] == "subscribe"
        since, receivers = bus.announce(IP, "web:1", "provision:" + IP)
        assert receivers == 1
        assert listener.get_message(timeout=5)["data"] == "web:1"
    assert raw_redis.type("restcp:changes:" + IP) == "stream"
    [(ip, entry_id, notice)] = bus.read_changes({IP: "0-0"}, 0.01)
    assert (ip, notice) == (IP, "web:1")
    assert bus.read_changes({IP: entry_id}, 0.01) == []
    assert bus.read_applied(IP, since, 0.01) == []
    bus.acknowledge(IP, ["web:1 2", "web:2 gone"])
    assert [ack for _, ack in bus.read_applied(IP, since, 0.01)] == ["web:1 2", "web:2 gone"]
    # Another IP's streams are apart.
    assert bus.read_changes({IP6: "0-0"}, 0.01) == []
    # Redis's clock: a start from a second ago reads what came since, not before.
    start = bus.stream_start(0.0)
    assert bus.read_changes({IP: start}, 0.01) == []
    assert bus.read_changes({IP: bus.stream_start(60.0)}, 0.01) != []


# -- the two halves ----------------------------------------------------------------------------


def test_the_store_and_its_coordination_are_apart_and_offer_what_the_cluster_needs(
    store: SyncStore, open_url: Callable[[str], SyncStore], tmp_path: Path
) -> None:
    """The cluster declares what it needs (cluster/coordination.py) and finds it in a store
    at run time only, so nothing but this checks that the two agree."""
    wanted = [n for n, v in vars(Coordination).items() if callable(v) and not n.startswith("_")]
    assert "acquire_lease" in wanted
    assert isinstance(store.aio, SharedStore)
    offered = type(store.aio.coordination)
    for name in wanted:
        expected = inspect.signature(getattr(Coordination, name))
        assert inspect.signature(getattr(offered, name)) == expected, name
    # The Store half offers none of it, and an embedded store is no shared one.
    assert not set(wanted) & set(dir(RedisStore))
    assert not isinstance(open_url(f"sqlite:///{tmp_path}/x.db").aio, SharedStore)


# -- concurrency -------------------------------------------------------------------------------


def test_two_nodes_racing_for_ports_get_distinct_ids_and_ports(
    redis_url: str, open_url: Callable[[str], SyncStore]
) -> None:
    """Two API nodes (two clients, two connection pools), 100 creates each at once, every
    caller picking the next free port as it sees it and moving on when it loses the race."""
    nodes = [open_url(redis_url), open_url(redis_url)]
    conflicts = 0

    async def claim(store: Store) -> Route:
        nonlocal conflicts
        # Everyone starts from the same view, so the first rounds are all collisions.
        in_use = await store.ports_in_use(IP)
        port = 20000
        while True:
            port = next(p for p in itertools.count(port) if p not in in_use)
            try:
                return await store.create_route("shared", IP, port, DEFAULT)
            except Conflict:
                conflicts += 1
                port += 1

    routes: list[Route] = nodes[0].gather(*(claim(n.aio) for n in nodes for _ in range(100)))
    assert sorted(r.id for r in routes) == list(range(1, 201))
    assert len({r.port for r in routes}) == 200
    assert nodes[1].ports_in_use(IP) == {r.port for r in routes}
    assert sorted(nodes[1].all_routes(), key=lambda r: r.id) == sorted(routes, key=lambda r: r.id)
    # The race did happen, and none of the refused creates took an id.
    assert conflicts > 0
    assert nodes[0].create_route("shared", IP, 30000, DEFAULT).id == 201


# -- prefixes ----------------------------------------------------------------------------------


def test_prefixes_isolate_stores_on_one_database(
    redis_server: RedisServer, redis_url: str, raw_redis: redis.Redis,
    open_url: Callable[[str], SyncStore],
) -> None:  # fmt: skip
    blue = open_url(redis_server.url(prefix="blue:"))
    green = open_url(redis_server.url(prefix="green:"))
    blue.create_route("a", IP, 10000, DEFAULT)
    blue.add_backend("a", 1, Backend(0, IP, 9000))
    # The same app and address under another prefix: no conflict, its own counters.
    assert green.create_route("a", IP, 10000, RouteSettings("round_robin")).id == 1
    assert green.create_route("b", IP, 10001, DEFAULT).id == 1
    assert blue.list_apps() == [AppInfo("a", 1)]
    assert blue.ports_in_use(IP) == {10000}
    assert green.get_route("a", 1).backends == ()
    green.delete_route("a", 1)
    assert blue.get_route("a", 1).backends == (Backend(1, IP, 9000),)
    assert all(k.startswith(("blue:", "green:")) for k in raw_redis.scan_iter())
    classify(keyspace(raw_redis, "blue:"))
    with pytest.raises(NotFound):
        open_url(redis_url).list_routes("a")


# -- URLs ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "target"),
    [
        ("redis://localhost", RedisTarget((("localhost", 6379),))),
        ("redis://10.0.0.5:6380/3", RedisTarget((("10.0.0.5", 6380),), db=3)),
        ("redis://[::1]:7000/", RedisTarget((("::1", 7000),))),
        (
            "redis://h/2?prefix=prod%3Aeu:&socket_timeout=1.5&client_name=n1",
            RedisTarget(
                (("h", 6379),), db=2, prefix="prod:eu:",
                options=(("socket_timeout", 1.5), ("client_name", "n1")),
            ),
        ),
        ("redis://h?prefix=", RedisTarget((("h", 6379),), prefix="")),
        (
            "rediss://user:p%40ss@redis.example:6380/1?ssl_check_hostname=false",
            RedisTarget(
                (("redis.example", 6380),), db=1, tls=True, username="user", password="p@ss",
                options=(("ssl_check_hostname", False),),
            ),
        ),
        ("rediss://:secret@h", RedisTarget((("h", 6379),), tls=True, password="secret")),
        (
            "redis+sentinel://s1:26380,s2,[fd00::3]:26381/mymaster/4?prefix=x:",
            RedisTarget(
                (("s1", 26380), ("s2", 26379), ("fd00::3", 26381)),
                db=4, prefix="x:", service="mymaster",
            ),
        ),
        (
            "redis+sentinel://:pw@s1/mymaster",
            RedisTarget((("s1", 26379),), service="mymaster", password="pw"),
        ),
    ],
)  # fmt: skip
def test_urls_parse(url: str, target: RedisTarget) -> None:
    assert parse_url(url) == target


@pytest.mark.parametrize(
    "url",
    [
        "redis://",
        "redis://h:0",
        "redis://h:http",
        "redis://h1,h2/0",
        "redis://h/zero",
        "redis://h/0/1",
        "redis://h?nosuch=1",
        "redis://h?ssl_ca_certs=/ca.pem",
        "redis://h?socket_timeout=soon",
        "rediss://h?ssl_check_hostname=maybe",
        "redis+sentinel://s1",
        "redis+sentinel://s1/",
        "redis+sentinel://s1/mymaster/x",
        "redis+sentinel://s1,/mymaster",
    ],
)
def test_bad_urls_are_refused_when_the_store_opens(url: str) -> None:
    with pytest.raises(InvalidSpec):
        open_store(url)


def test_a_rediss_store_speaks_tls_and_connects_lazily(runner: asyncio.Runner) -> None:
    async def check() -> None:
        store = open_store("rediss://h.invalid:6380/2?prefix=t:&ssl_cert_reqs=none")
        assert isinstance(store, RedisStore)
        pool = store.connection.client.connection_pool
        kwargs = pool.connection_kwargs
        assert issubclass(pool.connection_class, SSLConnection)  # one that revalidates
        assert (kwargs["host"], kwargs["port"], kwargs["db"]) == ("h.invalid", 6380, 2)
        assert kwargs["ssl_cert_reqs"] == "none"
        assert store.connection.keys.apps == "t:apps"
        await store.close()

    runner.run(check())


def test_a_sentinel_url_reaches_the_master(
    redis_server: RedisServer, redis_url: str, raw_redis: redis.Redis, tmp_path: Path,
    open_url: Callable[[str], SyncStore],
) -> None:  # fmt: skip
    with RedisServer(tmp_path / "sentinel", sentinel_for=redis_server) as sentinel:
        store = open_url(sentinel.url(db=0, prefix="s:"))
        store.create_route("a", IP, 10000, DEFAULT)
        assert raw_redis.hgetall("s:route:a:1")["port"] == "10000"
        assert store.list_routes("a") == [Route("a", 1, IP, 10000)]
        store.close()


# -- connections -------------------------------------------------------------------------------


def test_a_store_without_redis_is_unavailable(runner: asyncio.Runner) -> None:
    async def check(port: int) -> None:
        store = open_store(f"redis://127.0.0.1:{port}/0")
        try:
            for call in (
                store.list_apps(),
                store.get_route("a", 1),
                store.create_route("a", IP, 10000, DEFAULT),
                store.ports_in_use(IP),
                store.set_port_cursor(IP, 1),
            ):
                with pytest.raises(Unavailable, match=f"127.0.0.1:{port}"):
                    await call
        finally:
            await store.close()

    # Bound but not listening: connections are refused at once, and no one else can take it.
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        runner.run(check(sock.getsockname()[1]))


def _named_clients(raw: redis.Redis, name: str) -> int:
    return sum(1 for c in raw.client_list() if c["name"] == name)


def _open_with_traffic(runner: asyncio.Runner, url: str) -> SyncStore:
    store = SyncStore(url, runner)
    # Concurrent calls, so that the pool holds many connections, not one.
    store.gather(*(store.aio.create_route("a", IP, 10000 + i, DEFAULT) for i in range(20)))
    return store


def test_close_releases_every_connection(
    redis_server: RedisServer, redis_url: str, raw_redis: redis.Redis, runner: asyncio.Runner
) -> None:
    store = _open_with_traffic(runner, f"{redis_url}?client_name=closing")
    assert _named_clients(raw_redis, "closing") > 1
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        store.close()
        del store
        gc.collect()
    assert [w for w in caught if issubclass(w.category, ResourceWarning)] == []
    # The server learns of each close asynchronously: poll, with a bound.
    deadline = time.monotonic() + 5
    while _named_clients(raw_redis, "closing") and time.monotonic() < deadline:
        time.sleep(0.01)
    assert _named_clients(raw_redis, "closing") == 0


def test_an_unclosed_store_is_noticed(
    redis_url: str, raw_redis: redis.Redis, runner: asyncio.Runner
) -> None:
    """The check above can fail: a store dropped without close() leaves warnings behind."""
    store = _open_with_traffic(runner, f"{redis_url}?client_name=leaky")
    assert _named_clients(raw_redis, "leaky") > 1
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        del store
        gc.collect()
    assert any(issubclass(w.category, ResourceWarning) for w in caught)


# -- the test server -------------------------------------------------------------------------


def test_a_missing_redis_server_fails_with_instructions(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(RedisServerMissing, match="apt-get install -y redis-server"):
        RedisServer(tmp_path / "redis").start()


# -- connections Redis closed ------------------------------------------------------------------


def test_pooled_connections_redis_closed_are_replaced_before_a_command(
    redis_url: str, open_url: Callable[[str], SyncStore], raw_redis: redis.Redis
) -> None:
    """After Redis restarts or fails over, every connection the pool kept is dead. A command
    must not fail on one (a 503 per pooled connection): the store PINGs a connection that
    idled past health_check_interval and connects again before sending."""
    # An interval this small checks before every command: no waiting for one to pass.
    checked = open_url(f"{redis_url}?health_check_interval=0.000001")
    unchecked = open_url(f"{redis_url}?health_check_interval=0")
    for store in (checked, unchecked):
        # Four connections in the pool, all idle afterwards.
        store.gather(*(store.aio.list_apps() for _ in range(4)))
    assert raw_redis.client_kill_filter(_type="normal", skipme=True) >= 5
    for _ in range(4):
        assert checked.list_apps() == []
    # Without the check, the dead connection fails the command: what the check prevents.
    with pytest.raises(Unavailable):
        unchecked.list_apps()
