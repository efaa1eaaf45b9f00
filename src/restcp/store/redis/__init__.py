"""The shared store: one Redis (or a Sentinel-watched master) that every node of a cluster
uses. Keys follow the seed's data model, one route per hash, with ids per app;
docs/cluster.md lists every key, its type and who writes it.

Its modules, from the top (each imports only those below it; lint-imports checks it)::

    store.py          RedisStore: the Store protocol (store/base.py)
    coordination.py   RedisCoordination: what restcp.cluster needs (cluster/coordination.py)
    pubsub.py         one pub/sub connection
    connection.py     the client, its pool health check, the epoch expected, running scripts
    scripts.py : keys.py : url.py    the Lua, the key names, store URLs

The two halves share one connection and nothing else: ``open_url`` gives the store, and the
store's ``coordination`` attribute the other half.
"""

from __future__ import annotations

from restcp.store.redis.connection import RedisConnection, connect
from restcp.store.redis.coordination import RedisCoordination
from restcp.store.redis.keys import Keys
from restcp.store.redis.store import RedisStore
from restcp.store.redis.url import RedisTarget, parse_url

__all__ = [
    "Keys",
    "RedisConnection",
    "RedisCoordination",
    "RedisStore",
    "RedisTarget",
    "open_url",
    "parse_url",
]


def open_url(url: str) -> RedisStore:
    """Opens no connection: the first call connects, so this never blocks or fails on I/O."""
    connection = connect(parse_url(url))
    return RedisStore(connection, RedisCoordination(connection))
