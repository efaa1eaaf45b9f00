"""The routes a node knows it serves, and the snapshot file that keeps them (cluster only).

A node of a Redis cluster keeps a local copy of what it serves (``--snapshot``): it serves
from it when it starts with Redis down, and writes it back into a Redis that lost it
(reseed). Every change the route service applies is written there, only what changed, in
one transaction. With an embedded store there is no file: the store is already local.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Mapping

from restcp.errors import Unavailable
from restcp.model import Route, RouteKey
from restcp.store import Snapshot, SnapshotData, open_snapshot

log = logging.getLogger("restcp.node")


class KnownRoutes:
    """The routes this node serves as last read (from the store, or from the snapshot at a
    start without Redis): what it serves on when the store cannot say, what a reseed writes
    back, and what its snapshot file holds."""

    def __init__(self, path: str | None, frontend_ips: Collection[str]) -> None:
        """``path``: the snapshot file, or None for none (an embedded store)."""
        self.routes: dict[RouteKey, Route] = {}
        self._path = path
        self._frontend_ips = frontend_ips
        self._snapshot: Snapshot | None = None
        if path is not None:
            try:
                self._snapshot = open_snapshot(path)
            except Exception as err:
                raise Unavailable(f"cannot open the snapshot {path}: {err}") from err

    async def load(self) -> str | None:
        """Read the snapshot's routes of this node's frontend IPs; the cluster epoch they
        were read under (None: no snapshot, or one from before any epoch)."""
        if self._snapshot is None:
            return None
        try:
            data = await self._snapshot.load_snapshot(self._frontend_ips)
        except Exception as err:
            # A damaged snapshot is no reason not to start: Redis has the truth.
            log.error("cannot read the snapshot %s, starting without it: %s", self._path, err)
            return None
        if data.epoch is not None:
            log.info(
                "snapshot %s: %d routes, cluster epoch %s", self._path, len(data.routes), data.epoch
            )
        self.routes = {r.key: r for r in data.routes}
        return data.epoch

    async def counters(self) -> SnapshotData:
        """The snapshot as stored, with the id counters a reseed writes back."""
        if self._snapshot is None:
            return SnapshotData()
        return await self._snapshot.load_snapshot(self._frontend_ips)

    async def remember(self, routes: Mapping[RouteKey, Route], gone: Collection[RouteKey]) -> None:
        """Record what the node now serves (``routes`` changed or new, ``gone`` removed), and
        write the difference to the snapshot."""
        upserts = [r for k, r in routes.items() if self.routes.get(k) != r]
        deletes = [k for k in gone if k in self.routes]
        for key in deletes:
            del self.routes[key]
        for route in upserts:
            self.routes[route.key] = route
        if upserts or deletes:
            await self._write(None, upserts, deletes)

    async def epoch_changed(self, epoch: str) -> None:
        await self._write(epoch, [], [])

    async def _write(
        self, epoch: str | None, upserts: list[Route], deletes: list[RouteKey]
    ) -> None:
        if self._snapshot is None:
            return
        try:
            await self._snapshot.save_snapshot(epoch, upserts, deletes)
        except Exception as err:
            # The snapshot is a fallback: a full disk must not stop the node applying changes.
            log.error("cannot write the snapshot %s: %s", self._path, err)

    async def close(self) -> None:
        if self._snapshot is not None:
            log.debug("stopping: the snapshot")
            await self._snapshot.close()
