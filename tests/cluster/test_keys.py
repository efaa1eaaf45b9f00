"""The coordination keys a live cluster writes are the ones docs/cluster.md lists, of the
types it lists, expiring as it says; everything else is the documented data model."""

from __future__ import annotations

import json
from pathlib import Path

import redis

from tests.cluster.conftest import PREFIX, StartNode, attach, create, ready
from tests.contract.test_redis import documented_keys, pattern_regex

DOC = Path(__file__).resolve().parents[2] / "docs" / "cluster.md"


def coordination_keys() -> dict[str, str]:
    """Key pattern -> type, from the coordination table (six columns, an ``expires`` one)."""
    keys = {}
    for line in DOC.read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 6 and cells[0].startswith("`") and cells[2].startswith("`"):
            keys[cells[0].strip("`")] = cells[1]
    return keys


def test_the_coordination_table_is_apart_from_the_data_model() -> None:
    assert coordination_keys() == {
        "lease:<ip>": "string",
        "node:<node>": "string",
        "stats:<node>": "string",
        "nodes": "set",
        "changes:<ip>": "stream",
        "applied:<ip>": "stream",
    }
    assert not set(coordination_keys()) & set(documented_keys())


def test_a_live_cluster_writes_the_documented_keys_only(
    start_node: StartNode, raw_redis: redis.Redis
) -> None:
    c, a = ready(start_node("127.0.0.3", ready=False), start_node("127.0.0.2", ready=False))
    route = create(a, "web", frontend_ip="127.0.0.3")
    # A change through A: announced to C on its IP's stream, acknowledged on the other.
    attach(a, "web", route["id"], 9)
    c_id = c.call("GET", "/healthz").json()["cluster"]["node"]
    a_id = a.call("GET", "/healthz").json()["cluster"]["node"]

    patterns = {
        p: (pattern_regex(p), t) for p, t in {**documented_keys(), **coordination_keys()}.items()
    }
    seen = set()
    for key in raw_redis.scan_iter(match=f"{PREFIX}*"):
        name = key.removeprefix(PREFIX)
        matches = [p for p, (regex, _) in patterns.items() if regex.fullmatch(name)]
        assert len(matches) == 1, (name, matches)
        assert raw_redis.type(key) == patterns[matches[0]][1], name
        seen.add(matches[0])
    assert set(coordination_keys()) <= seen

    assert raw_redis.get(f"{PREFIX}lease:127.0.0.3") == c_id
    assert raw_redis.get(f"{PREFIX}lease:127.0.0.2") == a_id
    assert 0 < raw_redis.pttl(f"{PREFIX}lease:127.0.0.3") <= 10_000
    assert 0 < raw_redis.pttl(f"{PREFIX}node:{c_id}") <= 30_000
    assert raw_redis.smembers(f"{PREFIX}nodes") == {c_id, a_id}
    assert 0 < raw_redis.pttl(f"{PREFIX}stats:{c_id}") <= 5_000
    record = json.loads(raw_redis.get(f"{PREFIX}node:{c_id}"))
    assert set(record) == {
        "id", "api", "frontend_ips", "leases", "routes_serving", "started_at", "heartbeat_at"
    }  # fmt: skip
    assert record["api"] == c.api + "/"
    assert list(record["leases"]) == ["127.0.0.3"]
    # Channels carry the prefix too.
    assert sorted(raw_redis.pubsub_channels(f"{PREFIX}provision:*")) == [
        f"{PREFIX}provision:127.0.0.2",
        f"{PREFIX}provision:127.0.0.3",
    ]

    # The change's notice, and C's acknowledgement of the version it applied (created: 1,
    # a backend added: 2).
    entries = [f["m"] for _, f in raw_redis.xrange(f"{PREFIX}changes:127.0.0.3")]
    assert entries == [f"web:{route['id']}"]
    entries = [f["m"] for _, f in raw_redis.xrange(f"{PREFIX}applied:127.0.0.3")]
    assert entries == [f"web:{route['id']} 2"]

    # A clean stop takes the node's keys with it.
    assert c.stop() == 0
    assert raw_redis.get(f"{PREFIX}lease:127.0.0.3") is None
    assert raw_redis.get(f"{PREFIX}node:{c_id}") is None
    assert raw_redis.get(f"{PREFIX}stats:{c_id}") is None
    assert raw_redis.smembers(f"{PREFIX}nodes") == {a_id}
