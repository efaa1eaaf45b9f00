"""The health writer: the node serving a route writes which of its backends are up and
down into Redis, so that any node's API can report it (docs/cluster.md, "Backend health in
Redis")."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Collection, Iterable, Mapping

from restcp.cluster.coordination import Coordination
from restcp.errors import Unavailable
from restcp.model import BackendStatus, RouteKey

log = logging.getLogger("restcp.cluster")

# Health transitions within this many seconds of the first are written to Redis together.
HEALTH_COALESCE = 0.05


class HealthWriter:
    """Writes the health of the routes this node serves into Redis: each transition marks
    its route, and a task writes the marked routes' ``backends_live``/``backends_dead``
    shortly after (transitions of many routes, or flapping ones, cost one write per route
    per HEALTH_COALESCE). The data plane only marks: it never waits on Redis. A write that
    fails (Redis away) is retried after the next resync, which marks every route again;
    what Redis has already is not written twice."""

    def __init__(
        self,
        bus: Coordination,
        served: Callable[[], Collection[RouteKey]],
        status: Callable[[RouteKey], Mapping[int, BackendStatus]],
    ) -> None:
        self._bus = bus
        self._served = served
        self._status = status
        self._dirty: set[RouteKey] = set()
        self._written: dict[RouteKey, tuple[tuple[int, ...], tuple[int, ...]]] = {}
        self._wake = asyncio.Event()

    def mark(self, keys: Iterable[RouteKey]) -> None:
        self._dirty.update(keys)
        if self._dirty:
            self._wake.set()

    def forget(self) -> None:
        """Redis may have lost what was written (it came back, or another epoch)."""
        self._written.clear()

    async def run(self) -> None:
        while True:
            await self._wake.wait()
            await asyncio.sleep(HEALTH_COALESCE)
            self._wake.clear()
            await self.flush()

    async def flush(self) -> None:
        keys, self._dirty = self._dirty, set()
        served = set(self._served())
        pending = list(keys)
        for i, key in enumerate(pending):
            if key not in served:
                self._written.pop(key, None)  # stopped; deleting a route deletes its lists
                continue
            statuses = self._status(key)
            live = tuple(sorted(b for b, s in statuses.items() if s.health == "up"))
            dead = tuple(sorted(b for b, s in statuses.items() if s.health == "down"))
            if self._written.get(key) == (live, dead):
                continue
            try:
                await self._bus.put_backend_health(key[0], key[1], live, dead)
            except Unavailable as err:
                # Kept for the next mark; a resync marks every route anyway.
                self._dirty.update(pending[i:])
                log.debug("health of route %s not written (%s): retried after a resync", key, err)
                return
            self._written[key] = (live, dead)
