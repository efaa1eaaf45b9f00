"""The node registry: each node's entry for ``GET /nodes``, written at start and at every
lease renewal, and the listing of the live ones (docs/cluster.md, "Nodes")."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from restcp.cluster.controller import Controller
from restcp.cluster.coordination import Coordination
from restcp.cluster.leases import Leases
from restcp.errors import Unavailable
from restcp.model import format_host
from restcp.settings import Settings

log = logging.getLogger("restcp.cluster")


class Registry:
    """Writes this node's entry (which expires unless refreshed) and lists everyone's."""

    def __init__(
        self,
        bus: Coordination,
        settings: Settings,
        node: Controller,
        leases: Leases,
        serving: Callable[[], int],
    ) -> None:
        self._bus = bus
        self._settings = settings
        self._node = node
        self._leases = leases
        self._serving = serving
        self.started_at = time.time()

    async def put(self) -> None:
        """Write this node's entry now (raises Unavailable)."""
        api = self._node.api_address
        node_id = self._leases.node_id
        await self._bus.put_node(
            node_id,
            {
                "id": node_id,
                "api": None if api is None else f"http://{format_host(api[0])}:{api[1]}/",
                "frontend_ips": list(self._settings.frontend_ips),
                "leases": dict(self._leases.held),
                "routes_serving": self._serving(),
                "started_at": self.started_at,
                "heartbeat_at": time.time(),
            },
            # Long enough to survive a missed renewal or two, short enough that GET /nodes
            # forgets a killed node soon.
            3 * self._settings.lease_ttl,
        )

    async def register(self) -> None:
        """Write this node's entry again, now that its API address is known. Only a
        listing: the next renewal retries it if Redis is away."""
        try:
            await self.put()
        except Unavailable as err:
            log.warning("cannot register this node for GET /nodes yet: %s", err)

    async def drop(self) -> None:
        await self._bus.drop_node(self._leases.node_id)

    async def nodes(self) -> list[dict[str, Any]]:
        """The live nodes, as they registered in Redis, with their leases' ages."""
        records = await self._bus.list_nodes()
        ips = sorted({ip for r in records for ip in r.get("leases", {})})
        stored = await self._bus.routes_per_ip(ips)
        now = time.time()
        out = []
        for r in sorted(records, key=lambda r: str(r.get("id"))):
            leases = r.get("leases", {})
            out.append(
                {
                    "id": r.get("id"),
                    "api": r.get("api"),
                    "frontend_ips": r.get("frontend_ips", []),
                    "leases": [
                        {
                            "ip": ip,
                            "age": round(now - float(since), 3),
                            "routes": stored.get(ip, 0),
                        }
                        for ip, since in sorted(leases.items())
                    ],
                    "routes_serving": r.get("routes_serving", 0),
                    "started_at": r.get("started_at"),
                    "last_seen": round(now - float(r.get("heartbeat_at", now)), 3),
                }
            )
        return out
