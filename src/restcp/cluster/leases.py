"""Leases: which of its frontend IPs this node serves.

``lease:<ip>`` holds a node id and expires unless renewed (every third of --lease-ttl). A
node serves, and subscribes to, only the IPs it holds, so two live nodes never serve one IP,
and a node started to replace a dead one takes over once the dead one's lease runs out.

An IP of this node is, at any moment, one of::

    waiting ──claim: free──► held ──claim: another holder──► waiting
       ▲                      │
       └────── release ───────┘        provisional (Redis down at start; the snapshot is
                                       served) ──first claim──► held, or waiting

Only ``Leases.claim`` moves an IP between them. The node identity a lease names is made here
too: a restarted process is a new node, which must wait out its predecessor's lease (a
stable name plus an incarnation, issue #17, will let it take its IPs back at once; it
belongs here, with the rule that decides when a lease may be taken).
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
import time
from collections.abc import Awaitable, Callable
from typing import Any

from restcp.cluster.coordination import Coordination
from restcp.settings import Settings

log = logging.getLogger("restcp.cluster")


def new_node_id() -> str:
    """Unique per process: ``<hostname>-<pid>-<6 hex digits>``."""
    return f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"


class Leases:
    """The leases of this node's frontend IPs, and how far the node has followed them: an
    IP just taken over is not served until a full resync has bound its routes."""

    def __init__(self, bus: Coordination, settings: Settings, node_id: str) -> None:
        self._bus = bus
        self._settings = settings
        self.node_id = node_id
        # ip -> when this node acquired its lease (Unix seconds).
        self.held: dict[str, float] = {}
        # ip -> the node holding the lease of an IP this node is configured for.
        self.others: dict[str, str] = {}
        # IPs served from the snapshot because Redis was down at start: held until Redis
        # answers the first claim, which confirms each lease or gives the IP up.
        self.provisional: set[str] = set()
        # Seconds until the soonest lease held by another node runs out, unless renewed.
        self.free_in: float | None = None
        # Leases acquired, and how many of those a full resync has followed.
        self.gained = 0
        self.synced = 0

    def holds(self, ip: str) -> bool:
        return ip in self.held or ip in self.provisional

    def default_ip(self) -> str | None:
        """The first of this node's frontend IPs that it serves now."""
        return next((ip for ip in self._settings.frontend_ips if ip in self.held), None)

    @property
    def standby(self) -> bool:
        """Another node holds one of this node's IPs."""
        return len(self.held) + len(self.provisional) < len(self._settings.frontend_ips)

    @property
    def settling(self) -> bool:
        """A lease was acquired that no full resync has followed yet."""
        return self.synced < self.gained

    def hold_provisionally(self) -> set[str]:
        """Redis is unreachable at start: hold every IP not held, until it answers."""
        self.provisional = set(self._settings.frontend_ips) - set(self.held)
        return self.provisional

    def followed_all(self) -> None:
        """The node's first resync, before it reports ready, follows the leases it has."""
        self.synced = self.gained

    async def follow(self, resync: Callable[[], Awaitable[None]]) -> None:
        """Run the node's full ``resync``, and count the leases it followed."""
        gained = self.gained
        await resync()
        self.synced = max(self.synced, gained)

    def renewal_period(self) -> float:
        # A standby tries again the moment the other node's lease runs out, not up to a
        # renewal period later: that is when a dead node's IPs are free.
        period = self._settings.lease_ttl / 3
        if self.free_in is not None:
            period = min(period, self.free_in + 0.005)
        return period

    async def claim(self) -> bool:
        """Renew or take the lease of each frontend IP; whether the IPs served changed."""
        changed = False
        self.free_in = None
        for ip in self._settings.frontend_ips:
            state, holder, left = await self._bus.acquire_lease(
                ip, self.node_id, self._settings.lease_ttl
            )
            if ip in self.provisional:
                # Redis answers at last: the lease is confirmed (acquired below), or another
                # node holds the IP now and this one stops serving it (standby).
                self.provisional.discard(ip)
                if not state:
                    changed = True
                    log.error(
                        "frontend IP %s, served from the snapshot while Redis was away, is "
                        "held by node %s: no longer serving it",
                        ip,
                        holder,
                    )
            if state:
                if ip not in self.held:
                    self.held[ip] = time.time()
                    self.gained += 1
                    changed = True
                    log.info("lease of frontend IP %s acquired: serving its routes", ip)
                self.others.pop(ip, None)
                continue
            if ip in self.held:
                del self.held[ip]
                changed = True
                log.error(
                    "lease of frontend IP %s lost to node %s: no longer serving it", ip, holder
                )
            elif self.others.get(ip) != holder:
                log.error(
                    "frontend IP %s is served by node %s (its lease runs out in %.1fs unless "
                    "renewed): not serving its routes until the lease is free",
                    ip,
                    holder,
                    left,
                )
            self.others[ip] = holder
            if left > 0:  # a lease set by hand may have no expiry: then the usual period
                self.free_in = left if self.free_in is None else min(left, self.free_in)
        return changed

    async def release(self) -> None:
        """Give up every lease held (raises Unavailable; those left expire by themselves)."""
        for ip in list(self.held):
            await self._bus.release_lease(ip, self.node_id)
            del self.held[ip]

    def details(self) -> dict[str, dict[str, Any]]:
        """Each frontend IP's lease, for /healthz."""
        ips: dict[str, dict[str, Any]] = {}
        for ip in self._settings.frontend_ips:
            if ip in self.held:
                ips[ip] = {"lease": "held", "age": round(time.time() - self.held[ip], 3)}
            else:
                ips[ip] = {"lease": "waiting", "holder": self.others.get(ip)}
        for ip in self.provisional:
            ips[ip] = {"lease": "provisional"}
        return ips
