"""Leases: which of its frontend IPs this node serves.

``lease:<ip>`` holds a node id and expires unless renewed (every third of --lease-ttl). A
node serves, and subscribes to, only the IPs it holds, so two live nodes never serve one IP,
and a node started to replace a dead one takes over once the dead one's lease runs out.

An IP of this node is, at any moment, one of::

    waiting ──claim: free──► held ──claim: another holder──► waiting
       ▲                      │
       └────── release ───────┘        provisional (Redis down at start; the snapshot is
                                       served) ──first claim──► held, or waiting

Only ``Leases.claim`` moves an IP between them. A lease held by another node is waited out,
unless its holder is an earlier incarnation of this node (its name, this host) that is
provably gone (identity.py): its process is not running and the IP's stored ports are free
to bind. A node restarted after a crash then serves its IPs as soon as it is up, instead of
a --lease-ttl later.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from restcp.cluster.coordination import Coordination
from restcp.cluster.identity import NodeId
from restcp.cluster.messages import provision_channel
from restcp.errors import Unavailable
from restcp.proxy.listener import bind
from restcp.settings import Settings

log = logging.getLogger("restcp.cluster")

# Seconds between tries to take the lease of a dead earlier incarnation whose ports are not
# free yet (its process is gone, but a socket of it, in a worker that has not died yet, is
# still bound).
TAKEOVER_RETRY = 0.1
# How long a write waits for the holder of an IP to listen on its channel again, and how
# often it looks (require_server): more than the subscriber's first reconnection attempts
# take (subscriber.BACKOFF_MIN), and what a write for a dead node's IP costs before its 503.
RESUBSCRIBE_GRACE = 1.0
RESUBSCRIBE_POLL = 0.05


async def require_server(bus: Coordination, ip: str, grace: float = RESUBSCRIBE_GRACE) -> None:
    """Raise Unavailable unless a live node serves ``ip``: one listens on its channel (a
    node subscribes to the channels of the IPs it holds, and a dead node's subscription ends
    with its connection). Checked before anything is stored for ``ip``. While the IP's lease
    is held, nobody listening is waited out for up to ``grace`` seconds: a live holder whose
    pub/sub connection was just cut (CLIENT KILL, a Redis restart) subscribes again within
    its reconnection backoff; a dead one never does."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + grace
    while await bus.subscribers(provision_channel(ip)) == 0:
        holder = (await bus.lease_holders([ip])).get(ip)
        if holder is None or loop.time() >= deadline:
            why = "no node holds its lease" if holder is None else f"its node {holder[0]} is away"
            raise Unavailable(f"no live node serves frontend_ip {ip} ({why}); nothing was stored")
        await asyncio.sleep(RESUBSCRIBE_POLL)


class Leases:
    """The leases of this node's frontend IPs, and how far the node has followed them: an
    IP just taken over is not served until a full resync has bound its routes."""

    def __init__(self, bus: Coordination, settings: Settings, identity: NodeId) -> None:
        self._bus = bus
        self._settings = settings
        self.identity = identity
        self.node_id = str(identity)
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
            if not state and (gone := await self._gone(ip, holder)) is not None:
                state, holder, left = await self._bus.acquire_lease(
                    ip, self.node_id, self._settings.lease_ttl, replace=holder
                )
                if state:
                    log.warning(
                        "lease of frontend IP %s taken from node %s, an earlier incarnation "
                        "of this node: %s",
                        ip,
                        gone[0],
                        gone[1],
                    )
                    await self._bus.drop_node(gone[0])
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

    async def _gone(self, ip: str, holder: str) -> tuple[str, str] | None:
        """(holder, why it is gone) when ``holder`` is an earlier incarnation of this node
        that is provably gone; None when it is another node, or may be alive."""
        other = NodeId.parse(holder)
        if other is None or not self.identity.predecessor(other) or other.alive():
            return None
        for port in await self._bus.stored_ports(ip):
            try:
                bind(ip, port).close()
            except OSError as err:
                log.info(
                    "frontend IP %s: node %s (this node's earlier incarnation) is gone, but "
                    "port %d cannot be bound yet (%s): trying again",
                    ip,
                    holder,
                    port,
                    err.strerror,
                )
                self.free_in = min(self.free_in, TAKEOVER_RETRY) if self.free_in else TAKEOVER_RETRY
                return None
        return holder, f"its process {other.pid} is not running on this host"

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
