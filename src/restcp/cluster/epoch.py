"""The epoch: which data this node follows.

``epoch`` is a random id written once (SETNX) when a cluster is first used; every node
remembers it (in its snapshot), and the store refuses every read and write of the desired
state while Redis holds another epoch or none (EpochMismatch). A Redis that came back empty
is therefore never mistaken for "delete everything": the node serves on what it has until an
operator reseeds (writes its snapshot back) or adopts Redis's state. The rules are in
docs/cluster.md, "Redis that lost its data"; the states, as /healthz names them::

    ok ──Redis without an epoch──► empty ──reseed / adopt──► ok
     └──Redis with another one──► foreign ─┘
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

from restcp.cluster.controller import Controller
from restcp.cluster.coordination import Coordination
from restcp.cluster.leases import Leases
from restcp.errors import EpochMismatch, Unavailable
from restcp.model import Route, RouteKey

log = logging.getLogger("restcp.cluster")

StoreState = Literal["ok", "empty", "foreign"]


def new_epoch() -> str:
    return secrets.token_hex(8)


class Epoch:
    """The epoch this node follows, how Redis compares to it, and the two ways an operator
    settles a difference (reseed, adopt). ``forget``: called when the node follows another
    epoch, whose Redis may lack what was written under the old one."""

    def __init__(
        self,
        bus: Coordination,
        node: Controller,
        leases: Leases,
        forget: Callable[[], None],
    ) -> None:
        self._bus = bus
        self._node = node
        self._leases = leases
        self._forget = forget
        # The epoch this node follows (None: none seen yet), and how Redis compares to it.
        self.current: str | None = None
        self.state: StoreState = "ok"
        self.found: str | None = None

    def expect(self, epoch: str | None) -> None:
        """At start: the epoch the node's snapshot remembers; the store checks it from now."""
        self.current = epoch
        self._bus.expect_epoch(epoch)

    def details(self) -> dict[str, Any]:
        """For /healthz."""
        details: dict[str, Any] = {"epoch": self.current, "store": self.state}
        if self.state == "foreign":
            details["redis_epoch"] = self.found
        return details

    async def check(self) -> bool:
        """Compare Redis's epoch with this node's: True when the node may follow Redis.

        - The same epoch: follow it.
        - This node knows none yet (a new node, or one without a snapshot): adopt Redis's
          epoch, or claim a new one if Redis has none (SETNX: nodes starting together
          agree on one).
        - Another epoch, and this node has nothing to lose (no route known or served):
          adopt it.
        - Otherwise, no epoch (Redis lost its data: no node that knew the cluster claims a
          new one, so the loss stays visible) or another one: do not follow it. The node
          serves on what it has, the store refuses reads and writes, /healthz says "empty"
          or "foreign", until a reseed or an adopt through this node's API."""
        found = await self._bus.get_epoch()
        if found is not None and found == self.current:
            self._consistent()
            return True
        if self.current is None:
            if found is None:
                found = await self._bus.claim_epoch(new_epoch())
            await self._follow(found)
            return True
        if found is not None and not self._node.protects():
            await self._follow(found)
            return True
        self.mismatch(EpochMismatch(self.current, found))
        return False

    def mismatch(self, err: EpochMismatch) -> None:
        """Redis does not hold this node's epoch (seen by check, or by the store)."""
        state: StoreState = "empty" if err.found is None else "foreign"
        if (state, err.found) != (self.state, self.found):
            log.error(
                "Redis %s: serving on the %d routes this node had, applying nothing from "
                "Redis and refusing writes until `restcp cluster reseed` (writes them back) "
                "or `restcp cluster adopt` (takes Redis's state)",
                "has lost its data (no epoch)"
                if state == "empty"
                else f"holds another cluster (epoch {err.found}, this node's is {err.expected})",
                len(self._node.served()),
            )
        self.state, self.found = state, err.found

    def _consistent(self) -> None:
        if self.state != "ok":
            log.info("Redis holds this node's epoch %s again", self.current)
        self.state, self.found = "ok", None

    async def _follow(self, epoch: str) -> None:
        if epoch != self.current:
            if self.current is None:
                log.info("following cluster epoch %s", epoch)
            else:
                log.warning("following cluster epoch %s (was %s)", epoch, self.current)
            self._forget()
        self.current = epoch
        self._bus.expect_epoch(epoch)
        self._consistent()
        await self._node.epoch_changed(epoch)

    async def reseed(
        self,
        routes: Sequence[Route],
        route_counters: Mapping[str, int],
        backend_counters: Mapping[RouteKey, int],
    ) -> dict[str, Any]:
        """Write ``routes`` (this node's snapshot) back into a Redis that does not hold this
        node's epoch, each route atomically and never over other content, then follow
        Redis's epoch if nothing conflicted. When Redis holds this node's epoch, nothing is
        written (a reseed would bring back routes deleted since through other nodes)."""
        found = await self._bus.get_epoch()
        report: dict[str, Any] = {
            "epoch": found,
            "previous_epoch": self.current,
            "written": [],
            "unchanged": [],
            "conflicts": [],
            "skipped": [],
        }
        if found is not None and found == self.current:
            # Nothing to do, and nothing written: the snapshot could bring back routes
            # deleted since through another node.
            log.info("reseed: Redis holds this node's epoch %s, nothing to write", found)
            return report
        held = set(self._leases.held)
        if self._leases.provisional or (not held and routes):
            raise Unavailable("this node holds no lease yet: reseed once its leases are claimed")
        # A Redis without an epoch gets a new one, never the old: a node that was away while
        # Redis lost its data must not take the reseeded data for its own (it lacks that
        # node's routes); it sees another epoch, and is reseeded (or adopts) in turn.
        target = found if found is not None else await self._bus.claim_epoch(new_epoch())
        report["epoch"] = target
        for route in sorted(routes, key=lambda r: r.key):
            ref = {"app": route.app, "route": route.id, "frontend_ip": route.frontend_ip}
            if route.frontend_ip not in held:
                report["skipped"].append({**ref, "reason": "this node does not hold its IP"})
                continue
            outcome, why = await self._bus.restore_route(
                route,
                target,
                route_counters.get(route.app, 0),
                backend_counters.get(route.key, 0),
            )
            if outcome == "conflict":
                report["conflicts"].append({**ref, "port": route.port, "reason": why})
            else:
                report[outcome].append({**ref, "port": route.port})
        log.warning(
            "reseed into epoch %s: %d routes written, %d unchanged, %d conflicting, %d skipped",
            target,
            len(report["written"]),
            len(report["unchanged"]),
            len(report["conflicts"]),
            len(report["skipped"]),
        )
        if not report["conflicts"]:
            await self._follow(target)
        return report

    async def adopt(self) -> dict[str, Any]:
        """Follow whatever Redis holds now (an operator's decision): the routes this node
        knew and Redis does not are stopped at the resync that follows."""
        found = await self._bus.get_epoch()
        previous = self.current
        if found is None:
            found = await self._bus.claim_epoch(new_epoch())
        await self._follow(found)
        return {"epoch": found, "previous_epoch": previous}
