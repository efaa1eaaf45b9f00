"""Stores of the desired state. Implementations load lazily by URL scheme, so a driver that
is not installed costs nothing until a user asks for it."""

from __future__ import annotations

import importlib
from urllib.parse import urlsplit

from restcp.errors import InvalidSpec
from restcp.store.base import AppInfo, Snapshot, SnapshotData, Store, TokenInfo

__all__ = [
    "AppInfo",
    "Snapshot",
    "SnapshotData",
    "Store",
    "TokenInfo",
    "is_embedded",
    "open_snapshot",
    "open_store",
]

# scheme -> "module:factory"; each factory takes the URL and returns an opened Store.
_IMPLEMENTATIONS = {
    "sqlite": "restcp.store.sqlite:open_url",
    "memory": "restcp.store.sqlite:open_url",
    "redis": "restcp.store.redis:open_url",
    "rediss": "restcp.store.redis:open_url",
    "redis+sentinel": "restcp.store.redis:open_url",
}


def is_embedded(url: str) -> bool:
    """Whether the store of ``url`` is this node's alone (else shared by a cluster)."""
    return urlsplit(url).scheme in ("sqlite", "memory")


def open_store(url: str) -> Store:
    scheme = urlsplit(url).scheme
    target = _IMPLEMENTATIONS.get(scheme)
    if target is None:
        known = ", ".join(f"{s}://" for s in _IMPLEMENTATIONS)
        raise InvalidSpec(f"unknown store URL {url!r}: expected one of {known}")
    module_name, factory = target.split(":")
    store: Store = getattr(importlib.import_module(module_name), factory)(url)
    return store


def open_snapshot(path: str) -> Snapshot:
    """The local snapshot of a cluster node: a SQLite file (``:memory:`` for none on disk)."""
    from restcp.store.sqlite import SqliteStore

    return SqliteStore(path)
